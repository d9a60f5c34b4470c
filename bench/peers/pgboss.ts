/**
 * pg-boss 12: one queue with policy "stately" (at most one queued and one active job per
 * singletonKey), one job per identity with singletonKey = identity id and startAfter = deadline;
 * reschedule with update(name, undefined, { singletonKey, startAfter }).
 */
import { PgBoss } from "pg-boss";
import { defer, mapLimit, round } from "../lib.js";
import {
  dueTimes,
  farTimes,
  idOf,
  type Infra,
  type LatenessResult,
  type Params,
  type Peer,
  summarize,
  waitFor,
} from "./common.js";

const QUEUE = "rotation";
/**
 * pg-boss's nearest equivalent of a worker concurrency C: batchSize C on one worker (up to C jobs
 * per fetch, handed to one handler call), with burstWhenBatchFull so a full batch is followed by
 * the next fetch at once; at C = 1 that is pg-boss's default (batchSize 1, one worker). Not
 * localConcurrency C: pg-boss 12 runs that many workers, each waiting the polling interval (2 s)
 * after every fetch, jobs or not (burst is off at batchSize 1), so C of them deliver at most C
 * jobs per 2 s and poll C times as often when idle.
 */
export const pgbossWork = (concurrency: number) =>
  concurrency > 1
    ? { batchSize: concurrency, burstWhenBatchFull: true, localConcurrency: 1 }
    : { batchSize: 1, localConcurrency: 1 };

export async function pgBoss(infra: Infra): Promise<Peer> {
  const database = await infra.newDatabase();
  const boss = new PgBoss({ connectionString: database.url });
  boss.on("error", (err: unknown) => infra.log(`pg-boss: ${(err as Error).message}`));
  await boss.start();
  defer("pg-boss", () => boss.stop({ graceful: false, timeout: 2_000 }));
  await boss.createQueue(QUEUE, { policy: "stately" });
  let onJob: ((data: { due: number }, name: string) => void) | undefined;
  let workId: string | undefined;

  return {
    name: "pg-boss",
    settings: {
      "pg-boss": "12.38.0 (declares Node >= 22; runs on Node 20)",
      constructor: "{ connectionString } only: supervise, maintenance, monitor at their defaults",
      queue: "createQueue('rotation', { policy: 'stately' })",
      job: "insert()/send() with singletonKey = identity id, startAfter = deadline",
      work: "work('rotation', { batchSize: C, burstWhenBatchFull: true, localConcurrency: 1 }) for concurrency C > 1, pg-boss's defaults (batchSize 1, localConcurrency 1) for C = 1; C as the run sets it (the idle windows and the lateness test say which); pollingIntervalSeconds default 2. batchSize is the nearest equivalent of a worker concurrency here (up to C jobs per fetch, one poll loop, like a BullMQ Worker's concurrency); localConcurrency C would run C workers, each waiting the 2 s polling interval after every fetch even when it got a job (burst is off at batchSize 1), so at most C jobs per 2 s and C times the idle polls",
      processor: "no-op (records start time)",
      reschedule:
        "update('rotation', undefined, { singletonKey, startAfter: now + 5 s }), 64 concurrent (no bulk update by key)",
    },
    database,
    concurrencyKnob:
      "work({ batchSize: C, burstWhenBatchFull: true }): up to C jobs per fetch, one poll loop (C = 1: the defaults)",
    async schedule(p: Params) {
      const times = farTimes(p.identities, Date.now());
      const started = performance.now();
      for (let i = 0; i < p.identities; i += 1000) {
        await boss.insert(
          QUEUE,
          times.slice(i, i + 1000).map((at, j) => ({
            data: { due: at },
            singletonKey: idOf(i + j),
            startAfter: new Date(at),
          })),
        );
      }
      const ms = performance.now() - started;
      return {
        what: "boss.insert() of jobs with singletonKey + startAfter, pages of 1,000: one committed job row per identity (pgboss.job and its indexes), which is both the record and the timer; nothing else to arm",
        count: p.identities,
        ms: Math.round(ms),
        perS: Math.round((p.identities / ms) * 1000),
        rowsPerIdentity: 1,
        rows: "one pgboss.job row per identity",
      };
    },
    async startWorkers(concurrency: number) {
      workId = await boss.work<{ due: number }>(QUEUE, pgbossWork(concurrency), async (jobs) => {
        for (const job of jobs) onJob?.(job.data, job.name);
      });
    },
    async lateness(p: Params): Promise<LatenessResult> {
      const late: number[] = [];
      onJob = (data) => {
        const now = Date.now();
        if (data.due > 0) late.push(now - data.due);
      };
      const t0 = Date.now() + p.leadMs;
      const times = dueTimes(p, t0);
      for (let i = 0; i < times.length; i += 1000) {
        await boss.insert(
          QUEUE,
          times.slice(i, i + 1000).map((at, j) => ({
            data: { due: at },
            singletonKey: `due-${i + j}`,
            startAfter: new Date(at),
          })),
        );
      }
      await waitFor(() => late.length, times.length, Math.max(...times) + 15_000);
      onJob = undefined;
      return {
        what: "no-op handler start - startAfter",
        count: late.length,
        expected: times.length,
        lateness: summarize(late.map((x) => round(x, 1))),
      };
    },
    async stopWorkers() {
      if (workId) await boss.offWork(QUEUE, { id: workId, wait: true });
    },
    async reschedule(p: Params) {
      const ids = Array.from({ length: Math.min(p.reschedules, p.identities) }, (_, i) => idOf(i));
      const started = performance.now();
      // Time-boxed: pg-boss updates one job per call and is slow enough to dominate the run.
      const deadline = Date.now() + p.rescheduleSeconds * 1000;
      let done = 0;
      await mapLimit(ids, 64, async (id) => {
        if (Date.now() > deadline) return;
        done++;
        await boss.update(QUEUE, undefined, {
          singletonKey: id,
          startAfter: new Date(Date.now() + 5_000),
        });
      });
      const ms = performance.now() - started;
      return {
        what: `update(name, undefined, { singletonKey, startAfter }), 64 concurrent, time-boxed to ${p.rescheduleSeconds} s`,
        count: done,
        ms: Math.round(ms),
        perS: Math.round((done / ms) * 1000),
      };
    },
    async close() {},
  };
}
