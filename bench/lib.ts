/**
 * Shared pieces of the benchmarks: a cleanup stack that also runs on SIGINT/SIGTERM, a private
 * redis-server, a private database, bulk seeding of identities without generating key packages,
 * worker child processes, and Redis/Postgres counters.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import postgres from "postgres";
import type { Context } from "../src/context.js";
import { identityIdOf } from "../src/queue/wakeup-queues.js";
import { ALL_HANDLERS } from "../src/runtime/handlers.js";
import { startWorkerRuntime } from "../src/runtime/worker-process.js";
import { pullInMany, register } from "../src/services/identities.service.js";
import { ADMIN_DATABASE_URL, createTestDatabase, freePort } from "../test/helpers/env.js";

export const ROOT = fileURLToPath(new URL("..", import.meta.url));

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// Cleanup: every resource registers its release; they run in reverse order on success, error,
// SIGINT and SIGTERM. Child pids are also SIGKILLed synchronously if the process exits anyway.

type Cleanup = { name: string; fn: () => unknown };
const cleanups: Cleanup[] = [];
const childPids = new Set<number>();

/** Registers a cleanup; returns a function that runs it early (and only once). */
export function defer(name: string, fn: () => unknown): () => Promise<void> {
  const entry: Cleanup = { name, fn };
  cleanups.push(entry);
  return async () => {
    const i = cleanups.indexOf(entry);
    if (i === -1) return;
    cleanups.splice(i, 1);
    await runOne(entry);
  };
}

async function runOne({ name, fn }: Cleanup): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      Promise.resolve().then(fn),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error("timed out after 60 s")), 60_000);
      }),
    ]);
  } catch (err) {
    console.error(`cleanup "${name}" failed:`, err instanceof Error ? err.message : err);
  } finally {
    clearTimeout(timer);
  }
}

let cleaning: Promise<void> | undefined;

/** Runs every registered cleanup, newest first; concurrent callers share one run. */
export function runCleanups(): Promise<void> {
  cleaning ??= (async () => {
    for (let c = cleanups.pop(); c !== undefined; c = cleanups.pop()) await runOne(c);
  })().finally(() => {
    cleaning = undefined;
  });
  return cleaning;
}

/** Runs a benchmark's main function with cleanup on every exit path; exits the process. */
export async function runMain(main: () => Promise<void>): Promise<never> {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    console.error(`\n${signal}: cleaning up…`);
    void runCleanups().finally(() => process.exit(130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  process.on("exit", () => {
    for (const pid of childPids) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  });
  let code = 0;
  try {
    await main();
  } catch (err) {
    // After a signal, the errors of resources closed under our feet are expected.
    if (!stopping) console.error(err);
    code = stopping ? 130 : 1;
  }
  await runCleanups();
  process.exit(code);
}

function track(child: ChildProcess): Promise<number | null> {
  if (child.pid !== undefined) childPids.add(child.pid);
  return new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      if (child.pid !== undefined) childPids.delete(child.pid);
      resolve(code ?? (signal ? -1 : null));
    });
    child.once("error", () => resolve(-1));
  });
}

async function stopChild(child: ChildProcess, exited: Promise<unknown>, graceMs: number) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}

// ---------------------------------------------------------------------------------------------
// Private redis-server and database.

export interface PrivateRedis {
  url: string;
  port: number;
  stop(): Promise<void>;
}

/** A redis-server of our own on a free port (never the shared one on 6379). */
export async function startPrivateRedis(extraArgs: string[] = []): Promise<PrivateRedis> {
  const port = await freePort();
  const child = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].concat(
      extraArgs,
    ),
    { stdio: "ignore" },
  );
  const exited = track(child);
  const stop = defer(`redis-server :${port}`, () => stopChild(child, exited, 5_000));
  const url = `redis://127.0.0.1:${port}`;
  const probe = new Redis(url, {
    lazyConnect: true,
    retryStrategy: () => 50,
    maxRetriesPerRequest: null,
  });
  probe.on("error", () => {});
  let timer: NodeJS.Timeout | undefined;
  try {
    await probe.connect().catch(() => {});
    await Promise.race([
      probe.ping(),
      exited.then(() => Promise.reject(new Error("redis-server exited at start"))),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error("redis-server did not answer")), 10_000);
      }),
    ]);
  } finally {
    clearTimeout(timer);
    probe.disconnect();
  }
  return { url, port, stop };
}

export interface PrivateDatabase {
  url: string;
  name: string;
  drop(): Promise<void>;
}

export async function createPrivateDatabase(): Promise<PrivateDatabase> {
  const db = await createTestDatabase();
  const drop = defer(`drop database ${db.name}`, () => db.drop());
  return { url: db.url, name: db.name, drop };
}

/** A connection to the admin database (not the measured one, so its queries are not counted). */
export function adminSql(): postgres.Sql {
  const sql = postgres(ADMIN_DATABASE_URL, { max: 1, onnotice: () => {} });
  defer("admin connection", () => sql.end({ timeout: 5 }));
  return sql;
}

// ---------------------------------------------------------------------------------------------
// Seeding.

/**
 * The settings every benchmark's service gets: its private Postgres and Redis, its own queue
 * prefix, no logs, a throw-away key-encryption key, no metrics port (so that several workers and
 * test runs do not collide); `extra` adds or overrides. Older versions of the service, which some
 * benchmarks run against, ignore the key and the port.
 */
export function benchEnv(
  database: { url: string },
  redis: { url: string },
  queuePrefix: string,
  extra: Record<string, string> = {},
): Record<string, string> {
  return {
    DATABASE_URL: database.url,
    REDIS_URL: redis.url,
    QUEUE_PREFIX: queuePrefix,
    LOG_LEVEL: "silent",
    KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64"),
    METRICS_PORT: "0",
    ...extra,
  };
}

/**
 * Registers `id` and rotates it once through a worker, so that its copies (seedIdentities) have a
 * current and a superseded key package: two wake-ups each, the worst case.
 */
export async function registerRotatedTemplate(ctx: Context, id: string): Promise<void> {
  const { rotor } = ctx;
  await register(rotor, id);
  const runtime = startWorkerRuntime(ctx, ALL_HANDLERS);
  await runtime.startupReconcile;
  let rotated = false;
  const on = (e: { identityId: string; outcome: string }) => {
    if (e.identityId === id && e.outcome === "rotated") rotated = true;
  };
  rotor.events.on("rotation", on);
  await pullInMany(rotor, [id], 0);
  for (let i = 0; i < 300 && !rotated; i++) await sleep(100);
  rotor.events.off("rotation", on);
  await runtime.close();
  if (!rotated) throw new Error(`the template ${id} did not rotate`);
}

export interface SeedOptions {
  /** Ids are `${prefix}00000001` … (prefix of letters, digits, '-', '.'). */
  prefix: string;
  count: number;
  /** Rotation deadlines are drawn uniformly from [fromMs, toMs). */
  fromMs: number;
  toMs: number;
  /** A registered identity whose signature keys and current key package are copied. */
  templateId: string;
  /** Seed for Postgres' random(), so a run is reproducible. */
  seed?: number;
  /**
   * Copy the template's superseded key packages (the ones with a deletion deadline) only to every
   * k-th identity (g % k = 0); the others get only the current one. Default 1: all of them.
   */
  supersededEvery?: number;
}

/**
 * Inserts `count` live identities, each a copy of the template's row and of all its key packages
 * (two INSERT … SELECT over generate_series, in one transaction; the columns are read from the
 * catalog, so columns added by later migrations are copied too). Nothing is armed in Redis.
 */
export async function seedIdentities(sql: postgres.Sql, o: SeedOptions): Promise<number> {
  const started = Date.now();
  if (o.count <= 0) return 0;
  const columns = async (table: string, skip: string[]) => {
    const rows = await sql<{ name: string }[]>`
      select column_name as name from information_schema.columns
      where table_schema = current_schema() and table_name = ${table}
      order by ordinal_position`;
    return rows.map((r) => r.name).filter((c) => !skip.includes(c));
  };
  const quote = (c: string) => `"${c.replaceAll('"', '""')}"`;
  const identityColumns = await columns("identities", ["id", "rotation_deadline"]);
  const packageColumns = await columns("key_packages", ["id", "identity_id"]);
  await bulkWrite(sql, async (tx) => {
    await tx`select setseed(${o.seed ?? 0.5}::float8)`;
    await tx.unsafe(
      `insert into identities (id, rotation_deadline, ${identityColumns.map(quote).join(", ")})
       select $1 || lpad(g::text, 8, '0'),
              to_timestamp(($2::float8 + random() * $3::float8) / 1000.0),
              ${identityColumns.map((c) => `t.${quote(c)}`).join(", ")}
       from identities t, generate_series(1, $4::int) g
       where t.id = $5`,
      [o.prefix, o.fromMs, o.toMs - o.fromMs, o.count, o.templateId],
    );
    await tx.unsafe(
      `insert into key_packages (identity_id, ${packageColumns.map(quote).join(", ")})
       select i.id, ${packageColumns.map((c) => `k.${quote(c)}`).join(", ")}
       from identities i, key_packages k
       where k.identity_id = $1 and starts_with(i.id, $2)
         and (k.delete_at is null or right(i.id, 8)::int % $3::int = 0)`,
      [o.templateId, o.prefix, o.supersededEvery ?? 1],
    );
  });
  return Date.now() - started;
}

/**
 * Runs `write` as a bulk load (README, "Bulk imports"), in one transaction: no statement timeout
 * (the service's connections cap statements at 15 s), identities locked against writers first
 * (loads one at a time), triggers off (the census triggers run once per row, on the same few
 * rows; foreign-key checks are triggers too, so `write` must keep the rows consistent itself),
 * and the census recounted before commit (drizzle/0008_census_rebuild.sql).
 */
export async function bulkWrite(
  sql: postgres.Sql,
  write: (tx: postgres.TransactionSql) => Promise<unknown>,
): Promise<void> {
  await sql.begin(async (tx) => {
    await tx`set local statement_timeout = 0`;
    await tx`lock table identities in exclusive mode`;
    await tx`set local session_replication_role = replica`;
    await write(tx);
    await tx`select kp_rotor_census_rebuild()`;
  });
}

/**
 * VACUUM ANALYZE both tables, so autovacuum does not wake up inside a measurement window. On a
 * connection of its own, without the service's 15 s statement timeout (a VACUUM at ten million
 * rows takes longer), and not a reserved one of the service's pool: postgres.js' reserve() can
 * stay pending forever when the pool reconnects under it (it did, after a 15-minute bulk write).
 */
export async function vacuumAnalyze(databaseUrl: string): Promise<void> {
  const sql = postgres(databaseUrl, {
    max: 1,
    onnotice: () => {},
    connection: { statement_timeout: 0 },
  });
  try {
    await sql`vacuum analyze identities`;
    await sql`vacuum analyze key_packages`;
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/**
 * The identity a kp-rotor wake-up job is for: from its job id (`id-<identityId>`, jobs carry data
 * `{}`), or from `data.identityId` (the older job format), whichever is there.
 */
export function jobIdentityId(job: {
  id?: string | undefined;
  data?: unknown;
}): string | undefined {
  const fromId = job.id === undefined ? undefined : identityIdOf(job.id);
  if (fromId !== undefined) return fromId;
  const data = job.data as { identityId?: unknown } | undefined;
  return typeof data?.identityId === "string" ? data.identityId : undefined;
}

// ---------------------------------------------------------------------------------------------
// Worker child processes (what is deployed: `workers/index.ts`, one process each).

export interface WorkerChild {
  pid: number;
  /** Rejects if the child exits before stop() (with the tail of its stderr). */
  readonly crashed: Promise<never>;
  alive(): boolean;
  stop(): Promise<void>;
}

export function spawnWorker(env: Record<string, string>): WorkerChild {
  return spawnChild(["workers/index.ts"], "worker", env, 45_000);
}

/**
 * A kp-rotor CLI process as deployed (`node --import tsx src/cli/main.ts <command>`), e.g. the
 * API; its stdout (the JSON log lines) goes to /dev/null, the tail of its stderr is kept for the
 * error if it exits early.
 */
export function spawnService(command: string, env: Record<string, string>): WorkerChild {
  return spawnChild(["src/cli/main.ts", command], command, env, 30_000);
}

/** A child `node --import tsx <args>` with the tail of its stderr kept for an early exit. */
function spawnChild(
  args: string[],
  label: string,
  env: Record<string, string>,
  stopTimeoutMs: number,
): WorkerChild {
  const child = spawn(process.execPath, ["--import", "tsx", ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4_000);
  });
  const exited = track(child);
  let stopping = false;
  const crashed = exited.then((code) => {
    if (stopping) return new Promise<never>(() => {});
    throw new Error(`${label} ${child.pid} exited early (code ${code}):\n${stderr}`);
  });
  crashed.catch(() => {});
  const stop = defer(`${label} ${child.pid}`, async () => {
    stopping = true;
    await stopChild(child, exited, stopTimeoutMs);
  });
  return {
    pid: child.pid ?? -1,
    crashed,
    alive: () => child.exitCode === null && child.signalCode === null,
    stop,
  };
}

// ---------------------------------------------------------------------------------------------
// Counters.

export type Info = Map<string, string>;

/** One INFO call (sections "all": stats, memory, clients, commandstats, keyspace …). */
export async function redisInfo(redis: Redis): Promise<Info> {
  const text = await redis.info("all");
  const info: Info = new Map();
  for (const line of text.split("\r\n")) {
    const i = line.indexOf(":");
    if (i > 0 && !line.startsWith("#")) info.set(line.slice(0, i), line.slice(i + 1));
  }
  return info;
}

export const infoNumber = (info: Info, key: string): number => Number(info.get(key) ?? 0);

/** calls per command from the cmdstat_* lines. */
export function commandCalls(info: Info): Map<string, number> {
  const calls = new Map<string, number>();
  for (const [key, value] of info) {
    if (!key.startsWith("cmdstat_")) continue;
    const m = /calls=(\d+)/.exec(value);
    if (m) calls.set(key.slice("cmdstat_".length), Number(m[1]));
  }
  return calls;
}

/**
 * Commands Redis processed between two INFO snapshots, minus our own `ownCalls` INFO calls (an
 * INFO reply does not count itself, so the first snapshot's INFO is in the delta). Note that
 * Redis counts the commands a Lua script runs (redis.call) in both total_commands_processed and
 * commandstats, besides the EVALSHA itself.
 */
export function redisDelta(a: Info, b: Info, ownInfoCalls = 1) {
  const total =
    infoNumber(b, "total_commands_processed") - infoNumber(a, "total_commands_processed");
  const ca = commandCalls(a);
  const byCommand = new Map<string, number>();
  for (const [cmd, n] of commandCalls(b)) {
    const d = n - (ca.get(cmd) ?? 0) - (cmd === "info" ? ownInfoCalls : 0);
    if (d > 0) byCommand.set(cmd, d);
  }
  return {
    commands: total - ownInfoCalls,
    byCommand: Object.fromEntries([...byCommand].sort((x, y) => y[1] - x[1])),
    usedMemory: infoNumber(b, "used_memory") - infoNumber(a, "used_memory"),
  };
}

export interface PgStats {
  xact_commit: number;
  xact_rollback: number;
  tup_returned: number;
  tup_fetched: number;
  tup_inserted: number;
  tup_updated: number;
  tup_deleted: number;
  blks_hit: number;
  blks_read: number;
}

const PG_FIELDS: (keyof PgStats)[] = [
  "xact_commit",
  "xact_rollback",
  "tup_returned",
  "tup_fetched",
  "tup_inserted",
  "tup_updated",
  "tup_deleted",
  "blks_hit",
  "blks_read",
];

/** pg_stat_database of one database, read from the admin connection (another database). */
export async function pgStats(admin: postgres.Sql, database: string): Promise<PgStats> {
  const [row] = await admin`
    select xact_commit, xact_rollback, tup_returned, tup_fetched, tup_inserted, tup_updated,
           tup_deleted, blks_hit, blks_read
    from pg_stat_database where datname = ${database}`;
  if (row === undefined) throw new Error(`no pg_stat_database row for ${database}`);
  const stats = {} as PgStats;
  for (const f of PG_FIELDS) stats[f] = Number(row[f]);
  return stats;
}

export function pgDelta(a: PgStats, b: PgStats): PgStats {
  const d = {} as PgStats;
  for (const f of PG_FIELDS) d[f] = b[f] - a[f];
  return d;
}

/** Runs `fn` over `items`, at most `limit` at a time. */
export async function mapLimit<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<unknown>,
): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) await fn(items[next++] as T);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
}

// ---------------------------------------------------------------------------------------------
// Formatting.

export interface Summary {
  count: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  min: number;
}

/** A seeded pseudo-random generator (Mulberry32): reproducible values in [0, 1). */
export function mulberry32(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Nearest-rank percentiles. */
export function summarize(values: readonly number[]): Summary {
  const s = [...values].sort((a, b) => a - b);
  const at = (p: number) => s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)] ?? Number.NaN;
  const mean = s.length === 0 ? Number.NaN : s.reduce((x, y) => x + y, 0) / s.length;
  return {
    count: s.length,
    mean: round(mean, 1),
    p50: at(50),
    p90: at(90),
    p99: at(99),
    max: s[s.length - 1] ?? Number.NaN,
    min: s[0] ?? Number.NaN,
  };
}

export const round = (x: number, digits = 2) => {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
};

/** A plain text table, first column left-aligned, the others right-aligned. */
export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, c) => Math.max(...cells.map((r) => (r[c] ?? "").length)));
  const line = (r: string[]) =>
    r.map((v, c) => (c === 0 ? v.padEnd(widths[c] ?? 0) : v.padStart(widths[c] ?? 0))).join("  ");
  return [line(cells[0] ?? []), widths.map((w) => "-".repeat(w)).join("  ")]
    .concat(cells.slice(1).map(line))
    .join("\n");
}

export function wholeNumber(name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--${name}: expected a whole number`);
  return n;
}
