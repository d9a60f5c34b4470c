/**
 * Reconcile after a full loss of Redis data, with and without the view before each page's arm
 * (ReconcileOptions.skipViewAfterLoss), in the same run on the same data.
 *
 *   npx tsx bench/reconcile-loss.ts [--identities 300000] [--rounds 3] [--report-only]
 *
 * On a private redis-server and a private database (removed afterwards): a template registered
 * and rotated once, copied by SQL to N identities (two wake-ups each, the worst case), armed once.
 * Then `--rounds` times, alternating which goes first: FLUSHALL, reconcile() viewing every page
 * (the walk before this change); FLUSHALL, reconcile() as it runs by default. Each run reports
 * its wall time, Redis' CPU seconds (INFO cpu) and Redis' commands. The figures are the medians
 * and the default's ratio to the viewing walk, per round, so machine noise hits both alike.
 * Writes bench/results/reconcile-loss.json and its section of BENCHMARKS.md (--report-only:
 * renders the section again from the stored result).
 */
import { readFile, writeFile } from "node:fs/promises";
import { cpus, loadavg } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import { loadConfig } from "../src/config.js";
import { createContext } from "../src/context.js";
import { createLogger } from "../src/logger.js";
import { reconcile } from "../src/services/reconcile.service.js";
import { randomName } from "../test/helpers/env.js";
import {
  benchEnv,
  createPrivateDatabase,
  defer,
  type Info,
  infoNumber,
  redisDelta,
  redisInfo,
  registerRotatedTemplate,
  ROOT,
  round,
  runMain,
  seedIdentities,
  startPrivateRedis,
  summarize,
  vacuumAnalyze,
  wholeNumber,
} from "./lib.js";
import { writeSection } from "./sections.js";

const DAY = 86_400_000;
const RESULT = join(ROOT, "bench/results/reconcile-loss.json");
const { values } = parseArgs({
  options: {
    identities: { type: "string" },
    rounds: { type: "string" },
    "report-only": { type: "boolean" },
  },
});
const N = Math.max(2, wholeNumber("identities", values.identities, 300_000));
const ROUNDS = Math.max(1, wholeNumber("rounds", values.rounds, 3));
const redisCpuS = (info: Info) =>
  infoNumber(info, "used_cpu_user") + infoNumber(info, "used_cpu_sys");
const log = (m: string) => console.error(`[reconcile-loss ${new Date().toISOString()}] ${m}`);

interface Run {
  walk: "viewing" | "default";
  round: number;
  ms: number;
  redisCpuS: number;
  redisCommands: number;
  pagesWithoutView: number;
  added: number;
}

interface Result {
  command: string;
  startedAt: string;
  identities: number;
  wakeups: number;
  rounds: number;
  /** 1-minute load average at the start and at the end. */
  load: number[];
  runs: Run[];
  ratio: { wall: number; redisCpu: number; redisCommands: number };
}

const median = (xs: number[]) => summarize(xs).p50;

function render(result: Result): string {
  const row = (walk: Run["walk"], label: string) => {
    const rs = result.runs.filter((r) => r.walk === walk);
    const ms = median(rs.map((r) => r.ms));
    return `| ${label} | ${round(ms / 1000, 1)} | ${Math.round((result.identities / ms) * 1000)} | ${median(rs.map((r) => r.redisCpuS))} | ${median(rs.map((r) => r.redisCommands))} | ${median(rs.map((r) => r.pagesWithoutView))} |`;
  };
  const n = (x: number) => x.toLocaleString("en");
  return [
    "## Reconcile after a full loss: the view skipped",
    "",
    `\`${result.command}\`, ${result.startedAt.slice(0, 16)} UTC, on ${cpus().length} cores; load average ${result.load.join(" → ")}. ${n(result.identities)} identities, ${n(result.wakeups)} wake-ups (two per identity), one private redis-server; ${result.rounds} rounds, each running both walks after a FLUSHALL, alternating which goes first. Medians:`,
    "",
    "| walk | s | identities/s | Redis CPU s | Redis commands | pages armed without a view |",
    "|---|---:|---:|---:|---:|---:|",
    row("viewing", "every page viewed, then armed (`skipViewAfterLoss: false`)"),
    row("default", "default: without a view once a page found most jobs missing"),
    "",
    `The default against the viewing walk, median of the per-round ratios: wall time ${result.ratio.wall}, Redis CPU ${result.ratio.redisCpu}, Redis commands ${result.ratio.redisCommands}.`,
    "",
  ].join("\n");
}

async function main(): Promise<void> {
  if (values["report-only"]) {
    const stored = JSON.parse(await readFile(RESULT, "utf8")) as Result;
    writeSection("reconcile-loss", render(stored));
    return;
  }
  const startedAt = new Date();
  const loadStart = loadavg()[0] ?? 0;
  const redisServer = await startPrivateRedis();
  const db = await createPrivateDatabase();
  const config = loadConfig(
    benchEnv(db, redisServer, randomName("kpl"), {
      ROTATION_INTERVAL: "30d",
      DELETION_GRACE: "30d",
    }),
  );
  const ctx = await createContext(config, createLogger("silent"), { migrate: true });
  defer("context", () => ctx.close());
  const redis = new Redis(redisServer.url);
  defer("redis", () => redis.quit());

  await registerRotatedTemplate(ctx, "tmpl-0");
  const now = Date.now();
  const seedMs = await seedIdentities(ctx.database.sql, {
    prefix: "loss-",
    count: N - 1,
    fromMs: now + DAY,
    toMs: now + 30 * DAY,
    templateId: "tmpl-0",
  });
  await vacuumAnalyze(config.databaseUrl);
  log(`seeded ${N - 1} identities in ${seedMs} ms; arming once`);
  await reconcile(ctx.rotor);

  const runs: Run[] = [];
  const measure = async (walk: Run["walk"], roundNo: number) => {
    await redis.flushall();
    const before = await redisInfo(redis);
    const started = performance.now();
    const report = await reconcile(ctx.rotor, { skipViewAfterLoss: walk === "default" });
    const ms = performance.now() - started;
    const after = await redisInfo(redis);
    const delta = redisDelta(before, after);
    const run: Run = {
      walk,
      round: roundNo,
      ms: Math.round(ms),
      redisCpuS: round(redisCpuS(after) - redisCpuS(before), 2),
      redisCommands: delta.commands,
      pagesWithoutView: report.pagesWithoutView.rotation + report.pagesWithoutView.deletion,
      added: report.repairs.rotation.add + report.repairs.deletion.add,
    };
    log(JSON.stringify(run));
    runs.push(run);
  };
  for (let r = 1; r <= ROUNDS; r++) {
    const order: Run["walk"][] = r % 2 === 1 ? ["viewing", "default"] : ["default", "viewing"];
    for (const walk of order) await measure(walk, r);
  }

  const of = (walk: Run["walk"]) => runs.filter((r) => r.walk === walk);
  const ratios = (key: "ms" | "redisCpuS" | "redisCommands") =>
    Array.from({ length: ROUNDS }, (_, i) => {
      const pick = (walk: Run["walk"]) => of(walk).find((r) => r.round === i + 1)?.[key] ?? 0;
      return pick("default") / pick("viewing");
    });
  const result: Result = {
    command: `npx tsx bench/reconcile-loss.ts ${process.argv.slice(2).join(" ")}`.trim(),
    startedAt: startedAt.toISOString(),
    identities: N,
    wakeups: of("default")[0]?.added ?? 0,
    rounds: ROUNDS,
    load: [loadStart, loadavg()[0] ?? 0].map((x) => round(x, 2)),
    runs,
    ratio: {
      wall: round(median(ratios("ms")), 3),
      redisCpu: round(median(ratios("redisCpuS")), 3),
      redisCommands: round(median(ratios("redisCommands")), 3),
    },
  };
  await writeFile(RESULT, `${JSON.stringify(result, null, 2)}\n`);
  writeSection("reconcile-loss", render(result));
  log(`ratios ${JSON.stringify(result.ratio)}`);
}

runMain(main);
