import type { PullInResult } from "../core/transitions.js";
import { assertIdentityId, notFound } from "../errors.js";

/**
 * Group commit for single welcomes (and rotate-now requests). Each HTTP request names one
 * identity, but a transaction per request spends most of its time on round trips; here the
 * requests that arrive while `concurrency` batches are being committed wait, and then go
 * together as the next batch, in one transaction (pullInMany). Nothing waits on a timer: an idle
 * service commits a lone request at once, a busy one commits as many as arrived meanwhile.
 * Concurrent batches lock their rows in id order (pullInMany), so they never deadlock; two that
 * name one identity commit one after the other.
 *
 * Every caller's promise settles only after its own batch committed (or failed, and then the
 * whole batch failed: nothing of it was acknowledged). Requests for different delays never
 * share a batch, because a batch has one delay.
 */

/** Pulls deadlines in for many ids in one transaction: identities.pullInMany, bound to a rotor. */
export type PullInMany = (
  ids: readonly string[],
  delayMs: number,
) => Promise<{ results: PullInResult[]; notFound: string[] }>;

export interface PullInBatcher {
  /** Resolves with the committed result for `id`; rejects with not-found or the batch's error. */
  pullIn(id: string, delayMs: number): Promise<PullInResult>;
}

interface Waiter {
  id: string;
  resolve: (result: PullInResult) => void;
  reject: (err: unknown) => void;
}

interface Lane {
  waiting: Waiter[];
  /** Batches of this lane being committed now. */
  committing: number;
}

export interface BatcherOptions {
  /** Most requests in one batch (one transaction). */
  maxBatch?: number;
  /** Batches committed at once, per delay. */
  concurrency?: number;
}

export function createPullInBatcher(
  pullInMany: PullInMany,
  { maxBatch = 1_000, concurrency = 4 }: BatcherOptions = {},
): PullInBatcher {
  const lanes = new Map<number, Lane>();

  async function drain(delayMs: number, lane: Lane): Promise<void> {
    lane.committing++;
    try {
      while (lane.waiting.length > 0) {
        const batch = lane.waiting.splice(0, maxBatch);
        try {
          const { results } = await pullInMany(
            batch.map((w) => w.id),
            delayMs,
          );
          answer(batch, results);
        } catch (err) {
          for (const waiter of batch) waiter.reject(err);
        }
      }
    } finally {
      lane.committing--;
      if (lane.committing === 0 && lane.waiting.length === 0) lanes.delete(delayMs);
    }
  }

  return {
    pullIn(id, delayMs) {
      return new Promise<PullInResult>((resolve, reject) => {
        // A malformed id is refused here (the promise rejects) and never joins a batch.
        assertIdentityId(id);
        let lane = lanes.get(delayMs);
        if (lane === undefined) {
          lane = { waiting: [], committing: 0 };
          lanes.set(delayMs, lane);
        }
        lane.waiting.push({ id, resolve, reject });
        if (lane.committing < concurrency) void drain(delayMs, lane);
      });
    },
  };
}

/**
 * Hands each waiter its identity's result. When one batch names an identity twice, only the
 * first request moved the deadline; the later ones see it already pulled in, as they would have
 * one transaction later.
 */
function answer(batch: readonly Waiter[], results: readonly PullInResult[]): void {
  const byId = new Map(results.map((r) => [r.identityId, r]));
  for (const waiter of batch) {
    const result = byId.get(waiter.id);
    if (result === undefined) {
      waiter.reject(notFound(waiter.id));
      continue;
    }
    waiter.resolve(result);
    if (result.changed) byId.set(waiter.id, { ...result, changed: false });
  }
}
