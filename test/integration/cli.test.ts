import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as identities from "../../src/services/identities.service.js";
import { createTestDatabase, createTestEnv, freePort, type TestEnv } from "../helpers/env.js";

// The real command, `node bin/kp-rotor.mjs`, in child processes, against a test database and
// queue prefix: exit statuses and what lands on stdout and stderr.

const BIN = fileURLToPath(new URL("../../bin/kp-rotor.mjs", import.meta.url));
const COMMANDS = [
  "start",
  "api",
  "worker",
  "migrate",
  "reconcile",
  "reshard",
  "status",
  "rotate",
  "bench",
] as const;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

let t: TestEnv;

beforeAll(async () => {
  t = await createTestEnv();
});

afterAll(async () => {
  await t?.cleanup();
});

/** The service's environment and nothing else from this process but what node needs. */
function cliEnv(overrides: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH, HOME: process.env.HOME, ...t.env, ...overrides };
}

function kpRotor(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [BIN, ...args],
      { env: cliEnv(env), timeout: 60_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : null) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

const lines = (text: string) => text.split("\n").filter((l) => l !== "");

describe("kp-rotor usage", () => {
  it("--help lists every command and exits 0", async () => {
    const run = await kpRotor(["--help"]);
    expect(run.code).toBe(0);
    for (const command of COMMANDS) expect(run.stdout).toContain(`  ${command}`);
    expect(run.stderr).toBe("");
  });

  it("each command has --help, which exits 0 without touching anything", async () => {
    // A configuration that would fail: --help must not read it.
    const runs = await Promise.all(
      COMMANDS.map((command) => kpRotor([command, "--help"], { PORT: "not-a-port" })),
    );
    for (const [i, run] of runs.entries()) {
      const command = COMMANDS[i] as string;
      expect(run.code, `${command} --help: ${run.stderr}`).toBe(0);
      expect(run.stdout).toMatch(new RegExp(`^usage: kp-rotor ${command}\\b`));
      expect(run.stderr).toBe("");
    }
  });

  it("no command prints the help on stderr and exits 2", async () => {
    const run = await kpRotor([]);
    expect(run.code).toBe(2);
    expect(run.stdout).toBe("");
    expect(run.stderr).toContain("usage: kp-rotor <command>");
  });

  it.each([
    [["frobnicate"], 'kp-rotor: unknown command "frobnicate"; see kp-rotor --help'],
    [["--frobnicate"], "kp-rotor: unknown option --frobnicate; see kp-rotor --help"],
    [["status", "--bogus", "x"], "kp-rotor: unknown option '--bogus'; see kp-rotor status --help"],
    [["migrate", "--quiet"], "kp-rotor: unknown option '--quiet'; see kp-rotor migrate --help"],
    [["status"], "kp-rotor: status takes one argument, <identityId>; see kp-rotor status --help"],
    [["migrate", "extra"], "kp-rotor: migrate takes no arguments; see kp-rotor migrate --help"],
    [["bench", "nope"], 'kp-rotor: unknown benchmark "nope"; expected idle-cost or lateness'],
  ])("%j is a usage error: one line on stderr, exit 2", async (args, message) => {
    const run = await kpRotor(args);
    expect(run.code).toBe(2);
    expect(run.stdout).toBe("");
    expect(lines(run.stderr)).toEqual([message]);
  });

  it("a bad configuration exits 1 and lists every problem", async () => {
    const run = await kpRotor(["migrate"], { PORT: "abc", LOG_LEVEL: "loud" });
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("");
    expect(lines(run.stderr)).toEqual([
      "kp-rotor migrate: invalid configuration:",
      '  - PORT="abc": expected a whole number from 0 to 65535',
      '  - LOG_LEVEL="loud": expected one of fatal, error, warn, info, debug, trace, silent',
    ]);
  });

  it("an unreachable database is one line and exit 1", async () => {
    const port = await freePort();
    const run = await kpRotor(["migrate"], {
      DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/postgres`,
    });
    expect(run.code).toBe(1);
    expect(lines(run.stderr)).toEqual([`kp-rotor migrate: connect ECONNREFUSED 127.0.0.1:${port}`]);
  });
});

describe("kp-rotor bench", () => {
  const lateness = fileURLToPath(new URL("../../bench/lateness.ts", import.meta.url));

  it.skipIf(!existsSync(lateness))(
    "runs the named benchmark with the options after its name, and exits with its status",
    async () => {
      // An option the benchmark refuses: it runs, fails at once, and its status comes back.
      const run = await kpRotor(["bench", "lateness", "--no-such-option"]);
      expect(run.code).not.toBe(0);
      expect(run.code).not.toBe(2);
      expect(run.stderr).toContain("--no-such-option");
    },
  );
});

describe("kp-rotor commands", () => {
  it("migrate applies the migrations to an empty database, and again changes nothing", async () => {
    const database = await createTestDatabase();
    try {
      for (let i = 0; i < 2; i++) {
        const run = await kpRotor(["migrate"], { DATABASE_URL: database.url });
        expect(run.code, run.stderr).toBe(0);
        expect(run.stdout.trim()).toBe("migrations applied");
      }
      const sql = postgres(database.url, { max: 1, onnotice: () => {} });
      const tables = await sql<{ name: string }[]>`
        select table_name as name from information_schema.tables where table_schema = 'public'`;
      await sql.end();
      expect(tables.map((r) => r.name)).toEqual(
        expect.arrayContaining(["identities", "key_packages"]),
      );
    } finally {
      await database.drop();
    }
  });

  it("four migrate processes started at once on one empty database take turns and all succeed", async () => {
    const database = await createTestDatabase();
    try {
      const runs = await Promise.all(
        Array.from({ length: 4 }, () => kpRotor(["migrate"], { DATABASE_URL: database.url })),
      );
      for (const run of runs) {
        expect(run.code, run.stderr).toBe(0);
        expect(run.stdout.trim()).toBe("migrations applied");
      }
      const sql = postgres(database.url, { max: 1, onnotice: () => {} });
      const [applied] = await sql<{ n: number }[]>`
        select count(*)::int as n from drizzle.__drizzle_migrations`;
      const sessions = await sql<{ n: number }[]>`
        select count(*)::int as n from pg_stat_activity
        where datname = current_database() and pid <> pg_backend_pid()`;
      await sql.end();
      const journal = await import("../../drizzle/meta/_journal.json", { with: { type: "json" } });
      expect(applied?.n).toBe(journal.default.entries.length);
      // Every lock session ended with its process.
      expect(sessions[0]?.n).toBe(0);
    } finally {
      await database.drop();
    }
  });

  it("status of an unknown identity exits 1 saying so", async () => {
    const run = await kpRotor(["status", "nobody"]);
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("");
    expect(lines(run.stderr)).toEqual(['kp-rotor status: identity "nobody" is not registered']);
  });

  it("rotate pulls a registered identity's rotation in to now and prints when it is due", async () => {
    const registered = await identities.register(t.ctx.rotor, "cli-alice");
    const before = Date.now();
    const run = await kpRotor(["rotate", "cli-alice"]);
    expect(run.code, run.stderr).toBe(0);
    const match = /^rotation of cli-alice due at (\S+)$/.exec(run.stdout.trim());
    expect(match).not.toBeNull();
    const due = Date.parse(match?.[1] ?? "");
    expect(due).toBeGreaterThanOrEqual(before);
    expect(due).toBeLessThan(registered.rotationDeadline);
    const status = await identities.status(t.ctx.rotor, "cli-alice");
    expect(status.nextRotationAt?.getTime()).toBe(due);
  });

  it("status of a registered identity prints its state as JSON", async () => {
    await identities.register(t.ctx.rotor, "cli-bob");
    const run = await kpRotor(["status", "cli-bob"]);
    expect(run.code, run.stderr).toBe(0);
    const status = JSON.parse(run.stdout);
    expect(status).toMatchObject({ identityId: "cli-bob", generation: 1 });
    expect(status.keyPackages).toHaveLength(1);
  });

  it("reconcile --quiet prints only a JSON summary", async () => {
    const run = await kpRotor(["reconcile", "--quiet"]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toBe("");
    const report = JSON.parse(run.stdout);
    expect(report.identities).toBeGreaterThanOrEqual(2);
    expect(report).toHaveProperty("repairs");
    expect(report).toHaveProperty("orphansRemoved", 0);
  });
});

describe("kp-rotor long-running processes", () => {
  /** Starts `kp-rotor <command>`; resolves once `url` answers 200 (what a readiness probe sees). */
  async function startUntilReady(command: string, url: string, env: Record<string, string>) {
    const child = spawn(process.execPath, [BIN, command], {
      env: cliEnv({ HOST: "127.0.0.1", ...env }),
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr?.on("data", (chunk) => {
      stderr += chunk;
    });
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
    const deadline = Date.now() + 30_000;
    for (;;) {
      const ok = await fetch(url).then(
        (r) => r.ok,
        () => false,
      );
      if (ok) return { child, exited, stderr: () => stderr };
      if (child.exitCode !== null || Date.now() > deadline) {
        child.kill("SIGKILL");
        throw new Error(`kp-rotor ${command} never got ready: ${stderr}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }

  async function stop(child: ChildProcess, exited: Promise<number | null>) {
    child.kill("SIGTERM");
    return exited;
  }

  it("worker serves GET /metrics on METRICS_PORT and exits 0 on SIGTERM", async () => {
    const metricsPort = await freePort();
    const { child, exited, stderr } = await startUntilReady(
      "worker",
      `http://127.0.0.1:${metricsPort}/metrics`,
      { METRICS_PORT: String(metricsPort), WORKER_LOCK_DURATION: "2s" },
    );
    const body = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    expect(body).toContain("kp_rotor_queue_jobs");
    expect(await stop(child, exited), stderr()).toBe(0);
  });

  it("api answers /readyz and exits 0 on SIGTERM", async () => {
    const [port, metricsPort] = [await freePort(), await freePort()];
    const { child, exited, stderr } = await startUntilReady(
      "api",
      `http://127.0.0.1:${port}/readyz`,
      {
        PORT: String(port),
        METRICS_PORT: String(metricsPort),
        API_TOKEN: "cli-test-token-0123456789",
      },
    );
    // Unauthenticated, on its own port: what Prometheus scrapes (deploy/k8s, port "metrics").
    const metrics = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
    expect(metrics.status).toBe(200);
    expect(await metrics.text()).toContain("kp_rotor_welcomes_total");
    expect(await stop(child, exited), stderr()).toBe(0);
  });
});
