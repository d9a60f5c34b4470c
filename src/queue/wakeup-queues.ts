import { Queue } from "bullmq";
import type { ArmItem, Wakeups } from "../core/ports.js";
import type { ArmAction } from "../core/deadlines.js";
import { type RedisConnection, scanTargets } from "./connection.js";
import {
  identityIdOf,
  QUEUE_NAMES,
  type ShardQueues,
  TIMER_KINDS,
  type TimerKind,
  type WakeData,
} from "./jobs.js";
import { type KeyLayout, shardOf, shardPrefix, sharedPrefix } from "./layout.js";
import { createShardArmer, perShard, type ShardArmer } from "./shard-armer.js";
import { jobKeyPrefix } from "./bullmq/index.js";
import { withRedisErrors } from "./errors.js";

export {
  createRedis,
  type RedisConnection,
  type RedisTarget,
  scanTargets,
  whenReady,
} from "./connection.js";
export {
  identityIdOf,
  jobIdFor,
  QUEUE_NAMES,
  type ShardQueues,
  TIMER_KINDS,
  type TimerKind,
  type WakeData,
} from "./jobs.js";
export type { ArmItem };

/**
 * The Wakeups port (src/core/ports.ts, where each method's contract is written) on BullMQ, plus
 * what only operators and tests use: the queues themselves, a planned action applied as is, and
 * close. Every method taking identities routes each one to its shard's queue.
 */
export interface WakeupQueues extends Wakeups {
  readonly prefix: string;
  readonly layout: KeyLayout;
  /** Shard 0's queues: with one shard (the default), all of them. */
  readonly queues: ShardQueues;
  /** Every shard's queues, by shard number. */
  readonly shardQueues: readonly ShardQueues[];
  /** The shard of an identity under this layout. */
  shardOf(identityId: string): number;
  /** Wake-up jobs that will fire, per shard (the census compared per queue). */
  countWakeupsPerShard(kind: TimerKind): Promise<number[]>;
  /** Which shards lack the reconcile mark (all of them after a full loss). */
  unreconciledShards(): Promise<number[]>;
  /** Carries out a planned action; losing a race to a worker that took the job is not an error. */
  apply(kind: TimerKind, identityId: string, action: ArmAction, fence: number): Promise<void>;
  close(): Promise<void>;
}

/** Opens one shard's two queues under `prefix`. */
export function openShardQueues(
  redis: RedisConnection,
  prefix: string,
  onError: (err: Error) => void = () => {},
): ShardQueues {
  const queues = {
    rotation: new Queue<WakeData>(QUEUE_NAMES.rotation, { connection: redis, prefix }),
    deletion: new Queue<WakeData>(QUEUE_NAMES.deletion, { connection: redis, prefix }),
  };
  for (const queue of Object.values(queues)) queue.on("error", onError);
  return queues;
}

/**
 * Opens the wake-up queues (two per shard) on one shared connection, laid out as `layout` says
 * (src/queue/layout.ts; a plain prefix means one shard on a single Redis, today's key names).
 * Connection errors surface through `onError` (the caller logs them) instead of BullMQ's default
 * of printing them raw.
 */
export function createWakeupQueues(
  redis: RedisConnection,
  prefixOrLayout: string | KeyLayout,
  onError: (err: Error) => void = () => {},
): WakeupQueues {
  const layout: KeyLayout =
    typeof prefixOrLayout === "string"
      ? { prefix: prefixOrLayout, shards: 1, cluster: false }
      : prefixOrLayout;
  const prefix = layout.prefix;
  const shardNumbers = Array.from({ length: layout.shards }, (_, i) => i);
  const shardQueues = shardNumbers.map((i) =>
    openShardQueues(redis, shardPrefix(layout, i), onError),
  );
  const fenceHighKey = (shard: number) => `${shardPrefix(layout, shard)}:kp-rotor:fence-high`;
  let refused = 0;
  const armers = shardQueues.map((queues, shard) =>
    createShardArmer(redis, queues, fenceHighKey(shard), (n) => {
      refused += n;
    }),
  );
  const shardOfId = (identityId: string) => shardOf(identityId, layout.shards);
  const armerOf = (identityId: string) => armers[shardOfId(identityId)] as ShardArmer;
  const queues = shardQueues[0] as ShardQueues;

  // The reconcile mark and the runs in progress live in each shard's slot (the completion script
  // touches both), so a shard whose primary lost its data lacks its mark; the lease is shared.
  const markKey = (shard: number) => `${shardPrefix(layout, shard)}:kp-rotor:reconciled`;
  const runKey = (shard: number) => `${shardPrefix(layout, shard)}:kp-rotor:reconcile-runs`;
  const leaseKey = (name: string) => `${sharedPrefix(layout)}:kp-rotor:lease:${name}`;

  async function tryLease(name: string, owner: string, ttlMs: number): Promise<boolean> {
    const key = leaseKey(name);
    if ((await redis.set(key, owner, "PX", ttlMs, "NX")) === "OK") return true;
    // Renew only our own lease (compare-and-set in one script).
    const renewed = await redis.eval(
      "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0",
      1,
      key,
      owner,
      ttlMs,
    );
    return renewed === 1;
  }

  /**
   * One SCAN pass per primary (every primary of a cluster: SCAN sees one node's keys) over every
   * shard's job hashes; each page holds the ids found in one SCAN reply.
   */
  async function* scanAllIdentityIds(
    pageSize: number,
    shards: readonly number[] = shardNumbers,
  ): AsyncGenerator<Record<TimerKind, string[]>> {
    const bases = shards.flatMap((i) =>
      TIMER_KINDS.map(
        (kind) => [kind, jobKeyPrefix((shardQueues[i] as ShardQueues)[kind])] as const,
      ),
    );
    const pattern =
      layout.shards > 1 || layout.cluster ? `{${prefix}:*}:*:id-*` : `${prefix}:*:id-*`;
    for (const node of scanTargets(redis)) {
      let cursor = "0";
      do {
        const [next, keys] = await node.scan(cursor, "MATCH", pattern, "COUNT", pageSize);
        cursor = next;
        const page: Record<TimerKind, string[]> = { rotation: [], deletion: [] };
        for (const key of keys) {
          for (const [kind, base] of bases) {
            if (!key.startsWith(base)) continue;
            const rest = key.slice(base.length);
            // Job hashes are <base>id-<identity>; an identity id never contains ':', so longer
            // keys (locks, logs) are skipped.
            const identityId = rest.includes(":") ? undefined : identityIdOf(rest);
            if (identityId !== undefined) page[kind].push(identityId);
          }
        }
        if (page.rotation.length > 0 || page.deletion.length > 0) yield page;
      } while (cursor !== "0");
    }
  }

  async function countWakeupsPerShard(kind: TimerKind): Promise<number[]> {
    return Promise.all(
      shardQueues.map(async (q) => {
        const counts = await q[kind].getJobCounts("active", "delayed", "wait", "prioritized");
        return Object.values(counts).reduce((sum, n) => sum + n, 0);
      }),
    );
  }

  async function unreconciledShards(): Promise<number[]> {
    // One EXISTS per shard (on a cluster the marks sit in different slots).
    const present = await Promise.all(shardNumbers.map((i) => redis.exists(markKey(i))));
    return shardNumbers.filter((i) => present[i] !== 1);
  }

  // Connection failures and timeouts leave as DEPENDENCY_UNAVAILABLE (queue/errors.ts).
  return withRedisErrors({
    prefix,
    layout,
    queues,
    shardQueues,
    shardOf: shardOfId,
    view: (kind, identityIds) =>
      perShard(identityIds, shardOfId, (shard, ids) =>
        (armers[shard] as ShardArmer).view(kind, ids),
      ),
    apply: (kind, identityId, action, fence) =>
      armerOf(identityId).apply(kind, identityId, action, fence),
    async arm(kind, identityId, desired, now, fence) {
      const [action] = await armerOf(identityId).armMany(
        kind,
        [{ identityId, desired }],
        now,
        fence,
      );
      return action ?? { kind: "none" };
    },
    armMany: (kind, items, now, fence, options) =>
      perShard(
        items,
        (item) => shardOfId(item.identityId),
        (shard, group) => (armers[shard] as ShardArmer).armMany(kind, group, now, fence, options),
      ),
    armEarlier: (kind, items, now, fence) =>
      perShard(
        items,
        (item) => shardOfId(item.identityId),
        (shard, group) => (armers[shard] as ShardArmer).armEarlier(kind, group, now, fence),
      ),
    async beginReconcile(runId, shards = shardNumbers) {
      // A sorted set of the runs in progress, so that runs side by side (an operator's beside a
      // worker's) each complete; records of runs whose process died are dropped after a day.
      const now = Date.now();
      await Promise.all(
        shards.map((i) =>
          redis
            .multi()
            .zadd(runKey(i), now, runId)
            .zremrangebyscore(runKey(i), "-inf", now - 86_400_000)
            .exec(),
        ),
      );
    },
    async completeReconcile(runId, shards = shardNumbers) {
      const at = new Date().toISOString();
      // Per shard: a shard whose data was lost during the run lost the record and gets no mark.
      const done = await Promise.all(
        shards.map((i) =>
          redis.eval(
            "if redis.call('zrem', KEYS[1], ARGV[1]) == 1 then redis.call('set', KEYS[2], ARGV[2]) return 1 end return 0",
            2,
            runKey(i),
            markKey(i),
            runId,
            at,
          ),
        ),
      );
      return done.every((d) => d === 1);
    },
    async fenceHighWater() {
      const highs = await Promise.all(shardNumbers.map((i) => redis.get(fenceHighKey(i))));
      // A value that is no fence (written by hand) is ignored, not allowed to stop healing.
      return Math.max(0, ...highs.map((h) => Number(h ?? 0)).filter(Number.isSafeInteger));
    },
    refusedArms: () => refused,
    async isReconciled() {
      return (await unreconciledShards()).length === 0;
    },
    unreconciledShards,
    async countWakeups(kind) {
      return (await countWakeupsPerShard(kind)).reduce((sum, n) => sum + n, 0);
    },
    countWakeupsPerShard,
    tryLease,
    async releaseLease(name, owner) {
      await redis.eval(
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
        1,
        leaseKey(name),
        owner,
      );
    },
    scanAllIdentityIds,
    async close() {
      await Promise.all(shardQueues.flatMap((q) => Object.values(q)).map((q) => q.close()));
    },
  });
}
