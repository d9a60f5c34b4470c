/**
 * Turns bench/results/latest.json into the stdout tables and BENCHMARKS.md: each figure next to
 * its goal, and for every missed goal by how much and the likely reason.
 */
import type { Summary } from "../lib.js";
import { round, table } from "../lib.js";
import type { IdleResult, LatenessResult, RescheduleResult, ScheduleResult } from "./common.js";
import type { Limits, MachineInfo } from "./machine.js";

export interface SystemResult {
  name: string;
  settings: Record<string, string | number | boolean>;
  schedule?: ScheduleResult;
  idle?: IdleResult;
  lateness?: LatenessResult;
  reschedule?: RescheduleResult;
  errors: string[];
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
  systems: SystemResult[];
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

export function goals(r: RunResult): GoalRow[] {
  const kp = r.systems.find((s) => s.name === "kp-rotor");
  const bq = r.systems.find((s) => s.name === "raw BullMQ");
  const rows: GoalRow[] = [];
  const N = r.params.identities as number;

  // Idle cost.
  const pg10 = kp?.idle?.pgQueriesPer10Min ?? null;
  rows.push({
    figure: `idle cost, Postgres (N=${fmt(N)})`,
    goal: "<= 1 query per 10 min",
    value:
      pg10 === null
        ? "-"
        : `${fmt(pg10, 1)} per 10 min (xact_commit ${fmt(kp?.idle?.pgXactCommitPerS, 3)}/s over ${kp?.idle?.seconds} s)`,
    met: pg10 === null ? null : pg10 <= 1,
    note:
      pg10 === null
        ? "not measured"
        : pg10 <= 1
          ? `the watchdog is the only idle Postgres client: one index range scan every WATCHDOG_INTERVAL (10 min) by design (DESIGN.md, "No polling"); a ${kp?.idle?.seconds} s window that does not contain a watchdog tick sees none, so 0 here means "nothing besides the watchdog"`
          : `missed by ${fmt(pg10 - 1, 1)} per 10 min; pg_stat_database counts every transaction of the database, including stat flushes arriving late from set-up (settle time ${r.params.settleSeconds} s)`,
  });
  const rps = kp?.idle?.redisCommandsPerS ?? null;
  const perWorker = rps === null ? null : rps / (kp?.idle?.workers ?? 1);
  rows.push({
    figure: `idle cost, Redis commands/s per worker process (N=${fmt(N)})`,
    goal: "<= 1 and constant in N",
    value:
      perWorker === null
        ? "-"
        : `${fmt(perWorker, 2)}/s (${Object.entries(kp?.idle?.redisByCommand ?? {})
            .map(([c, n]) => `${c} ${n}`)
            .join(", ")})`,
    met: perWorker === null ? null : perWorker <= 1,
    note:
      perWorker === null
        ? "not measured"
        : (perWorker <= 1
            ? "met at this N; "
            : `missed by ${fmt(perWorker - 1, 2)}/s (${pct(perWorker - 1)} over): one kp-rotor process runs TWO BullMQ workers (rotation and deletion queues), each with its own idle turn (a BZPOPMIN on its marker, then a moveToActive script) and its own stalled-jobs check every 30 s, so its floor is about twice a single raw BullMQ worker's (${fmt(bq?.idle?.redisCommandsPerS, 2)}/s here; Lua scripts' inner redis.call commands are counted too). `) +
          "constancy in N: compare the idle-cost-against-N table (runs at other N kept in bench/results/); the idle commands are BullMQ's timers, none of them per job. Use a window that is a multiple of 30 s (the stalled-check period), or the stalled checks are under- or over-counted",
  });

  // Lateness.
  const pick = kp?.lateness?.extra?.bullmqPickup as Summary | undefined;
  const real = kp?.lateness?.lateness;
  rows.push({
    figure: `wake-up lateness p99, ${fmt(N)} pending (goal is at 100k), Redis hz ${r.redisHz}`,
    goal: "p99 <= 5 ms at default Redis hz",
    value: pick
      ? `BullMQ pickup p50 ${pick.p50} / p99 ${pick.p99} ms; real rotation start p50 ${real?.p50} / p99 ${real?.p99} ms`
      : "-",
    met: pick ? pick.p99 <= 5 : null,
    note: !pick
      ? "not measured"
      : pick.p99 <= 5
        ? "met"
        : `missed by ${fmt(pick.p99 - 5, 0)} ms (x${fmt(pick.p99 / 5, 1)}): a delayed BullMQ job is picked up when the worker's blocking BZPOPMIN times out, and Redis checks blocked-client timeouts only hz times a second (default hz 10, so up to ~100 ms); raw BullMQ shows the same (p99 ${bq?.lateness?.lateness.p99 ?? "-"} ms). Needs hz 500 (~5 ms) or an in-process timer to the next fire time. kp-rotor's p50 is lower than raw BullMQ's, likely because its worker is busy rotating (concurrency 16) and a busy BullMQ worker takes the next due job right after finishing one instead of blocking; only the jobs that arrive while it is idle pay the hz wait, and they set the p99`,
  });

  // Welcome ingest.
  const w = kp?.reschedule?.perS;
  rows.push({
    figure: "welcome ingest, batch (pullInMany, 1,000 per call)",
    goal: ">= 50,000 welcomes/s",
    value: w === undefined ? "-" : `${fmt(w)}/s`,
    met: w === undefined ? null : w >= 50_000,
    note:
      w === undefined
        ? "not measured"
        : w >= 50_000
          ? "met"
          : `missed by ${fmt(50_000 - w)}/s (reaches ${pct(w / 50_000)} of the goal): each welcome that changes a deadline is one row UPDATE plus one BullMQ changeDelay (a Lua script, then a read-back ZSCORE) on one Redis connection; raw changeDelay alone peaks at ${fmt(bq?.reschedule?.perS)}/s here, and Redis did ${fmt(r.limits?.redisBenchmark.zaddPerS)} ZADD/s unpipelined, so 50k/s needs batching the Redis side (one script per batch) rather than per-id calls`,
  });

  // Register / reschedule vs raw BullMQ.
  const sched = kp?.schedule?.perS;
  const bqSched = bq?.schedule?.perS;
  if (sched !== undefined && bqSched !== undefined) {
    const ratio = sched / bqSched;
    rows.push({
      figure:
        "scheduling (kp-rotor: reconcile/arm of pre-seeded identities, both timers) vs raw BullMQ addBulk",
      goal: ">= 80 % of raw BullMQ addBulk",
      value: `${fmt(sched)} identities/s vs ${fmt(bqSched)} jobs/s = ${pct(ratio)}`,
      met: ratio >= 0.8,
      note:
        ratio >= 0.8
          ? "met (register itself generates a key package; it is not a timer figure)"
          : `missed by ${pct(0.8 - ratio)} points: kp-rotor arms two timers per identity under Postgres row locks (SELECT … FOR UPDATE pages of 500, a pipelined view, then one BullMQ add per timer), where addBulk sends one MULTI of adds with no database at all; per timer the rate is ${fmt(sched * (kp?.schedule?.timersPerIdentity ?? 1))}/s`,
    });
  }
  const resch = kp?.reschedule?.perS;
  const bqResch = bq?.reschedule?.perS;
  if (resch !== undefined && bqResch !== undefined) {
    const ratio = resch / bqResch;
    rows.push({
      figure: "reschedule (welcome pull-in) vs raw BullMQ getJob + changeDelay",
      goal: ">= 80 % of raw BullMQ changeDelay",
      value: `${fmt(resch)}/s vs ${fmt(bqResch)}/s = ${pct(ratio)}`,
      met: ratio >= 0.8,
      note:
        ratio >= 0.8
          ? "met"
          : `missed by ${pct(0.8 - ratio)} points: see welcome ingest; the Postgres transaction (lock, UPDATE) and the read-back after changeDelay are on top of the raw call`,
    });
  }

  // Memory.
  const mem = kp?.schedule?.redisBytesPerIdentity;
  rows.push({
    figure: "Redis memory per identity (both timers)",
    goal: "<= 500 bytes",
    value:
      mem === undefined
        ? "-"
        : `${fmt(mem)} B (${kp?.schedule?.timersPerIdentity} timers/identity, ${fmt(kp?.schedule?.redisBytesPerTimer)} B/timer); raw BullMQ ${fmt(bq?.schedule?.redisBytesPerTimer)} B/job, x2 = ${fmt(bq?.schedule?.redisBytesPerIdentity)} B`,
    met: mem === undefined ? null : mem <= 500,
    note:
      mem === undefined
        ? "not measured"
        : mem <= 500
          ? "met"
          : `missed by ${fmt(mem - 500)} B (x${fmt(mem / 500, 1)}): every timer is a full BullMQ job (a hash with name, data, opts, timestamp, delay … plus the delayed-set entry); raw BullMQ alone costs ${fmt(bq?.schedule?.redisBytesPerTimer)} B per job, so two jobs per identity cannot fit in 500 B; it would need a bare sorted-set member per deadline (an id and a score) instead of a BullMQ job`,
  });

  // Reconcile of 1M.
  if (sched !== undefined) {
    const est = 1_000_000 / sched;
    rows.push({
      figure: "reconcile of 1M after FLUSHALL",
      goal: "<= 60 s",
      value: `${fmt(est, 0)} s (extrapolated from ${fmt(kp?.schedule?.count)} identities reconciled into an empty Redis in ${fmt(kp?.schedule?.ms)} ms)`,
      met: est <= 60,
      note:
        est <= 60
          ? "met (extrapolated linearly; run with --identities 1000000 to measure)"
          : `missed by ${fmt(est - 60, 0)} s (x${fmt(est / 60, 1)}), extrapolated linearly: reconcile is paged 500 identities per transaction with row locks and one BullMQ add per timer; not measured at 1M in this run`,
    });
  }

  // Rotations/s.
  const ratio = kp?.lateness?.extra?.rotationRatio as number | undefined;
  rows.push({
    figure: "rotations/s per worker process vs bare ts-mls generations/s",
    goal: ">= 80 %",
    value:
      ratio === undefined
        ? "-"
        : `${fmt(kp?.lateness?.extra?.rotationsPerS as number)} rotations/s vs ${fmt(kp?.lateness?.extra?.bareGenerationsPerS as number)} generations/s = ${pct(ratio)} (${kp?.lateness?.extra?.rotationsBurst} rotations, concurrency ${r.params.concurrency})`,
    met: ratio === undefined ? null : ratio >= 0.8,
    note:
      ratio === undefined
        ? "not measured"
        : ratio >= 0.8
          ? "met"
          : `missed by ${pct(0.8 - ratio)} points: a rotation is three transactions (prepare, promote, re-arm) with sealing, two row locks and BullMQ calls around the ~2-3 ms key generation, all on one event loop; the burst includes pulling the identities in and the tail of the last rotations (bench/keygen.ts measures the same ratio at 2,000), and a busy machine hurts the service (more I/O waits, more context switches) more than the bare loop`,
  });
  return rows;
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
  return table(
    ["figure", ...s.map((x) => x.name)],
    [
      row(
        "idle: Postgres xact_commit/s",
        (x) => (x.idle?.pgXactCommitPerS ?? undefined) as number | undefined,
      ),
      row("idle: Postgres queries per 10 min", (x) =>
        x.idle?.pgQueriesPer10Min === null || x.idle?.pgQueriesPer10Min === undefined
          ? undefined
          : fmt(x.idle.pgQueriesPer10Min, 1),
      ),
      row(
        "idle: poll queries counted/s",
        (x) => (x.idle?.ownQueriesPerS ?? undefined) as number | undefined,
      ),
      row(
        "idle: Redis commands/s",
        (x) => (x.idle?.redisCommandsPerS ?? undefined) as number | undefined,
      ),
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
      row("schedule N timers/s", (x) => (x.schedule ? fmt(x.schedule.perS) : undefined)),
      row("reschedule/s", (x) => (x.reschedule ? fmt(x.reschedule.perS) : undefined)),
      row("Redis B/identity (2 timers)", (x) =>
        x.schedule?.redisBytesPerIdentity === undefined
          ? undefined
          : fmt(x.schedule.redisBytesPerIdentity),
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
    `- nproc: ${m.nproc} (${m.cpuModel}), memory ${m.memoryGiB} GiB, kernel \`${m.kernel}\``,
  );
  out.push(`- Node ${m.node}; ${m.redisServer}; ${m.postgres}`);
  out.push(
    `- load average (1/5/15 min): ${m.loadavgStart.join(" ")} at start, ${r.loadavgEnd.join(" ")} at end`,
  );
  out.push(`- Redis hz of the private servers: ${r.redisHz} (default)`);
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
  const runs = [r, ...others.filter((o) => o.params.identities !== r.params.identities)];
  if (runs.length > 1) {
    out.push("## Idle cost against N (this run and earlier runs in bench/results/)");
    out.push("");
    const names = r.systems.map((s) => s.name);
    out.push(`| N | ${names.map((n) => `${n} Redis cmds/s / PG xact/s`).join(" | ")} | run |`);
    out.push(`|---|${names.map(() => "---").join("|")}|---|`);
    for (const run of runs.sort(
      (a, b) => Number(a.params.identities) - Number(b.params.identities),
    )) {
      const cells = names.map((n) => {
        const idle = run.systems.find((s) => s.name === n)?.idle;
        return idle ? `${idle.redisCommandsPerS ?? "-"} / ${idle.pgXactCommitPerS ?? "-"}` : "-";
      });
      out.push(
        `| ${fmt(Number(run.params.identities))} | ${cells.join(" | ")} | ${run.finishedAt} |`,
      );
    }
    out.push("");
  }
  out.push("## Side by side");
  out.push("");
  out.push(
    `Parameters: ${Object.entries(r.params)
      .map(([k, v]) => `${k}=${v}`)
      .join(
        ", ",
      )}. Every system gets its own private database on the shared Postgres (created and dropped by the run) and, if it uses Redis, its own private redis-server on a free port; the idle window runs for all of them at once (each counter belongs to one system), the other tests one system at a time.`,
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
    "- **idle**: N identities scheduled 1 to 30 days out, workers (or the poll loop) running, a settle time, then a window: Postgres `xact_commit` delta of the system's own database from `pg_stat_database` (read from the admin database; every autocommit statement is one transaction; a backend flushes its statistics up to 10 s late, hence the settle time), Redis `total_commands_processed` delta of the system's own redis-server (INFO; Lua scripts' inner calls count too), divided by the window.",
  );
  out.push(
    "- **lateness**: M timers due uniformly over S seconds, added after the N pending ones; peers run a no-op handler and report handler start minus due time. kp-rotor runs the real rotation (ts-mls key generation, sealing, Postgres writes): its figure is the rotation's start (before the row lock) minus the deadline, and `BullMQ pickup` is the worker's `active` event minus the deadline, the part comparable with the no-op peers.",
  );
  out.push(
    "- **schedule**: N far-future timers created. kp-rotor's `register` generates a key package, so its scheduling cost is measured as `reconcile()` arming pre-seeded identities (SQL copies of one registered and once-rotated template, so each has a rotation and a deletion deadline): both timers per identity under row locks.",
  );
  out.push(
    "- **reschedule**: min(N, reschedules) existing timers pulled in to now + 5 s, workers stopped (so the pulled-in timers do not fire during the measurement).",
  );
  out.push(
    "- **Redis memory**: `used_memory` delta over the scheduling step divided by N (raw BullMQ: one job per identity; x2 for the two timers kp-rotor keeps).",
  );
  out.push("");
  out.push("## Settings of each system");
  out.push("");
  for (const s of r.systems) {
    out.push(`**${s.name}**`);
    out.push("");
    for (const [k, v] of Object.entries(s.settings)) out.push(`- ${k}: ${v}`);
    if (s.schedule) out.push(`- schedule measured: ${s.schedule.what}`);
    if (s.lateness) out.push(`- lateness measured: ${s.lateness.what}`);
    if (s.reschedule) out.push(`- reschedule measured: ${s.reschedule.what}`);
    for (const e of s.errors) out.push(`- ERROR: ${e}`);
    out.push("");
  }
  out.push("## Commands");
  out.push("");
  out.push("```sh");
  out.push(
    "npx tsx bench/peers.ts --quick        # what CI-sized machines finish in about 2 minutes (N=10,000)",
  );
  out.push(
    "npx tsx bench/peers.ts                # N=100,000 pending, the size the lateness goal names",
  );
  out.push(
    "npx tsx bench/peers.ts --identities 1000000 --only kp-rotor,bullmq   # reconcile of 1M measured, not extrapolated",
  );
  out.push("```");
  out.push("");
  out.push(
    `This run: \`${r.command}\`. Options: \`--identities N\`, \`--due M\`, \`--spread S\`, \`--reschedules K\`, \`--idle-seconds W\`, \`--settle s\`, \`--pgbench-seconds T\`, \`--only a,b\` (kp-rotor, poll, bullmq, pgboss, graphile), \`--no-limits\`, \`--reschedule-seconds T\` (time box of the one-call-per-job reschedule loops), \`--concurrency C\` (kp-rotor workers), \`--report-only\` (rewrite this file from bench/results/latest.json).`,
  );
  out.push("");
  out.push(
    "Larger sizes: the idle figures of every system here come from timers (BullMQ's marker and stalled checks, pg-boss's and graphile-worker's 2 s polls, the 5 s poll loop), not from N, except the poll loop's per-query cost (an index range scan: constant while nothing is due). Lateness grows with due rate, not pending count, for the Redis systems; the Postgres queues' lateness is bounded by their poll interval.",
  );
  out.push("");
  return out.join("\n");
}
