/**
 * How long the service takes to heal lost wake-ups by itself, with nobody running reconcile.
 *
 *   npx tsx bench/heal.ts [--identities 10000] [--runs 3] [--partial-runs 3] [--partial-share 0.01]
 *                         [--env KEY=VALUE ...]
 *
 * On a private redis-server and a private database (removed afterwards): registers one identity
 * through the service, seeds the rest by SQL (rotation deadlines uniform in now+1d..now+30d),
 * runs reconcile, then spawns one worker process (`workers/index.ts`, as deployed) with the
 * service's default settings (RECONCILE_CHECK_INTERVAL 15 s, WATCHDOG_INTERVAL 10 min) unless
 * --env overrides them. Then, `--runs` times each:
 *  - full loss: FLUSHALL; healed when the reconcile mark is back and every rotation wake-up is;
 *  - partial loss: a share of the delayed rotation wake-ups deleted, the mark intact; healed when
 *    the rotation queue holds one wake-up per identity again.
 * Heal time is measured from the loss, polled every 100 ms. Prints each run and the medians.
 * A partial-loss run with the default WATCHDOG_INTERVAL takes up to 10 minutes.
 */
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
  createPrivateDatabase,
  defer,
  runCleanups,
  runMain,
  seedIdentities,
  sleep,
  spawnWorker,
  startPrivateRedis,
  summarize,
  table,
  wholeNumber,
} from "./lib.js";

const DAY = 86_400_000;
const { values } = parseArgs({
  options: {
    identities: { type: "string" },
    runs: { type: "string" },
    "partial-runs": { type: "string" },
    "partial-share": { type: "string" },
    env: { type: "string", multiple: true },
  },
});
const N = Math.max(2, wholeNumber("identities", values.identities, 10_000));
const RUNS = wholeNumber("runs", values.runs, 3);
const PARTIAL_RUNS = wholeNumber("partial-runs", values["partial-runs"], 3);
const SHARE = Number(values["partial-share"] ?? "0.01");
const OVERRIDES = Object.fromEntries(
  (values.env ?? []).map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]),
);

async function main(): Promise<void> {
  const redisServer = await startPrivateRedis();
  const db = await createPrivateDatabase();
  const prefix = randomName("kph");
  const env = benchEnv(db, redisServer, prefix, OVERRIDES);
  const config = loadConfig(env);
  const ctx = await createContext(config, createLogger("silent"), { migrate: true });
  defer("context", () => ctx.close());
  const redis = new Redis(redisServer.url);
  defer("redis", () => redis.quit());
  await register(ctx.rotor, "tmpl-0");
  const now = Date.now();
  await seedIdentities(ctx.database.sql, {
    prefix: "heal-",
    count: N - 1,
    fromMs: now + DAY,
    toMs: now + 30 * DAY,
    templateId: "tmpl-0",
  });
  await reconcile(ctx.rotor);
  spawnWorker(env);
  const timers = ctx.rotor.timers;
  const mark = `${prefix}:kp-rotor:reconciled`;
  const healedWithin = async (since: number, healed: () => Promise<boolean>) => {
    for (;;) {
      if (await healed()) return Date.now() - since;
      if (Date.now() - since > 20 * 60_000) throw new Error("not healed within 20 minutes");
      await sleep(100);
    }
  };
  const allArmed = async () => (await timers.countWakeups("rotation")) === N;
  await healedWithin(Date.now(), allArmed);
  await sleep(2_000);

  const rows: (string | number)[][] = [];
  const full: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const since = Date.now();
    await redis.flushall();
    const ms = await healedWithin(
      since,
      async () => (await redis.exists(mark)) === 1 && allArmed(),
    );
    full.push(ms);
    rows.push(["full loss (FLUSHALL)", i + 1, N, ms]);
    console.error(`full loss run ${i + 1}: ${ms} ms`);
    await sleep(3_000);
  }
  const partial: number[] = [];
  for (let i = 0; i < PARTIAL_RUNS; i++) {
    const delayed = await redis.zrange(`${prefix}:rotation:delayed`, 0, -1);
    const lost = delayed.filter((_, k) => k % Math.max(1, Math.round(1 / SHARE)) === 0);
    const since = Date.now();
    const pipeline = redis.pipeline();
    for (const jobId of lost) {
      pipeline.zrem(`${prefix}:rotation:delayed`, jobId);
      pipeline.del(`${prefix}:rotation:${jobId}`);
    }
    await pipeline.exec();
    const ms = await healedWithin(since, allArmed);
    partial.push(ms);
    rows.push(["partial loss, mark intact", i + 1, lost.length, ms]);
    console.error(`partial loss run ${i + 1} (${lost.length} lost): ${ms} ms`);
  }
  await runCleanups();
  console.log(table(["loss", "run", "wake-ups lost", "heal ms"], rows));
  const median = (xs: number[]) => (xs.length === 0 ? "-" : summarize(xs).p50);
  console.log(
    JSON.stringify({
      identities: N,
      settings: {
        RECONCILE_CHECK_INTERVAL: config.markCheckIntervalMs,
        WATCHDOG_INTERVAL: config.watchdogIntervalMs,
      },
      fullLossMedianMs: median(full),
      partialLossMedianMs: median(partial),
      full,
      partial,
    }),
  );
}

void runMain(main);
