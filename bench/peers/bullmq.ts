/**
 * Raw BullMQ: one delayed job per identity with a fixed jobId, defaults untouched (lockDuration
 * 30 s, stalledInterval 30 s) except the Worker's concurrency, which the run sets (its default
 * is 1). Reschedule = getJob + changeDelay.
 */
import { type Job, Queue, Worker } from "bullmq";
import { Redis } from "ioredis";
import { defer } from "../lib.js";
import {
  dueTimes,
  farTimes,
  idOf,
  type Infra,
  type LatenessResult,
  measuringRedis,
  type Params,
  type Peer,
  summarize,
  usedMemory,
  eventStreamBytes,
  waitFor,
} from "./common.js";
import { mapLimit, round } from "../lib.js";

export async function rawBullmq(infra: Infra): Promise<Peer> {
  const redis = await infra.newRedis();
  const connection = new Redis(redis.url, { maxRetriesPerRequest: null });
  defer("bullmq connection", () => connection.quit());
  const measure = measuringRedis(redis.url);
  const queue = new Queue("rotation", { connection });
  defer("bullmq queue", () => queue.close());
  let worker: Worker | undefined;
  let onJob: ((job: Job) => void) | undefined;

  return {
    name: "raw BullMQ",
    settings: {
      BullMQ: "6.7.0",
      job: "one delayed job per identity, jobId = identity id, add/addBulk defaults (no removeOnComplete)",
      Worker:
        "concurrency as the run sets it (default 1; the idle windows and the lateness test say which), otherwise defaults: lockDuration 30 s, stalledInterval 30 s, drainDelay 5 s",
      processor: "no-op (records start time)",
      reschedule: "queue.getJob(id) then job.changeDelay(5 s), 64 concurrent",
    },
    redis,
    concurrencyKnob: "Worker concurrency (jobs processed at once by the one Worker)",
    async schedule(p: Params) {
      const before = await usedMemory(measure);
      const now = Date.now();
      const times = farTimes(p.identities, now);
      const started = performance.now();
      for (let i = 0; i < p.identities; i += 1000) {
        const t = Date.now();
        await queue.addBulk(
          times.slice(i, i + 1000).map((at, j) => ({
            name: "rotate",
            data: { due: at },
            opts: { jobId: idOf(i + j), delay: at - t, timestamp: t },
          })),
        );
      }
      const ms = performance.now() - started;
      const bytes = (await usedMemory(measure)) - before;
      const streams = await eventStreamBytes(measure);
      return {
        what: "queue.addBulk of delayed jobs, pages of 1,000: one job per identity (job hash + delayed-set entry + event) written to Redis only, which is both the record and the timer (whether that reaches disk is the redis-server's persistence: see durability under Machine)",
        count: p.identities,
        ms: Math.round(ms),
        perS: Math.round((p.identities / ms) * 1000),
        redisBytesPerTimer: Math.round(bytes / p.identities),
        timersPerIdentity: 1,
        redisBytesPerIdentity: Math.round((2 * bytes) / p.identities),
        eventStreamBytes: streams,
        extra: {
          note: "per identity = 2 jobs (rotation + deletion), for comparison with kp-rotor",
        },
      };
    },
    async startWorkers(concurrency: number) {
      const wconn = new Redis(redis.url, { maxRetriesPerRequest: null });
      defer("bullmq worker connection", () => wconn.quit());
      worker = new Worker(
        "rotation",
        async (job: Job) => {
          onJob?.(job);
        },
        { connection: wconn, concurrency },
      );
      defer("bullmq worker", () => worker?.close());
      await worker.waitUntilReady();
    },
    async lateness(p: Params): Promise<LatenessResult> {
      const late: number[] = [];
      onJob = (job) => {
        if (job.name === "due") late.push(Date.now() - (job.data as { due: number }).due);
      };
      const t0 = Date.now() + p.leadMs;
      const times = dueTimes(p, t0);
      for (let i = 0; i < times.length; i += 1000) {
        const now = Date.now();
        await queue.addBulk(
          times.slice(i, i + 1000).map((at, j) => ({
            name: "due",
            data: { due: at },
            opts: { jobId: `due-${i + j}`, delay: Math.max(0, at - now), timestamp: now },
          })),
        );
      }
      await waitFor(() => late.length, times.length, Math.max(...times) + 15_000);
      onJob = undefined;
      return {
        what: "no-op processor start - due",
        count: late.length,
        expected: times.length,
        lateness: summarize(late.map((x) => round(x, 1))),
      };
    },
    async stopWorkers() {
      await worker?.close();
    },
    async reschedule(p: Params) {
      const ids = Array.from({ length: Math.min(p.reschedules, p.identities) }, (_, i) => idOf(i));
      const started = performance.now();
      await mapLimit(ids, 64, async (id) => {
        const job = await queue.getJob(id);
        await job?.changeDelay(5_000);
      });
      const ms = performance.now() - started;
      return {
        what: "getJob + changeDelay(5 s), 64 concurrent",
        count: ids.length,
        ms: Math.round(ms),
        perS: Math.round((ids.length / ms) * 1000),
      };
    },
    async close() {},
  };
}
