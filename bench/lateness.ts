/**
 * How late rotations start after their deadline, with many far-future wake-ups pending, and raw
 * BullMQ's lateness for delayed jobs on the same Redis as a baseline.
 *
 *   npx tsx bench/lateness.ts [--identities 2000] [--spread 20] [--pending 100000]
 *                             [--concurrency 16] [--lead ms] [--hz n] [--no-baseline]
 *
 * On a private redis-server (`--hz` passed to it when given) and a private database:
 *  1. one identity registered through the service, P "pending" copies with deadlines uniform in
 *     now+1d..now+30d inserted by SQL (lib.ts seedIdentities);
 *  2. the worker runtime starts in this process (startWorkerRuntime(ctx, ALL_HANDLERS), as
 *     workers/index.ts does); its start-up reconcile arms the P wake-ups and is awaited, so it
 *     does not compete with the measurement;
 *  3. N "due" identities are registered through the service (one real key package each: some
 *     versions seal key material bound to the identity id, so copied rows could not rotate),
 *     their deadlines then moved by SQL to uniform random times in T0..T0+S, and their wake-ups
 *     re-armed the way every service path arms them: pages of 500 ids locked FOR UPDATE in one
 *     transaction, timers.arm() per identity (what reconcile does per page, restricted to the new
 *     ids, so the P pending ones are not scanned again). T0 = now + lead, lead defaulting to
 *     2 s + 1 ms per identity; the margin left is printed.
 *     (The alternative, a short ROTATION_INTERVAL, would re-arm every identity after its first
 *     rotation; with ROTATION_INTERVAL=30d each identity rotates exactly once.)
 *  4. lateness = at - deadline of each "rotation" event with outcome "rotated" (`at`: the rotor
 *     clock once the row lock is held; in versions whose event also has `startedAt`, `at` is the
 *     decision after publishing and startedAt - deadline is shown too), and BullMQ's pickup:
 *     the worker's last "active" event for the job minus the deadline;
 *  5. baseline: a plain Queue/Worker pair on another prefix, the same P far-future jobs and N jobs
 *     at the same offsets from a new T0, an empty processor; lateness = processor start minus
 *     job.timestamp + job.opts.delay.
 *
 * Each rotation generates a key package on this process's event loop (about 3-5 ms of CPU, and
 * as much again of driver, Redis and Postgres work around it), so whatever the concurrency one
 * process tops out at roughly 100-150 rotations per second on a 2-vCPU machine (measured with
 * --spread 1). N / S must stay well below that, or the figure measures the backlog, not the
 * timer: the default 2000 / 20 s = 100/s is at that ceiling there; --spread 40 (50/s) is not.
 */
import { loadavg } from "node:os";
import { parseArgs } from "node:util";
import { type Job, Queue, Worker } from "bullmq";
import { Redis } from "ioredis";
import { loadConfig } from "../src/config.js";
import { createContext } from "../src/context.js";
import * as repo from "../src/db/identities.repo.js";
import { createLogger } from "../src/logger.js";
import { register } from "../src/services/identities.service.js";
import { startWorkerRuntime } from "../src/runtime/worker-process.js";
import { randomName } from "../test/helpers/env.js";
import { ALL_HANDLERS } from "../src/runtime/handlers.js";
import {
  benchEnv,
  createPrivateDatabase,
  defer,
  jobIdentityId,
  mapLimit,
  round,
  mulberry32,
  runMain,
  type Summary,
  seedIdentities,
  sleep,
  startPrivateRedis,
  summarize,
  table,
  vacuumAnalyze,
  wholeNumber,
} from "./lib.js";

const DAY = 86_400_000;
const PAGE = 500;

/** This benchmark's usage (--help), also listed by `kp-rotor bench --help`. */
const USAGE = `kp-rotor bench lateness [--identities 2000] [--spread 20] [--pending 100000]
      [--concurrency 16] [--lead ms] [--hz n] [--no-baseline]
      How late rotations start after their deadline with many wake-ups pending, against raw BullMQ.`;

const { values } = parseArgs({
  options: {
    help: { type: "boolean", default: false },
    identities: { type: "string" },
    spread: { type: "string" },
    pending: { type: "string" },
    concurrency: { type: "string" },
    lead: { type: "string" },
    hz: { type: "string" },
    "no-baseline": { type: "boolean", default: false },
  },
});
if (values.help) {
  // What `kp-rotor bench --help` prints for this benchmark.
  console.log(`  ${USAGE}`);
  process.exit(0);
}
const N = wholeNumber("identities", values.identities, 2000);
const SPREAD_S = wholeNumber("spread", values.spread, 20);
const PENDING = wholeNumber("pending", values.pending, 100_000);
const CONCURRENCY = wholeNumber("concurrency", values.concurrency, 16);
const LEAD_MS = wholeNumber("lead", values.lead, 2_000 + N);
const HZ = values.hz === undefined ? undefined : wholeNumber("hz", values.hz, 10);
if (N < 1 || SPREAD_S < 1) throw new Error("--identities and --spread must be at least 1");

const log = (msg: string) => console.error(`[lateness] ${msg}`);

await runMain(async () => {
  const loadAtStart = round(loadavg()[0] ?? 0, 2);
  const redisServer = await startPrivateRedis(HZ === undefined ? [] : ["--hz", String(HZ)]);
  const db = await createPrivateDatabase();
  log(`private database ${db.name}, redis-server on port ${redisServer.port}`);
  const measure = new Redis(redisServer.url);
  defer("measuring redis connection", () => measure.quit());
  const hz = ((await measure.config("GET", "hz")) as string[])[1];
  const dynamicHz = ((await measure.config("GET", "dynamic-hz")) as string[])[1];

  const env = benchEnv(db, redisServer, randomName("kpl"), {
    ROTATION_INTERVAL: "30d",
    WATCHDOG_INTERVAL: "10m",
    WORKER_CONCURRENCY: String(CONCURRENCY),
  });
  const config = loadConfig(env);
  const ctx = await createContext(config, createLogger("silent"), { migrate: true });
  const closeCtx = defer("context", () => ctx.close());
  const { rotor } = ctx;

  // Key generation alone: 50 in a row on an otherwise idle event loop.
  const keys = rotor.keys;
  const signatureKeys = await keys.generateSignatureKeyPair();
  const sequentialMs: number[] = [];
  for (let i = 0; i < 50; i++) {
    const t = performance.now();
    await keys.generate({
      identity: new TextEncoder().encode("calibrate"),
      signatureKeys,
      now: Date.now(),
    });
    sequentialMs.push(round(performance.now() - t, 2));
  }
  const keygenAlone = summarize(sequentialMs);
  log(`key generation alone: mean ${keygenAlone.mean} ms, p50 ${keygenAlone.p50} ms`);

  // Time every key generation during the run (wrapping the factory of this context only).
  const keygenMs: number[] = [];
  rotor.keys = {
    ...keys,
    generate: async (input) => {
      const t = performance.now();
      try {
        return await keys.generate(input);
      } finally {
        keygenMs.push(performance.now() - t);
      }
    },
  };

  // 1. Template and pending identities.
  const templateId = "tmpl-0";
  await register(rotor, templateId);
  const now = Date.now();
  const seedMs = await seedIdentities(ctx.database.sql, {
    prefix: "far-",
    count: PENDING,
    fromMs: now + DAY,
    toMs: now + 30 * DAY,
    templateId,
    seed: 0.1,
  });
  await vacuumAnalyze(ctx.config.databaseUrl);
  log(`seeded ${PENDING} pending identities in ${seedMs} ms`);

  // 2. Worker runtime; its start-up reconcile arms the pending wake-ups.
  const runtime = startWorkerRuntime(ctx, ALL_HANDLERS);
  const closeRuntime = defer("worker runtime", () => runtime.close());
  const reconcileStarted = Date.now();
  await runtime.startupReconcile;
  const reconcileMs = Date.now() - reconcileStarted;
  const delayed = await rotor.timers.queues.rotation.getDelayedCount();
  log(`start-up reconcile: ${reconcileMs} ms, ${delayed} rotation wake-ups delayed`);
  if (delayed < PENDING + 1) throw new Error(`expected ${PENDING + 1} delayed wake-ups`);

  // 3. Due identities: registered through the service, one real key package each (some versions
  // seal key material bound to the identity id, so a copied row could not rotate); then their
  // deadlines are moved by SQL to T0..T0+S and their wake-ups re-armed under the row lock.
  const dueIds = Array.from({ length: N }, (_, i) => `due-${String(i + 1).padStart(8, "0")}`);
  const registerStarted = Date.now();
  await mapLimit(dueIds, 16, (id) => register(rotor, id));
  const registerMs = Date.now() - registerStarted;
  log(`registered ${N} due identities in ${registerMs} ms`);

  // Observers (after the registrations, which may rotate inline).
  const isDue = (id: string) => id.startsWith("due-");
  const rotated = new Map<string, { at: number; startedAt?: number; deadline: number }>();
  const outcomes: Record<string, number> = {};
  const failed = new Map<string, string>();
  rotor.events.on("rotation", (e) => {
    if (!isDue(e.identityId)) return;
    outcomes[e.outcome] = (outcomes[e.outcome] ?? 0) + 1;
    if (e.outcome === "rotated" && e.deadline !== undefined) {
      const startedAt = (e as { startedAt?: number }).startedAt;
      rotated.set(e.identityId, { at: e.at, startedAt, deadline: e.deadline });
    }
  });
  rotor.events.on("wake-failed", (e) => {
    if (isDue(e.identityId)) failed.set(e.identityId, e.error);
  });
  // The last time BullMQ handed each due job to the processor (an early fire re-arms and comes
  // back, so the last one is the one that rotated).
  const activeAt = new Map<string, number>();
  const rotationWorker = runtime.workers.find((w) => w.kind === "rotation")?.worker;
  rotationWorker?.on("active", (job) => {
    const id = jobIdentityId(job);
    if (id !== undefined && isDue(id)) activeAt.set(id, Date.now());
  });

  const t0 = Date.now() + LEAD_MS;
  await ctx.database.sql.begin(async (tx) => {
    await tx`select setseed(0.2)`;
    await tx`
      update identities
      set rotation_deadline =
        to_timestamp((${t0}::float8 + random() * ${SPREAD_S * 1000}::float8) / 1000.0)
      where starts_with(id, 'due-')`;
  });
  // Epoch ms as float8: the drizzle driver hands timestamps back as strings.
  const due = await ctx.database.sql<{ id: string; deadline: number }[]>`
    select id, (extract(epoch from rotation_deadline) * 1000)::float8 as deadline from identities
    where starts_with(id, 'due-') order by id`;
  const armStarted = Date.now();
  for (let i = 0; i < due.length; i += PAGE) {
    const ids = due.slice(i, i + PAGE).map((r) => r.id);
    await rotor.db.transaction(async (tx) => {
      const locked = await repo.lockDeadlines(tx, ids);
      const at = rotor.clock();
      await Promise.all(
        locked.map((identity) =>
          rotor.timers.arm("rotation", identity.id, identity.rotationDeadline, at, identity.fence),
        ),
      );
    });
  }
  const armedAt = Date.now();
  const deadlines = due.map((r) => Math.round(Number(r.deadline)));
  const firstDeadline = Math.min(...deadlines);
  const lastDeadline = Math.max(...deadlines);
  const marginMs = firstDeadline - armedAt;
  log(
    `armed ${N} due wake-ups in ${armedAt - armStarted} ms; first deadline in ${marginMs} ms` +
      (marginMs < 0 ? " (WARNING: arming overran the first deadlines; raise --lead)" : ""),
  );

  // 4. Wait for every due identity to rotate (or to have failed at least once each).
  const waitUntil = lastDeadline + Math.max(30_000, N * 20);
  while (rotated.size < N && failed.size < N && Date.now() < waitUntil) await sleep(100);
  const done = [...rotated.entries()];
  const rotor1 = summarize(done.map(([, r]) => r.at - r.deadline));
  const started = done.flatMap(([, r]) =>
    r.startedAt === undefined ? [] : [r.startedAt - r.deadline],
  );
  const started1 = started.length > 0 ? summarize(started) : undefined;
  const pickup1 = summarize(
    done.flatMap(([id, r]) => {
      const a = activeAt.get(id);
      return a === undefined ? [] : [a - r.deadline];
    }),
  );
  const firstAt = Math.min(...done.map(([, r]) => r.at));
  const lastAt = Math.max(...done.map(([, r]) => r.at));
  const keygen = summarize(keygenMs.map((x) => round(x, 2)));
  await closeRuntime();
  await closeCtx();
  log(`kp-rotor: ${rotated.size}/${N} rotated, p99 ${rotor1.p99} ms`);
  if (failed.size > 0) {
    log(`${failed.size} due identities had failed wake-ups, e.g.: ${[...failed.values()][0]}`);
  }

  // 5. Raw BullMQ baseline on the same Redis.
  let raw: Summary | undefined;
  if (!values["no-baseline"]) {
    raw = await baseline(
      redisServer.url,
      deadlines.map((d) => d - t0),
    );
    log(`raw BullMQ: ${raw.count}/${N} processed, p99 ${raw.p99} ms`);
  }

  const rows: (string | number)[][] = [["kp-rotor: at - deadline", ...cells(rotor1)]];
  if (started1) rows.push(["kp-rotor: startedAt - deadline", ...cells(started1)]);
  rows.push(["kp-rotor: BullMQ active - deadline", ...cells(pickup1)]);
  if (raw) rows.push(["raw BullMQ: start - due", ...cells(raw)]);
  console.log();
  console.log(
    `N=${N} due identities over ${SPREAD_S} s (${round(N / SPREAD_S, 1)}/s), P=${PENDING} pending, ` +
      `concurrency ${CONCURRENCY}, Redis hz=${hz} dynamic-hz=${dynamicHz}, ` +
      `load average (1 min) ${loadAtStart} at start, ${round(loadavg()[0] ?? 0, 2)} at end`,
  );
  console.log(
    `start-up reconcile of ${PENDING + 1}: ${reconcileMs} ms (${Math.round(((PENDING + 1) / reconcileMs) * 1000)}/s); ` +
      `registering ${N}: ${registerMs} ms; arming ${N}: ${armedAt - armStarted} ms, margin ${marginMs} ms; ` +
      `outcomes ${JSON.stringify(outcomes)}, identities with failed wake-ups ${failed.size}; ` +
      `key generation alone ${keygenAlone.mean} ms, during the run (wall time, interleaved) mean ${keygen.mean} ms p99 ${keygen.p99} ms; ` +
      `rotations spread over ${lastAt - firstAt} ms`,
  );
  console.log();
  console.log(table(["lateness (ms)", "count", "p50", "p90", "p99", "max", "mean", "min"], rows));
  console.log();
  console.log(
    JSON.stringify({
      bench: "lateness",
      identities: N,
      spreadSeconds: SPREAD_S,
      pending: PENDING,
      concurrency: CONCURRENCY,
      redisHz: Number(hz),
      dynamicHz,
      reconcileMs,
      armMs: armedAt - armStarted,
      marginMs,
      outcomes,
      registerMs,
      failedIdentities: failed.size,
      firstFailure: [...failed.values()][0] ?? null,
      keygenAloneMs: keygenAlone,
      keygenDuringRunMs: keygen,
      kpRotor: rotor1,
      kpRotorStartedAt: started1 ?? null,
      kpRotorPickup: pickup1,
      rawBullmq: raw ?? null,
      loadavgAtStart: loadAtStart,
      loadavg: loadavg().map((x) => round(x, 2)),
    }),
  );
});

function cells(s: Summary): (string | number)[] {
  return [s.count, s.p50, s.p90, s.p99, s.max, s.mean, s.min];
}

/** Plain BullMQ: P far-future jobs plus one job per offset after a new T0; empty processor. */
async function baseline(redisUrl: string, offsets: number[]): Promise<Summary> {
  const prefix = "rawbench";
  const connection = new Redis(redisUrl, { maxRetriesPerRequest: null });
  defer("baseline connection", () => connection.quit());
  const queue = new Queue("raw", { connection, prefix });
  defer("baseline queue", () => queue.close());
  const lateness: number[] = [];
  const worker = new Worker(
    "raw",
    async (job: Job) => {
      lateness.push(Date.now() - (job.timestamp + (job.opts.delay ?? 0)));
    },
    { connection, prefix, concurrency: CONCURRENCY },
  );
  const closeWorker = defer("baseline worker", () => worker.close());
  await worker.waitUntilReady();

  const chunk = 1000;
  const random = mulberry32(42);
  const pendingStarted = Date.now();
  for (let i = 0; i < PENDING; i += chunk) {
    const now = Date.now();
    await queue.addBulk(
      Array.from({ length: Math.min(chunk, PENDING - i) }, () => ({
        name: "far",
        data: {},
        opts: {
          delay: Math.round(DAY + random() * 29 * DAY),
          timestamp: now,
          removeOnComplete: true,
        },
      })),
    );
  }
  log(`baseline: ${PENDING} far-future jobs added in ${Date.now() - pendingStarted} ms`);

  const t0 = Date.now() + LEAD_MS;
  for (let i = 0; i < offsets.length; i += chunk) {
    const now = Date.now();
    await queue.addBulk(
      offsets.slice(i, i + chunk).map((offset) => ({
        name: "due",
        data: {},
        opts: { delay: Math.max(0, t0 + offset - now), timestamp: now, removeOnComplete: true },
      })),
    );
  }
  const margin = t0 + Math.min(...offsets) - Date.now();
  if (margin < 0) log(`baseline WARNING: adding overran the first due times by ${-margin} ms`);
  const waitUntil = t0 + Math.max(...offsets) + 30_000;
  while (lateness.length < offsets.length && Date.now() < waitUntil) await sleep(100);
  await closeWorker();
  return summarize(lateness);
}
