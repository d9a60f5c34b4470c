/**
 * kp-rotor itself: its services (register, reconcile, pullInMany, timers.arm) and its worker
 * runtime in this process (startWorkerRuntime(ctx, ALL_HANDLERS), as bench/lateness.ts and
 * workers/index.ts do), on a private redis-server and a private database.
 *
 * Scheduling cost: register() generates a key package, so it is not a timer benchmark. The
 * pending identities are instead inserted by SQL (copies of one registered template that has
 * been rotated once, so each copy has a current and a superseded key package) and armed by
 * reconcile(): both timers per identity, each armed under the row lock with timers.arm's plan.
 */
import { randomBytes } from "node:crypto";
import { loadConfig } from "../../src/config.js";
import { type Context, createContext } from "../../src/context.js";
import * as repo from "../../src/db/identities.repo.js";
import { createLogger } from "../../src/logger.js";
import { pullInMany, register } from "../../src/services/identities.service.js";
import { reconcile } from "../../src/services/reconcile.service.js";
import { startWorkerRuntime, type WorkerRuntime } from "../../src/worker-process.js";
import { randomName } from "../../test/helpers/env.js";
import { ALL_HANDLERS } from "../../workers/index.js";
import { defer, mapLimit, round, seedIdentities, vacuumAnalyze } from "../lib.js";
import {
  DAY,
  type Infra,
  type LatenessResult,
  measuringRedis,
  type Params,
  type Peer,
  sleep,
  summarize,
  usedMemory,
  waitFor,
} from "./common.js";

const PAGE = 500;

export async function kpRotor(infra: Infra, concurrency = 16): Promise<Peer> {
  const redis = await infra.newRedis();
  const database = await infra.newDatabase();
  const env = {
    DATABASE_URL: database.url,
    REDIS_URL: redis.url,
    QUEUE_PREFIX: randomName("kpp"),
    LOG_LEVEL: "silent",
    KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64"),
    METRICS_PORT: "0",
    ROTATION_INTERVAL: "30d",
    WATCHDOG_INTERVAL: "10m",
    WORKER_CONCURRENCY: String(concurrency),
  };
  const config = loadConfig(env);
  const ctx: Context = await createContext(config, createLogger("silent"), { migrate: true });
  defer("kp-rotor context", () => ctx.close());
  const { rotor } = ctx;
  const measure = measuringRedis(redis.url);
  let runtime: WorkerRuntime | undefined;

  const rotatedEvents = new Map<string, { at: number; startedAt: number; deadline: number }>();
  rotor.events.on("rotation", (e) => {
    if (e.outcome === "rotated" && e.deadline !== undefined) {
      rotatedEvents.set(e.identityId, { at: e.at, startedAt: e.startedAt, deadline: e.deadline });
    }
  });

  async function startRuntime() {
    runtime = startWorkerRuntime(ctx, ALL_HANDLERS);
    const r = runtime;
    defer("kp-rotor runtime", () => r.close());
    await r.startupReconcile;
  }

  return {
    name: "kp-rotor",
    settings: {
      runtime:
        "startWorkerRuntime(ctx, ALL_HANDLERS) in the benchmark process (rotation + deletion BullMQ workers, start-up reconcile, watchdog)",
      WORKER_CONCURRENCY: concurrency,
      "WORKER_LOCK_DURATION / WORKER_STALLED_INTERVAL": "30 s / 30 s (defaults)",
      WATCHDOG_INTERVAL: "10 min (default)",
      ROTATION_INTERVAL: "30 d",
      processor:
        "the real rotation: lock, ts-mls key generation, seal, store, publish (directory), promote, re-arm",
      "scheduling cost":
        "reconcile() of pre-seeded identities (timers.arm per identity under row locks, pages of 500), both timers",
      reschedule:
        "identities.pullInMany(ids, WELCOME_ROTATION_DELAY = 5 s), batches of 1,000 ids, workers stopped",
    },
    redis,
    database,
    async schedule(p: Params) {
      // Template: registered (one key package), then rotated once so it also has a superseded
      // key package (and so a deletion deadline) that the SQL copies inherit.
      await register(rotor, "tmpl-0");
      await startRuntime();
      await pullInMany(rotor, ["tmpl-0"], 0);
      await waitFor(() => (rotatedEvents.has("tmpl-0") ? 1 : 0), 1, Date.now() + 30_000);
      if (!rotatedEvents.has("tmpl-0")) throw new Error("kp-rotor: template did not rotate");
      await runtime?.close();
      runtime = undefined;
      const now = Date.now();
      const seedMs = await seedIdentities(ctx.database.sql, {
        prefix: "id-",
        count: p.identities - 1,
        fromMs: now + DAY,
        toMs: now + 30 * DAY,
        templateId: "tmpl-0",
      });
      await vacuumAnalyze(ctx.database.sql);
      const before = await usedMemory(measure);
      const report = await reconcile(rotor);
      const bytes = (await usedMemory(measure)) - before;
      const timers =
        report.repairs.rotation.add +
        report.repairs.deletion.add +
        report.repairs.rotation.reschedule +
        report.repairs.deletion.reschedule;
      return {
        what: "reconcile() of pre-seeded identities into an empty Redis (both timers armed)",
        count: p.identities,
        ms: report.durationMs,
        perS: Math.round((report.identities / report.durationMs) * 1000),
        redisBytesPerIdentity: Math.round(bytes / p.identities),
        redisBytesPerTimer: timers > 0 ? Math.round(bytes / timers) : undefined,
        timersPerIdentity: round(timers / p.identities, 2),
        extra: { seedMs, repairs: report.repairs, identities: report.identities },
      };
    },
    async startWorkers() {
      await startRuntime();
    },
    async lateness(p: Params): Promise<LatenessResult> {
      // Due identities need a real registration each (sealed keys are bound to the identity id).
      const ids = Array.from({ length: p.due }, (_, i) => `due-${String(i).padStart(6, "0")}`);
      const regStarted = performance.now();
      await mapLimit(ids, 16, (id) => register(rotor, id));
      const registerMs = performance.now() - regStarted;
      const activeAt = new Map<string, number>();
      const worker = runtime?.workers.find((w) => w.kind === "rotation")?.worker;
      const onActive = (job: { data: { identityId: string } }) => {
        if (job.data.identityId.startsWith("due-")) activeAt.set(job.data.identityId, Date.now());
      };
      worker?.on("active", onActive);
      for (const id of ids) rotatedEvents.delete(id);
      const t0 = Date.now() + p.leadMs;
      await ctx.database.sql.begin(async (tx) => {
        await tx`select setseed(0.2)`;
        await tx`
          update identities
          set rotation_deadline =
            to_timestamp((${t0}::float8 + random() * ${p.spreadS * 1000}::float8) / 1000.0)
          where starts_with(id, 'due-')`;
      });
      const due = await ctx.database.sql<{ id: string; deadline: number }[]>`
        select id, (extract(epoch from rotation_deadline) * 1000)::float8 as deadline
        from identities where starts_with(id, 'due-') order by id`;
      for (let i = 0; i < due.length; i += PAGE) {
        const page = due.slice(i, i + PAGE).map((r) => r.id);
        await rotor.db.transaction(async (tx) => {
          const locked = await repo.lockIdentities(tx, page);
          const at = rotor.clock();
          await Promise.all(
            locked.map((identity) =>
              rotor.timers.arm("rotation", identity.id, identity.rotationDeadline, at),
            ),
          );
        });
      }
      const margin = Math.min(...due.map((r) => Number(r.deadline))) - Date.now();
      const last = Math.max(...due.map((r) => Number(r.deadline)));
      const count = () => ids.filter((id) => rotatedEvents.has(id)).length;
      await waitFor(count, ids.length, last + 30_000);
      worker?.off("active", onActive);
      const done = ids.flatMap((id) => {
        const r = rotatedEvents.get(id);
        return r ? [{ id, ...r }] : [];
      });
      const pickup = done.flatMap((r) => {
        const a = activeAt.get(r.id);
        return a === undefined ? [] : [a - r.deadline];
      });

      // Rotations/s: all due identities pulled in to "now" at once, real rotations back to back.
      for (const id of ids) rotatedEvents.delete(id);
      const burstStarted = performance.now();
      for (let i = 0; i < ids.length; i += 1000) await pullInMany(rotor, ids.slice(i, i + 1000), 0);
      await waitFor(count, ids.length, Date.now() + 60_000);
      const burstMs = performance.now() - burstStarted;
      const rotationsPerS = Math.round((count() / burstMs) * 1000);

      // Bare ts-mls generations/s on the same event loop, for the ratio.
      const sig = await rotor.keys.generateSignatureKeyPair();
      const identity = new TextEncoder().encode("bench");
      const bareN = Math.max(100, Math.min(500, p.due));
      for (let i = 0; i < 20; i++)
        await rotor.keys.generate({ identity, signatureKeys: sig, now: Date.now() });
      const bareStarted = performance.now();
      for (let i = 0; i < bareN; i++)
        await rotor.keys.generate({ identity, signatureKeys: sig, now: Date.now() });
      const bareMs = performance.now() - bareStarted;
      const bareGenerationsPerS = Math.round((bareN / bareMs) * 1000);
      await sleep(0);

      return {
        what: "real rotation: start (startedAt, before the row lock) - deadline",
        count: done.length,
        expected: ids.length,
        lateness: summarize(done.map((r) => round(r.startedAt - r.deadline, 1))),
        extra: {
          decided: summarize(done.map((r) => round(r.at - r.deadline, 1))),
          bullmqPickup: summarize(pickup.map((x) => round(x, 1))),
          registerMs: Math.round(registerMs),
          armMarginMs: Math.round(margin),
          rotationsPerS,
          rotationsBurst: count(),
          bareGenerationsPerS,
          rotationRatio: round(rotationsPerS / bareGenerationsPerS, 3),
        },
      };
    },
    async stopWorkers() {
      await runtime?.close();
      runtime = undefined;
    },
    async reschedule(p: Params) {
      const n = Math.min(p.reschedules, p.identities - 1);
      const ids = Array.from({ length: n }, (_, i) => `id-${String(i + 1).padStart(8, "0")}`);
      const started = performance.now();
      let changed = 0;
      for (let i = 0; i < n; i += 1000) {
        const { results } = await pullInMany(
          rotor,
          ids.slice(i, i + 1000),
          rotor.timing.welcomeRotationDelayMs,
        );
        changed += results.filter((r) => r.changed).length;
      }
      const ms = performance.now() - started;
      if (changed !== n) infra.log(`kp-rotor: ${changed}/${n} pull-ins changed a deadline`);
      return {
        what: "identities.pullInMany(1,000 ids, 5 s): lock, min(deadline, now+5 s), UPDATE, arm (changeDelay) per id",
        count: n,
        ms: Math.round(ms),
        perS: Math.round((n / ms) * 1000),
      };
    },
    async close() {},
  };
}
