/**
 * Ten million identities on this machine, on one Redis and on a 3-primary Redis Cluster with
 * QUEUE_SHARDS=3, side by side (issue 14, item 3).
 *
 *   npx tsx bench/scale.ts [--identities 10000000] [--compare 1000000] [--targets single,cluster]
 *                          [--shards 3] [--idle-seconds 60] [--settle 12] [--due 300]
 *                          [--spread 20] [--no-explain] [--no-steady] [--report-only]
 *
 * One private database and, per target, a private redis-server or a private cluster
 * (scripts/redis-cluster.sh on free ports), all removed afterwards. For each size (the compare
 * size, then the full size, seeded on top of it):
 *  1. identities seeded by SQL (bench/lib.ts seedIdentities: copies of one registered and once
 *     rotated template, so every identity has a current and a superseded key package: both
 *     wake-ups, the worst case for Redis), then VACUUM ANALYZE;
 *  2. per target: FLUSHALL (every node), then reconcile() as a worker's heal runs it: time and
 *     used_memory per identity (worst case);
 *  3. the worker runtime starts in this process (startWorkerRuntime(ctx, ALL_HANDLERS), as
 *     workers/index.ts runs it); after --settle seconds, --idle-seconds of idle: Redis commands
 *     (INFO commandstats of every node, own INFO calls removed) and the database's transactions
 *     (pg_stat_database, read from another database);
 *  4. lateness with every identity pending: --due identities registered through the service and
 *     pulled in by the welcome path (pullInMany) to deadlines spread over --spread seconds; the
 *     figure is the real rotation's start minus its deadline (the rotation event's startedAt,
 *     what kp_rotor_rotation_lateness_seconds observes), and fired must equal expected.
 * At the full size only:
 *  5. Postgres: table and index bytes per identity, and the plans (EXPLAIN ANALYZE, BUFFERS, via
 *     auto_explain: bench/scale/explain.ts) of every statement of the hot paths, run through the
 *     service's own functions: register, welcome, a rotation and a deletion by the worker, a
 *     watchdog run, a reconcile page (first and middle), the overdue scans, orphan check;
 *  6. steady state: superseded key packages deleted by SQL for all but one identity in
 *     ROTATION_INTERVAL / DELETION_GRACE (30), and reconcile() removes their deletion wake-ups
 *     (timed); used_memory per identity again.
 * Writes bench/results/scale.json and its section of BENCHMARKS.md (bench/results/scale.md,
 * bench/sections.ts) after every phase; --report-only renders that section again from scale.json.
 * A run that stopped in step 6 keeps its database (after SIGKILL: no clean-up ran) and can be
 * finished by `--steady-on <database>`: step 6 only, on fresh Redis targets, on that database,
 * added to scale.json (which says so).
 */
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { cpus, loadavg, totalmem } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import { loadConfig } from "../src/config.js";
import { type Context, createContext } from "../src/context.js";
import { createLogger } from "../src/logger.js";
import { deregister, pullInMany, register, welcome } from "../src/services/identities.service.js";
import { armOverdue, armOverdueDeletions, reconcile } from "../src/services/reconcile.service.js";
import { runWatchdog } from "../src/services/watchdog.service.js";
import { ALL_HANDLERS } from "../src/runtime/handlers.js";
import { startWorkerRuntime, type WorkerRuntime } from "../src/runtime/worker-process.js";
import { randomName } from "../test/helpers/env.js";
import { startTestCluster } from "../test/helpers/redis-cluster.js";
import {
  adminSql,
  bulkWrite,
  createPrivateDatabase,
  defer,
  infoNumber,
  pgDelta,
  pgStats,
  redisDelta,
  redisInfo,
  registerRotatedTemplate,
  ROOT,
  round,
  runMain,
  seedIdentities,
  sleep,
  startPrivateRedis,
  type Summary,
  summarize,
  table,
  vacuumAnalyze,
  wholeNumber,
} from "./lib.js";
import { ADMIN_DATABASE_URL } from "../test/helpers/env.js";
import {
  disableAutoExplain,
  enableAutoExplain,
  isDriverQuery,
  type LoggedPlan,
  logSize,
  plansSince,
} from "./scale/explain.js";
import { writeSection } from "./sections.js";

const DAY = 86_400_000;

const USAGE = `kp-rotor bench scale [--identities 10000000] [--compare 1000000] [--targets single,cluster]
      [--shards 3] [--idle-seconds 60] [--settle 12] [--due 300] [--spread 20] [--no-explain] [--no-steady]
      [--report-only] [--steady-on <database>]
      Ten million identities: reconcile, Redis bytes, idle cost, lateness, Postgres plans.`;

const { values } = parseArgs({
  options: {
    help: { type: "boolean", default: false },
    identities: { type: "string" },
    compare: { type: "string" },
    targets: { type: "string" },
    shards: { type: "string" },
    "idle-seconds": { type: "string" },
    settle: { type: "string" },
    due: { type: "string" },
    spread: { type: "string" },
    "no-explain": { type: "boolean", default: false },
    "no-steady": { type: "boolean", default: false },
    "report-only": { type: "boolean", default: false },
    "steady-on": { type: "string" },
  },
});
if (values.help) {
  console.log(`  ${USAGE}`);
  process.exit(0);
}
const N = wholeNumber("identities", values.identities?.replaceAll("_", ""), 10_000_000);
const COMPARE = wholeNumber("compare", values.compare?.replaceAll("_", ""), 1_000_000);
const SIZES = COMPARE > 1 && COMPARE < N ? [COMPARE, N] : [N];
const TARGETS = (values.targets ?? "single,cluster").split(",").map((t) => t.trim());
for (const t of TARGETS) {
  if (t !== "single" && t !== "cluster") throw new Error(`--targets: single or cluster, not ${t}`);
}
const SHARDS = wholeNumber("shards", values.shards, 3);
const IDLE_S = wholeNumber("idle-seconds", values["idle-seconds"], 60);
const SETTLE_S = wholeNumber("settle", values.settle, 12);
const DUE = wholeNumber("due", values.due, 300);
const SPREAD_S = wholeNumber("spread", values.spread, 20);

const log = (m: string) =>
  console.log(
    `[${new Date().toISOString().slice(11, 19)}] ${m} (load ${loadavg()[0]?.toFixed(1)})`,
  );

/** One Redis deployment under test, and the service's context on it. */
interface Target {
  name: "single" | "cluster";
  describe: string;
  /** One connection per node (a cluster's primaries), for INFO and FLUSHALL. */
  nodes: Redis[];
  ctx: Context;
  env: Record<string, string>;
}

async function usedMemory(nodes: Redis[]): Promise<number> {
  let total = 0;
  for (const node of nodes) total += infoNumber(await redisInfo(node), "used_memory");
  return total;
}

/** FLUSHALL on every node; a cluster's nodes may miss a heartbeat meanwhile: wait for state ok. */
async function flushAll(t: Target): Promise<void> {
  for (const node of t.nodes) await node.flushall();
  if (t.name !== "cluster") return;
  for (const node of t.nodes) {
    for (let i = 0; !String(await node.call("cluster", "info")).includes("cluster_state:ok"); i++) {
      if (i > 300) throw new Error("the cluster did not come back to cluster_state:ok");
      await sleep(100);
    }
  }
}

async function startTarget(
  name: Target["name"],
  database: { url: string },
  key: string,
): Promise<Target> {
  const base = {
    DATABASE_URL: database.url,
    QUEUE_PREFIX: randomName("kps"),
    LOG_LEVEL: "silent",
    KEY_ENCRYPTION_KEY: key,
    METRICS_PORT: "0",
    ROTATION_INTERVAL: "30d",
    WATCHDOG_INTERVAL: "10m",
  };
  let env: Record<string, string>;
  let nodes: Redis[];
  let describe: string;
  if (name === "single") {
    const server = await startPrivateRedis();
    env = { ...base, REDIS_URL: server.url };
    nodes = [new Redis(server.url)];
    describe = "one redis-server (private port, no persistence), QUEUE_SHARDS=1";
  } else {
    const cluster = await startTestCluster();
    defer("redis cluster", () => cluster.stop());
    env = {
      ...base,
      REDIS_URL: cluster.url,
      REDIS_CLUSTER_NODES: cluster.nodes,
      QUEUE_SHARDS: String(SHARDS),
    };
    nodes = cluster.ports.map((p) => new Redis(p, "127.0.0.1"));
    describe = `Redis Cluster of 3 primaries (scripts/redis-cluster.sh, no replicas, no persistence), QUEUE_SHARDS=${SHARDS}`;
  }
  for (const node of nodes) defer(`${name} measuring connection`, () => node.quit());
  const ctx = await createContext(loadConfig(env), createLogger("silent"), { migrate: true });
  defer(`${name} context`, () => ctx.close());
  return { name, describe, nodes, ctx, env };
}

interface Idle {
  seconds: number;
  redisCommandsPerS: number;
  byCommand: Record<string, number>;
  pgTransactionsPerS: number;
  pgQueriesInWindow: number;
}

/** Redis commands of every node and Postgres transactions over `seconds` of idle. */
async function idleWindow(
  t: Target,
  admin: ReturnType<typeof adminSql>,
  dbName: string,
): Promise<Idle> {
  const before = await Promise.all(t.nodes.map((n) => redisInfo(n)));
  const pg0 = await pgStats(admin, dbName);
  await sleep(IDLE_S * 1000);
  const after = await Promise.all(t.nodes.map((n) => redisInfo(n)));
  const pg1 = await pgStats(admin, dbName);
  // Per node, less our own INFO (lib.ts redisDelta), summed over the nodes.
  let commands = 0;
  const byCommand: Record<string, number> = {};
  after.forEach((b, i) => {
    const delta = redisDelta(before[i] as Map<string, string>, b);
    commands += delta.commands;
    for (const [cmd, n] of Object.entries(delta.byCommand)) {
      byCommand[cmd] = (byCommand[cmd] ?? 0) + n;
    }
  });
  const pg = pgDelta(pg0, pg1);
  return {
    seconds: IDLE_S,
    redisCommandsPerS: round(commands / IDLE_S, 2),
    byCommand: Object.fromEntries(Object.entries(byCommand).sort((a, b) => b[1] - a[1])),
    pgTransactionsPerS: round((pg.xact_commit + pg.xact_rollback) / IDLE_S, 2),
    pgQueriesInWindow: pg.xact_commit + pg.xact_rollback,
  };
}

interface Lateness {
  expected: number;
  fired: number;
  /** Rotation start (before the row lock) minus the deadline it served, ms. */
  lateness: Summary;
  /** The decision (after publishing) minus the deadline, ms. */
  decided: Summary;
}

/** D identities registered, then pulled in by the welcome path to deadlines over S seconds. */
async function lateness(t: Target, label: string): Promise<Lateness> {
  const { rotor } = t.ctx;
  const ids = Array.from({ length: DUE }, (_, i) => `due-${label}-${String(i).padStart(5, "0")}`);
  const started = new Map<string, { startedAt: number; at: number; deadline: number }>();
  const onRotation = (e: {
    identityId: string;
    outcome: string;
    at: number;
    startedAt: number;
    deadline?: number;
  }) => {
    if (
      e.outcome === "rotated" &&
      e.deadline !== undefined &&
      e.identityId.startsWith(`due-${label}-`)
    ) {
      started.set(e.identityId, { startedAt: e.startedAt, at: e.at, deadline: e.deadline });
    }
  };
  rotor.events.on("rotation", onRotation);
  try {
    for (const id of ids) await register(rotor, id);
    // Each welcome says "rotate in d": spread over S seconds after a lead that covers the calls.
    const lead = 2_000 + DUE * 5;
    const t0 = Date.now();
    for (let i = 0; i < ids.length; i++) {
      const at = t0 + lead + Math.round((i / ids.length) * SPREAD_S * 1000);
      await pullInMany(rotor, [ids[i] as string], Math.max(0, at - Date.now()));
    }
    const until = Date.now() + lead + SPREAD_S * 1000 + 30_000;
    while (started.size < ids.length && Date.now() < until) await sleep(200);
  } finally {
    rotor.events.off("rotation", onRotation);
  }
  const done = [...started.values()];
  return {
    expected: ids.length,
    fired: done.length,
    lateness: summarize(done.map((r) => round(r.startedAt - r.deadline, 1))),
    decided: summarize(done.map((r) => round(r.at - r.deadline, 1))),
  };
}

interface SizeRow {
  target: string;
  identities: number;
  reconcile: { ms: number; perS: number; timers: number; load: number };
  worstBytesPerIdentity: number;
  /** Where one rotation wake-up's bytes go (MEMORY USAGE), on the single target. */
  perJob?: { jobHash: number; delayedSetPerJob: number; key: string };
  idle: Idle;
  lateness: Lateness;
}

/** MEMORY USAGE of one rotation job's hash, and the delayed set's bytes per member. */
async function perJobBytes(t: Target, identityId: string): Promise<SizeRow["perJob"]> {
  if (t.name !== "single") return undefined;
  const node = t.nodes[0] as Redis;
  const key = `${t.env.QUEUE_PREFIX}:rotation:id-${identityId}`;
  const delayed = `${t.env.QUEUE_PREFIX}:rotation:delayed`;
  const usage = async (k: string) => Number(await node.call("memory", "usage", k, "samples", "0"));
  const members = await node.zcard(delayed);
  return {
    key,
    jobHash: await usage(key),
    delayedSetPerJob: members > 0 ? Math.round((await usage(delayed)) / members) : 0,
  };
}

/** Postgres bytes per identity: each table (heap, TOAST) and each index. */
async function relationSizes(sql: ReturnType<typeof adminSql>, identities: number) {
  const rows = await sql<{ name: string; kind: string; table: string; bytes: string }[]>`
    select c.relname as name, c.relkind as kind,
           coalesce(t.relname, c.relname) as table, pg_relation_size(c.oid) +
             case when c.relkind = 'r' and c.reltoastrelid <> 0
                  then pg_total_relation_size(c.reltoastrelid) else 0 end as bytes
    from pg_class c
    left join pg_index x on x.indexrelid = c.oid
    left join pg_class t on t.oid = x.indrelid
    join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = current_schema() and c.relkind in ('r', 'i')
    order by bytes desc`;
  return rows
    .filter((r) => Number(r.bytes) > 0)
    .map((r) => ({
      relation: r.name,
      kind: r.kind === "r" ? "table (+TOAST)" : `index on ${r.table}`,
      bytes: Number(r.bytes),
      bytesPerIdentity: round(Number(r.bytes) / identities, 1),
    }));
}

async function main(): Promise<void> {
  const startedAt = new Date();
  const admin = adminSql();
  const database = await createPrivateDatabase();
  const key = randomBytes(32).toString("base64");
  log(`sizes ${SIZES.join(", ")}; targets ${TARGETS.join(", ")}; database ${database.name}`);
  const targets: Target[] = [];
  for (const name of TARGETS)
    targets.push(await startTarget(name as Target["name"], database, key));
  const first = targets[0] as Target;
  const sql = first.ctx.database.sql;

  // The template: registered, then rotated once, so its copies have a superseded package too.
  await registerRotatedTemplate(first.ctx, "tmpl-0");

  const rows: SizeRow[] = [];
  const seeds: { identities: number; ms: number }[] = [];
  const steady: Result["steady"] = [];
  const postgresFigures: Result["postgres"] = { sizes: [], plans: [] };
  const current = async (): Promise<Result> => ({
    command: `npx tsx bench/scale.ts ${process.argv.slice(2).join(" ")}`.trim(),
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    machine: {
      nproc: cpus().length,
      cpuModel: cpus()[0]?.model,
      memoryGiB: round(totalmem() / 2 ** 30, 1),
      node: process.version,
      loadavgEnd: loadavg().map((x) => round(x, 2)),
    },
    targets: targets.map((t) => ({ name: t.name, describe: t.describe })),
    params: {
      sizes: SIZES,
      shards: SHARDS,
      idleSeconds: IDLE_S,
      due: DUE,
      spreadSeconds: SPREAD_S,
    },
    seeds,
    rows,
    steady,
    postgres: postgresFigures,
  });
  /** Written after every phase, so a run that fails later keeps what it measured. */
  const save = async (final: boolean) => {
    const result = { ...(await current()), complete: final };
    await writeFile(RESULT_FILE, `${JSON.stringify(result, null, 2)}\n`);
    writeSection("scale", renderMarkdown(result));
  };
  let seeded = 1;
  for (const [index, size] of SIZES.entries()) {
    const now = Date.now();
    const count = size - seeded;
    log(`seeding ${count} identities by SQL`);
    const seedMs = await seedIdentities(sql, {
      prefix: index === 0 ? "id-" : `i${index}-`,
      count,
      fromMs: now + DAY,
      toMs: now + 30 * DAY,
      templateId: "tmpl-0",
    });
    seeded = size;
    await vacuumAnalyze(database.url);
    seeds.push({ identities: count, ms: seedMs });
    log(`seeded in ${seedMs} ms`);
    for (const t of targets) {
      const { rotor } = t.ctx;
      await flushAll(t);
      const memory0 = await usedMemory(t.nodes);
      log(`${t.name} N=${size}: reconcile after FLUSHALL`);
      const load = loadavg()[0] ?? 0;
      const report = await reconcile(rotor);
      const memory1 = await usedMemory(t.nodes);
      const timers =
        report.repairs.rotation.add +
        report.repairs.deletion.add +
        report.repairs.rotation.reschedule +
        report.repairs.deletion.reschedule;
      log(`${t.name} N=${size}: reconcile of ${report.identities} in ${report.durationMs} ms`);
      const perJob = await perJobBytes(t, "id-00000001");
      let runtime: WorkerRuntime | undefined = startWorkerRuntime(t.ctx, ALL_HANDLERS);
      const close = defer(`${t.name} runtime`, () => runtime?.close());
      await runtime.startupReconcile;
      await sleep(SETTLE_S * 1000);
      log(`${t.name} N=${size}: idle window ${IDLE_S} s`);
      const idle = await idleWindow(t, admin, database.name);
      log(`${t.name} N=${size}: ${idle.redisCommandsPerS} Redis commands/s; lateness`);
      const late = await lateness(t, `${t.name}${index}`);
      log(
        `${t.name} N=${size}: lateness p50 ${late.lateness.p50} p99 ${late.lateness.p99} ms, fired ${late.fired}/${late.expected}`,
      );
      await close();
      runtime = undefined;
      rows.push({
        target: t.name,
        identities: report.identities,
        reconcile: {
          ms: report.durationMs,
          perS: Math.round((report.identities / report.durationMs) * 1000),
          timers,
          load: round(load, 1),
        },
        worstBytesPerIdentity: Math.round((memory1 - memory0) / report.identities),
        perJob,
        idle,
        lateness: late,
      });
      await save(false);
    }
  }

  const full = SIZES[SIZES.length - 1] as number;
  postgresFigures.sizes = await relationSizes(sql, full);
  await save(false);
  if (!values["no-explain"]) {
    postgresFigures.plans = await explainHotPaths(first, admin, database.name);
    await save(false);
  }

  if (!values["no-steady"]) {
    await thinToSteadyState(first);
    await measureSteadyState(targets, database.url, steady, () => save(false));
  }

  await save(true);
  console.log(renderMarkdown(await current()));
}

const RESULT_FILE = join(ROOT, "bench", "results", "scale.json");

/** Superseded key packages deleted for all but one identity in ROTATION_INTERVAL / DELETION_GRACE. */
async function thinToSteadyState(first: Target): Promise<void> {
  const { timing } = first.ctx.rotor;
  const every = Math.round(timing.rotationIntervalMs / timing.deletionGraceMs);
  log(`steady state: superseded packages kept on 1 identity in ${every}`);
  await bulkWrite(
    first.ctx.database.sql,
    (tx) => tx`
      /* bench */ delete from key_packages k
      where k.delete_at is not null and k.identity_id <> 'tmpl-0'
        and right(k.identity_id, 8) ~ '^[0-9]+$' and right(k.identity_id, 8)::int % ${every}::int <> 0`,
  );
}

/** Per target: FLUSHALL, then the reconcile a heal would run; Redis bytes per identity. */
async function measureSteadyState(
  targets: readonly Target[],
  databaseUrl: string,
  steady: Result["steady"],
  save: () => Promise<void>,
): Promise<void> {
  await vacuumAnalyze(databaseUrl);
  const sql = (targets[0] as Target).ctx.database.sql;
  const [kept] = await sql<{ n: string }[]>`
    /* bench */ select count(distinct identity_id) as n from key_packages where delete_at is not null`;
  for (const t of targets) {
    // Memory relative to an empty Redis: FLUSHALL, then the reconcile a heal would run.
    await flushAll(t);
    const memory0 = await usedMemory(t.nodes);
    const report = await reconcile(t.ctx.rotor);
    const memory1 = await usedMemory(t.nodes);
    steady.push({
      target: t.name,
      reconcileMs: report.durationMs,
      bytesPerIdentity: Math.round((memory1 - memory0) / report.identities),
      deletionTimersPerIdentity: round(Number(kept?.n ?? 0) / report.identities, 4),
    });
    log(
      `${t.name} steady: ${steady.at(-1)?.bytesPerIdentity} B/identity, reconcile ${report.durationMs} ms`,
    );
    await save();
  }
}

/**
 * Step 6 alone, on the database of a run that stopped there (thinned first if its thinning did
 * not commit), on fresh Redis targets; added to scale.json.
 */
async function resumeSteadyState(dbName: string): Promise<void> {
  if (!/^[a-z0-9_]+$/.test(dbName)) throw new Error(`--steady-on: a database name, not ${dbName}`);
  const previous = JSON.parse(await readFile(RESULT_FILE, "utf8")) as Result;
  if (previous.complete !== false || previous.steady.length > 0) {
    throw new Error(`${RESULT_FILE} holds a run that did not stop before its steady state`);
  }
  const url = new URL(ADMIN_DATABASE_URL);
  url.pathname = `/${dbName}`;
  const resumedAt = new Date();
  const key = randomBytes(32).toString("base64");
  const targets: Target[] = [];
  for (const { name } of previous.targets) {
    targets.push(await startTarget(name as Target["name"], { url: url.toString() }, key));
  }
  const [counts] = await (targets[0] as Target).ctx.database.sql<{ superseded: string }[]>`
    /* bench */ select count(*) as superseded from key_packages where delete_at is not null`;
  // The thinning's bulk write (one transaction) committed, or nothing of it did: thin it then.
  const [live] = await (targets[0] as Target).ctx.database.sql<{ n: string }[]>`
    /* bench */ select count(*) as n from identities where deregistered_at is null`;
  log(`resuming on ${dbName}: ${counts?.superseded} superseded packages, ${live?.n} identities`);
  if (Number(counts?.superseded) > Number(live?.n) / 2)
    await thinToSteadyState(targets[0] as Target);
  const steady: Result["steady"] = [];
  const save = async (final: boolean) => {
    const result: Result = {
      ...previous,
      finishedAt: new Date().toISOString(),
      complete: final,
      steady,
      resumed: {
        command: `npx tsx bench/scale.ts ${process.argv.slice(2).join(" ")}`,
        startedAt: resumedAt.toISOString(),
        loadavgEnd: loadavg().map((x) => round(x, 2)),
      },
    };
    await writeFile(RESULT_FILE, `${JSON.stringify(result, null, 2)}\n`);
    writeSection("scale", renderMarkdown(result));
  };
  await measureSteadyState(targets, url.toString(), steady, () => save(false));
  await save(true);
}

/** The hot paths once each, through the service's own functions, with auto_explain on. */
async function explainHotPaths(
  target: Target,
  admin: ReturnType<typeof adminSql>,
  dbName: string,
): Promise<LoggedPlan[]> {
  log("explain: auto_explain on for new sessions; hot paths once each");
  await enableAutoExplain(admin, dbName);
  const ctx = await createContext(loadConfig(target.env), createLogger("silent"), {
    migrate: false,
  });
  const { rotor } = ctx;
  const plans: LoggedPlan[] = [];
  const step = async (name: string, fn: () => Promise<unknown>) => {
    const from = await logSize();
    await fn();
    await sleep(300); // the server log is written asynchronously
    const found = await plansSince(from, dbName, name);
    plans.push(...found);
    log(`explain ${name}: ${found.length} statements`);
  };
  let runtime: WorkerRuntime | undefined;
  try {
    await step("register", () => register(rotor, "explain-1"));
    await step("welcome (pull-in of a pending identity)", () => welcome(rotor, "id-00000002"));
    runtime = startWorkerRuntime(ctx, ALL_HANDLERS);
    await runtime.startupReconcile;
    await step("rotation (the worker's wake-up)", async () => {
      let done = false;
      const on = (e: { identityId: string; outcome: string }) => {
        if (e.identityId === "explain-1" && e.outcome === "rotated") done = true;
      };
      rotor.events.on("rotation", on);
      await pullInMany(rotor, ["explain-1"], 0);
      for (let i = 0; i < 300 && !done; i++) await sleep(100);
      rotor.events.off("rotation", on);
    });
    await ctx.database.sql`
      /* bench */ update key_packages set delete_at = now() - interval '1 second'
      where identity_id = 'explain-1' and delete_at is not null`;
    await step("deletion (backstop arm, then the worker's wake-up)", async () => {
      let done = false;
      const on = (e: { identityId: string }) => {
        if (e.identityId === "explain-1") done = true;
      };
      rotor.events.on("deletion", on);
      await armOverdueDeletions(rotor, rotor.clock(), 100);
      for (let i = 0; i < 300 && !done; i++) await sleep(100);
      rotor.events.off("deletion", on);
    });
    await step("watchdog run", () =>
      runWatchdog(rotor, { overdueGraceMs: 180_000, owner: "bench", censusRecheckMs: 0 }),
    );
    await step("reconcile page (first 5,000)", () =>
      rotor.store.transaction(async (tx) => {
        const page = await tx.lockLiveDeadlines(null, 5_000);
        await tx.nextDeleteAtsOf(page.map((p) => p.id));
      }),
    );
    const [middle] = await ctx.database.sql<{ id: string }[]>`
      /* bench */ select id from identities order by id
      offset (select count(*) / 2 from identities) limit 1`;
    await step("reconcile page (5,000 from the middle)", () =>
      rotor.store.transaction(async (tx) => {
        const page = await tx.lockLiveDeadlines(middle?.id ?? null, 5_000);
        await tx.nextDeleteAtsOf(page.map((p) => p.id));
      }),
    );
    await step("overdue scans (watchdog backstop)", async () => {
      await armOverdue(rotor, rotor.clock() - 180_000, 500);
      await armOverdueDeletions(rotor, rotor.clock() - 180_000, 500);
    });
    await step("orphan check (5,000 ids)", () =>
      rotor.store.liveAmong(
        Array.from({ length: 5_000 }, (_, i) => `id-${String(i + 1).padStart(8, "0")}`),
      ),
    );
    await step("count of live identities (reconcile progress)", () => rotor.store.countLive());
    await step("deregister", () => deregister(rotor, "explain-1"));
  } finally {
    await runtime?.close();
    await ctx.close();
    await disableAutoExplain(admin, dbName);
  }
  return plans;
}

type Result = {
  command: string;
  startedAt: string;
  finishedAt?: string;
  /** False while the run is still going, or if it stopped before its last phase. */
  complete?: boolean;
  machine: {
    nproc: number;
    cpuModel: string | undefined;
    memoryGiB: number;
    node: string;
    loadavgEnd: number[];
  };
  targets: { name: string; describe: string }[];
  params: {
    sizes: number[];
    shards: number;
    idleSeconds: number;
    due: number;
    spreadSeconds: number;
  };
  seeds: { identities: number; ms: number }[];
  /** Set when step 6 ran apart, by --steady-on, on the database this run left. */
  resumed?: { command: string; startedAt: string; loadavgEnd: number[] };
  rows: SizeRow[];
  steady: {
    target: string;
    reconcileMs: number;
    bytesPerIdentity: number;
    deletionTimersPerIdentity: number;
  }[];
  postgres: { sizes: Awaited<ReturnType<typeof relationSizes>>; plans: LoggedPlan[] };
};

/** Big tables a hot statement must never read whole. */
const BIG_TABLES = ["identities", "key_packages"];
const seqScans = (p: LoggedPlan) =>
  BIG_TABLES.filter((t) => new RegExp(`^\\s*Seq Scan on ${t} `, "m").test(p.plan));

/** The issue's goals against this run, per target at the full size. */
function goalsTable(r: Result): string {
  const fullN = Math.max(...r.rows.map((x) => x.identities));
  const smallN = Math.min(...r.rows.map((x) => x.identities));
  const names = r.targets.map((t) => t.name);
  const at = (target: string, n: number) =>
    r.rows.find(
      (x) =>
        x.target === target &&
        (n === fullN ? x.identities >= n - 10_000 : x.identities <= n + 10_000),
    );
  const fmt = (x: number) => x.toLocaleString("en-US");
  const rows: (string | number)[][] = [];
  const verdict = (ok: boolean[]) =>
    ok.length === 0 ? "not measured" : ok.every(Boolean) ? "yes" : "no";
  {
    const cells = names.map((t) => at(t, fullN)?.reconcile.ms);
    rows.push([
      `reconcile of N=${fmt(fullN)} after FLUSHALL`,
      "<= 5 min",
      ...cells.map((ms) => (ms === undefined ? "-" : `${round(ms / 60_000, 2)} min`)),
      verdict(cells.flatMap((ms) => (ms === undefined ? [] : [ms <= 300_000]))),
    ]);
  }
  {
    const cells = names.map((t) => r.steady.find((s) => s.target === t)?.bytesPerIdentity);
    rows.push([
      "Redis bytes per identity, steady state",
      "<= 400 B",
      ...cells.map((b) => b ?? "-"),
      verdict(cells.flatMap((b) => (b === undefined ? [] : [b <= 400]))),
    ]);
  }
  {
    const cells = names.map((t) => at(t, fullN)?.worstBytesPerIdentity);
    rows.push([
      "Redis bytes per identity, worst case (both wake-ups)",
      "<= 500 B",
      ...cells.map((b) => b ?? "-"),
      verdict(cells.flatMap((b) => (b === undefined ? [] : [b <= 500]))),
    ]);
  }
  if (smallN < fullN) {
    // Constant: within 10 % or 0.1 commands/s of the smaller size (windows differ by a check or two).
    const cells = names.map((t) => [at(t, smallN)?.idle, at(t, fullN)?.idle] as const);
    rows.push([
      `idle cost at ${fmt(fullN)} against ${fmt(smallN)} (Redis cmds/s; PG xact/s)`,
      "constant",
      ...cells.map(([a, b]) =>
        a && b
          ? `${a.redisCommandsPerS} -> ${b.redisCommandsPerS}; ${a.pgTransactionsPerS} -> ${b.pgTransactionsPerS}`
          : "-",
      ),
      verdict(
        cells.flatMap(([a, b]) =>
          a && b
            ? [
                Math.abs(b.redisCommandsPerS - a.redisCommandsPerS) <=
                  Math.max(0.1, a.redisCommandsPerS * 0.1) &&
                  Math.abs(b.pgTransactionsPerS - a.pgTransactionsPerS) <= 0.05,
              ]
            : [],
        ),
      ),
    ]);
  }
  {
    const cells = names.map((t) => at(t, fullN)?.lateness);
    rows.push([
      `rotation lateness with N=${fmt(fullN)} pending, p99 (fired / expected)`,
      "<= 5 ms, all fired",
      ...cells.map((l) => (l ? `${l.lateness.p99} ms (${l.fired} / ${l.expected})` : "-")),
      verdict(cells.flatMap((l) => (l ? [l.lateness.p99 <= 5 && l.fired === l.expected] : []))),
    ]);
  }
  const plans = r.postgres.plans.filter((p) => !isDriverQuery(p.query));
  if (plans.length > 0) {
    const bad = plans.filter((p) => seqScans(p).length > 0);
    rows.push([
      `Postgres at ${fmt(fullN)}: every hot statement's plan (below)`,
      "no sequential scan of identities or key_packages",
      ...names.map((_, i) =>
        i === 0
          ? `${plans.length} statements, ${bad.length} with one${bad.length ? `: ${[...new Set(bad.map((p) => p.step))].join("; ")}` : ""}`
          : "(same database)",
      ),
      bad.length === 0 ? "yes" : "no",
    ]);
  }
  return table(["goal", "target", ...names, "met"], rows);
}

/**
 * The measurement lines of runs whose results were never written (bench/results/scale-*.log,
 * their progress logs kept by hand): reconcile, idle and lateness lines.
 */
function logOnlyRuns(): { file: string; lines: string[] }[] {
  const dir = join(ROOT, "bench", "results");
  return readdirSync(dir)
    .filter((f) => /^scale-.*\.log$/.test(f))
    .sort()
    .map((f) => ({
      file: `bench/results/${f}`,
      lines: readFileSync(join(dir, f), "utf8")
        .split("\n")
        .filter((l) =>
          /sizes |seeded in|reconcile of|Redis commands\/s|lateness p50|stopped|Error/.test(l),
        ),
    }));
}

/** A fixed-width table, as a code block of the Markdown file. */
const block = (text: string) => `\`\`\`\n${text}\n\`\`\``;

function renderMarkdown(r: Result): string {
  const n = (x: number) => x.toLocaleString("en-US");
  const fullN = Math.max(...r.rows.map((x) => x.identities));
  const out: string[] = ["## Ten million identities: one Redis and a Redis Cluster", ""];
  if (r.complete === false) {
    out.push(
      "**This run stopped before its last phase** (or was still going when this was written): the figures below are what it measured; a goal it did not reach says `not measured`.",
      "",
    );
  }
  out.push(block(goalsTable(r)), "");
  out.push(
    `\`${r.command}\` on ${r.machine.nproc} cores (${r.machine.cpuModel}), ${r.machine.memoryGiB} GiB, Node ${r.machine.node}, ${r.startedAt}. Targets: ${r.targets.map((t) => `**${t.name}**: ${t.describe}`).join("; ")}. Seeded by SQL: ${r.seeds.map((s) => `${n(s.identities)} in ${n(s.ms)} ms`).join(", then ")}. Load average at the end ${r.machine.loadavgEnd.join(" / ")}.`,
    "",
  );
  if (r.resumed !== undefined) {
    out.push(
      `The steady state (step 6) was measured apart, by \`${r.resumed.command}\` from ${r.resumed.startedAt} (load at the end ${r.resumed.loadavgEnd.join(" / ")}), on the database this run left when it stopped there, with fresh Redis targets: the run's VACUUM after thinning waited forever for a connection reserved from the service's pool (postgres.js reserve(), pending across a reconnect); vacuumAnalyze now opens a connection of its own.`,
      "",
    );
  }
  out.push(
    block(
      table(
        [
          "target",
          "N",
          "reconcile after FLUSHALL",
          "identities/s",
          "load (1 min)",
          "Redis B/identity (worst: both wake-ups)",
          "idle Redis cmds/s",
          "idle PG xact/s",
          "lateness p50 / p99 / max (ms)",
          "fired / expected",
        ],
        r.rows.map((x) => [
          x.target,
          n(x.identities),
          `${round(x.reconcile.ms / 1000, 1)} s`,
          n(x.reconcile.perS),
          x.reconcile.load,
          x.worstBytesPerIdentity,
          x.idle.redisCommandsPerS,
          x.idle.pgTransactionsPerS,
          `${x.lateness.lateness.p50} / ${x.lateness.lateness.p99} / ${x.lateness.lateness.max}`,
          `${x.lateness.fired} / ${x.lateness.expected}`,
        ]),
      ),
    ),
    "",
  );
  for (const x of r.rows) {
    if (x.perJob === undefined) continue;
    out.push(
      `Where a wake-up's bytes go (${x.target}, N=${n(x.identities)}): the job hash \`${x.perJob.key}\` takes ${x.perJob.jobHash} B (MEMORY USAGE: key, hash and its fields), its member of the delayed sorted set about ${x.perJob.delayedSetPerJob} B; the rest of the ${x.worstBytesPerIdentity} B per identity is the second wake-up and Redis' keyspace tables.`,
      "",
    );
  }
  if (r.steady.length > 0) {
    out.push(
      block(
        table(
          [
            "target",
            "N",
            "steady state Redis B/identity",
            "deletion wake-ups per identity",
            "reconcile (steady population) after FLUSHALL",
          ],
          r.steady.map((s) => [
            s.target,
            n(fullN),
            s.bytesPerIdentity,
            s.deletionTimersPerIdentity,
            `${round(s.reconcileMs / 1000, 1)} s`,
          ]),
        ),
      ),
      "",
    );
  }
  out.push("Idle Redis commands by command (per window):", "");
  for (const x of r.rows) {
    out.push(
      `- ${x.target}, N=${n(x.identities)}: ${Object.entries(x.idle.byCommand)
        .map(([c, k]) => `${c} ${k}`)
        .join(", ")} in ${x.idle.seconds} s`,
    );
  }
  out.push(
    "",
    `Postgres at N=${n(fullN)} (before the steady-state delete): bytes per identity`,
    "",
  );
  out.push(
    block(
      table(
        ["relation", "kind", "bytes", "bytes per identity"],
        r.postgres.sizes.map((s) => [s.relation, s.kind, n(s.bytes), s.bytesPerIdentity]),
      ),
    ),
    "",
  );
  // Runs before the driver's lookups were filtered at parse time still hold them.
  const plans = r.postgres.plans.filter((p) => !isDriverQuery(p.query));
  if (plans.length > 0) {
    out.push(
      `Hot statements at N=${n(fullN)}, as the service sent them (auto_explain: EXPLAIN ANALYZE, BUFFERS; shared buffers touched by the whole statement; nested statements of the census triggers appear on their own; the worker runs in the background during the steps, so a statement of its own lands in the step during which it ran):`,
      "",
    );
    out.push(
      block(
        table(
          ["step", "statement", "ms", "rows", "shared hit", "read", "dirtied"],
          plans.map((p) => [
            p.step,
            `${p.query.replace(/\s+/g, " ").slice(0, 110)}${p.query.length > 110 ? "…" : ""}`,
            p.durationMs,
            p.rows ?? "",
            p.buffers.hit,
            p.buffers.read,
            p.buffers.dirtied,
          ]),
        ),
      ),
      "",
      "<details><summary>Plans</summary>",
      "",
      ...plans.flatMap((p) => [
        `**${p.step}**: \`${p.query.replace(/\s+/g, " ")}\``,
        "",
        "```",
        p.plan,
        "```",
        "",
      ]),
      "</details>",
      "",
    );
  }
  const logs = logOnlyRuns();
  if (logs.length > 0) {
    out.push(
      "Earlier runs that stopped before writing their results keep their progress log in bench/results; what each measured, as logged:",
      "",
    );
    for (const { file, lines } of logs) out.push(`${file}:`, "", block(lines.join("\n")), "");
  }
  return out.join("\n");
}

await runMain(
  values["report-only"]
    ? async () => {
        const md = renderMarkdown(JSON.parse(await readFile(RESULT_FILE, "utf8")) as Result);
        writeSection("scale", md);
        console.log(md);
      }
    : values["steady-on"] !== undefined
      ? () => resumeSteadyState(values["steady-on"] as string)
      : main,
);
