/**
 * kp-rotor itself: its services (register, reconcile, pullInMany, timers.arm) and its worker
 * runtime in this process (startWorkerRuntime(ctx, ALL_HANDLERS), as bench/lateness.ts and
 * workers/index.ts do), on a private redis-server and a private database.
 *
 * Scheduling cost: register() generates a key package, so it is not a timer benchmark. The
 * pending identities are instead written by SQL, as a bulk import would write them (copies of
 * one registered template that has been rotated once, so each copy has a current and a
 * superseded key package), and armed by reconcile() into an empty Redis: both timers per
 * identity, each armed under the row lock with timers.arm's plan. The figure is the sum of the
 * two, timed in the same run, with the parts kept apart (writeMs, armMs).
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { Redis } from "ioredis";
import { freePort } from "../../test/helpers/env.js";
import { loadConfig } from "../../src/config.js";
import { type Context, createContext } from "../../src/context.js";
import * as repo from "../../src/db/identities.repo.js";
import { createLogger } from "../../src/logger.js";
import { pullInMany, register } from "../../src/services/identities.service.js";
import { reconcile } from "../../src/services/reconcile.service.js";
import { startWorkerRuntime, type WorkerRuntime } from "../../src/runtime/worker-process.js";
import { randomName } from "../../test/helpers/env.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";
import {
  benchEnv,
  bulkWrite,
  defer,
  jobIdentityId,
  mapLimit,
  round,
  seedIdentities,
  sleep as pause,
  spawnService,
  vacuumAnalyze,
} from "../lib.js";
import {
  DAY,
  eventStreamBytes,
  type HttpIngestResult,
  type Infra,
  type LatenessResult,
  type Params,
  type Peer,
  type ScheduleResult,
  sleep,
  summarize,
  usedMemory,
  waitFor,
} from "./common.js";
import { shuffled, welcomeLoad } from "./ingest.js";
import { bareTsMls } from "../bare-ts-mls.js";

const PAGE = 500;

/** user + system CPU time of a process from /proc (Linux), in ms; undefined elsewhere. */
function processCpuMs(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(fields[11]) + Number(fields[12]);
    return (ticks * 1000) / 100;
  } catch {
    return undefined;
  }
}

export interface KpRotorOptions {
  concurrency: number;
  /** Also measure Redis memory in steady state (a second reconcile; see schedule()). */
  steadyState: boolean;
  /** LOG_LEVEL of the API process of the HTTP ingest test (the service default is info). */
  apiLogLevel: string;
}

export async function kpRotor(infra: Infra, options: KpRotorOptions): Promise<Peer> {
  const { concurrency } = options;
  const redis = await infra.newRedis();
  const database = await infra.newDatabase();
  const env = benchEnv(database, redis, randomName("kpp"), {
    ROTATION_INTERVAL: "30d",
    WATCHDOG_INTERVAL: "10m",
    WORKER_CONCURRENCY: String(concurrency),
  });
  const config = loadConfig(env);
  const ctx: Context = await createContext(config, createLogger("silent"), { migrate: true });
  const closeContext = defer("kp-rotor context", () => ctx.close());
  const { rotor } = ctx;
  const measure = new Redis(redis.url);
  const closeMeasure = defer("kp-rotor measuring redis", () => measure.quit());
  let runtime: WorkerRuntime | undefined;

  const rotatedEvents = new Map<string, { at: number; startedAt: number; deadline: number }>();
  rotor.events.on("rotation", (e) => {
    if (e.outcome === "rotated" && e.deadline !== undefined) {
      rotatedEvents.set(e.identityId, { at: e.at, startedAt: e.startedAt, deadline: e.deadline });
    }
  });

  let closeRuntime: (() => Promise<void>) | undefined;
  const settings: Record<string, string | number | boolean> = {};
  async function startRuntime(workerConcurrency = concurrency) {
    // WORKER_CONCURRENCY of this start (the idle windows measure more than one).
    runtime = startWorkerRuntime(
      { ...ctx, config: { ...ctx.config, workerConcurrency } },
      ALL_HANDLERS,
    );
    const r = runtime;
    settings["BullMQ Workers in the process"] =
      `${r.workers.length} (${r.workers.map((w) => w.kind).join(", ")})`;
    closeRuntime = defer("kp-rotor runtime", () => r.close());
    await r.startupReconcile;
  }
  async function stopRuntime() {
    await closeRuntime?.();
    closeRuntime = undefined;
    runtime = undefined;
  }
  /** Identities the batch reschedule pulls in (id-00000001 …); the HTTP ingest takes the rest. */
  const batchCount = (p: Params) => Math.min(p.reschedules, p.identities - 1);

  return {
    name: "kp-rotor",
    settings: Object.assign(settings, {
      runtime:
        "startWorkerRuntime(ctx, ALL_HANDLERS) in the benchmark process, as workers/index.ts runs it (its workers, start-up reconcile and watchdog)",
      WORKER_CONCURRENCY: `${concurrency} (the service default is 16); the idle windows set their own and say which`,
      "WORKER_LOCK_DURATION / WORKER_STALLED_INTERVAL": "30 s / 30 s (defaults)",
      WATCHDOG_INTERVAL: "10 min (default)",
      ROTATION_INTERVAL: "30 d",
      processor:
        "the real handlers (ALL_HANDLERS of workers/index.ts): real ts-mls key packages, sealed and stored in Postgres, published to the directory",
      "scheduling cost":
        "durable write of the identity rows (one SQL transaction: an identity row and two key package rows per identity, copied from a once-rotated template, as a bulk import would write them) + the arm: reconcile() (its default page size), both timers, into an empty Redis (FLUSHALL); both timed in the same run, VACUUM ANALYZE between them not timed",
      reschedule:
        "identities.pullInMany(ids, WELCOME_ROTATION_DELAY = 5 s), batches of 1,000 ids, workers stopped",
      "HTTP ingest": `separate \`kp-rotor api\` process (node --import tsx src/cli/main.ts api) on the same private Postgres database and Redis, LOG_LEVEL ${options.apiLogLevel} (service default info; its stdout to /dev/null), RATE_LIMIT_MAX 10,000,000 per 1 min (the limiter stays on, raised so one load generator is not throttled; default 60,000), MAX_IN_FLIGHT default; workers stopped`,
      "memory population":
        "worst case: every identity a rotation and a deletion timer (copies of a once-rotated template); steady state: the superseded key packages of all but every 30th identity (ROTATION_INTERVAL / DELETION_GRACE) deleted and reconciled away",
    }),
    redis,
    database,
    concurrencyKnob: "WORKER_CONCURRENCY (jobs at once per BullMQ Worker of the process)",
    async schedule(p: Params) {
      // Template: registered (one key package), then rotated once so it also has a superseded
      // key package (and so a deletion deadline) that the SQL copies inherit.
      await register(rotor, "tmpl-0");
      await startRuntime();
      await pullInMany(rotor, ["tmpl-0"], 0);
      await waitFor(() => (rotatedEvents.has("tmpl-0") ? 1 : 0), 1, Date.now() + 30_000);
      if (!rotatedEvents.has("tmpl-0")) throw new Error("kp-rotor: template did not rotate");
      await stopRuntime();
      const now = Date.now();
      const seedMs = await seedIdentities(ctx.database.sql, {
        prefix: "id-",
        count: p.identities - 1,
        fromMs: now + DAY,
        toMs: now + 30 * DAY,
        templateId: "tmpl-0",
      });
      await vacuumAnalyze(ctx.config.databaseUrl);
      infra.log(`kp-rotor: seeded ${p.identities - 1} identities by SQL in ${seedMs} ms`);
      // What the write put in Postgres, per identity (the template included).
      const [written] = await ctx.database.sql<{ identities: string; packages: string }[]>`
        select (select count(*) from identities) as identities,
               (select count(*) from key_packages) as packages`;
      const identityRows = Number(written?.identities ?? 0);
      const packageRows = Number(written?.packages ?? 0);
      // Worst case: every identity has both timers. Reconcile into an emptied Redis (FLUSHALL).
      await measure.flushall();
      const before = await usedMemory(measure);
      const report = await reconcile(rotor);
      const bytes = (await usedMemory(measure)) - before;
      const streams = await eventStreamBytes(measure);
      const timers =
        report.repairs.rotation.add +
        report.repairs.deletion.add +
        report.repairs.rotation.reschedule +
        report.repairs.deletion.reschedule;
      infra.log(
        `kp-rotor: reconcile of ${report.identities} identities (${timers} timers) after FLUSHALL in ${report.durationMs} ms`,
      );

      // Steady state: every identity keeps its rotation timer, only those rotated within the
      // last deletion grace keep a superseded key package and so a deletion timer: one in
      // ROTATION_INTERVAL / DELETION_GRACE (30 d / 1 d: every 30th). The others' superseded key
      // packages are deleted in SQL and a reconcile removes their deletion timers, as the
      // service does; used_memory is then compared with the empty Redis of before.
      let steadyState: ScheduleResult["steadyState"];
      if (options.steadyState) {
        const every = Math.max(
          1,
          Math.round(rotor.timing.rotationIntervalMs / rotor.timing.deletionGraceMs),
        );
        await bulkWrite(
          ctx.database.sql,
          (tx) => tx`
            delete from key_packages k using identities i
            where k.identity_id = i.id and starts_with(i.id, 'id-') and k.delete_at is not null
              and right(i.id, 8)::int % ${every}::int <> 0`,
        );
        const second = await reconcile(rotor);
        const steadyBytes = (await usedMemory(measure)) - before;
        // Identities that keep a deletion deadline (from Postgres, the truth).
        const [kept] = await ctx.database.sql<{ n: string }[]>`
          select count(distinct identity_id) as n from key_packages where delete_at is not null`;
        const deletionTimers = Number(kept?.n ?? 0);
        steadyState = {
          redisBytesPerIdentity: Math.round(steadyBytes / p.identities),
          deletionTimersPerIdentity: round(deletionTimers / p.identities, 4),
          reconcileMs: second.durationMs,
        };
        await vacuumAnalyze(ctx.config.databaseUrl);
        infra.log(
          `kp-rotor: steady state (deletion timer on 1 in ${every}): ${steadyState.redisBytesPerIdentity} B/identity`,
        );
      }
      const armMs = report.durationMs;
      const ms = seedMs + armMs;
      return {
        what: "durable write of the identity rows (SQL seed: one transaction, an identity row and two key package rows per identity) + reconcile() into an empty Redis after FLUSHALL (both timers armed), timed in the same run",
        count: p.identities,
        ms,
        perS: Math.round((report.identities / ms) * 1000),
        writeMs: seedMs,
        armMs,
        rowsPerIdentity:
          identityRows > 0 ? round((identityRows + packageRows) / identityRows, 2) : undefined,
        rows: `${identityRows} identities + ${packageRows} key_packages rows (a current and a superseded key package each, with their sealed private keys)`,
        redisBytesPerIdentity: Math.round(bytes / p.identities),
        redisBytesPerTimer: timers > 0 ? Math.round(bytes / timers) : undefined,
        timersPerIdentity: round(timers / p.identities, 2),
        eventStreamBytes: streams,
        ...(steadyState ? { steadyState } : {}),
        extra: { seedMs, repairs: report.repairs, identities: report.identities },
      };
    },
    async startWorkers(workerConcurrency: number) {
      await startRuntime(workerConcurrency);
    },
    async lateness(p: Params): Promise<LatenessResult> {
      // Due identities need a real registration each (sealed keys are bound to the identity id).
      const ids = Array.from({ length: p.due }, (_, i) => `due-${String(i).padStart(6, "0")}`);
      const regStarted = performance.now();
      await mapLimit(ids, 16, (id) => register(rotor, id));
      const registerMs = performance.now() - regStarted;
      const activeAt = new Map<string, number>();
      const worker = runtime?.workers.find((w) => w.kind === "rotation")?.worker;
      const onActive = (job: { id?: string | undefined; data?: unknown }) => {
        const id = jobIdentityId(job);
        if (id?.startsWith("due-")) activeAt.set(id, Date.now());
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
          const locked = await repo.lockDeadlines(tx, page);
          const at = rotor.clock();
          await Promise.all(
            locked.map((identity) =>
              rotor.timers.arm(
                "rotation",
                identity.id,
                identity.rotationDeadline,
                at,
                identity.fence,
              ),
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

      // Bare ts-mls generations/s on the same event loop, for the ratio (the goal's baseline),
      // and the service's own generator alone (for where the rest of the time goes).
      const bareN = Math.max(100, Math.min(500, p.due));
      const bare = await bareTsMls(bareN, rotor.keys.ciphersuite, 20);
      const bareGenerationsPerS = Math.round(bare.perSecond);
      const sig = await rotor.keys.generateSignatureKeyPair();
      const identity = new TextEncoder().encode("bench");
      for (let i = 0; i < 20; i++)
        await rotor.keys.generate({ identity, signatureKeys: sig, now: Date.now() });
      const ownStarted = performance.now();
      for (let i = 0; i < bareN; i++)
        await rotor.keys.generate({ identity, signatureKeys: sig, now: Date.now() });
      const ownGenerationsPerS = Math.round((bareN / (performance.now() - ownStarted)) * 1000);
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
          ownGenerationsPerS,
          rotationRatio: round(rotationsPerS / bareGenerationsPerS, 3),
        },
      };
    },
    async stopWorkers() {
      await stopRuntime();
    },
    async reschedule(p: Params) {
      const n = batchCount(p);
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
        what: "identities.pullInMany(1,000 ids, WELCOME_ROTATION_DELAY 5 s) per call, one call after the other",
        count: n,
        ms: Math.round(ms),
        perS: Math.round((n / ms) * 1000),
      };
    },
    async ingest(p: Params): Promise<HttpIngestResult> {
      // The identities the batch reschedule does not touch, spread over N in a fixed shuffle;
      // each gets one welcome, so (barring a repeat when the pool is small) every welcome moves
      // a deadline. The batch test takes id-00000001 … id-<K>.
      const first = batchCount(p) + 1;
      let pool = Array.from({ length: p.identities - first }, (_, i) => i + first);
      if (pool.length < 2_000) pool = Array.from({ length: p.identities - 1 }, (_, i) => i + 1);
      const ids = shuffled(pool.map((i) => `id-${String(i).padStart(8, "0")}`));
      const warmupCount = Math.min(1_000, Math.floor(ids.length / 10));
      const port = await freePort();
      const apiToken = randomBytes(18).toString("base64url");
      const ingestToken = randomBytes(18).toString("base64url");
      const api = spawnService("api", {
        ...env,
        PORT: String(port),
        HOST: "127.0.0.1",
        METRICS_PORT: "0",
        LOG_LEVEL: options.apiLogLevel,
        API_TOKEN: apiToken,
        INGEST_TOKEN: ingestToken,
        RATE_LIMIT_MAX: "10000000",
        RATE_LIMIT_WINDOW: "1m",
      });
      try {
        const baseUrl = `http://127.0.0.1:${port}`;
        const readyBy = Date.now() + 60_000;
        for (;;) {
          const ok = await fetch(`${baseUrl}/readyz`)
            .then((r) => r.ok)
            .catch(() => false);
          if (ok) break;
          if (!api.alive() || Date.now() > readyBy) {
            await Promise.race([api.crashed, pause(100)]);
            throw new Error("kp-rotor api did not become ready in 60 s");
          }
          await pause(200);
        }
        const pulledIn = async () => {
          const [row] = await ctx.database.sql<{ n: string }[]>`
            select count(*) as n from identities
            where starts_with(id, 'id-') and rotation_deadline < now() + interval '1 hour'`;
          return Number(row?.n ?? 0);
        };
        const common = { baseUrl, token: ingestToken, connections: p.ingestConnections };
        await welcomeLoad({
          ...common,
          ids: ids.slice(0, warmupCount),
          maxSeconds: Math.min(5, p.ingestSeconds),
        });
        const before = await pulledIn();
        const measured = ids.slice(warmupCount);
        const apiCpu0 = processCpuMs(api.pid);
        const ownCpu0 = process.cpuUsage();
        const run = await Promise.race([
          welcomeLoad({ ...common, ids: measured, maxSeconds: p.ingestSeconds }),
          api.crashed,
        ]);
        const apiCpu1 = processCpuMs(api.pid);
        const ownCpu = process.cpuUsage(ownCpu0);
        const wallMs = run.seconds * 1000;
        const changedInDb = (await pulledIn()) - before;
        return {
          what: `POST /v1/identities/:id/welcome (ingest token), one welcome per request, ${p.ingestConnections} keep-alive connections, closed loop, against a separate \`kp-rotor api\` process`,
          connections: p.ingestConnections,
          ...run,
          seconds: round(run.seconds, 2),
          perS: Math.round(run.ok / run.seconds),
          changed: run.pulledIn,
          changedInDb,
          pool: measured.length,
          warmup: warmupCount,
          loadGenerator: "autocannon 9.0.0 in the benchmark process (same machine)",
          apiCpuPercent:
            apiCpu0 === undefined || apiCpu1 === undefined
              ? undefined
              : Math.round(((apiCpu1 - apiCpu0) / wallMs) * 100),
          loadGeneratorCpuPercent: Math.round(
            ((ownCpu.user + ownCpu.system) / 1000 / wallMs) * 100,
          ),
        };
      } finally {
        await api.stop();
      }
    },
    async close() {
      await stopRuntime();
      await closeContext();
      await closeMeasure();
      await redis.stop();
      await database.drop();
    },
  };
}
