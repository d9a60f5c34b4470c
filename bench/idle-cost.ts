/**
 * What idle workers cost while N identities wait for far-away rotation deadlines.
 *
 *   npx tsx bench/idle-cost.ts [--identities 100000] [--seconds 60] [--workers 1] [--compare]
 *                              [--compare-size 10000] [--settle 12]
 *
 * Per size, on a private redis-server and a private database (both removed afterwards):
 *  1. registers one identity through the service (one real key package), bulk-inserts the other
 *     N-1 identities with a copy of its keys via SQL, rotation deadlines uniform in now+1d..now+30d;
 *  2. runs reconcile() to create the N rotation wake-ups: time, Redis commands and memory;
 *  3. spawns W worker processes (`workers/index.ts`, as deployed), waits until their start-up
 *     reconcile is over and every BullMQ worker is blocked on its marker, then `--settle` seconds
 *     more (Postgres flushes a backend's statistics up to 10 s late);
 *  4. measures S seconds: Redis commands (INFO delta, per command) and Postgres activity of the
 *     private database (pg_stat_database delta, read from the admin database so our own queries
 *     are not in it).
 * --compare runs the whole thing at a smaller size first, to show whether the idle cost grows
 * with N.
 */
import { loadavg } from "node:os";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import { loadConfig } from "../src/config.js";
import { createContext } from "../src/context.js";
import { createLogger } from "../src/logger.js";
import { register } from "../src/services/identities.service.js";
import { reconcile } from "../src/services/reconcile.service.js";
import { randomName } from "../test/helpers/env.js";
import {
  benchEnv,
  adminSql,
  createPrivateDatabase,
  defer,
  infoNumber,
  pgDelta,
  pgStats,
  redisDelta,
  redisInfo,
  round,
  runCleanups,
  runMain,
  seedIdentities,
  sleep,
  spawnWorker,
  startPrivateRedis,
  table,
  vacuumAnalyze,
  type WorkerChild,
  wholeNumber,
} from "./lib.js";

const DAY = 86_400_000;

/** This benchmark's usage (--help), also listed by `kp-rotor bench --help`. */
const USAGE = `kp-rotor bench idle-cost [--identities 100000] [--seconds 60] [--workers 1] [--compare]
      [--compare-size 10000] [--settle 12]
      What idle workers cost (Redis commands/s, Postgres statements) while N identities wait.`;

const { values } = parseArgs({
  options: {
    help: { type: "boolean", default: false },
    identities: { type: "string" },
    seconds: { type: "string" },
    workers: { type: "string" },
    compare: { type: "boolean", default: false },
    "compare-size": { type: "string" },
    settle: { type: "string" },
  },
});
if (values.help) {
  // What `kp-rotor bench --help` prints for this benchmark.
  console.log(`  ${USAGE}`);
  process.exit(0);
}
const N = wholeNumber("identities", values.identities, 100_000);
const SECONDS = wholeNumber("seconds", values.seconds, 60);
const WORKERS = Math.max(1, wholeNumber("workers", values.workers, 1));
const SETTLE_S = wholeNumber("settle", values.settle, 12);
const SMALL = wholeNumber(
  "compare-size",
  values["compare-size"],
  N > 10_000 ? 10_000 : Math.max(1, Math.floor(N / 10)),
);
if (N < 1 || SECONDS < 1) throw new Error("--identities and --seconds must be at least 1");

interface SizeResult {
  identities: number;
  seedMs: number;
  reconcile: {
    ms: number;
    identitiesPerS: number;
    added: number;
    redisCommands: number;
    redisCommandsPerIdentity: number;
    usedMemoryDelta: number;
    usedMemoryPerIdentity: number;
  };
  startup: {
    readyMs: number;
    reconcileLeaseSeenMs: number | null;
    /** Everything from spawning the workers until they were idle (mostly their reconcile). */
    redisCommands: number;
    redisCommandsPerIdentity: number;
    pgXactCommit: number;
    pgTupReturned: number;
    pgTupUpdated: number;
  };
  idle: {
    seconds: number;
    workers: number;
    redisCommands: number;
    redisCommandsPerS: number;
    redisCommandsPerSPerWorker: number;
    evalshaPerS: number;
    byCommand: Record<string, number>;
    usedMemoryDrift: number;
    workerConnections: number;
    pg: {
      xactCommitPerS: number;
      xactRollback: number;
      tupReturnedPerS: number;
      tupFetchedPerS: number;
      raw: Record<string, number>;
    };
  };
}

async function measureSize(n: number): Promise<SizeResult> {
  const log = (msg: string) => console.error(`[${n}] ${msg}`);
  const redisServer = await startPrivateRedis();
  const db = await createPrivateDatabase();
  const admin = adminSql();
  const prefix = randomName("kpb");
  log(`private database ${db.name}, redis-server on port ${redisServer.port}`);
  const env = benchEnv(db, redisServer, prefix, { WATCHDOG_INTERVAL: "10m" });
  const config = loadConfig(env);
  const ctx = await createContext(config, createLogger("silent"), { migrate: true });
  const closeCtx = defer("context", () => ctx.close());
  const measure = new Redis(redisServer.url);
  defer("measuring redis connection", () => measure.quit());

  // 1. Seed: one real registration, N-1 copies.
  const templateId = "tmpl-0";
  await register(ctx.rotor, templateId);
  const now = Date.now();
  const seedMs = await seedIdentities(ctx.database.sql, {
    prefix: "idle-",
    count: n - 1,
    fromMs: now + DAY,
    toMs: now + 30 * DAY,
    templateId,
  });
  await vacuumAnalyze(ctx.config.databaseUrl);
  log(`seeded ${n - 1} identities in ${seedMs} ms`);

  // 2. Reconcile creates the wake-ups.
  const before = await redisInfo(measure);
  const report = await reconcile(ctx.rotor);
  const after = await redisInfo(measure);
  const rec = redisDelta(before, after);
  await closeCtx();
  log(`reconcile: ${report.identities} identities in ${report.durationMs} ms`);

  // 3. Workers, as deployed.
  const spawnInfo = await redisInfo(measure);
  const spawnPg = await pgStats(admin, db.name);
  const children = Array.from({ length: WORKERS }, () => spawnWorker(env));
  const startup = await waitUntilIdle(measure, children, `${prefix}:kp-rotor:lease:reconcile`);
  const idleInfo = await redisInfo(measure);
  // Our own polls: EXISTS + CLIENT LIST each, plus the first INFO.
  const startupRedis = redisDelta(spawnInfo, idleInfo, 1).commands - 2 * startup.polls;
  log(
    `workers idle after ${startup.readyMs} ms (start-up reconcile lease seen for ${startup.reconcileLeaseSeenMs ?? "-"} ms); settling ${SETTLE_S} s`,
  );
  await sleep(SETTLE_S * 1000);

  // 4. The window. (Start-up PG activity is read after the settle time: the statistics of a
  // backend reach pg_stat_database up to 10 s after its transactions.)
  const a = await redisInfo(measure);
  const pa = await pgStats(admin, db.name);
  const startupPg = pgDelta(spawnPg, pa);
  log(`measuring ${SECONDS} s`);
  await Promise.race([sleep(SECONDS * 1000), ...children.map((c) => c.crashed)]);
  const b = await redisInfo(measure);
  const pb = await pgStats(admin, db.name);
  if ((await measure.exists(`${prefix}:kp-rotor:lease:reconcile`)) === 1) {
    log("warning: a reconcile lease appeared during the window");
  }
  const idle = redisDelta(a, b);
  const pg = pgDelta(pa, pb);
  const added = report.repairs.rotation.add + report.repairs.deletion.add;

  await runCleanups(); // children, connections, redis-server, database
  return {
    identities: n,
    seedMs,
    reconcile: {
      ms: report.durationMs,
      identitiesPerS: Math.round((report.identities / report.durationMs) * 1000),
      added,
      redisCommands: rec.commands,
      redisCommandsPerIdentity: round(rec.commands / n, 1),
      usedMemoryDelta: rec.usedMemory,
      usedMemoryPerIdentity: Math.round(rec.usedMemory / n),
    },
    startup: {
      readyMs: startup.readyMs,
      reconcileLeaseSeenMs: startup.reconcileLeaseSeenMs,
      redisCommands: startupRedis,
      redisCommandsPerIdentity: round(startupRedis / n, 2),
      pgXactCommit: startupPg.xact_commit,
      pgTupReturned: startupPg.tup_returned,
      pgTupUpdated: startupPg.tup_updated,
    },
    idle: {
      seconds: SECONDS,
      workers: WORKERS,
      redisCommands: idle.commands,
      redisCommandsPerS: round(idle.commands / SECONDS),
      redisCommandsPerSPerWorker: round(idle.commands / SECONDS / WORKERS),
      evalshaPerS: round((idle.byCommand.evalsha ?? 0) / SECONDS),
      byCommand: idle.byCommand,
      usedMemoryDrift: idle.usedMemory,
      // Everything connected but our measuring connection.
      workerConnections: infoNumber(a, "connected_clients") - 1,
      pg: {
        xactCommitPerS: round(pg.xact_commit / SECONDS),
        xactRollback: pg.xact_rollback,
        tupReturnedPerS: round(pg.tup_returned / SECONDS),
        tupFetchedPerS: round(pg.tup_fetched / SECONDS),
        raw: { ...pg },
      },
    },
  };
}

/**
 * Idle means: every worker process has both BullMQ workers blocked in BZPOPMIN on their marker
 * (CLIENT LIST, last command of the blocking connections), and no start-up reconcile holds the
 * lease, twice in a row 250 ms apart. The lease is taken in the same tick the workers are
 * created, so a worker that is blocked has already asked for it.
 */
async function waitUntilIdle(
  measure: Redis,
  children: WorkerChild[],
  leaseKey: string,
): Promise<{ readyMs: number; reconcileLeaseSeenMs: number | null; polls: number }> {
  const started = Date.now();
  const expectedBlocked = children.length * 2;
  let leaseFirst: number | undefined;
  let leaseLast: number | undefined;
  let quiet = 0;
  let polls = 0;
  for (;;) {
    if (Date.now() - started > 15 * 60_000) throw new Error("workers did not become idle");
    const [lease, list] = await Promise.race([
      Promise.all([measure.exists(leaseKey), measure.client("LIST") as Promise<string>]),
      ...children.map((c) => c.crashed),
    ]);
    polls++;
    const now = Date.now();
    if (lease === 1) {
      leaseFirst ??= now;
      leaseLast = now;
    }
    const blocked = list.split("\n").filter((l) => / cmd=bzpopmin\b/.test(l)).length;
    quiet = lease === 0 && blocked >= expectedBlocked ? quiet + 1 : 0;
    if (quiet >= 2) {
      return {
        polls,
        readyMs: now - started,
        reconcileLeaseSeenMs:
          leaseFirst === undefined || leaseLast === undefined ? null : leaseLast - leaseFirst,
      };
    }
    await sleep(250);
  }
}

function printResults(results: SizeResult[]) {
  const col = (f: (r: SizeResult) => string | number) => results.map(f);
  const rows: (string | number)[][] = [
    ["identities", ...col((r) => r.identities)],
    ["seed (SQL) ms", ...col((r) => r.seedMs)],
    ["reconcile ms", ...col((r) => r.reconcile.ms)],
    ["reconcile identities/s", ...col((r) => r.reconcile.identitiesPerS)],
    ["reconcile Redis cmds/identity", ...col((r) => r.reconcile.redisCommandsPerIdentity)],
    ["Redis used_memory delta MB", ...col((r) => round(r.reconcile.usedMemoryDelta / 2 ** 20, 1))],
    ["Redis bytes/identity", ...col((r) => r.reconcile.usedMemoryPerIdentity)],
    ["workers idle after ms", ...col((r) => r.startup.readyMs)],
    ["  start-up reconcile lease ms", ...col((r) => r.startup.reconcileLeaseSeenMs ?? "-")],
    ["  start-up Redis cmds/identity", ...col((r) => r.startup.redisCommandsPerIdentity)],
    ["  start-up PG xact_commit", ...col((r) => r.startup.pgXactCommit)],
    ["  start-up PG tup_returned", ...col((r) => r.startup.pgTupReturned)],
    ["idle window s", ...col((r) => r.idle.seconds)],
    ["worker processes", ...col((r) => r.idle.workers)],
    ["Redis connections (workers)", ...col((r) => r.idle.workerConnections)],
    ["Redis cmds/s (total)", ...col((r) => r.idle.redisCommandsPerS)],
    ["Redis cmds/s per worker", ...col((r) => r.idle.redisCommandsPerSPerWorker)],
    ["  of which EVALSHA/s", ...col((r) => r.idle.evalshaPerS)],
    ["Redis used_memory drift B", ...col((r) => r.idle.usedMemoryDrift)],
    ["PG xact_commit/s", ...col((r) => r.idle.pg.xactCommitPerS)],
    ["PG xact_rollback", ...col((r) => r.idle.pg.xactRollback)],
    ["PG tup_returned/s", ...col((r) => r.idle.pg.tupReturnedPerS)],
    ["PG tup_fetched/s", ...col((r) => r.idle.pg.tupFetchedPerS)],
  ];
  console.log();
  console.log(
    `load average (1/5/15 min) at the end: ${loadavg()
      .map((x) => round(x, 2))
      .join(" ")}`,
  );
  console.log(table(["idle-cost", ...results.map((_, i) => `run ${i + 1}`)], rows));
  const commands = [...new Set(results.flatMap((r) => Object.keys(r.idle.byCommand)))];
  if (commands.length > 0) {
    console.log();
    console.log(
      table(
        ["idle Redis calls in window", ...results.map((r) => `N=${r.identities}`)],
        commands.map((c) => [c, ...results.map((r) => r.idle.byCommand[c] ?? 0)]),
      ),
    );
  }
  console.log();
  console.log(
    JSON.stringify({
      bench: "idle-cost",
      workers: WORKERS,
      seconds: SECONDS,
      settleSeconds: SETTLE_S,
      results,
      loadavg: loadavg().map((x) => round(x, 2)),
    }),
  );
}

await runMain(async () => {
  const sizes = values.compare && SMALL < N ? [SMALL, N] : [N];
  const results: SizeResult[] = [];
  for (const n of sizes) results.push(await measureSize(n));
  printResults(results);
});
