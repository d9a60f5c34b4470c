import type { Queue } from "bullmq";
import type { Cluster, Redis } from "ioredis";
import { settleAll } from "../../settle.js";
import { ARM_LUA, VIEW_LUA } from "./scripts.js";

/**
 * The wall: every dependence of kp-rotor on BullMQ's private structures is in this folder, and
 * the rest of src/queue reaches them only through this module. Behind it:
 *  - the view and arm scripts (scripts.ts), which read and write BullMQ's job hashes, its delayed
 *    set and its marker directly;
 *  - the delayed score encoding (fire time * 4096 + a same-millisecond counter);
 *  - the job hash key layout (`<prefix>:<queue>:<jobId>`);
 *  - the worker's blocking wait, replaced to nudge the marker at a fire time (precise-worker.ts).
 * All of it was read from BullMQ 6.7.0, which package.json pins. test/integration/
 * bullmq-contract.test.ts fails on an upgrade that changes any of it; docs/bullmq-upgrade.md
 * says what to do then.
 */

export { MAX_TIMER_DELAY_MS, nudgeDelayMs, PreciseWorker } from "./precise-worker.js";

/** The opts field of every job armed here: BullMQ's default, short enough for a listpack hash. */
const JOB_OPTS = JSON.stringify({ attempts: 0 });

/** Items per arm-script call: bounds how long one call keeps Redis busy (about a few ms). */
const ARM_CHUNK = 1_000;

/** BullMQ's delayed set is scored by fire time * 4096 + a same-millisecond counter. */
const fireAtOf = (score: string): number => Math.floor(Number(score) / 4096);

/** A job as the view script sees it: delayed (with its fire time), in another state, or absent. */
export type JobPeek =
  | { state: "delayed"; fireAt: number }
  | { state: "not-delayed" }
  | { state: "missing" };

/**
 * An arm-script item: add a missing job ("a"), move a delayed one ("r"), move a delayed one
 * earlier only ("e"), or delete a delayed one ("d"), to exactly `fireAt`.
 */
export interface JobOp {
  op: "a" | "r" | "e" | "d";
  jobId: string;
  fireAt: number;
}

type RedisConnection = Redis | Cluster;
type RedisWithScripts = RedisConnection & {
  kpRotorView(delayedKey: string, prefix: string, ...jobIds: string[]): Promise<string[]>;
  kpRotorArm(
    delayedKey: string,
    markerKey: string,
    fenceHighKey: string,
    prefix: string,
    now: string,
    name: string,
    opts: string,
    ...items: string[]
  ): Promise<number[]>;
};

/** What kp-rotor reads and writes of BullMQ's jobs directly, on one connection. */
export interface PrivateJobs {
  /** Per job id, one script call per 1,000 ids. */
  peek(queue: Queue, jobIds: readonly string[]): Promise<JobPeek[]>;
  /** The fire time of a delayed job, or null when it is not in the delayed set. */
  delayedFireAt(queue: Queue, jobId: string): Promise<number | null>;
  /**
   * Applies `ops` in order under one arm fence, one script call per 1,000 (pipelined, so Redis
   * runs them in order). Per op, the script's code (scripts.ts, ARM_LUA): 0 done; 1 not in the
   * planned state, re-plan; 2 ("e") already fires at or before it; 3 refused by the fence.
   */
  arm(
    queue: Queue,
    ops: readonly JobOp[],
    now: number,
    jobName: string,
    fence: number,
    /** The shard's fence high-water key (in the queue's slot). */
    fenceHighKey: string,
  ): Promise<number[]>;
}

export function privateJobs(redis: RedisConnection): PrivateJobs {
  // EVALSHA, falling back to EVAL once per connection (ioredis defineCommand; on a cluster, sent
  // to the primary of the first key's slot).
  const scripted = redis as RedisWithScripts;
  if (typeof scripted.kpRotorView !== "function") {
    redis.defineCommand("kpRotorView", { numberOfKeys: 1, lua: VIEW_LUA });
    redis.defineCommand("kpRotorArm", { numberOfKeys: 3, lua: ARM_LUA });
  }
  return {
    async peek(queue, jobIds) {
      const calls: Promise<string[]>[] = [];
      for (let i = 0; i < jobIds.length; i += ARM_CHUNK) {
        const chunk = jobIds.slice(i, i + ARM_CHUNK);
        calls.push(scripted.kpRotorView(queue.toKey("delayed"), jobKeyPrefix(queue), ...chunk));
      }
      const replies = (await Promise.all(calls)).flat();
      return jobIds.map((_, i): JobPeek => {
        const reply = replies[i];
        if (reply === "m") return { state: "missing" };
        if (reply === "x" || reply === undefined) return { state: "not-delayed" };
        return { state: "delayed", fireAt: fireAtOf(reply) };
      });
    },
    async delayedFireAt(queue, jobId) {
      const score = await redis.zscore(queue.toKey("delayed"), jobId);
      return score === null ? null : fireAtOf(score);
    },
    async arm(queue, ops, now, jobName, fence, fenceHighKey) {
      const calls: Promise<number[]>[] = [];
      for (let i = 0; i < ops.length; i += ARM_CHUNK) {
        const args: string[] = [];
        for (const { op, jobId, fireAt } of ops.slice(i, i + ARM_CHUNK)) {
          args.push(op, jobId, String(Math.round(fireAt)));
        }
        calls.push(
          scripted.kpRotorArm(
            queue.toKey("delayed"),
            queue.toKey("marker"),
            fenceHighKey,
            jobKeyPrefix(queue),
            String(Math.round(now)),
            jobName,
            JOB_OPTS,
            String(fence),
            ...args,
          ),
        );
      }
      // Every chunk settles before this returns or throws: a chunk still queued in Redis when
      // the caller's transaction ends would land after its row locks are gone.
      return (await settleAll(calls)).flat();
    },
  };
}

/** What every job hash key of `queue` starts with (the job id follows). */
export const jobKeyPrefix = (queue: Queue): string => queue.toKey("");
