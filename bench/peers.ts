/**
 * kp-rotor side by side with its peers, the same workloads in one run:
 *   kp-rotor (its services + worker runtime), the 5 s poll baseline, raw BullMQ, pg-boss and
 *   graphile-worker; plus redis-benchmark and pgbench as machine reference figures.
 *
 *   npx tsx bench/peers.ts [--quick] [--identities N] [--due M] [--spread S] [--reschedules K]
 *                          [--idle-seconds W] [--settle s] [--pgbench-seconds T]
 *                          [--only kp-rotor,poll,bullmq,pgboss,graphile] [--no-limits]
 *                          [--reschedule-seconds T] [--concurrency C] [--report-only]
 *
 * Writes a table on stdout, bench/results/latest.json and BENCHMARKS.md (regenerated from the
 * JSON). Everything runs on private servers: a redis-server per Redis system on a free port and
 * a database per system on the shared Postgres, all removed at the end (also on Ctrl-C).
 */
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
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
import { renderCharts } from "./peers/charts.js";
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
  type SystemResult,
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
  },
});

// --report-only: regenerate BENCHMARKS.md (and the tables) from bench/results/latest.json.
if (values["report-only"]) {
  const dir = values["results-dir"] ?? join(ROOT, "bench", "results");
  const result = JSON.parse(readFileSync(join(dir, "latest.json"), "utf8")) as RunResult;
  const others = readdirSync(dir)
    .filter((f) => /^peers-.*\.json$/.test(f))
    .map((f) => JSON.parse(readFileSync(join(dir, f), "utf8")) as RunResult)
    .filter((o) => o.params.identities !== result.params.identities);
  const charts = await renderCharts(dir);
  writeFileSync(join(ROOT, "BENCHMARKS.md"), markdown(result, others, charts));
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
if (N < 2 || M < 1 || S < 1) throw new Error("--identities >= 2, --due >= 1, --spread >= 1");

const log = (msg: string) =>
  console.error(`[peers ${new Date().toISOString().slice(11, 19)}] ${msg}`);
const RESCHEDULE_S = wholeNumber(
  "reschedule-seconds",
  values["reschedule-seconds"],
  quick ? 3 : 20,
);
const params: Params = {
  identities: N,
  due: M,
  spreadS: S,
  reschedules: K,
  leadMs: 1_500 + 2 * M,
  rescheduleSeconds: RESCHEDULE_S,
};

const FACTORIES: Record<string, (infra: Infra) => Promise<Peer>> = {
  "kp-rotor": (infra) => kpRotor(infra, CONCURRENCY),
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

await runMain(async () => {
  const startedAt = new Date();
  const admin = adminSql();
  const infra = makeInfra(admin, log);
  const machine = await describeMachine(admin);
  log(
    `N=${N} M=${M} over ${S} s, K=${K}, idle ${IDLE_S} s (+${SETTLE_S} s settle); ${ONLY.join(", ")}`,
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
  for (const key of ONLY) {
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
    res.schedule = await step(res, `schedule ${N}`, () => peer.schedule(params));
    peers.push({ peer, res });
  }
  const live = peers.filter((p) => p.peer !== undefined);

  // Idle: every system's workers at once; each counter belongs to one system.
  for (const { peer, res } of live) await step(res, "start workers", () => peer.startWorkers());
  const measures = new Map<Peer, Redis>();
  for (const { peer } of live) {
    if (peer.redis) {
      const r = new Redis(peer.redis.url);
      defer("idle measuring connection", () => r.quit());
      measures.set(peer, r);
    }
  }
  log(`idle: settling ${SETTLE_S} s, then measuring ${IDLE_S} s`);
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
  live.forEach(({ res }, i) => {
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
    };
    res.idle = idle;
  });
  log("idle window done");

  // Lateness, one system at a time.
  for (const { peer, res } of live) {
    res.lateness = await step(res, `lateness ${M} over ${S} s`, () => peer.lateness(params));
  }
  for (const { peer, res } of live) await step(res, "stop workers", () => peer.stopWorkers());

  // Reschedule, one system at a time, workers stopped.
  for (const { peer, res } of live) {
    res.reschedule = await step(res, `reschedule ${K}`, () => peer.reschedule(params));
  }

  const redisHz = await (async () => {
    const m = [...measures.values()][0];
    if (!m) return "10";
    return ((await m.config("GET", "hz")) as string[])[1] ?? "?";
  })();
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
    },
    machine,
    loadavgEnd: loadavg().map((x) => round(x, 2)),
    limits,
    redisHz,
    systems: peers.map((p) => p.res),
  };

  const dir = values["results-dir"] ?? join(ROOT, "bench", "results");
  mkdirSync(dir, { recursive: true });
  const json = JSON.stringify(result, null, 2);
  writeFileSync(join(dir, "latest.json"), `${json}\n`);
  writeFileSync(join(dir, `peers-${quick ? "quick" : "full"}-N${N}.json`), `${json}\n`);
  // Earlier runs at other sizes (one file per mode and N), for the idle-cost-against-N table.
  const others: RunResult[] = [];
  for (const f of readdirSync(dir)) {
    if (!/^peers-.*\.json$/.test(f) || f === `peers-${quick ? "quick" : "full"}-N${N}.json`)
      continue;
    try {
      others.push(JSON.parse(readFileSync(join(dir, f), "utf8")) as RunResult);
    } catch {
      // not ours
    }
  }
  if (values["results-dir"] === undefined) {
    const charts = await renderCharts(dir).catch((err) => {
      log(`charts failed: ${(err as Error).message}`);
      return [] as string[];
    });
    writeFileSync(join(ROOT, "BENCHMARKS.md"), markdown(result, others, charts));
  }

  console.log();
  console.log(systemsTable(result));
  console.log();
  console.log(goalsTable(result));
  if (limits) {
    console.log();
    console.log(
      `machine: redis-benchmark SET ${limits.redisBenchmark.setPerS}/s ZADD ${limits.redisBenchmark.zaddPerS}/s; pgbench single-row UPDATE -c 16: ${limits.pgbench.tps} tps`,
    );
  }
  console.log(
    `\nwrote ${join(dir, "latest.json")}${values["results-dir"] === undefined ? " and BENCHMARKS.md" : ""} (${result.durationS} s)`,
  );
});
