/**
 * Turns bench/results/latest.json into the stdout tables and BENCHMARKS.md: each figure next to
 * its goal, and for every missed goal by how much and the likely reason.
 */
import type { Summary } from "../lib.js";
import { round, table } from "../lib.js";
import type {
  HttpIngestResult,
  IdleResult,
  LatenessResult,
  RescheduleResult,
  ScheduleResult,
} from "./common.js";
import type { Limits, MachineInfo } from "./machine.js";

export interface SystemResult {
  name: string;
  settings: Record<string, string | number | boolean>;
  schedule?: ScheduleResult;
  /** The idle window at --concurrency (in runs before idleWindows: the only one). */
  idle?: IdleResult;
  /** One idle window per concurrency of the run (RunResult.idleConcurrency), in that order. */
  idleWindows?: IdleResult[];
  lateness?: LatenessResult;
  reschedule?: RescheduleResult;
  ingest?: HttpIngestResult;
  /** Scale steps: how long starting the workers took (kp-rotor: its start-up reconcile). */
  startWorkersMs?: number;
  errors: string[];
}

/** One scale step: the systems of --scale-systems at another N (idle cost, reconcile). */
export interface ScaleResult {
  identities: number;
  durationS: number;
  systems: SystemResult[];
}

export interface RunResult {
  bench: "peers";
  startedAt: string;
  finishedAt: string;
  durationS: number;
  command: string;
  params: Record<string, number | boolean>;
  machine: MachineInfo;
  loadavgEnd: number[];
  limits: Limits | null;
  redisHz: string;
  /** The concurrencies of the idle windows, the last being params.concurrency (absent before). */
  idleConcurrency?: number[];
  /** What a write reaches: Postgres commit settings, Redis persistence of the private servers. */
  durability?: { redis: string; postgres: string };
  apiLogLevel?: string;
  systems: SystemResult[];
  scale?: ScaleResult[];
}

interface GoalRow {
  figure: string;
  goal: string;
  value: string;
  met: boolean | null;
  note: string;
}

const fmt = (x: number | null | undefined, digits = 0) =>
  x === null || x === undefined || Number.isNaN(x) ? "-" : round(x, digits).toLocaleString("en-US");
const pct = (x: number) => `${round(x * 100, 0)} %`;
const times = (x: number) => `x${fmt(x, x >= 10 ? 0 : 1)}`;

/** Every measured (N, systems) point of the run: the side-by-side and the scale steps. */
function points(r: RunResult): { n: number; systems: SystemResult[]; where: string }[] {
  const out: { n: number; systems: SystemResult[]; where: string }[] = [];
  if (r.systems.length > 0)
    out.push({ n: Number(r.params.identities), systems: r.systems, where: "side-by-side" });
  for (const s of r.scale ?? [])
    out.push({ n: s.identities, systems: s.systems, where: "scale step" });
  return out.sort((a, b) => a.n - b.n);
}

const NOT_MEASURED = "not measured in this run";

/** kp-rotor's arm alone (reconcile): armMs, or in runs that did not time the write, ms. */
export const armMsOf = (s: ScheduleResult): number =>
  s.armMs ?? (s.writeMs === undefined ? s.ms : Number.NaN);
/** A schedule figure that includes kp-rotor's durable write (runs before it did not). */
const hasWrite = (s: ScheduleResult | undefined): s is ScheduleResult & { writeMs: number } =>
  s?.writeMs !== undefined;

/** The concurrency of an idle window, in words. */
export function concurrencyLabel(w: IdleResult | undefined): string {
  if (w === undefined) return "-";
  if (w.concurrency === undefined) return "not recorded in this run";
  if (w.concurrency === null) return "n/a (one poll loop)";
  return String(w.concurrency);
}

/** A system's idle window at the run's i-th idle concurrency (undefined in older runs). */
function windowAt(r: RunResult, s: SystemResult, i: number): IdleResult | undefined {
  const c = r.idleConcurrency?.[i];
  const w = s.idleWindows?.[i];
  if (c === undefined || w === undefined) return undefined;
  return w.concurrency === c || w.concurrency === null ? w : undefined;
}

const kpOf = (systems: SystemResult[]) => systems.find((s) => s.name === "kp-rotor");
const pollOf = (systems: SystemResult[]) => systems.find((s) => s.name === "poll baseline");

export function goals(r: RunResult): GoalRow[] {
  const kp = kpOf(r.systems);
  const bq = r.systems.find((s) => s.name === "raw BullMQ");
  const poll = pollOf(r.systems);
  const rows: GoalRow[] = [];
  const N = r.params.identities as number;
  const pts = points(r).filter((p) => kpOf(p.systems)?.idle);
  const hz = Number(r.redisHz);

  // Idle cost, Postgres, at every N measured.
  for (const { n, systems, where } of pts) {
    const idle = kpOf(systems)?.idle;
    const pg10 = idle?.pgQueriesPer10Min ?? null;
    const commits = idle?.pgXactCommitPerS == null ? null : idle.pgXactCommitPerS * idle.seconds;
    const others = (kpOf(systems)?.idleWindows ?? []).filter(
      (w) => w !== idle && w.concurrency !== idle?.concurrency && w.pgQueriesPer10Min != null,
    );
    const atOthers = others
      .map(
        (w) =>
          `at WORKER_CONCURRENCY ${concurrencyLabel(w)}: ${fmt(w.pgQueriesPer10Min, 1)} per 10 min`,
      )
      .join("; ");
    rows.push({
      figure: `idle cost, Postgres (N=${fmt(n)}, ${where}), judged at WORKER_CONCURRENCY ${idle?.concurrency ?? r.params.concurrency}`,
      goal: "<= 1 query per 10 min",
      value:
        pg10 === null
          ? "-"
          : `${fmt(pg10, 1)} per 10 min (${fmt(commits, 0)} transactions of its database in a ${idle?.seconds} s window)`,
      met: pg10 === null ? null : pg10 <= 1,
      note:
        pg10 === null
          ? "not measured"
          : `${pg10 <= 1 ? `met with ${fmt(1 - pg10, 1)} per 10 min to spare` : `missed by ${fmt(pg10 - 1, 1)} per 10 min (${times(pg10)} the goal)`}${atOthers ? ` (same run, ${atOthers})` : ""}.${(idle?.seconds ?? 0) < 600 ? ` The window (${idle?.seconds} s) is shorter than WATCHDOG_INTERVAL (10 min), so the watchdog's one scan per interval (by configuration) is not in it: the figure counts everything else; add 1 per 10 min for the watchdog.` : ""}${pg10 > 0 ? ` pg_stat_database counts every transaction of the database, including statistics flushed late from the set-up (settle ${r.params.settleSeconds} s).` : ""}`,
    });
  }

  // Idle cost, Redis, at every N measured, and its constancy in N.
  const redisAt = pts
    .map(({ n, systems, where }) => {
      const idle = kpOf(systems)?.idle;
      // raw BullMQ at this N (else the side-by-side's), at the same concurrency when the run
      // recorded it, else its one window.
      const bqSys = systems.find((s) => s.name === "raw BullMQ");
      const bqFrom = bqSys ?? bq;
      const bqWin =
        idle?.concurrency === undefined
          ? bqFrom?.idle
          : bqFrom?.idleWindows?.find((w) => w.concurrency === idle.concurrency);
      const otherWindows = (kpOf(systems)?.idleWindows ?? []).filter(
        (w) => w.concurrency !== idle?.concurrency && w.redisCommandsPerS != null,
      );
      return {
        n,
        where,
        conc: idle,
        others: otherWindows
          .map(
            (w) =>
              `at WORKER_CONCURRENCY ${concurrencyLabel(w)}: ${fmt((w.redisCommandsPerS ?? 0) / (w.workers ?? 1), 2)}/s`,
          )
          .join("; "),
        bqConc: bqWin === undefined ? undefined : concurrencyLabel(bqWin),
        perWorker:
          idle?.redisCommandsPerS == null ? null : idle.redisCommandsPerS / (idle.workers ?? 1),
        byCommand: idle?.redisByCommand,
        bq: bqWin?.redisCommandsPerS ?? null,
        bqSameN: bqSys !== undefined && bqWin?.redisCommandsPerS != null,
      };
    })
    .filter((x) => x.perWorker !== null) as {
    n: number;
    where: string;
    conc: IdleResult | undefined;
    others: string;
    bqConc: string | undefined;
    perWorker: number;
    byCommand: Record<string, number> | null | undefined;
    bq: number | null;
    bqSameN: boolean;
  }[];
  const workersSetting = kp?.settings["BullMQ Workers in the process"];
  for (const x of redisAt) {
    const ratio = x.bq ? x.perWorker / x.bq : null;
    rows.push({
      figure: `idle cost, Redis commands/s per worker process (N=${fmt(x.n)}, ${x.where}), judged at WORKER_CONCURRENCY ${x.conc?.concurrency ?? r.params.concurrency}`,
      goal: "<= 1",
      value: `${fmt(x.perWorker, 2)}/s (${
        Object.entries(x.byCommand ?? {})
          .map(([c, k]) => `${c} ${k}`)
          .join(", ") || "no commands"
      } in ${pts.find((p) => p.n === x.n && kpOf(p.systems)?.idle)?.systems && kpOf(pts.find((p) => p.n === x.n)?.systems ?? [])?.idle?.seconds} s)`,
      met: x.perWorker <= 1,
      note: `${x.perWorker <= 1 ? `met with ${fmt(1 - x.perWorker, 2)}/s to spare` : `missed by ${fmt(x.perWorker - 1, 2)}/s (${pct(x.perWorker - 1)} over)`}${x.others ? ` (same run, ${x.others})` : ""}${
        ratio === null
          ? ""
          : `; one raw BullMQ Worker ${x.conc?.concurrency === undefined ? "(defaults, concurrency 1)" : `at concurrency ${x.bqConc}`} idles at ${fmt(x.bq, 2)}/s ${x.bqSameN ? "at the same N" : `(at N=${fmt(N)})`}, kp-rotor is ${times(ratio)} that${
              ratio > 1.6 && ratio < 2.4 && workersSetting !== undefined
                ? `, in line with the ${workersSetting} BullMQ Workers one kp-rotor process runs, each with its own idle loop and stalled-jobs check`
                : ""
            }`
      }. Lua scripts' inner redis.call commands are counted too; a window that is not a multiple of the 30 s stalled-check period may count one check more or less.`,
    });
  }
  if (redisAt.length >= 2) {
    const vals = redisAt.map((x) => x.perWorker);
    const lo = Math.min(...vals);
    const hi = Math.max(...vals);
    const spread = lo > 0 ? hi / lo : hi === 0 ? 1 : Number.POSITIVE_INFINITY;
    const constant = spread <= 1.2 || hi - lo <= 0.1;
    rows.push({
      figure: `idle cost, Redis commands/s constant in N (${redisAt.map((x) => fmt(x.n)).join(" / ")})`,
      goal: "constant in N (here: within 20 % or 0.1/s)",
      value: redisAt.map((x) => `${fmt(x.perWorker, 2)}/s`).join(" / "),
      met: constant,
      note: constant
        ? `highest / lowest = ${fmt(spread, 2)} over a ${fmt(redisAt[redisAt.length - 1]?.n)} / ${fmt(redisAt[0]?.n)} = ${times((redisAt[redisAt.length - 1]?.n ?? 1) / (redisAt[0]?.n ?? 1))} range of N`
        : `highest / lowest = ${fmt(spread, 2)}: the idle command rate changes with N; compare the per-command counts of the rows above`,
    });
  } else {
    rows.push({
      figure: "idle cost, Redis commands/s constant in N",
      goal: "constant in N",
      value: "one N measured in this run",
      met: null,
      note: "run the scale steps (--scale-n, on by default in the full profile) to measure more sizes",
    });
  }

  // Lateness.
  // Judged on the real rotation's start (what an identity waits for), and only when every timer
  // due fired: a p99 over fewer wake-ups than expected would hide the missing ones.
  const pick = kp?.lateness?.extra?.bullmqPickup as Summary | undefined;
  const real = kp?.lateness?.lateness;
  const fired = kp?.lateness ? `${kp.lateness.count}/${kp.lateness.expected}` : "-";
  const allFired = kp?.lateness !== undefined && kp.lateness.count === kp.lateness.expected;
  const bqP99 = bq?.lateness?.lateness.p99;
  const hzPeriod = hz > 0 ? 1000 / hz : Number.NaN;
  rows.push({
    figure: `wake-up lateness p99 (real rotation start), ${fmt(N)} pending${N === 100_000 ? "" : " (the goal is at 100,000)"}, Redis hz ${r.redisHz}, WORKER_CONCURRENCY ${r.params.concurrency}`,
    goal: "p99 <= 5 ms at default Redis hz, every due wake-up fired",
    value: real
      ? `real rotation start p50 ${real.p50} / p99 ${real.p99} ms, fired ${fired}; BullMQ pickup p50 ${pick?.p50} / p99 ${pick?.p99} ms`
      : "-",
    met: real ? real.p99 <= 5 && allFired : null,
    note: !real
      ? "not measured"
      : !allFired
        ? `not met: only ${fired} due wake-ups fired within the run`
        : real.p99 <= 5
          ? `met with ${fmt(5 - real.p99, 1)} ms to spare, all ${fired} fired (the BullMQ pickup alone, comparable with the no-op peers: p99 ${pick?.p99} ms)`
          : `missed by ${fmt(real.p99 - 5, 0)} ms (${times(real.p99 / 5)})${bqP99 === undefined ? "" : `; raw BullMQ's no-op p99 is ${bqP99} ms in the same run`}${
              real.p99 >= 0.5 * hzPeriod && real.p99 <= 1.5 * hzPeriod
                ? `. The p99 is near 1000/hz = ${fmt(hzPeriod)} ms, the period at which Redis (hz ${r.redisHz}) serves the timeouts of blocked clients: consistent with a worker blocked on BullMQ's marker waking for a delayed job only at such a timeout. A higher hz (1000/5 ms = 200 or more) or an in-process timer to the next fire time would address that`
                : ""
            }`,
  });

  // Welcome ingest over HTTP, one welcome per request.
  const h = kp?.ingest;
  const pgTps = r.limits?.pgbench.tps ?? null;
  if (h) {
    const ratio = pgTps ? h.perS / pgTps : null;
    const failures = h.non2xx + h.errors + h.timeouts;
    const rateOk = ratio !== null && ratio >= 0.5;
    const latOk = h.latency.p99 < 25;
    rows.push({
      figure: `welcome ingest, one welcome per HTTP request, ${h.connections} connections (API process)`,
      goal: ">= 50 % of the same run's pgbench single-row UPDATE tps, p99 < 25 ms",
      value: `${fmt(h.perS)} requests/s${ratio === null ? "" : ` = ${pct(ratio)} of ${fmt(pgTps)} tps`}; latency p50 ${h.latency.p50} / p99 ${h.latency.p99} ms; ${fmt(h.changed)} of ${fmt(h.requests)} welcomes moved a deadline${h.changedInDb !== undefined && h.changedInDb !== h.changed ? ` (Postgres: ${fmt(h.changedInDb)}, counting requests still in flight when the run was stopped)` : ""}; ${failures === 0 ? "no errors" : `${h.non2xx} non-2xx, ${h.errors} errors, ${h.timeouts} timeouts`}`,
      met: ratio === null ? null : rateOk && latOk && failures === 0,
      note:
        ratio === null
          ? "pgbench not run (--no-limits): no baseline"
          : `${rateOk ? `rate met (${pct(ratio)} of pgbench)` : `rate missed by ${pct(0.5 - ratio)} points (needs ${fmt((pgTps ?? 0) * 0.5)}/s)`}; ${latOk ? `p99 met (${fmt(25 - h.latency.p99)} ms to spare)` : `p99 missed by ${fmt(h.latency.p99 - 25)} ms`}${failures === 0 ? "" : `; ${failures} requests failed`}. pgbench: ${r.limits?.pgbench.command.includes("-c 16") ? "16 clients" : "see Machine"}, one UPDATE per transaction, no HTTP; here each request is one HTTP round trip through the API process (auth, rate limiter, schema validation, log lines at LOG_LEVEL ${r.apiLogLevel ?? "info"}), a Postgres transaction and, when the deadline moves, a Redis update. The load generator (${h.loadGenerator}) shares the ${r.machine.nproc} cores with the API process, Postgres and Redis${h.apiCpuPercent === undefined ? "" : `; CPU over the run: API process ${h.apiCpuPercent} % of one core${h.apiCpuPercent >= 85 ? " (its one event loop is about saturated: the API process is the bottleneck)" : ""}, load generator ${h.loadGeneratorCpuPercent} %`}.${h.changed < h.requests ? ` ${fmt(h.requests - h.changed)} welcomes were no-ops (an identity already pulled in: earliest deadline wins), which are cheaper.` : ""}`,
    });
  }

  // Welcome ingest, batch.
  const w = kp?.reschedule?.perS;
  const bqResch = bq?.reschedule?.perS;
  rows.push({
    figure: "welcome ingest, batch (pullInMany, 1,000 per call)",
    goal: ">= 50,000 welcomes/s",
    value: w === undefined ? "-" : `${fmt(w)}/s`,
    met: w === undefined ? null : w >= 50_000,
    note:
      w === undefined
        ? "not measured"
        : `${w >= 50_000 ? `met (${times(w / 50_000)} the goal)` : `missed by ${fmt(50_000 - w)}/s (reaches ${pct(w / 50_000)} of the goal)`}. Same run: raw BullMQ getJob + changeDelay ${fmt(bqResch)}/s (64 concurrent, one job each)${r.limits ? `, redis-benchmark ZADD ${fmt(r.limits.redisBenchmark.zaddPerS)}/s (50 clients, unpipelined), pgbench ${fmt(pgTps)} single-row UPDATE tps` : ""}${
            bqResch !== undefined && w < 50_000 && bqResch < 50_000 && w <= bqResch
              ? `; one BullMQ call per welcome tops out at ${fmt(bqResch)}/s here, below the goal, so the goal needs fewer Redis round trips per welcome than one call each`
              : ""
          }`,
  });

  // Scheduling vs raw BullMQ: kp-rotor's durable write + arm against addBulk.
  const ks = kp?.schedule;
  const bs = bq?.schedule;
  if (ks && bs) {
    const tpi = ks.timersPerIdentity ?? 1;
    const goal = ">= 80 % of raw BullMQ addBulk";
    const figure =
      "scheduling N identities (kp-rotor: durable write of the rows + arm by reconcile) vs raw BullMQ addBulk";
    if (!hasWrite(ks)) {
      rows.push({
        figure,
        goal,
        value: `${NOT_MEASURED}: this run timed only kp-rotor's arm (reconcile of identities seeded by SQL beforehand: ${fmt(ks.perS)} identities/s vs ${fmt(bs.perS)} addBulk jobs/s), not its durable write`,
        met: null,
        note: "the write was left out of the figure in runs of this format while the peers' figures include theirs; rerun the benchmark to measure write + arm",
      });
    } else {
      const ratio = ks.perS / bs.perS;
      const armMs = armMsOf(ks);
      const armPerS = (ks.count / armMs) * 1000;
      const dur = r.durability;
      rows.push({
        figure,
        goal,
        value: `${fmt(ks.perS)} identities/s (write ${fmt(ks.writeMs)} ms + arm ${fmt(armMs)} ms = ${fmt(ks.ms)} ms for ${fmt(ks.count)}) vs ${fmt(bs.perS)} jobs/s (${fmt(bs.ms)} ms) = ${pct(ratio)}; the arm alone ${fmt(armPerS)}/s = ${pct(armPerS / bs.perS)}`,
        met: ratio >= 0.8,
        note: `${ratio >= 0.8 ? `met by ${pct(ratio - 0.8)} points` : `missed by ${pct(0.8 - ratio)} points`}; compared per identity, and not the same work: kp-rotor commits ${ks.rowsPerIdentity ?? "?"} Postgres rows per identity (the identity and a current and a superseded key package with its sealed keys${ks.dbBytesPerIdentity === undefined ? "" : `; ${fmt(ks.dbBytesPerIdentity)} B of database per identity`}) and then arms ${tpi} timers per identity in Redis under row locks; addBulk writes one job per identity to Redis only (${fmt(bs.redisBytesPerTimer)} B/job)${dur ? `, and the private redis-servers run with ${dur.redis}, while Postgres commits with ${dur.postgres}` : ""}. register itself generates a key package, so it is not a timer figure.`,
      });
    }
  }
  const resch = kp?.reschedule?.perS;
  if (resch !== undefined && bqResch !== undefined) {
    const ratio = resch / bqResch;
    rows.push({
      figure: "reschedule (welcome pull-in, batch) vs raw BullMQ getJob + changeDelay",
      goal: ">= 80 % of raw BullMQ changeDelay",
      value: `${fmt(resch)}/s vs ${fmt(bqResch)}/s = ${pct(ratio)}`,
      met: ratio >= 0.8,
      note: `${ratio >= 0.8 ? `met by ${pct(ratio - 0.8)} points` : `missed by ${pct(0.8 - ratio)} points`}; kp-rotor's figure includes its Postgres transaction (row locks, UPDATE) per batch of 1,000 on top of the Redis side`,
    });
  }

  // Memory.
  const mem = kp?.schedule?.redisBytesPerIdentity;
  const bqJob = bq?.schedule?.redisBytesPerTimer;
  const streamsPerId =
    kp?.schedule?.eventStreamBytes !== undefined ? kp.schedule.eventStreamBytes / N : undefined;
  rows.push({
    figure: `Redis memory per identity, worst case (both timers: rotation + deletion), N=${fmt(N)}`,
    goal: "<= 500 bytes",
    value:
      mem === undefined
        ? "-"
        : `${fmt(mem)} B (${kp?.schedule?.timersPerIdentity} timers/identity, ${fmt(kp?.schedule?.redisBytesPerTimer)} B/timer); raw BullMQ ${fmt(bqJob)} B/job`,
    met: mem === undefined ? null : mem <= 500,
    note:
      mem === undefined
        ? "not measured"
        : `${mem <= 500 ? `met with ${fmt(500 - mem)} B to spare` : `missed by ${fmt(mem - 500)} B (${times(mem / 500)})`}: used_memory after reconcile into an empty Redis (FLUSHALL) minus before, over N${streamsPerId ? `; includes BullMQ event streams (capped, not per job): ${fmt(streamsPerId)} B/identity at this N, less at larger N` : ""}${
            bqJob === undefined
              ? ""
              : `. kp-rotor ${fmt(kp?.schedule?.redisBytesPerTimer)} B per timer vs raw BullMQ ${fmt(bqJob)} B per delayed job in the same run${
                  mem > 500 &&
                  bqJob * 2 > 500 &&
                  (kp?.schedule?.redisBytesPerTimer ?? 0) >= 0.8 * bqJob
                    ? `: each timer costs about a BullMQ job, and two BullMQ jobs per identity (${fmt(2 * bqJob)} B) cannot fit 500 B`
                    : ""
                }`
          }`,
  });
  const steady = kp?.schedule?.steadyState;
  if (steady) {
    rows.push({
      figure: `Redis memory per identity, steady state (rotation timer for all, deletion timer for ${fmt(steady.deletionTimersPerIdentity * 100, 1)} %), N=${fmt(N)}`,
      goal: "(information: the goal is stated for both timers, the row above)",
      value: `${fmt(steady.redisBytesPerIdentity)} B`,
      met: null,
      note: `${steady.redisBytesPerIdentity <= 500 ? `within 500 B by ${fmt(500 - steady.redisBytesPerIdentity)} B` : `${fmt(steady.redisBytesPerIdentity - 500)} B over 500 B`}; ${mem === undefined ? "" : `${pct(steady.redisBytesPerIdentity / mem)} of the worst case; `}with ROTATION_INTERVAL 30 d and DELETION_GRACE 1 d only identities rotated within the last day keep a superseded key package and so a deletion timer. Measured: the other superseded key packages deleted in SQL, reconcile (${fmt(steady.reconcileMs)} ms) removed their deletion timers, used_memory compared with the empty Redis`,
    });
  }

  // Reconcile of 1M.
  const recon = points(r)
    .map(({ n, systems }) => ({ n, kpS: kpOf(systems) }))
    .filter((x) => x.kpS?.schedule !== undefined)
    .sort((a, b) => b.n - a.n)[0];
  if (recon?.kpS?.schedule) {
    const sc = recon.kpS.schedule;
    const measured = recon.n >= 1_000_000;
    // The arm alone: reconcile, without the SQL write that put the rows there.
    const armMs = armMsOf(sc);
    const armPerS = Math.round((sc.count / armMs) * 1000);
    const est = measured ? armMs / 1000 : 1_000_000 / armPerS;
    rows.push({
      figure: "reconcile of 1M identities after FLUSHALL",
      goal: "<= 60 s",
      value: measured
        ? `${fmt(est, 1)} s for ${fmt(recon.n)} identities (${fmt(armPerS)}/s, ${sc.timersPerIdentity} timers each), measured`
        : `${fmt(est, 0)} s EXTRAPOLATED linearly from ${fmt(recon.n)} identities in ${fmt(armMs)} ms (${fmt(armPerS)}/s); not measured at 1M in this run`,
      met: est <= 60,
      note: `${est <= 60 ? `met with ${fmt(60 - est, 0)} s to spare` : `missed by ${fmt(est - 60, 0)} s (${times(est / 60)})`}; population: both timers for every identity (worst case), Redis emptied with FLUSHALL first; the reconcile alone (the rows were written by SQL before${hasWrite(sc) ? `, in ${fmt(sc.writeMs / 1000, 1)} s` : ""}).${recon.kpS.startWorkersMs !== undefined ? ` Starting the worker runtime at that N afterwards took ${fmt(recon.kpS.startWorkersMs / 1000, 1)} s (until its startupReconcile resolved).` : ""}${measured ? "" : " Run the full profile (scale step N=1,000,000) to measure it."}`,
    });
  }

  // Rotations/s.
  const ratio = kp?.lateness?.extra?.rotationRatio as number | undefined;
  const rps = kp?.lateness?.extra?.rotationsPerS as number | undefined;
  const bare = kp?.lateness?.extra?.bareGenerationsPerS as number | undefined;
  rows.push({
    figure: "rotations/s per worker process vs bare ts-mls generations/s",
    goal: ">= 80 %",
    value:
      ratio === undefined
        ? "-"
        : `${fmt(rps)} rotations/s vs ${fmt(bare)} bare ts-mls generations/s = ${pct(ratio)} (${kp?.lateness?.extra?.rotationsBurst} rotations, concurrency ${r.params.concurrency}; the service's own generator alone: ${fmt(kp?.lateness?.extra?.ownGenerationsPerS as number | undefined)}/s)`,
    met: ratio === undefined ? null : ratio >= 0.8,
    note:
      ratio === undefined || !rps || !bare
        ? "not measured"
        : `${ratio >= 0.8 ? `met by ${pct(ratio - 0.8)} points` : `missed by ${pct(0.8 - ratio)} points`}: a bare generation takes ${fmt(1000 / bare, 2)} ms on this event loop, a rotation ${fmt(1000 / rps, 2)} ms of the process's time (${fmt(1000 / rps - 1000 / bare, 2)} ms beyond the generation: database transactions, sealing, Redis). The burst of ${kp?.lateness?.extra?.rotationsBurst} includes pulling the identities in and the tail of the last rotations; bench/keygen.ts measures the ratio on a longer run.`,
  });

  // The poll baseline at the same N: the ratio kp-rotor beats it by (or loses by).
  const better = (kpV: number, pollV: number, lowerIsBetter: boolean) => {
    if (kpV === 0 && pollV === 0) return "equal";
    const f = lowerIsBetter ? pollV / kpV : kpV / pollV;
    return f >= 1
      ? `kp-rotor better by ${Number.isFinite(f) ? times(f) : "∞"}`
      : `poll baseline better by ${times(1 / f)}`;
  };
  for (const { n, systems } of pts) {
    const k = kpOf(systems)?.idle;
    const pl = pollOf(systems)?.idle;
    if (!k || !pl || k.pgQueriesPer10Min == null || pl.pgQueriesPer10Min == null) continue;
    // kp-rotor's watchdog adds one scan per 10 min by configuration, outside a short window.
    const kpWith = k.pgQueriesPer10Min + (k.seconds < 600 ? 1 : 0);
    rows.push({
      figure: `poll baseline at N=${fmt(n)}: idle Postgres queries per 10 min`,
      goal: "reported (ratio)",
      value: `kp-rotor ${fmt(k.pgQueriesPer10Min, 1)}${k.seconds < 600 ? " (+1 watchdog)" : ""} vs poll ${fmt(pl.pgQueriesPer10Min, 1)}: ${better(kpWith, pl.pgQueriesPer10Min, true)}`,
      met: null,
      note: `same N, same idle window; ${k.seconds < 600 ? "kp-rotor counted with its watchdog's 1 scan per 10 min (by configuration, not in the window)" : "both as measured"}; the poll loop queries every 5 s whatever N`,
    });
  }
  if (poll && kp) {
    const cmp: [string, number | undefined, number | undefined, boolean][] = [
      [
        "lateness p99 ms (kp-rotor: real rotation start)",
        real?.p99,
        poll.lateness?.lateness.p99,
        true,
      ],
      ["reschedule (batch welcome) /s", kp.reschedule?.perS, poll.reschedule?.perS, false],
      [
        hasWrite(kp.schedule)
          ? "schedule N identities /s (kp-rotor: durable write + arm; poll: INSERT)"
          : "schedule N identities /s (kp-rotor: arm only, this run did not time its write)",
        kp.schedule?.perS,
        poll.schedule?.perS,
        false,
      ],
    ];
    for (const [what, a, b, lower] of cmp) {
      if (a === undefined || b === undefined) continue;
      rows.push({
        figure: `poll baseline at N=${fmt(N)}: ${what}`,
        goal: "reported (ratio)",
        value: `kp-rotor ${fmt(a)} vs poll ${fmt(b)}: ${better(a, b, lower)}`,
        met: null,
        note: `same run, same N (${lower ? "lower is better" : "higher is better"})`,
      });
    }
  }
  // A scale-only run has no side-by-side: leave out the rows that only it measures.
  return r.systems.length > 0 ? rows : rows.filter((x) => x.value !== "-");
}

/** A schedule figure: total (kp-rotor: write + arm, or the arm alone in older runs) and rate. */
function scheduleCell(sc: ScheduleResult): string {
  if (hasWrite(sc))
    return `${fmt(sc.ms / 1000, 1)} s = write ${fmt(sc.writeMs / 1000, 1)} + arm ${fmt(armMsOf(sc) / 1000, 1)} s (${fmt(sc.perS)}/s)`;
  return `${fmt(sc.ms / 1000, 1)} s (${fmt(sc.perS)}/s)`;
}

export function scaleTable(r: RunResult): string {
  const rows: (string | number)[][] = [];
  for (const s of r.scale ?? []) {
    for (const x of s.systems) {
      rows.push([
        fmt(s.identities),
        x.name,
        x.schedule ? scheduleCell(x.schedule) : "-",
        x.startWorkersMs === undefined ? "-" : `${fmt(x.startWorkersMs / 1000, 1)} s`,
        concurrencyLabel(x.idle),
        x.idle?.redisCommandsPerS ?? "-",
        x.idle?.pgXactCommitPerS ?? "-",
        x.idle?.pgQueriesPer10Min == null ? "-" : fmt(x.idle.pgQueriesPer10Min, 1),
        x.schedule?.redisBytesPerIdentity === undefined
          ? "-"
          : fmt(x.schedule.redisBytesPerIdentity),
        x.schedule?.steadyState ? fmt(x.schedule.steadyState.redisBytesPerIdentity) : "-",
        x.errors.length ? x.errors.join("; ") : "-",
      ]);
    }
  }
  return table(
    [
      "N (scale step)",
      "system",
      (r.scale ?? []).some((s) => s.systems.some((x) => hasWrite(x.schedule)))
        ? "schedule (kp-rotor: SQL write + reconcile after FLUSHALL)"
        : "schedule (kp-rotor: reconcile after FLUSHALL; write not measured in this run)",
      "start workers",
      "idle concurrency",
      "idle Redis cmds/s",
      "idle PG xact/s",
      "PG queries/10 min",
      "Redis B/identity worst",
      "steady",
      "errors",
    ],
    rows,
  );
}

export function systemsTable(r: RunResult): string {
  const s = r.systems;
  const row = (label: string, f: (x: SystemResult) => string | number | undefined) => [
    label,
    ...s.map((x) => {
      const v = f(x);
      return v === undefined ? "-" : v;
    }),
  ];
  const lat = (x: SystemResult, k: "p50" | "p99" | "max") =>
    x.lateness ? `${x.lateness.lateness[k]}` : undefined;
  // Idle: one block of rows per concurrency of the run; older runs had one window, each system
  // at the concurrency of its settings.
  const idleBlock = (label: string, w: (x: SystemResult) => IdleResult | undefined) => [
    row(`${label}: concurrency`, (x) => (w(x) ? concurrencyLabel(w(x)) : undefined)),
    row(`${label}: Postgres xact_commit/s`, (x) => w(x)?.pgXactCommitPerS ?? undefined),
    row(`${label}: Postgres queries per 10 min`, (x) => {
      const v = w(x)?.pgQueriesPer10Min;
      return v === null || v === undefined ? undefined : fmt(v, 1);
    }),
    row(`${label}: poll queries counted/s`, (x) => w(x)?.ownQueriesPerS ?? undefined),
    row(`${label}: Redis commands/s`, (x) => w(x)?.redisCommandsPerS ?? undefined),
  ];
  const concs = r.idleConcurrency ?? [];
  const idleRows =
    concs.length === 0
      ? [
          ...idleBlock("idle (each at its settings' concurrency)", (x) => x.idle),
          row("idle at one concurrency for all", (x) => (x.idle ? NOT_MEASURED : undefined)),
        ]
      : concs.flatMap((c, i) => idleBlock(`idle @ concurrency ${c}`, (x) => windowAt(r, x, i)));
  return table(
    ["figure", ...s.map((x) => x.name)],
    [
      ...idleRows,
      row("lateness p50 ms", (x) => lat(x, "p50")),
      row("lateness p99 ms", (x) => lat(x, "p99")),
      row("lateness max ms", (x) => lat(x, "max")),
      row("lateness fired/expected", (x) =>
        x.lateness ? `${x.lateness.count}/${x.lateness.expected}` : undefined,
      ),
      row("kp-rotor BullMQ pickup p50/p99 ms", (x) => {
        const p = x.lateness?.extra?.bullmqPickup as Summary | undefined;
        return p ? `${p.p50}/${p.p99}` : undefined;
      }),
      row("schedule N identities: ms (kp-rotor: write + arm)", (x) => {
        const sc = x.schedule;
        if (!sc) return undefined;
        if (hasWrite(sc)) return `${fmt(sc.writeMs)} + ${fmt(armMsOf(sc))} = ${fmt(sc.ms)}`;
        return x.name === "kp-rotor"
          ? `arm only ${fmt(sc.ms)} (write ${NOT_MEASURED})`
          : fmt(sc.ms);
      }),
      row("schedule N identities/s", (x) => (x.schedule ? fmt(x.schedule.perS) : undefined)),
      row("schedule: Postgres rows / database bytes per identity", (x) => {
        const sc = x.schedule;
        if (!sc || (sc.rowsPerIdentity === undefined && sc.dbBytesPerIdentity === undefined))
          return undefined;
        return `${sc.rowsPerIdentity ?? "-"} / ${fmt(sc.dbBytesPerIdentity)}`;
      }),
      row("reschedule/s", (x) => (x.reschedule ? fmt(x.reschedule.perS) : undefined)),
      row("HTTP welcome requests/s", (x) => (x.ingest ? fmt(x.ingest.perS) : undefined)),
      row("HTTP welcome p50/p99 ms", (x) =>
        x.ingest ? `${x.ingest.latency.p50}/${x.ingest.latency.p99}` : undefined,
      ),
      row("HTTP API process / load generator CPU %", (x) =>
        x.ingest?.apiCpuPercent === undefined
          ? undefined
          : `${x.ingest.apiCpuPercent}/${x.ingest.loadGeneratorCpuPercent}`,
      ),
      row("HTTP welcomes moving a deadline", (x) =>
        x.ingest ? `${fmt(x.ingest.changed)}/${fmt(x.ingest.requests)}` : undefined,
      ),
      row("Redis B/identity (2 timers)", (x) =>
        x.schedule?.redisBytesPerIdentity === undefined
          ? undefined
          : fmt(x.schedule.redisBytesPerIdentity),
      ),
      row("Redis B/identity steady state", (x) =>
        x.schedule?.steadyState === undefined
          ? undefined
          : fmt(x.schedule.steadyState.redisBytesPerIdentity),
      ),
      row("Redis B/timer", (x) =>
        x.schedule?.redisBytesPerTimer === undefined
          ? undefined
          : fmt(x.schedule.redisBytesPerTimer),
      ),
      row("errors", (x) => (x.errors.length ? x.errors.length : undefined)),
    ],
  );
}

export function goalsTable(r: RunResult): string {
  return table(
    ["figure", "goal", "measured", "met"],
    goals(r).map((g) => [g.figure, g.goal, g.value, g.met === null ? "n/a" : g.met ? "yes" : "NO"]),
  );
}

/**
 * Idle cost against N: this run's side-by-side and scale steps, then earlier runs' points at
 * other N (one point per N, this run first), sorted by N. The table and the idle-vs-N chart.
 */
export function idleAgainstN(
  r: RunResult,
  others: RunResult[] = [],
): { n: number; systems: SystemResult[]; run: string }[] {
  const rows: { n: number; systems: SystemResult[]; run: string }[] = points(r).map((p) => ({
    n: p.n,
    systems: p.systems,
    run: `this run (${p.where})`,
  }));
  for (const o of others) {
    for (const p of points(o)) {
      if (!rows.some((x) => x.n === p.n))
        rows.push({
          n: p.n,
          systems: p.systems,
          run: `${o.finishedAt} (${p.where}) on ${o.machine.nproc} cores (${o.machine.cpuModel}), Node ${o.machine.node}`,
        });
    }
  }
  return rows.sort((a, b) => a.n - b.n);
}

const mdEscape = (s: string) => s.replaceAll("|", "\\|").replaceAll("\n", " ");

export function markdown(r: RunResult, others: RunResult[] = [], charts: string[] = []): string {
  const m = r.machine;
  const out: string[] = [];
  out.push("# Benchmarks: kp-rotor side by side with its peers");
  out.push("");
  out.push(
    `Generated by \`${r.command}\` from \`bench/results/latest.json\` (${r.finishedAt}, ${r.durationS} s). Do not edit by hand: rerun the script.`,
  );
  out.push("");
  out.push("## Machine");
  out.push("");
  out.push(
    "Every figure below comes from this run on this machine, except the rows of the idle-cost-against-N table marked with another run, which name theirs, and the simulation's section at the end, which names its own.",
  );
  out.push("");
  out.push(
    `- nproc: ${m.nproc} (${m.cpuModel}), memory ${m.memoryGiB} GiB, kernel \`${m.kernel}\``,
  );
  out.push(`- Node ${m.node}; ${m.redisServer}; ${m.postgres}`);
  out.push(
    `- load average (1/5/15 min): ${m.loadavgStart.join(" ")} at start, ${r.loadavgEnd.join(" ")} at end`,
  );
  out.push(
    `- Redis hz of the private servers: ${r.redisHz}${r.redisHz === "10" ? " (the default; the harness does not set it)" : ""}`,
  );
  out.push(
    r.durability
      ? `- durability: Postgres ${r.durability.postgres}; private redis-servers ${r.durability.redis}`
      : `- durability settings (Postgres fsync / synchronous_commit, Redis persistence): ${NOT_MEASURED}`,
  );
  if (r.limits) {
    out.push(
      `- reference: \`${r.limits.redisBenchmark.command}\`: SET ${fmt(r.limits.redisBenchmark.setPerS)}/s, ZADD ${fmt(r.limits.redisBenchmark.zaddPerS)}/s`,
    );
    out.push(`- reference: \`${r.limits.pgbench.command}\`: ${fmt(r.limits.pgbench.tps)} tps`);
  }
  out.push("");
  out.push("## Goals");
  out.push("");
  out.push("| figure | goal | measured | met | by how much, and why |");
  out.push("|---|---|---|---|---|");
  for (const g of goals(r)) {
    out.push(
      `| ${mdEscape(g.figure)} | ${mdEscape(g.goal)} | ${mdEscape(g.value)} | ${g.met === null ? "n/a" : g.met ? "yes" : "**no**"} | ${mdEscape(g.note)} |`,
    );
  }
  out.push("");
  const load = Math.max(...m.loadavgStart.slice(0, 1), ...r.loadavgEnd.slice(0, 1));
  if (load > Number(m.nproc) * 0.75) {
    out.push(
      `**Caveat: the machine was busy.** The 1-minute load average reached ${load} on ${m.nproc} cores during this run (other processes shared the machine). CPU-bound figures (rotations/s, bare generations/s, scheduling and reschedule rates, lateness of the real rotation) are lower than on an idle machine; the idle Redis/Postgres counts are not affected (they count commands, not time).`,
    );
    out.push("");
  }
  out.push("## Idle cost by concurrency (this run)");
  out.push("");
  const concs = r.idleConcurrency ?? [];
  if (concs.length === 0 || r.systems.length === 0) {
    out.push(
      r.systems.length === 0
        ? `${NOT_MEASURED} (no side-by-side).`
        : `Every system at one concurrency: ${NOT_MEASURED}. In this run each system idled once, at the concurrency of its settings (below), which differ between systems; the side-by-side table shows that window.`,
    );
  } else {
    out.push(
      `One idle window per concurrency (${concs.join(", ")}), every system's workers started at that concurrency and idling at once, N=${fmt(Number(r.params.identities))}. The goals are judged at ${r.params.concurrency}${r.params.concurrency === 16 ? ", kp-rotor's WORKER_CONCURRENCY default" : ""}. Defaults: raw BullMQ's Worker concurrency, pg-boss's batchSize and graphile-worker's concurrency are 1, kp-rotor's WORKER_CONCURRENCY 16${concs.includes(1) && concs.includes(16) ? "; so every system appears at its own default and at 16" : ""}.`,
    );
    out.push("");
    out.push(
      "| system | concurrency | what it sets | Redis commands/s | Postgres xact/s | Postgres queries per 10 min |",
    );
    out.push("|---|---|---|---|---|---|");
    for (const [i] of concs.entries()) {
      for (const x of r.systems) {
        const w = windowAt(r, x, i);
        if (!w) {
          out.push(`| ${x.name} | ${concs[i]} | - | ${NOT_MEASURED} | | |`);
          continue;
        }
        out.push(
          `| ${x.name} | ${concurrencyLabel(w)} | ${mdEscape(w.concurrencyKnob ?? "no concurrency setting: the loop runs the same in every window")} | ${w.redisCommandsPerS ?? "-"} | ${w.pgXactCommitPerS ?? "-"} | ${w.pgQueriesPer10Min == null ? "-" : fmt(w.pgQueriesPer10Min, 1)} |`,
        );
      }
    }
  }
  out.push("");
  const idleRows = idleAgainstN(r, others);
  if (idleRows.length > 0) {
    out.push("## Idle cost against N");
    out.push("");
    out.push(
      `Each system at ${concs.length > 0 ? `concurrency ${r.params.concurrency} (the poll loop has none)` : "the concurrency of its settings"} in this run; rows of another run at the concurrency that run's settings gave (its JSON says which).`,
    );
    out.push("");
    const names = [...new Set(idleRows.flatMap((x) => x.systems.map((s) => s.name)))];
    out.push(`| N | ${names.map((n) => `${n} Redis cmds/s / PG xact/s`).join(" | ")} | run |`);
    out.push(`|---|${names.map(() => "---").join("|")}|---|`);
    for (const row of idleRows) {
      const cells = names.map((n) => {
        const idle = row.systems.find((s) => s.name === n)?.idle;
        return idle ? `${idle.redisCommandsPerS ?? "-"} / ${idle.pgXactCommitPerS ?? "-"}` : "-";
      });
      out.push(`| ${fmt(row.n)} | ${cells.join(" | ")} | ${row.run} |`);
    }
    out.push("");
  }
  if ((r.scale ?? []).length > 0) {
    out.push("## Scale steps (this run)");
    out.push("");
    out.push(
      "For each N: fresh private servers, N identities seeded by SQL (generate_series; kp-rotor: copies of a once-rotated template, so both timers), kp-rotor's Redis emptied (FLUSHALL) and `reconcile()` timed (the table shows the SQL write and the reconcile apart where the run timed both; the 1M goal row judges the reconcile alone), the workers started (kp-rotor: its start-up reconcile runs first), then the same settle and idle window as above; all of that N dropped before the next.",
    );
    out.push("");
    out.push("```");
    out.push(scaleTable(r));
    out.push("```");
    out.push("");
  }
  out.push("## Side by side");
  out.push("");
  out.push(
    `Parameters: ${Object.entries(r.params)
      .map(([k, v]) => `${k}=${v}`)
      .join(
        ", ",
      )}, idle concurrency=${(r.idleConcurrency ?? []).join(",") || NOT_MEASURED}. Every system gets its own private database on the shared Postgres (created and dropped by the run) and, if it uses Redis, its own private redis-server on a free port; each idle window runs for all of them at once (each counter belongs to one system), the other tests one system at a time.`,
  );
  out.push("");
  out.push("```");
  out.push(systemsTable(r));
  out.push("```");
  out.push("");
  for (const c of charts) {
    const rel = c.slice(c.lastIndexOf("bench/results/"));
    out.push(`![${rel}](${rel})`);
    out.push("");
  }
  out.push("How each figure is taken:");
  out.push("");
  out.push(
    "- **idle**: N identities scheduled 1 to 30 days out, workers (or the poll loop) running, a settle time, then a window (one per concurrency, see above; the concurrency is each system's nearest equivalent: kp-rotor WORKER_CONCURRENCY, raw BullMQ Worker concurrency, pg-boss batchSize (up to that many jobs per fetch, one poll loop, burstWhenBatchFull; at 1 its defaults; localConcurrency would instead run that many workers, each waiting the 2 s polling interval after every fetch), graphile-worker concurrency; the poll loop has none): Postgres `xact_commit` delta of the system's own database from `pg_stat_database` (read from the admin database; every autocommit statement is one transaction; a backend flushes its statistics up to 10 s late, hence the settle time), Redis `total_commands_processed` delta of the system's own redis-server (INFO; Lua scripts' inner calls count too), divided by the window.",
  );
  out.push(
    `- **lateness**: M timers due uniformly over S seconds, added after the N pending ones; peers run a no-op handler and report handler start minus due time. kp-rotor runs the real rotation (ts-mls key generation, sealing, Postgres writes): its figure is the rotation's start (before the row lock) minus the deadline, and \`BullMQ pickup\` is the worker's \`active\` event minus the deadline, the part comparable with the no-op peers. ${
      (r.idleConcurrency ?? []).length > 0
        ? `Every system's workers at concurrency ${r.params.concurrency} (the last idle window's), the poll loop as always.`
        : "Each system's workers at the concurrency of its settings."
    } The goal counts as met only if every due wake-up fired (fired = expected).`,
  );
  const kpSched = r.systems.find((x) => x.name === "kp-rotor")?.schedule;
  out.push(
    `- **schedule**: N far-future timers created, from the durable write on. What each figure includes: ${r.systems
      .filter((x) => x.schedule)
      .map((x) => `${x.name}: ${x.schedule?.what}`)
      .join(
        "; ",
      )}. kp-rotor's \`register\` generates a key package, so kp-rotor's identities are written by SQL (copies of one registered and once-rotated template, so each has a rotation and a deletion deadline), as a bulk import would write them, and then armed by \`reconcile()\` into an empty Redis: both timers per identity under row locks. ${
      hasWrite(kpSched)
        ? "Its figure is write + arm, both timed in the same run and shown apart; the goal and every ratio use the sum."
        : `Its durable write: ${NOT_MEASURED} (this run timed the arm alone, so its figure leaves out the write the peers' figures include).`
    } The systems do not write the same amount: per identity, kp-rotor commits an identity row and two key package rows (with sealed keys) and arms two timers; the peers write one job or row (Postgres rows and database bytes per identity are in the side-by-side table where measured). Raw BullMQ writes only to its redis-server${r.durability ? `, which here runs with ${r.durability.redis}` : ""}; the Postgres systems' writes are committed${r.durability ? ` (${r.durability.postgres})` : ""}.`,
  );
  out.push(
    "- **reschedule**: min(N, reschedules) existing timers pulled in to now + 5 s, workers stopped (so the pulled-in timers do not fire during the measurement).",
  );
  const h = r.systems.find((x) => x.ingest)?.ingest;
  if (h) {
    out.push(
      `- **HTTP welcome ingest**: ${h.what}. Load generator: ${h.loadGenerator}; ${fmt(h.warmup)} warm-up requests first (not counted), then one welcome for each of ${fmt(h.pool)} pre-registered identities the batch reschedule did not touch, in a fixed shuffle over N, stopped after ${r.params.ingestSeconds} s at the latest. requests/s = 2xx answers / wall time; latency is the load generator's (whole ms). "moved a deadline" = answers with \`pulledIn: true\` (cross-checked in Postgres: identities whose deadline came within the hour during the run); a welcome for an identity already pulled in is a no-op (earliest wins). Compared with the same run's pgbench tps.`,
    );
  }
  out.push(
    "- **Redis memory**: worst case: `used_memory` after kp-rotor's `reconcile()` into an empty Redis (FLUSHALL) minus before, over N; every identity has both timers. Steady state: then the superseded key packages of all but every 30th identity (ROTATION_INTERVAL / DELETION_GRACE: only identities rotated within the last day keep one) are deleted in SQL and a second reconcile removes their deletion timers; `used_memory` minus the empty Redis again, over N. Raw BullMQ: `used_memory` delta over addBulk of N jobs, per job. The figures include any BullMQ event streams (capped in length, so their share shrinks with N; their size is `eventStreamBytes` in the JSON).",
  );
  out.push("");
  out.push("## Settings of each system");
  out.push("");
  for (const s of r.systems) {
    out.push(`**${s.name}**`);
    out.push("");
    for (const [k, v] of Object.entries(s.settings)) out.push(`- ${k}: ${v}`);
    if (s.schedule) out.push(`- schedule measured: ${s.schedule.what}`);
    if (s.schedule?.rows) out.push(`- schedule wrote: ${s.schedule.rows}`);
    if (s.lateness) out.push(`- lateness measured: ${s.lateness.what}`);
    if (s.reschedule) out.push(`- reschedule measured: ${s.reschedule.what}`);
    for (const e of s.errors) out.push(`- ERROR: ${e}`);
    out.push("");
  }
  out.push("## Commands");
  out.push("");
  out.push("```sh");
  out.push("npx tsx bench/peers.ts --quick        # about 2 minutes: N=10,000, no scale steps");
  out.push(
    "npx tsx bench/peers.ts                # N=100,000 side by side, then scale steps N=10,000 and N=1,000,000 (kp-rotor, poll)",
  );
  out.push(
    "npx tsx bench/peers.ts --scale-only --scale-n 1000000 --no-limits   # only the 1M reconcile + idle step (writes bench/results/scale-only.json, not this file)",
  );
  out.push("```");
  out.push("");
  out.push(
    `This run: \`${r.command}\`. Options: \`--identities N\`, \`--due M\`, \`--spread S\`, \`--reschedules K\`, \`--idle-seconds W\`, \`--settle s\`, \`--pgbench-seconds T\`, \`--only a,b\` (kp-rotor, poll, bullmq, pgboss, graphile), \`--no-limits\`, \`--reschedule-seconds T\` (time box of the one-call-per-job reschedule loops), \`--concurrency C\` (every system's workers in the lateness test and the last idle window; default 16, kp-rotor's WORKER_CONCURRENCY default), \`--idle-concurrency C1,C2\` (one idle window per concurrency; default 1 and --concurrency), \`--ingest-seconds T\` (upper bound of the measured HTTP ingest run), \`--ingest-connections C\` (default 64), \`--api-log-level L\` (the API process's LOG_LEVEL, default info as the service), \`--scale-n N1,N2\` or \`none\` (scale steps; full profile 10000,1000000, quick none), \`--scale-systems a,b\` (default kp-rotor,poll), \`--scale-only\` (skip the side-by-side), \`--scale-steady\` (also steady-state memory in the scale steps), \`--report-only\` (no benchmark: rewrite this file and the PNG charts from bench/results/latest.json and the earlier bench/results/peers-*.json).`,
  );
  out.push("");
  out.push(
    "Sizes: the idle cost is measured at every N listed in the idle-cost-against-N table (the side-by-side N and the scale steps); the other figures only at the side-by-side N. Nothing here is extrapolated except where a row says EXTRAPOLATED.",
  );
  out.push("");
  return out.join("\n");
}
