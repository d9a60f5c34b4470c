import { DelayedError, type Job, Worker } from "bullmq";
import type { Redis } from "ioredis";
import type { Logger } from "../logger.js";
import type { ActiveWakeup } from "../services/rotor.js";
import { jobIdFor, QUEUE_NAMES, type TimerKind, type WakeData } from "./timers.js";

/** Lock and stall settings; DESIGN.md explains how they bound the delay after a crash. */
export interface WorkerSettings {
  concurrency: number;
  /** How long a worker's claim on a job lasts without renewal (BullMQ default 30 s). */
  lockDurationMs: number;
  /** How often workers look for jobs whose claim expired (BullMQ default 30 s). */
  stalledIntervalMs: number;
}

/** Where a finished job is parked before it is removed, in case the removal is lost. */
const PARK_MS = 365 * 86_400_000;

export type WakeHandler = (wake: ActiveWakeup) => Promise<void>;

export interface RunningWorker {
  readonly kind: TimerKind;
  readonly worker: Worker<WakeData>;
  /** Stops taking jobs and waits for the active ones, at most `timeoutMs`. */
  close(timeoutMs: number): Promise<void>;
}

/**
 * Starts a BullMQ worker for one wake-up queue. The handler always leaves the job delayed (re-armed)
 * or removed; the job never completes or fails through BullMQ, so a wake-up can never be lost by
 * running out of attempts. A stall (the process died) is unlimited and puts the job back to run.
 */
export function startWorker(
  redis: Redis,
  prefix: string,
  kind: TimerKind,
  handler: WakeHandler,
  settings: WorkerSettings,
  log: Logger,
): RunningWorker {
  const worker = new Worker<WakeData>(
    QUEUE_NAMES[kind],
    async (job, token) => {
      try {
        await handler(toActiveWakeup(job, token));
      } catch (err) {
        // The job stays active; when its lock lapses the stall check runs it again.
        log.error(
          { err, kind, jobId: job.id },
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
    },
  );
  worker.on("error", (err) => log.error({ err, kind }, "worker error"));
  return {
    kind,
    worker,
    async close(timeoutMs) {
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), timeoutMs);
      });
      const result = await Promise.race([worker.close(), deadline]);
      clearTimeout(timer);
      if (result === "timeout") {
        log.warn({ kind, timeoutMs }, "worker close timed out; active jobs will stall and rerun");
      }
    },
  };
}

function toActiveWakeup(job: Job<WakeData>, token: string | undefined): ActiveWakeup {
  const identityId = job.data.identityId;
  const failures = job.data.failures ?? 0;
  const clearFailures = async () => {
    if (failures > 0) await job.updateData({ identityId });
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
      await job.moveToDelayed(Date.now() + PARK_MS, token);
      await job.remove();
    },
    async retryLater(fireAt, nextFailures) {
      await job.updateData({ identityId, failures: nextFailures });
      await job.moveToDelayed(fireAt, token);
    },
  };
}
