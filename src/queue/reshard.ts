import { type KeyLayout, shardOf, shardPrefix } from "./layout.js";
import {
  identityIdOf,
  jobIdFor,
  openShardQueues,
  type RedisConnection,
  scanTargets,
  TIMER_KINDS,
  type TimerKind,
} from "./wakeup-queues.js";

/** What removeMisplaced did. */
export interface MisplacedReport {
  /** Wake-up jobs removed from a queue the new layout does not put their identity in. */
  removed: number;
  /** Jobs of the old layout already where the new layout puts them. */
  kept: number;
  /** Jobs that could not be removed (held by a worker); run the operation again later. */
  stuck: { kind: TimerKind; identityId: string }[];
  /** Old queues emptied and deleted (their prefix is not used by the new layout). */
  queuesDeleted: number;
}

/**
 * The second half of changing QUEUE_SHARDS (docs/cluster.md): after a reconcile armed every
 * wake-up in the new layout `to`, removes every job of the old layout `from` that sits in a
 * queue other than the one `to` puts its identity in, then deletes the old queues that `to` does
 * not use (their markers, metadata and reconcile keys). Run it once no process with the old
 * QUEUE_SHARDS runs; a job left behind by one that still does would only fire a second, early
 * wake-up, which finds nothing due.
 */
export async function removeMisplaced(
  redis: RedisConnection,
  from: KeyLayout,
  to: KeyLayout,
): Promise<MisplacedReport> {
  const report: MisplacedReport = { removed: 0, kept: 0, stuck: [], queuesDeleted: 0 };
  const newPrefixes = new Set(Array.from({ length: to.shards }, (_, t) => shardPrefix(to, t)));
  for (let shard = 0; shard < from.shards; shard++) {
    const prefix = shardPrefix(from, shard);
    const queues = openShardQueues(redis, prefix);
    const stillUsed = newPrefixes.has(prefix);
    const stuckBefore = report.stuck.length;
    try {
      for (const kind of TIMER_KINDS) {
        for await (const ids of scanJobIds(redis, prefix, kind)) {
          for (const identityId of ids) {
            if (stillUsed && shardPrefix(to, shardOf(identityId, to.shards)) === prefix) {
              report.kept++;
            } else if ((await queues[kind].remove(jobIdFor(identityId))) === 1) {
              report.removed++;
            } else {
              report.stuck.push({ kind, identityId });
            }
          }
        }
      }
      if (!stillUsed && report.stuck.length === stuckBefore) {
        for (const queue of Object.values(queues)) await queue.obliterate({ force: true });
        await redis.del(
          `${prefix}:kp-rotor:reconciled`,
          `${prefix}:kp-rotor:reconcile-runs`,
          `${prefix}:kp-rotor:fence-high`,
        );
        report.queuesDeleted += 2;
      }
    } finally {
      await Promise.all(Object.values(queues).map((q) => q.close()));
    }
  }
  return report;
}

/** The identity ids of one queue's job hashes, one SCAN pass per primary. */
async function* scanJobIds(
  redis: RedisConnection,
  prefix: string,
  kind: TimerKind,
): AsyncGenerator<string[]> {
  const base = `${prefix}:${kind}:`;
  for (const node of scanTargets(redis)) {
    let cursor = "0";
    do {
      const [next, keys] = await node.scan(cursor, "MATCH", `${base}id-*`, "COUNT", 1000);
      cursor = next;
      const ids: string[] = [];
      for (const key of keys) {
        const rest = key.slice(base.length);
        const id = rest.includes(":") ? undefined : identityIdOf(rest);
        if (id !== undefined) ids.push(id);
      }
      if (ids.length > 0) yield ids;
    } while (cursor !== "0");
  }
}
