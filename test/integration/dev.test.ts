import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync } from "node:fs";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { ensureDatabase, hasRedisServer } from "../../src/dev/backends.js";
import { ADMIN_DATABASE_URL, randomName } from "../helpers/env.js";

// `kp-rotor dev` (npm run dev) as a newcomer runs it: a child process from the checkout. The
// embedded path starts from an empty data directory: embedded Postgres (initdb and all) and a
// private redis-server, then the service on them. Every other test uses the machine's Postgres
// and Redis; this one touches neither (it passes --embedded, and no DATABASE_URL or REDIS_URL).

const MAIN = fileURLToPath(new URL("../../src/cli/main.ts", import.meta.url));
const dirs: string[] = [];
const children: ChildProcess[] = [];

afterAll(async () => {
  for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
}, 120_000);

function dev(args: string[], env: Record<string, string>) {
  const child = spawn(process.execPath, ["--import", "tsx", MAIN, "dev", ...args], {
    env: { HOME: process.env.HOME, PATH: process.env.PATH, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let stdout = "";
  let stderr = "";
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
    stdout += chunk;
  });
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<number | null>((resolve) =>
    child.once("exit", (code) => resolve(code)),
  );
  /** The first JSON log line whose msg starts with `prefix`. */
  const logLine = (prefix: string) =>
    new Promise<Record<string, string>>((resolve, reject) => {
      const look = () => {
        for (const line of stdout.split("\n")) {
          if (!line.startsWith("{")) continue;
          const entry = JSON.parse(line);
          if (typeof entry.msg === "string" && entry.msg.startsWith(prefix)) return resolve(entry);
        }
        if (child.exitCode !== null)
          reject(new Error(`exited ${child.exitCode}: ${stderr}${stdout}`));
      };
      child.stdout?.on("data", look);
      child.once("exit", look);
      look();
    });
  return { child, exited, logLine, output: () => ({ stdout, stderr }) };
}

const tempDir = () => {
  const dir = mkdtempSync(join(tmpdir(), "kp-dev-"));
  // As root, embedded Postgres runs as the user postgres, which must be able to enter it.
  chmodSync(dir, 0o755);
  dirs.push(dir);
  return join(dir, ".kp-rotor");
};

describe("kp-rotor dev --embedded", () => {
  it("starts from nothing on embedded Postgres and a private Redis: register, welcome, rotation", async () => {
    const dataDir = tempDir();
    const run = dev(["--embedded"], {
      KP_ROTOR_DEV_DIR: dataDir,
      PORT: "0",
      METRICS_PORT: "0",
      LOG_LEVEL: "info",
    });
    const backends = await run.logLine("dev backends:");
    expect(backends.postgres).toMatch(/^embedded postgres 127\.0\.0\.1:\d+\/kp_rotor_dev /);
    expect(backends.redis).toMatch(/^private redis-server 127\.0\.0\.1:\d+ /);
    expect(existsSync(join(dataDir, "postgres", "PG_VERSION"))).toBe(true);
    expect(existsSync(join(dataDir, "redis"))).toBe(true);

    const urls = await run.logLine("dev mode:");
    const base = (urls.api as string).replace(/\/v1$/, "");
    expect(base).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    for (const url of [urls.board, urls.docs, urls.metrics]) {
      const res = await fetch(url as string);
      expect(res.status, url).toBe(200);
      await res.body?.cancel();
    }

    const registered = await fetch(`${base}/v1/identities/alice`, { method: "PUT" });
    expect(registered.status).toBe(201);
    await registered.body?.cancel();
    const welcomed = await fetch(`${base}/v1/identities/alice/welcome`, { method: "POST" });
    expect(welcomed.status).toBe(202);
    await welcomed.body?.cancel();

    // The welcome pulled the rotation in to 5 s from now; a worker in the process rotates.
    let status: { generation: number; keyPackages: { generation: number; state: string }[] };
    do {
      await new Promise((resolve) => setTimeout(resolve, 500));
      status = await (await fetch(`${base}/v1/identities/alice`)).json();
      if (run.child.exitCode !== null) throw new Error(JSON.stringify(run.output()));
    } while (status.generation < 2);
    expect(status.generation).toBe(2);
    expect(status.keyPackages.map((k) => [k.generation, k.state])).toEqual([
      [1, "superseded"],
      [2, "current"],
    ]);

    run.child.kill("SIGTERM");
    expect(await run.exited).toBe(0);
    // Both private servers were stopped with it.
    expect(existsSync(join(dataDir, "postgres", "postmaster.pid"))).toBe(false);
    expect(existsSync(join(dataDir, "redis", "redis.pid"))).toBe(false);
  }, 240_000);

  it("without a redis-server on PATH, says in one line how to get one and exits 1", async () => {
    const dataDir = tempDir();
    // PATH with this Node and nothing else: no redis-server.
    const run = dev(["--embedded"], { KP_ROTOR_DEV_DIR: dataDir, PATH: dirname(process.execPath) });
    expect(await run.exited).toBe(1);
    const { stdout, stderr } = run.output();
    expect(stdout).toBe("");
    const lines = stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /^kp-rotor dev: no redis-server on PATH.*apt-get install redis-server.*brew install redis.*docker run/,
    );
    // It gave up before starting anything.
    expect(existsSync(dataDir)).toBe(false);
  }, 60_000);

  it("listens on loopback only", async () => {
    const run = dev([], { KP_ROTOR_DEV_DIR: tempDir(), HOST: "0.0.0.0" });
    expect(await run.exited).toBe(1);
    expect(run.output().stderr).toMatch(/HOST="0\.0\.0\.0": dev mode listens on loopback only/);
  }, 60_000);
});

describe("dev backends", () => {
  it("ensureDatabase creates the database once and returns its URL", async () => {
    const name = randomName("kp_dev_test");
    const url = await ensureDatabase(ADMIN_DATABASE_URL, name);
    expect(new URL(url).pathname).toBe(`/${name}`);
    expect(await ensureDatabase(ADMIN_DATABASE_URL, name)).toBe(url);
    const admin = postgres(ADMIN_DATABASE_URL, { max: 1, onnotice: () => {} });
    try {
      const rows = await admin`select 1 from pg_database where datname = ${name}`;
      expect(rows).toHaveLength(1);
    } finally {
      await admin.unsafe(`drop database if exists ${name} with (force)`);
      await admin.end();
    }
  });

  it("finds redis-server only in PATH's directories", () => {
    expect(hasRedisServer(process.env.PATH)).toBe(true);
    expect(hasRedisServer(dirname(process.execPath))).toBe(false);
    expect(hasRedisServer("")).toBe(false);
  });
});
