/**
 * The fault-injection harness: a private Postgres cluster (initdb into a temp dir), a private
 * redis-server, and the real API and worker processes (`node bin/kp-rotor.mjs ...`), all on free
 * ports of their own, never the shared servers on 5432/6379. Everything started here is
 * registered and stopped by `Harness.shutdown()` (and SIGKILLed on process exit as a last resort).
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createWriteStream, mkdtempSync, readFileSync, rmSync, type WriteStream } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Cluster, Redis } from "ioredis";
import postgres from "postgres";
import { freePort } from "../helpers/env.js";
import { startTestCluster, type TestCluster } from "../helpers/redis-cluster.js";

const run = promisify(execFile);
const PG_BIN = process.env.FAULTS_PG_BIN ?? "/usr/lib/postgresql/15/bin";
export const ROOT = new URL("../../", import.meta.url).pathname;
const BIN = join(ROOT, "bin/kp-rotor.mjs");

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Every child process pid this module started and has not seen exit. */
const livePids = new Set<number>();
process.once("exit", () => {
  for (const pid of livePids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
});

const isRoot = () => process.getuid?.() === 0;

/** Runs a Postgres binary, as the postgres user when we are root (initdb refuses root). */
async function pgRun(binary: string, args: string[], timeoutMs = 60_000) {
  const [file, argv] = isRoot()
    ? ["runuser", ["-u", "postgres", "--", join(PG_BIN, binary), ...args]]
    : [join(PG_BIN, binary), args];
  return run(file as string, argv as string[], { timeout: timeoutMs });
}

export interface PgCluster {
  port: number;
  dir: string;
  url(database?: string): string;
  start(): Promise<void>;
  /** pg_ctl stop; `fast` rolls back open transactions and closes connections. */
  stop(mode?: "fast" | "immediate"): Promise<void>;
  restart(): Promise<void>;
  /** SIGSTOP / SIGCONT every process of the cluster (postmaster and its backends). */
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Stops the cluster and removes its directory (logs included) unless `keep`. */
  destroy(keep?: boolean): Promise<void>;
}

export async function startPostgres(): Promise<PgCluster> {
  const dir = mkdtempSync(join(tmpdir(), "kp-faults-pg-"));
  // initdb and pg_ctl run as the postgres user when we are root: it must own the directory.
  if (isRoot()) await run("chown", ["postgres:postgres", dir]);
  const data = join(dir, "data");
  const port = await freePort();
  await pgRun("initdb", ["-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
  const options = [
    `-p ${port}`,
    `-k ${dir}`,
    "-c listen_addresses=127.0.0.1",
    "-c fsync=off",
    "-c synchronous_commit=off",
    "-c full_page_writes=off",
    "-c max_connections=300",
    "-c log_min_messages=warning",
  ].join(" ");
  const log = join(dir, "postgres.log");
  let stopped: number[] = [];
  const pids = async (): Promise<number[]> => {
    const postmaster = Number(readFileSync(join(data, "postmaster.pid"), "utf8").split("\n")[0]);
    const { stdout } = await run("pgrep", ["-P", String(postmaster)]).catch(() => ({ stdout: "" }));
    return [postmaster, ...stdout.split("\n").filter(Boolean).map(Number)];
  };
  const cluster: PgCluster = {
    port,
    dir,
    url: (database = "postgres") => `postgres://postgres@127.0.0.1:${port}/${database}`,
    async start() {
      await pgRun("pg_ctl", ["-D", data, "-l", log, "-w", "-t", "60", "-o", options, "start"]);
    },
    async stop(mode = "fast") {
      await pgRun("pg_ctl", ["-D", data, "-m", mode, "-w", "-t", "60", "stop"]);
    },
    async restart() {
      await pgRun("pg_ctl", [
        "-D",
        data,
        "-l",
        log,
        "-m",
        "fast",
        "-w",
        "-t",
        "60",
        "-o",
        options,
        "restart",
      ]);
    },
    async pause() {
      stopped = await pids();
      // Backends first, so none of them notices a stopped postmaster.
      for (const pid of [...stopped].reverse()) signal(pid, "SIGSTOP");
    },
    async resume() {
      for (const pid of stopped) signal(pid, "SIGCONT");
      stopped = [];
    },
    async destroy(keep = false) {
      for (const pid of stopped) signal(pid, "SIGCONT");
      await pgRun("pg_ctl", ["-D", data, "-m", "immediate", "-w", "stop"]).catch(() => {});
      if (!keep && !process.env.FAULTS_KEEP) rmSync(dir, { recursive: true, force: true });
    },
  };
  await cluster.start();
  return cluster;
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // gone already
  }
}

export interface RedisServer {
  port: number;
  url: string;
  pid(): number | undefined;
  /** Kills the server (SIGKILL: no persistence configured anyway) and waits for it to exit. */
  stop(): Promise<void>;
  /** Starts a new, empty server on the same port. */
  start(): Promise<void>;
  pause(): void;
  resume(): void;
}

export async function startRedis(dir: string): Promise<RedisServer> {
  const port = await freePort();
  const url = `redis://127.0.0.1:${port}`;
  let child: ChildProcess | undefined;
  const server: RedisServer = {
    port,
    url,
    pid: () => child?.pid,
    async start() {
      child = spawn(
        "redis-server",
        [
          "--port",
          String(port),
          "--bind",
          "127.0.0.1",
          "--save",
          "",
          "--appendonly",
          "no",
          "--dir",
          dir,
        ],
        { stdio: "ignore", cwd: dir },
      );
      track(child);
      await waitFor(
        async () => {
          const probe = new Redis(url, {
            lazyConnect: true,
            maxRetriesPerRequest: 0,
            retryStrategy: () => null,
          });
          probe.on("error", () => {});
          try {
            await probe.connect();
            return (await probe.ping()) === "PONG";
          } catch {
            return false;
          } finally {
            probe.disconnect();
          }
        },
        10_000,
        "redis-server to answer",
      );
    },
    async stop() {
      const c = child;
      if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => c.once("exit", () => resolve()));
      signal(c.pid as number, "SIGCONT");
      c.kill("SIGKILL");
      await exited;
    },
    pause() {
      if (child?.pid) signal(child.pid, "SIGSTOP");
    },
    resume() {
      if (child?.pid) signal(child.pid, "SIGCONT");
    },
  };
  await server.start();
  return server;
}

/** RedisServer's shape for a cluster: its first node; whole-server faults are not offered. */
function clusterStandIn(cluster: TestCluster): RedisServer {
  const refuse = () => {
    throw new Error("not on a cluster: use Harness.cluster (wipe one primary)");
  };
  return {
    port: cluster.ports[0] as number,
    url: cluster.url,
    pid: () => undefined,
    stop: async () => {},
    start: async () => refuse(),
    pause: refuse,
    resume: refuse,
  };
}

function track(child: ChildProcess): void {
  if (child.pid === undefined) return;
  const pid = child.pid;
  livePids.add(pid);
  child.once("exit", () => livePids.delete(pid));
}

export async function waitFor(
  check: () => Promise<boolean> | boolean,
  timeoutMs: number,
  what: string,
  everyMs = 100,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

export interface Service {
  name: string;
  child: ChildProcess;
  startedAt: number;
  exited: Promise<void>;
  alive(): boolean;
  /** Exited without being killed by the harness: the process crashed (or shut itself down). */
  crashed(): boolean;
  kill(sig?: NodeJS.Signals): Promise<void>;
}

/** The service's environment: short intervals, private servers, a random sealing key. */
export function serviceEnv(opts: {
  databaseUrl: string;
  redisUrl: string;
  prefix: string;
  overrides?: Record<string, string>;
}): Record<string, string> {
  return {
    DATABASE_URL: opts.databaseUrl,
    REDIS_URL: opts.redisUrl,
    QUEUE_PREFIX: opts.prefix,
    HOST: "127.0.0.1",
    METRICS_PORT: "0",
    ROTATION_INTERVAL: "60s",
    WELCOME_ROTATION_DELAY: "200ms",
    DELETION_GRACE: "1s",
    WORKER_LOCK_DURATION: "1s",
    WORKER_STALLED_INTERVAL: "1s",
    WATCHDOG_INTERVAL: "2s",
    WORKER_CONCURRENCY: "16",
    KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64"),
    LOG_LEVEL: "warn",
    // The suite drives one client at thousands of requests a minute: no per-client rate limit.
    RATE_LIMIT_MAX: "0",
    RATE_LIMIT_REGISTER_MAX: "0",
    // Its load driver is one local client without a token, on as many connections as it needs.
    ALLOW_UNAUTHENTICATED: "true",
    MAX_CONNECTIONS_PER_CLIENT: "0",
    ...opts.overrides,
  };
}

/** A scenario's world: one Postgres cluster, one Redis, the services, a log directory. */
export class Harness {
  readonly services: Service[] = [];
  readonly env: Record<string, string>;
  readonly prefix = `kpf_${randomBytes(4).toString("hex")}`;
  readonly logDir: string;
  private logs: WriteStream[] = [];
  private serial = 0;
  apiPort = 0;
  sql: postgres.Sql;
  admin: Redis | Cluster;

  private constructor(
    readonly pg: PgCluster,
    readonly redis: RedisServer,
    overrides: Record<string, string>,
    /** With `{ cluster: true }`: the private Redis Cluster the services run on (redis is a stand-in). */
    readonly cluster?: TestCluster,
  ) {
    this.logDir = pg.dir;
    this.env = serviceEnv({
      databaseUrl: pg.url(),
      redisUrl: redis.url,
      prefix: this.prefix,
      overrides: {
        ...(cluster ? { REDIS_CLUSTER_NODES: cluster.nodes, QUEUE_SHARDS: "3" } : {}),
        ...overrides,
      },
    });
    this.sql = postgres(pg.url(), {
      max: 3,
      onnotice: () => {},
      connect_timeout: 5,
      idle_timeout: 2,
    });
    const adminOptions = { maxRetriesPerRequest: 1, connectTimeout: 2_000 };
    this.admin = cluster
      ? new Cluster(
          cluster.ports.map((port) => ({ host: "127.0.0.1", port })),
          { redisOptions: adminOptions },
        )
      : new Redis(redis.url, adminOptions);
    this.admin.on("error", () => {});
  }

  /**
   * A private Postgres and a private redis-server, or with `{ cluster: true }` a private
   * three-primary Redis Cluster (scripts/redis-cluster.sh) with QUEUE_SHARDS=3.
   */
  static async create(
    overrides: Record<string, string> = {},
    options: { cluster?: boolean } = {},
  ): Promise<Harness> {
    const pg = await startPostgres();
    if (options.cluster) {
      const cluster = await startTestCluster().catch(async (err) => {
        await pg.destroy();
        throw err;
      });
      return new Harness(pg, clusterStandIn(cluster), overrides, cluster);
    }
    const redis = await startRedis(pg.dir).catch(async (err) => {
      await pg.destroy();
      throw err;
    });
    return new Harness(pg, redis, overrides);
  }

  get apiUrl(): string {
    return `http://127.0.0.1:${this.apiPort}`;
  }

  /** Runs a one-shot CLI command (migrate, reconcile --quiet) and returns its stdout. */
  async cli(args: string[], timeoutMs = 120_000): Promise<string> {
    const { stdout } = await run(process.execPath, [BIN, ...args], {
      cwd: ROOT,
      env: { ...baseEnv(), ...this.env },
      timeout: timeoutMs,
    });
    return stdout;
  }

  private spawnService(kind: "api" | "worker", extra: Record<string, string> = {}): Service {
    const name = `${kind}-${++this.serial}`;
    const log = createWriteStream(join(this.logDir, `${name}.log`));
    this.logs.push(log);
    const child = spawn(process.execPath, [BIN, kind], {
      cwd: ROOT,
      env: { ...baseEnv(), ...this.env, ...extra },
      stdio: ["ignore", "pipe", "pipe"],
    });
    track(child);
    child.stdout?.pipe(log, { end: false });
    child.stderr?.pipe(log, { end: false });
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    let killed = false;
    const service: Service = {
      name,
      child,
      startedAt: Date.now(),
      exited,
      alive: () => child.exitCode === null && child.signalCode === null,
      crashed: () => !killed && !service.alive(),
      async kill(sig = "SIGKILL") {
        if (!service.alive()) return;
        killed = true;
        child.kill(sig);
        await exited;
      },
    };
    this.services.push(service);
    return service;
  }

  /** Starts an API process (on the same port each time) and waits until it answers. */
  async startApi(extra: Record<string, string> = {}): Promise<Service> {
    if (this.apiPort === 0) this.apiPort = await freePort();
    const api = this.spawnService("api", { ...extra, PORT: String(this.apiPort) });
    await waitFor(
      async () => {
        if (!api.alive()) throw new Error(`${api.name} exited; see ${this.logDir}/${api.name}.log`);
        try {
          const res = await fetch(`${this.apiUrl}/healthz`, { signal: AbortSignal.timeout(1_000) });
          return res.ok;
        } catch {
          return false;
        }
      },
      60_000,
      "the API to listen",
    );
    return api;
  }

  startWorker(): Service {
    return this.spawnService("worker");
  }

  api(): Service | undefined {
    return this.services.filter((s) => s.name.startsWith("api") && s.alive()).at(-1);
  }

  liveWorkers(): Service[] {
    return this.services.filter((s) => s.name.startsWith("worker") && s.alive());
  }

  /** Log lines of all services that match `pattern` (for the report). */
  countLogLines(pattern: RegExp): number {
    let n = 0;
    for (const service of this.services) {
      try {
        const text = readFileSync(join(this.logDir, `${service.name}.log`), "utf8");
        for (const line of text.split("\n")) if (pattern.test(line)) n++;
      } catch {
        // no log yet
      }
    }
    return n;
  }

  async shutdown(keep = false): Promise<void> {
    for (const service of this.services) await service.kill("SIGKILL");
    await this.sql.end({ timeout: 1 }).catch(() => {});
    this.admin.disconnect();
    await this.redis.stop().catch(() => {});
    await this.cluster?.stop().catch(() => {});
    for (const log of this.logs) log.end();
    await this.pg.destroy(keep);
    if (keep) console.log(`[faults] kept logs and data in ${this.logDir}`);
  }
}

/** The parent's environment without anything that would point a child at the shared servers. */
function baseEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined) continue;
    if (
      /^(DATABASE_URL|REDIS_URL|TEST_|KP_ROTOR_|API_TOKEN|BOARD_|VITEST|NODE_OPTIONS)/.test(key)
    ) {
      continue;
    }
    env[key] = value;
  }
  return env;
}
