/**
 * kp-rotor side by side with its peers, the same workloads in one run:
 *   kp-rotor (its services + worker runtime), the 5 s poll baseline, raw BullMQ, pg-boss and
 *   graphile-worker; plus redis-benchmark and pgbench as machine reference figures.
 *
 *   npx tsx bench/peers.ts [--quick] [--identities N] [--due M] [--spread S] [--reschedules K]
 *                          [--idle-seconds W] [--settle s] [--pgbench-seconds T]
 *                          [--only kp-rotor,poll,bullmq,pgboss,graphile] [--no-limits]
 *                          [--reschedule-seconds T] [--concurrency C] [--report-only]
 *                          [--ingest-seconds T] [--ingest-connections C] [--api-log-level L]
 *                          [--scale-n N1,N2 | none] [--scale-systems kp-rotor,poll]
 *                          [--scale-only] [--scale-steady] [--idle-concurrency C1,C2]
 *
 * Idle cost: one idle window per concurrency of --idle-concurrency (default 1 and --concurrency,
 * i.e. 1 and 16), every system's workers started at that concurrency (each system's nearest
 * equivalent: kp-rotor WORKER_CONCURRENCY, BullMQ Worker concurrency, pg-boss batchSize,
 * graphile-worker concurrency; the poll loop has none) and idling at once within the window.
 * The lateness test then runs with every system at --concurrency.
 *
 * The scale steps (--scale-n; full profile: 10,000 and 1,000,000) run after the side-by-side:
 * for each N, fresh private servers, N identities seeded by SQL (generate_series), kp-rotor's
 * reconcile timed from an empty Redis (after FLUSHALL), then the idle window, then everything
 * of that N dropped before the next. --scale-only skips the side-by-side (and writes
 * scale-only.json instead of latest.json, leaving BENCHMARKS.md alone).
 *
 * Writes a table on stdout, bench/results/latest.json, the PNG charts and BENCHMARKS.md
 * (regenerated from the JSON; --report-only does only that, from the committed JSON, and runs
 * no benchmark). Everything runs on private servers: a redis-server per Redis system on a free port and
 * a database per system on the shared Postgres, all removed at the end (also on Ctrl-C).
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import { storedSections } from "./sections.js";
import {
  adminSql,
  defer,
  pgStats,
  redisDelta,
  redisInfo,
  ROOT,
  round,
  runMain,
  sleep,
  wholeNumber,
} from "./lib.js";
import { rawBullmq } from "./peers/bullmq.js";
import { earlierRuns, renderCharts } from "./peers/charts.js";
import { type IdleResult, type Infra, makeInfra, type Params, type Peer } from "./peers/common.js";
import { graphileWorker } from "./peers/graphile.js";
import { kpRotor } from "./peers/kprotor.js";
import { describeMachine, type Limits, machineLimits } from "./peers/machine.js";
import { pgBoss } from "./peers/pgboss.js";
import { pollBaseline } from "./peers/poll.js";
import {
  goalsTable,
  markdown,
  type RunResult,
  type ScaleResult,
  type SystemResult,
  scaleTable,
  systemsTable,
} from "./peers/report.js";

const { values } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    identities: { type: "string" },
    due: { type: "string" },
    spread: { type: "string" },
    reschedules: { type: "string" },
    "reschedule-seconds": { type: "string" },
    "idle-seconds": { type: "string" },
    settle: { type: "string" },
    "pgbench-seconds": { type: "string" },
    concurrency: { type: "string" },
    only: { type: "string" },
    "no-limits": { type: "boolean", default: false },
    "results-dir": { type: "string" },
    "report-only": { type: "boolean", default: false },
    "ingest-seconds": { type: "string" },
    "ingest-connections": { type: "string" },
    "api-log-level": { type: "string" },
    "scale-n": { type: "string" },
    "scale-systems": { type: "string" },
    "scale-only": { type: "boolean", default: false },
    "scale-steady": { type: "boolean", default: false },
    "idle-concurrency": { type: "string" },
  },
});

// --report-only: regenerate the PNG charts and BENCHMARKS.md (and print the tables) from
// bench/results/latest.json and the earlier peers-*.json; runs no benchmark.
if (values["report-only"]) {
  const dir = values["results-dir"] ?? join(ROOT, "bench", "results");
  const result = JSON.parse(readFileSync(join(dir, "latest.json"), "utf8")) as RunResult;
  const others = earlierRuns(dir).filter((o) => o.params.identities !== result.params.identities);
  const charts = await renderCharts(dir, others);
  writeFileSync(join(ROOT, "BENCHMARKS.md"), markdown(result, others, charts) + storedSections());
  console.log(systemsTable(result));
  console.log();
  console.log(goalsTable(result));
  process.exit(0);
}
const quick = values.quick ?? false;
const N = wholeNumber("identities", values.identities, quick ? 10_000 : 100_000);
const M = wholeNumber("due", values.due, quick ? 75 : 600);
const S = wholeNumber("spread", values.spread, quick ? 3 : 20);
const K = wholeNumber("reschedules", values.reschedules, quick ? 5_000 : 50_000);
const IDLE_S = wholeNumber("idle-seconds", values["idle-seconds"], quick ? 30 : 60);
const SETTLE_S = wholeNumber("settle", values.settle, 11);
const PGBENCH_S = wholeNumber("pgbench-seconds", values["pgbench-seconds"], 10);
const CONCURRENCY = wholeNumber("concurrency", values.concurrency, 16);
const ONLY = (values.only ?? "kp-rotor,poll,bullmq,pgboss,graphile")
  .split(",")
  .map((s) => s.trim());
// The idle windows, one per concurrency; the last is --concurrency, at which lateness runs.
const IDLE_CONCURRENCY = [
  ...new Set(
    (values["idle-concurrency"] ?? `1,${CONCURRENCY}`)
      .split(",")
      .map((x) => wholeNumber("idle-concurrency", x.trim(), 1))
      .filter((c) => c !== CONCURRENCY),
  ),
  CONCURRENCY,
];
if (IDLE_CONCURRENCY.some((c) => c < 1)) throw new Error("--idle-concurrency: values >= 1");
if (N < 2 || M < 1 || S < 1) throw new Error("--identities >= 2, --due >= 1, --spread >= 1");

const log = (msg: string) =>
  console.error(`[peers ${new Date().toISOString().slice(11, 19)}] ${msg}`);
const RESCHEDULE_S = wholeNumber(
  "reschedule-seconds",
  values["reschedule-seconds"],
  quick ? 3 : 20,
);
const INGEST_S = wholeNumber("ingest-seconds", values["ingest-seconds"], quick ? 8 : 30);
const INGEST_C = wholeNumber("ingest-connections", values["ingest-connections"], 64);
const API_LOG_LEVEL = values["api-log-level"] ?? "info";
const SCALE_N = (values["scale-n"] ?? (quick ? "none" : "10000,1000000"))
  .split(",")
  .map((x) => x.trim())
  .filter((x) => x !== "" && x !== "none" && x !== "0")
  .map((x) => wholeNumber("scale-n", x.replaceAll("_", ""), 0));
if (SCALE_N.some((n) => n < 2)) throw new Error("--scale-n: sizes >= 2");
const SCALE_SYSTEMS = (values["scale-systems"] ?? "kp-rotor,poll").split(",").map((x) => x.trim());
const SCALE_ONLY = values["scale-only"] ?? false;
const SCALE_STEADY = values["scale-steady"] ?? false;
const params: Params = {
  identities: N,
  due: M,
  spreadS: S,
  reschedules: K,
  leadMs: 1_500 + 2 * M,
  rescheduleSeconds: RESCHEDULE_S,
  ingestConnections: INGEST_C,
  ingestSeconds: INGEST_S,
};

const kpOptions = { concurrency: CONCURRENCY, steadyState: true, apiLogLevel: API_LOG_LEVEL };
const FACTORIES: Record<string, (infra: Infra) => Promise<Peer>> = {
  "kp-rotor": (infra) => kpRotor(infra, kpOptions),
  poll: pollBaseline,
  bullmq: rawBullmq,
  pgboss: pgBoss,
  graphile: graphileWorker,
};

async function step<T>(
  res: SystemResult,
  what: string,
  fn: () => Promise<T>,
): Promise<T | undefined> {
  const started = Date.now();
  try {
    const v = await fn();
    log(`${res.name}: ${what} done in ${Date.now() - started} ms`);
    return v;
  } catch (err) {
    const msg = `${what}: ${err instanceof Error ? err.message : String(err)}`;
    log(`${res.name}: FAILED ${msg}`);
    res.errors.push(msg);
    return undefined;
  }
}

/**
 * The idle window: settle, then Redis INFO and pg_stat_database of each system's own servers
 * before and after; every system's workers run at once (each counter belongs to one system), all
 * started at `concurrency`. Sets each system's `idle` when `concurrency` is --concurrency, and
 * adds the window to its `idleWindows`.
 */
async function idleWindow(
  live: { peer: Peer; res: SystemResult }[],
  concurrency: number,
  admin: ReturnType<typeof adminSql> = adminConn(),
): Promise<void> {
  const measures = new Map<Peer, Redis>();
  const closers: (() => Promise<void>)[] = [];
  for (const { peer } of live) {
    if (peer.redis) {
      const r = new Redis(peer.redis.url);
      closers.push(defer("idle measuring connection", () => r.quit()));
      measures.set(peer, r);
    }
  }
  log(`idle (concurrency ${concurrency}): settling ${SETTLE_S} s, then measuring ${IDLE_S} s`);
  await sleep(SETTLE_S * 1000);
  const snap = async () =>
    Promise.all(
      live.map(async ({ peer }) => ({
        redis: measures.has(peer) ? await redisInfo(measures.get(peer) as Redis) : undefined,
        pg: peer.database ? await pgStats(admin, peer.database.name) : undefined,
        own: peer.ownQueries?.(),
      })),
    );
  const a = await snap();
  const windowStart = performance.now();
  await sleep(IDLE_S * 1000);
  const b = await snap();
  const seconds = (performance.now() - windowStart) / 1000;
  live.forEach(({ peer, res }, i) => {
    const x = a[i];
    const y = b[i];
    if (!x || !y) return;
    const r = x.redis && y.redis ? redisDelta(x.redis, y.redis) : undefined;
    const pgCommits = x.pg && y.pg ? y.pg.xact_commit - x.pg.xact_commit : undefined;
    const idle: IdleResult = {
      seconds: round(seconds, 1),
      pgXactCommitPerS: pgCommits === undefined ? null : round(pgCommits / seconds, 3),
      pgTupReturnedPerS:
        x.pg && y.pg ? round((y.pg.tup_returned - x.pg.tup_returned) / seconds, 1) : null,
      pgQueriesPer10Min: pgCommits === undefined ? null : round((pgCommits / seconds) * 600, 1),
      ownQueriesPerS:
        x.own === undefined || y.own === undefined ? null : round((y.own - x.own) / seconds, 3),
      redisCommandsPerS: r ? round(r.commands / seconds, 2) : null,
      redisByCommand: r ? r.byCommand : null,
      workers: 1,
      concurrency: peer.concurrencyKnob === undefined ? null : concurrency,
      ...(peer.concurrencyKnob === undefined ? {} : { concurrencyKnob: peer.concurrencyKnob }),
    };
    if (concurrency === CONCURRENCY) res.idle = idle;
    res.idleWindows = [...(res.idleWindows ?? []), idle];
  });
  for (const close of closers) await close();
}

/** pg_database_size of each system's own database around its schedule: bytes per identity. */
async function scheduleMeasured(peer: Peer, p: Params) {
  const admin = adminConn();
  const size = async () => {
    if (!peer.database) return undefined;
    const [row] = await admin<{ b: string }[]>`
      select pg_database_size(${peer.database.name}) as b`;
    return Number(row?.b ?? 0);
  };
  const before = await size();
  const result = await peer.schedule(p);
  const after = await size();
  if (before !== undefined && after !== undefined)
    result.dbBytesPerIdentity = Math.round((after - before) / p.identities);
  return result;
}

let adminSingleton: ReturnType<typeof adminSql> | undefined;
const adminConn = () => {
  adminSingleton ??= adminSql();
  return adminSingleton;
};

await runMain(async () => {
  const startedAt = new Date();
  const admin = adminConn();
  const infra = makeInfra(admin, log);
  const machine = await describeMachine(admin);
  log(
    SCALE_ONLY
      ? `scale steps only: N=${SCALE_N.join(", ")}; ${SCALE_SYSTEMS.join(", ")}; idle ${IDLE_S} s (+${SETTLE_S} s settle)`
      : `N=${N} M=${M} over ${S} s, K=${K}, idle ${IDLE_S} s (+${SETTLE_S} s settle); ${ONLY.join(", ")}; then scale steps N=${SCALE_N.join(", ") || "none"}`,
  );

  // Machine limits first, while nothing else runs.
  let limits: Limits | null = null;
  if (!values["no-limits"]) limits = await machineLimits(infra, PGBENCH_S);
  if (limits)
    log(
      `redis-benchmark SET ${limits.redisBenchmark.setPerS}/s ZADD ${limits.redisBenchmark.zaddPerS}/s; pgbench ${limits.pgbench.tps} tps`,
    );

  // Set up and schedule the N pending timers, one system at a time.
  const peers: { peer: Peer; res: SystemResult }[] = [];
  for (const key of SCALE_ONLY ? [] : ONLY) {
    const factory = FACTORIES[key];
    if (!factory) throw new Error(`--only: unknown system ${key}`);
    const res: SystemResult = { name: key, settings: {}, errors: [] };
    const peer = await step(res, "set-up", () => factory(infra));
    if (!peer) {
      peers.push({ peer: undefined as unknown as Peer, res });
      continue;
    }
    res.name = peer.name;
    res.settings = peer.settings;
    res.schedule = await step(res, `schedule ${N}`, () => scheduleMeasured(peer, params));
    peers.push({ peer, res });
  }
  const live = peers.filter((p) => p.peer !== undefined);

  // Idle: one window per concurrency, every system's workers at once (each counter belongs to
  // one system); the workers of the last window (--concurrency) stay up for the lateness test.
  if (live.length > 0) {
    for (const [i, c] of IDLE_CONCURRENCY.entries()) {
      for (const { peer, res } of live)
        await step(res, `start workers (concurrency ${c})`, () => peer.startWorkers(c));
      await idleWindow(live, c);
      log(`idle window at concurrency ${c} done`);
      if (i < IDLE_CONCURRENCY.length - 1)
        for (const { peer, res } of live) await step(res, "stop workers", () => peer.stopWorkers());
    }
  }

  // Lateness, one system at a time.
  for (const { peer, res } of live) {
    res.lateness = await step(res, `lateness ${M} over ${S} s`, () => peer.lateness(params));
  }
  for (const { peer, res } of live) await step(res, "stop workers", () => peer.stopWorkers());

  // Reschedule, one system at a time, workers stopped.
  for (const { peer, res } of live) {
    res.reschedule = await step(res, `reschedule ${K}`, () => peer.reschedule(params));
  }

  // Welcome ingest over HTTP (kp-rotor's API process), workers stopped.
  for (const { peer, res } of live) {
    if (!peer.ingest) continue;
    const ingest = peer.ingest.bind(peer);
    res.ingest = await step(res, `HTTP welcome ingest, ${INGEST_C} connections`, () =>
      ingest(params),
    );
  }

  // Release what the side-by-side holds before the scale steps (kp-rotor's Redis and database).
  for (const { peer, res } of live) await step(res, "close", () => peer.close());

  // Scale steps: idle cost and reconcile at other N, fresh servers for each N.
  const scale: ScaleResult[] = [];
  for (const n of SCALE_N) {
    const started = Date.now();
    log(`scale N=${n}: ${SCALE_SYSTEMS.join(", ")}`);
    const sp: { peer: Peer; res: SystemResult }[] = [];
    const scaleParams = { ...params, identities: n };
    for (const key of SCALE_SYSTEMS) {
      const factory =
        key === "kp-rotor"
          ? (infra: Infra) => kpRotor(infra, { ...kpOptions, steadyState: SCALE_STEADY })
          : FACTORIES[key];
      if (!factory) throw new Error(`--scale-systems: unknown system ${key}`);
      const res: SystemResult = { name: key, settings: {}, errors: [] };
      const peer = await step(res, `N=${n} set-up`, () => factory(infra));
      if (!peer) {
        sp.push({ peer: undefined as unknown as Peer, res });
        continue;
      }
      res.name = peer.name;
      res.settings = peer.settings;
      res.schedule = await step(res, `N=${n} schedule`, () => scheduleMeasured(peer, scaleParams));
      sp.push({ peer, res });
    }
    const scaleLive = sp.filter((p) => p.peer !== undefined);
    for (const { peer, res } of scaleLive) {
      const t = Date.now();
      await step(res, `N=${n} start workers`, () => peer.startWorkers(CONCURRENCY));
      res.startWorkersMs = Date.now() - t;
    }
    await idleWindow(scaleLive, CONCURRENCY);
    for (const { peer, res } of scaleLive) await step(res, `N=${n} stop`, () => peer.stopWorkers());
    for (const { peer, res } of scaleLive) await step(res, `N=${n} close`, () => peer.close());
    scale.push({
      identities: n,
      durationS: Math.round((Date.now() - started) / 1000),
      systems: sp.map((p) => p.res),
    });
    log(`scale N=${n} done in ${Math.round((Date.now() - started) / 1000)} s`);
  }

  // Redis hz and persistence of the private servers (a probe started as they are), and what a
  // Postgres commit means here: what "durable" covers in the schedule figures.
  const { redisHz, redisPersistence } = await (async () => {
    const probe = await infra.newRedis();
    const m = new Redis(probe.url);
    try {
      const get = async (k: string) => ((await m.config("GET", k)) as string[])[1] ?? "?";
      const save = await get("save");
      const aof = await get("appendonly");
      return {
        redisHz: await get("hz"),
        redisPersistence: `save "${save}", appendonly ${aof}${save === "" && aof === "no" ? " (no persistence: Redis writes stay in memory)" : ""}`,
      };
    } finally {
      await m.quit();
      await probe.stop();
    }
  })();
  const [pgDurability] = await admin<{ fsync: string; synchronous_commit: string }[]>`
    select current_setting('fsync') as fsync,
           current_setting('synchronous_commit') as synchronous_commit`;
  const finishedAt = new Date();
  const argv = process.argv.slice(2).join(" ");
  const result: RunResult = {
    bench: "peers",
    startedAt: startedAt.toISOString(),
    finishedAt: finishedAt.toISOString(),
    durationS: Math.round((finishedAt.getTime() - startedAt.getTime()) / 1000),
    command: `npx tsx bench/peers.ts${argv ? ` ${argv}` : ""}`,
    params: {
      quick,
      identities: N,
      due: M,
      spreadSeconds: S,
      reschedules: K,
      rescheduleSeconds: RESCHEDULE_S,
      idleSeconds: IDLE_S,
      settleSeconds: SETTLE_S,
      pgbenchSeconds: PGBENCH_S,
      concurrency: CONCURRENCY,
      ingestConnections: INGEST_C,
      ingestSeconds: INGEST_S,
      scaleOnly: SCALE_ONLY,
    },
    apiLogLevel: API_LOG_LEVEL,
    machine,
    loadavgEnd: loadavg().map((x) => round(x, 2)),
    limits,
    redisHz,
    idleConcurrency: IDLE_CONCURRENCY,
    durability: {
      redis: redisPersistence,
      postgres: pgDurability
        ? `fsync ${pgDurability.fsync}, synchronous_commit ${pgDurability.synchronous_commit}`
        : "?",
    },
    systems: peers.map((p) => p.res),
    scale,
  };

  const dir = values["results-dir"] ?? join(ROOT, "bench", "results");
  mkdirSync(dir, { recursive: true });
  const json = JSON.stringify(result, null, 2);
  // A scale-only run has no side-by-side: it leaves latest.json and BENCHMARKS.md alone.
  const written = join(dir, SCALE_ONLY ? "scale-only.json" : "latest.json");
  writeFileSync(written, `${json}\n`);
  if (!SCALE_ONLY)
    writeFileSync(join(dir, `peers-${quick ? "quick" : "full"}-N${N}.json`), `${json}\n`);
  // Earlier runs at other sizes (one file per mode and N), for the idle cost against N.
  const others = earlierRuns(dir, [`peers-${quick ? "quick" : "full"}-N${N}.json`]);
  if (values["results-dir"] === undefined && !SCALE_ONLY) {
    const charts = await renderCharts(dir, others).catch((err) => {
      log(`charts failed: ${(err as Error).message}`);
      return [] as string[];
    });
    writeFileSync(join(ROOT, "BENCHMARKS.md"), markdown(result, others, charts) + storedSections());
  }

  if (result.systems.length > 0) {
    console.log();
    console.log(systemsTable(result));
  }
  if (scale.length > 0) {
    console.log();
    console.log(scaleTable(result));
  }
  console.log();
  console.log(goalsTable(result));
  if (limits) {
    console.log();
    console.log(
      `machine: redis-benchmark SET ${limits.redisBenchmark.setPerS}/s ZADD ${limits.redisBenchmark.zaddPerS}/s; pgbench single-row UPDATE -c 16: ${limits.pgbench.tps} tps`,
    );
  }
  console.log(
    `\nwrote ${written}${values["results-dir"] === undefined && !SCALE_ONLY ? " and BENCHMARKS.md" : ""} (${result.durationS} s)`,
  );
});
