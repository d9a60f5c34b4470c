import { DelayedError, type Job } from "bullmq";
import type { Cluster, Redis } from "ioredis";
import type { Logger } from "../logger.js";
import type { ActiveWakeup } from "../core/ports.js";
import { FINISH_PARK_MS } from "../core/deadlines.js";
import { withRedisErrors } from "./errors.js";
import { PreciseWorker } from "./bullmq/index.js";
import {
  identityIdOf,
  jobIdFor,
  QUEUE_NAMES,
  type TimerKind,
  type WakeData,
} from "./wakeup-queues.js";

/** Lock and stall settings; DESIGN.md explains how they bound the delay after a crash. */
export interface WorkerSettings {
  concurrency: number;
  /** How long a worker's claim on a job lasts without renewal (BullMQ default 30 s). */
  lockDurationMs: number;
  /** How often workers look for jobs whose claim expired (BullMQ default 30 s). */
  stalledIntervalMs: number;
  /**
   * The longest a worker blocks on Redis before it asks its queue again (BullMQ: 10 s). Wake-ups
   * do not depend on it (markers and the in-process nudge wake the worker); it bounds how long a
   * silently dead blocking connection goes unnoticed.
   */
  maxBlockMs: number;
}

export type WakeHandler = (wake: ActiveWakeup) => Promise<void>;

export interface RunningWorker {
  readonly kind: TimerKind;
  /** The queue shard it serves (0 with QUEUE_SHARDS=1). */
  readonly shard: number;
  readonly worker: PreciseWorker<WakeData>;
  /** Stops taking jobs and waits for the active ones, at most `timeoutMs`. */
  close(timeoutMs: number): Promise<void>;
}

/**
 * Starts a BullMQ worker for one wake-up queue. The handler always leaves the job delayed (re-armed)
 * or removed; the job never completes or fails through BullMQ, so a wake-up can never be lost by
 * running out of attempts. A stall (the process died) is unlimited and puts the job back to run.
 */
export function startWorker(
  redis: Redis | Cluster,
  prefix: string,
  kind: TimerKind,
  handler: WakeHandler,
  settings: WorkerSettings,
  log: Logger,
  shard = 0,
): RunningWorker {
  const worker = new PreciseWorker<WakeData>(
    QUEUE_NAMES[kind],
    async (job, token) => {
      try {
        await handler(withRedisErrors(toActiveWakeup(job, token)));
      } catch (err) {
        // The job stays active; when its lock lapses the stall check runs it again.
        log.error(
          { err, kind, shard, jobId: job.id },
          "wake-up handler failed; the job will stall and rerun",
        );
      }
      throw new DelayedError();
    },
    {
      connection: redis,
      prefix,
      concurrency: settings.concurrency,
      lockDuration: settings.lockDurationMs,
      stalledInterval: settings.stalledIntervalMs,
      maxStalledCount: Number.MAX_SAFE_INTEGER,
      maxBlockMs: settings.maxBlockMs,
    },
  );
  worker.on("error", (err) => log.error({ err, kind, shard }, "worker error"));
  return {
    kind,
    shard,
    worker,
    async close(timeoutMs) {
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), timeoutMs);
      });
      const result = await Promise.race([worker.close(), deadline]);
      clearTimeout(timer);
      if (result === "timeout") {
        log.warn(
          { kind, shard, timeoutMs },
          "worker close timed out; active jobs will stall and rerun",
        );
      }
    },
  };
}

/**
 * The identity comes from the job id (`id-<identityId>`). The data holds only `failures`, and
 * only while attempts fail.
 */
function toActiveWakeup(job: Job<WakeData>, token: string | undefined): ActiveWakeup {
  const data = job.data;
  const identityId = job.id === undefined ? undefined : identityIdOf(job.id);
  if (identityId === undefined) {
    throw new Error(`wake-up job ${job.id} names no identity (expected an id-<identityId> job id)`);
  }
  const failures = data.failures ?? 0;
  const clearFailures = async () => {
    if (failures > 0) await job.updateData({});
  };
  return {
    identityId,
    jobId: job.id ?? jobIdFor(identityId),
    failures,
    async rearm(fireAt) {
      await clearFailures();
      await job.moveToDelayed(fireAt, token);
    },
    async finish() {
      // A job cannot be removed while this worker holds it: park it, then remove it.
      await job.moveToDelayed(Date.now() + FINISH_PARK_MS, token);
      await job.remove();
    },
    async retryLater(fireAt, nextFailures) {
      await job.updateData({ failures: nextFailures });
      await job.moveToDelayed(fireAt, token);
    },
  };
}
