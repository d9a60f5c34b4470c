/**
 * A year of a fleet, simulated: the service's own decisions (src/core) on a virtual clock, no
 * Redis, no Postgres; costs per event measured on the real code paths (bench/sim/measure-costs.ts).
 * Compares kp-rotor with the 5-second poll it replaces, with and without ROTATION_JITTER.
 * The model and its assumptions: docs/simulation.md.
 *
 *   npm run simulate -- --identities 10000000 --days 365
 *   npm run simulate -- --identities 100000 --days 90 --no-write     # a quick look
 *
 * Options: --identities N, --days D, --mass M (identities of the mass registration; default N/10),
 * --mass-day d (default 30), --mass-hours h (default 1), --jitter 0%,10% (one run each),
 * --dormant 0.3, --welcomes-per-day 0.15 (mean of the active identities), --seed S,
 * --workers W (worker processes, for the idle costs; default 3), --no-write (print only).
 * Writes bench/results/simulation.json, bench/results/sim-*.png, bench/results/simulation.md
 * and that section of BENCHMARKS.md.
 */
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../src/config.js";
import type { Timing } from "../src/core/deadlines.js";
import { ROOT, round, table } from "./lib.js";
import { drawPng } from "./sim/charts.js";
import { Worker } from "node:worker_threads";
import { type DayStats, type SimOptions, type SimResult } from "./sim/engine.js";
import { writeSection } from "./sections.js";
import { DEFAULT_WELCOME_MODEL, type WelcomeModel } from "./sim/welcomes.js";

const DAY_S = 86_400;
const RESULTS = join(ROOT, "bench/results");

function option(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
function numberOption(name: string, fallback: number): number {
  const raw = option(name);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0)
    throw new Error(`--${name}: expected a number >= 0, got ${raw}`);
  return n;
}

/** Figures of the real code paths: measured here, or taken from BENCHMARKS.md (named). */
interface PathCost {
  pg: number;
  redis: number;
}
interface CostTable {
  register: PathCost;
  welcomeMoved: PathCost;
  welcomeUnchanged: PathCost;
  welcomeBatchOf1000: PathCost;
  rotationWakeup: PathCost;
  deletionWakeup: PathCost;
}
const COSTS_FILE = join(RESULTS, "sim-costs.json");
/** BENCHMARKS.md: an idle worker process (two BullMQ Workers): 0.73 Redis commands/s, at any N. */
const IDLE_REDIS_PER_WORKER_PROCESS_S = 0.73;
/** WATCHDOG_INTERVAL 10 min: one census statement per worker process per 10 minutes. */
const WATCHDOG_PG_PER_WORKER_PROCESS_DAY = 144;
/** BENCHMARKS.md: kp-rotor's Redis memory per delayed wake-up job (N = 100,000). */
const REDIS_BYTES_PER_TIMER = 331;
/** The poll kp-rotor replaces (libxmtp's first design): per installation, every 5 s, 2 queries. */
const POLL_TURNS_PER_IDENTITY_DAY = DAY_S / 5;
const POLL_QUERIES_PER_TURN = 2;

function loadCosts(): CostTable {
  if (!existsSync(COSTS_FILE)) {
    throw new Error(`${COSTS_FILE} is missing: run npx tsx bench/sim/measure-costs.ts first`);
  }
  return (JSON.parse(readFileSync(COSTS_FILE, "utf8")) as { costs: CostTable }).costs;
}

interface DayCosts {
  kpRotor: {
    wakeups: number;
    pg: number;
    redis: number;
    redisBytes: number;
    redisBytesMax: number;
  };
  poll: { wakeups: number; pg: number };
  centralPoll: { wakeups: number; pg: number };
}

function dayCosts(d: DayStats, c: CostTable, workers: number): DayCosts {
  const welcomesUnchanged = d.welcomes - d.welcomesMoved;
  // The work itself (what a rotation, a deletion, a welcome writes) costs the poll designs the
  // same statements as kp-rotor's paths (an assumption in their favour: no BullMQ, no locks).
  const work = (withRedis: boolean) => {
    const f = (p: PathCost) => (withRedis ? p.redis : p.pg);
    return (
      d.registrations * f(c.register) +
      d.welcomesMoved * f(c.welcomeMoved) +
      welcomesUnchanged * f(c.welcomeUnchanged) +
      d.rotationWakeups * f(c.rotationWakeup) +
      d.deletionWakeups * f(c.deletionWakeup)
    );
  };
  const identities = d.registeredAtEnd;
  return {
    kpRotor: {
      wakeups: d.rotationWakeups + d.deletionWakeups,
      pg: work(false) + workers * WATCHDOG_PG_PER_WORKER_PROCESS_DAY,
      redis: work(true) + workers * IDLE_REDIS_PER_WORKER_PROCESS_S * DAY_S,
      redisBytes: d.timersAtEnd * REDIS_BYTES_PER_TIMER,
      redisBytesMax: d.timersMax * REDIS_BYTES_PER_TIMER,
    },
    poll: {
      wakeups: identities * POLL_TURNS_PER_IDENTITY_DAY,
      pg: identities * POLL_TURNS_PER_IDENTITY_DAY * POLL_QUERIES_PER_TURN + work(false),
    },
    centralPoll: {
      wakeups: POLL_TURNS_PER_IDENTITY_DAY,
      pg: POLL_TURNS_PER_IDENTITY_DAY + d.busyPollPeriods + work(false),
    },
  };
}

interface Run {
  jitter: string;
  result: SimResult;
  costs: DayCosts[];
}

const fmt = (x: number) =>
  x >= 100 ? Math.round(x).toLocaleString("en-US") : String(round(x, x >= 10 ? 1 : 2));
const sci = (x: number) => (x >= 1e7 ? x.toExponential(2).replace("e+", "e") : fmt(x));
const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / Math.max(1, xs.length);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;

function summary(run: Run) {
  const days = run.result.days;
  const peakDay = days.reduce((best, d) =>
    d.peakRotationsPerSecond > best.peakRotationsPerSecond ? d : best,
  );
  const peakWake = days.reduce((best, d) =>
    d.peakWakeupsPerSecond > best.peakWakeupsPerSecond ? d : best,
  );
  const peak5 = days.reduce((best, d) =>
    d.peakRotationsPer5s > best.peakRotationsPer5s ? d : best,
  );
  return {
    jitter: run.jitter,
    wakeupsPerDay: mean(run.costs.map((c) => c.kpRotor.wakeups)),
    rotationsPerDay: mean(days.map((d) => d.rotationWakeups)),
    intervalRotationsPerDay: mean(days.map((d) => d.intervalRotations)),
    deletionsPerDay: mean(days.map((d) => d.deletionWakeups)),
    welcomesPerDay: mean(days.map((d) => d.welcomes)),
    pgPerDay: mean(run.costs.map((c) => c.kpRotor.pg)),
    redisPerDay: mean(run.costs.map((c) => c.kpRotor.redis)),
    pollWakeupsPerDay: mean(run.costs.map((c) => c.poll.wakeups)),
    pollPgPerDay: mean(run.costs.map((c) => c.poll.pg)),
    centralPollPgPerDay: mean(run.costs.map((c) => c.centralPoll.pg)),
    peakRotationsPerSecond: peakDay.peakRotationsPerSecond,
    peakRotationsDay: peakDay.day,
    peakWakeupsPerSecond: peakWake.peakWakeupsPerSecond,
    peakWakeupsDay: peakWake.day,
    peakRotationsPer5s: peak5.peakRotationsPer5s,
    peakRotationsPer5sDay: peak5.day,
    medianDailyPeakRotationsPerSecond: median(days.map((d) => d.peakRotationsPerSecond)),
    redisBytesEnd: run.costs.at(-1)?.kpRotor.redisBytes ?? 0,
    redisBytesMax: Math.max(...run.costs.map((c) => c.kpRotor.redisBytesMax)),
    events: run.result.events,
    seconds: run.result.seconds,
    realizedMeanWelcomesPerDay: run.result.realizedMeanWelcomesPerDay,
  };
}

async function main() {
  const identities = numberOption("identities", 100_000);
  const days = numberOption("days", 90);
  const mass = numberOption("mass", Math.round(identities / 10));
  const massDay = numberOption("mass-day", 30);
  const massHours = numberOption("mass-hours", 1);
  const workers = numberOption("workers", 3);
  const seed = numberOption("seed", 1);
  const write = !process.argv.includes("--no-write");
  const welcomes: WelcomeModel = {
    ...DEFAULT_WELCOME_MODEL,
    dormantShare: numberOption("dormant", DEFAULT_WELCOME_MODEL.dormantShare),
    activeMeanPerDay: numberOption("welcomes-per-day", DEFAULT_WELCOME_MODEL.activeMeanPerDay),
  };
  const jitters = (option("jitter") ?? "0%,10%").split(",");
  const costs = loadCosts();
  // One worker thread per jitter setting, side by side (the same seed: the same fleet and the
  // same welcomes in every run, so the runs differ by the jitter alone).
  const started = Date.now();
  const runs: Run[] = await Promise.all(
    jitters.map(async (jitter): Promise<Run> => {
      // The service's own configuration: its defaults, and ROTATION_JITTER validated as it is.
      const config = loadConfig({
        KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64"),
        ROTATION_JITTER: jitter,
      });
      const timing: Timing = {
        rotationIntervalMs: config.rotationIntervalMs,
        rotationJitter: config.rotationJitter,
        welcomeRotationDelayMs: config.welcomeRotationDelayMs,
        deletionGraceMs: config.deletionGraceMs,
      };
      const options: Omit<SimOptions, "onDay"> = {
        identities,
        days,
        timing,
        welcomes,
        massIdentities: mass,
        massDay,
        massHours,
        seed,
      };
      const worker = new Worker(new URL("./sim/worker.ts", import.meta.url), {
        workerData: options,
      });
      const result = await new Promise<SimResult>((resolve, reject) => {
        worker.on(
          "message",
          (m: { kind: "day"; day: number } | { kind: "done"; result: SimResult }) => {
            if (m.kind === "done") resolve(m.result);
            else if (m.day % 30 === 29) {
              console.error(
                `ROTATION_JITTER=${jitter}: day ${m.day + 1} after ${Math.round((Date.now() - started) / 1000)} s`,
              );
            }
          },
        );
        worker.on("error", reject);
        worker.on("exit", (code) => reject(new Error(`simulation worker exited with ${code}`)));
      });
      await worker.terminate();
      return { jitter, result, costs: result.days.map((d) => dayCosts(d, costs, workers)) };
    }),
  );
  const summaries = runs.map(summary);
  const params = {
    identities,
    days,
    mass,
    massDay,
    massHours,
    workers,
    seed,
    welcomes,
    jitters,
    machine: `${cpus().length} cores (${cpus()[0]?.model ?? "?"}), ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`,
    at: new Date().toISOString(),
    command: `npm run simulate -- ${process.argv.slice(2).join(" ")}`.trim(),
  };
  const markdown = report(params, summaries, costs);
  console.log(markdown);
  if (!write) return;
  writeFileSync(
    join(RESULTS, "simulation.json"),
    `${JSON.stringify({ params, summaries, days: runs.map((r) => ({ jitter: r.jitter, days: r.result.days })) }, null, 1)}\n`,
  );
  const charts = await drawCharts(runs, params);
  const section = `${markdown}\n${charts.map((c) => `![${c}](${c})`).join("\n\n")}\n`;
  writeSection("simulation", section);
}

function report(
  params: Record<string, unknown> & {
    identities: number;
    days: number;
    mass: number;
    massDay: number;
    massHours: number;
    workers: number;
    command: string;
    machine: string;
  },
  s: ReturnType<typeof summary>[],
  costs: CostTable,
): string {
  const meta = JSON.parse(readFileSync(COSTS_FILE, "utf8")) as {
    machine?: string;
    measuredAt: string;
  };
  const N = params.identities.toLocaleString("en-US");
  const lines: string[] = [];
  lines.push("## A year of a fleet, simulated");
  lines.push("");
  lines.push(
    `\`${params.command}\` on ${params.machine}, ${params.at}. ${N} identities (${params.mass.toLocaleString("en-US")} of them registered in one mass registration on day ${params.massDay}, over ${params.massHours} h), ${params.days} days, ${params.workers} worker processes. The service's own decisions (src/core: pullIn, decideRotation, afterRotation with ROTATION_JITTER) on a virtual clock; welcomes by the model in docs/simulation.md; costs per event measured on the real code paths (bench/results/sim-costs.json, \`npx tsx bench/sim/measure-costs.ts\`). Figures are per day, averaged over the simulated days.`,
  );
  lines.push("");
  lines.push("```");
  const header = [
    "figure (per day unless said)",
    ...s.flatMap((x) => [`kp-rotor, jitter ${x.jitter}`]),
    "5 s poll (per installation)",
    "poll / kp-rotor",
  ];
  const first = s[0];
  if (first === undefined) return lines.join("\n");
  const ratio = (poll: number, kp: number) => `x${fmt(poll / Math.max(1, kp))}`;
  const rows: (string | number)[][] = [
    [
      "wake-ups",
      ...s.map((x) => sci(x.wakeupsPerDay)),
      sci(first.pollWakeupsPerDay),
      ratio(first.pollWakeupsPerDay, first.wakeupsPerDay),
    ],
    [
      "Postgres statements",
      ...s.map((x) => sci(x.pgPerDay)),
      sci(first.pollPgPerDay),
      ratio(first.pollPgPerDay, first.pgPerDay),
    ],
    ["Redis commands", ...s.map((x) => sci(x.redisPerDay)), "0", "-"],
    [
      "  rotations (of which interval)",
      ...s.map((x) => `${sci(x.rotationsPerDay)} (${sci(x.intervalRotationsPerDay)})`),
      "same work",
      "",
    ],
    ["  deletions", ...s.map((x) => sci(x.deletionsPerDay)), "same work", ""],
    ["  welcomes", ...s.map((x) => sci(x.welcomesPerDay)), "same work", ""],
    [
      "peak rotations due in 1 s (day)",
      ...s.map((x) => `${fmt(x.peakRotationsPerSecond)} (day ${x.peakRotationsDay})`),
      `${fmt(first.peakRotationsPer5s)} per 5 s poll (day ${first.peakRotationsPer5sDay})`,
      "",
    ],
    [
      "peak wake-ups in 1 s, rotation + deletion (day)",
      ...s.map((x) => `${fmt(x.peakWakeupsPerSecond)} (day ${x.peakWakeupsDay})`),
      "",
      "",
    ],
    [
      "median day's peak rotations in 1 s",
      ...s.map((x) => fmt(x.medianDailyPeakRotationsPerSecond)),
      "",
      "",
    ],
    [
      "Redis memory at the end / highest",
      ...s.map((x) => `${fmt(x.redisBytesEnd / 2 ** 20)} / ${fmt(x.redisBytesMax / 2 ** 20)} MiB`),
      "0",
      "",
    ],
    [
      "simulation: events, run time",
      ...s.map((x) => `${sci(x.events)}, ${fmt(x.seconds)} s`),
      "",
      "",
    ],
  ];
  lines.push(table(header, rows));
  lines.push("```");
  lines.push("");
  lines.push(
    `The 5 s poll is libxmtp's first design: every installation's loop wakes every 5 s and asks Postgres about its two tasks (2 queries per turn; 2,000 queries/s at 5,000 installations), whatever is due; its work (rotations, deletions, welcomes) is counted at kp-rotor's statements for the same events, in its favour. The central poll of bench/peers/poll.ts (one loop for the fleet, one SELECT per 5 s plus an UPDATE per 5 s period with something due) would issue ${sci(first.centralPollPgPerDay)} statements/day here. Welcomes averaged ${fmt(first.realizedMeanWelcomesPerDay)} per identity per day.`,
  );
  lines.push("");
  lines.push(
    `Per-event costs (Postgres statements / Redis commands, BEGIN and COMMIT and Lua inner commands included): registration ${fmt(costs.register.pg)} / ${fmt(costs.register.redis)}, welcome that moves the deadline ${fmt(costs.welcomeMoved.pg)} / ${fmt(costs.welcomeMoved.redis)}, welcome that does not ${fmt(costs.welcomeUnchanged.pg)} / ${fmt(costs.welcomeUnchanged.redis)} (in batches of 1,000: ${fmt(costs.welcomeBatchOf1000.pg)} / ${fmt(costs.welcomeBatchOf1000.redis)} each), rotation wake-up ${fmt(costs.rotationWakeup.pg)} / ${fmt(costs.rotationWakeup.redis)}, deletion wake-up ${fmt(costs.deletionWakeup.pg)} / ${fmt(costs.deletionWakeup.redis)}. Those were measured by \`npx tsx bench/sim/measure-costs.ts\` on ${meta.machine ?? "an unnamed machine"}, ${meta.measuredAt}. Fixed: each worker process idles at ${IDLE_REDIS_PER_WORKER_PROCESS_S} Redis commands/s and its watchdog issues 1 statement per 10 min; Redis memory is ${REDIS_BYTES_PER_TIMER} B per wake-up job (N = 100,000): both from the benchmark run above, on the machine its Machine section names.`,
  );
  lines.push("");
  return lines.join("\n");
}

async function drawCharts(
  runs: Run[],
  params: { massDay: number; mass: number; identities: number },
): Promise<string[]> {
  const written: string[] = [];
  const rel = (f: string) => `bench/results/${f}`;
  const jitterLabel = (j: string) => `ROTATION_JITTER ${j}`;
  // 1. The herd: the most rotations due in one second, minute by minute, around day mass + 30.
  const from = (params.massDay + 26) * 1_440;
  const to = Math.min(
    (params.massDay + 32) * 1_440,
    runs[0]?.result.peakPerSecondByMinute.length ?? 0,
  );
  const herd: Record<string, string | number>[] = [];
  for (const run of runs) {
    for (let m = from; m < to; m += 10) {
      let peak = 0;
      for (let k = m; k < Math.min(m + 10, to); k++)
        peak = Math.max(peak, run.result.peakPerSecondByMinute[k] ?? 0);
      herd.push({ day: round(m / 1_440, 3), peak, series: jitterLabel(run.jitter) });
    }
  }
  if (
    await drawPng(
      join(RESULTS, "sim-herd.png"),
      `Rotations due per second around day ${params.massDay + 30}, 30 days after ${params.mass.toLocaleString("en-US")} registrations in one hour`,
      ["most rotations due in one second within each 10 minutes; the same welcomes in both runs"],
      herd,
      {
        mark: { type: "line", strokeWidth: 1.5 },
        encoding: {
          x: { field: "day", type: "quantitative", title: "simulated day", scale: { zero: false } },
          y: {
            field: "peak",
            type: "quantitative",
            title: "rotations due in 1 s (max per 10 min)",
          },
          color: { field: "series", type: "nominal", title: null, legend: { orient: "bottom" } },
        },
      },
    )
  )
    written.push(rel("sim-herd.png"));
  // 2. Every day's peak over the year.
  const daily: Record<string, string | number>[] = [];
  for (const run of runs) {
    for (const d of run.result.days)
      daily.push({ day: d.day, peak: d.peakRotationsPerSecond, series: jitterLabel(run.jitter) });
  }
  if (
    await drawPng(
      join(RESULTS, "sim-daily-peak.png"),
      "Each day's peak: rotations due in one second",
      [
        `${params.identities.toLocaleString("en-US")} identities; mass registration on day ${params.massDay}`,
      ],
      daily,
      {
        mark: { type: "line", strokeWidth: 1.5 },
        encoding: {
          x: { field: "day", type: "quantitative", title: "simulated day" },
          y: {
            field: "peak",
            type: "quantitative",
            title: "rotations due in 1 s (log)",
            scale: { type: "log" },
          },
          color: { field: "series", type: "nominal", title: null, legend: { orient: "bottom" } },
        },
      },
    )
  )
    written.push(rel("sim-daily-peak.png"));
  // 3. Cost per day, both designs (log scale).
  const first = runs[0];
  if (first) {
    const rows: Record<string, string | number>[] = [];
    for (const [i, c] of first.costs.entries()) {
      rows.push({ day: i, value: c.kpRotor.wakeups, what: "wake-ups", design: "kp-rotor" });
      rows.push({ day: i, value: c.kpRotor.pg, what: "Postgres statements", design: "kp-rotor" });
      rows.push({ day: i, value: c.kpRotor.redis, what: "Redis commands", design: "kp-rotor" });
      rows.push({ day: i, value: c.poll.wakeups, what: "wake-ups", design: "5 s poll" });
      rows.push({ day: i, value: c.poll.pg, what: "Postgres statements", design: "5 s poll" });
    }
    if (
      await drawPng(
        join(RESULTS, "sim-costs.png"),
        "Cost per day: kp-rotor against the 5 s poll it replaces",
        [`ROTATION_JITTER ${first.jitter}; the poll issues no Redis commands`],
        rows,
        {
          mark: { type: "line", strokeWidth: 1.5 },
          encoding: {
            x: { field: "day", type: "quantitative", title: "simulated day" },
            y: {
              field: "value",
              type: "quantitative",
              title: "per day (log)",
              scale: { type: "log" },
            },
            color: { field: "what", type: "nominal", title: null, legend: { orient: "bottom" } },
            strokeDash: {
              field: "design",
              type: "nominal",
              title: null,
              legend: { orient: "bottom" },
            },
          },
        },
      )
    )
      written.push(rel("sim-costs.png"));
  }
  // 4. Redis memory over the year.
  const memory: Record<string, string | number>[] = [];
  for (const run of runs) {
    for (const [i, c] of run.costs.entries()) {
      memory.push({
        day: i,
        mib: round(c.kpRotor.redisBytesMax / 2 ** 20, 1),
        series: jitterLabel(run.jitter),
      });
    }
  }
  if (
    await drawPng(
      join(RESULTS, "sim-memory.png"),
      "kp-rotor's Redis memory for wake-up jobs (highest each day)",
      [
        `${REDIS_BYTES_PER_TIMER} B per job (BENCHMARKS.md): one rotation job per identity, one deletion job while a superseded package waits`,
      ],
      memory,
      {
        mark: { type: "line", strokeWidth: 1.5 },
        encoding: {
          x: { field: "day", type: "quantitative", title: "simulated day" },
          y: { field: "mib", type: "quantitative", title: "MiB", scale: { zero: false } },
          color: { field: "series", type: "nominal", title: null, legend: { orient: "bottom" } },
        },
      },
    )
  )
    written.push(rel("sim-memory.png"));
  return written;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
