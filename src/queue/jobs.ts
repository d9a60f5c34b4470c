import type { Queue } from "bullmq";

/**
 * The wake-up queues. This directory holds the only files that import bullmq. A job is only a
 * wake-up: it carries the identity id and nothing else, and its processor reads the truth from
 * Postgres (DESIGN.md, "Postgres is the truth").
 */
export const TIMER_KINDS = ["rotation", "deletion"] as const;
export type TimerKind = (typeof TIMER_KINDS)[number];

/** The queue names, and the job name shown in Bull Board. */
export const QUEUE_NAMES: Record<TimerKind, string> = {
  rotation: "rotation",
  deletion: "deletion",
};
export const JOB_NAMES: Record<TimerKind, string> = { rotation: "rotate", deletion: "delete" };

/**
 * What a wake-up job carries: nothing while all is well (`{}`; the identity id is in the job id),
 * and `failures`, the count of consecutive failed attempts for the backoff, while retrying.
 */
export interface WakeData {
  failures?: number;
}

/**
 * One job per identity and queue. BullMQ rejects ids that parse as integers and ids with ':',
 * so the identity id (which may be "123") gets a fixed prefix.
 */
export const jobIdFor = (identityId: string): string => `id-${identityId}`;
export const identityIdOf = (jobId: string): string | undefined =>
  jobId.startsWith("id-") ? jobId.slice(3) : undefined;

/** One shard's queue pair (rotation, deletion). */
export type ShardQueues = Record<TimerKind, Queue<WakeData>>;
