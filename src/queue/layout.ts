import { createHash } from "node:crypto";

/**
 * Where the wake-up queues live in Redis (docs/cluster.md). With one shard on a single Redis
 * (the default) the keys are what they always were: `<prefix>:rotation:…`, `<prefix>:deletion:…`
 * and `<prefix>:kp-rotor:…` for the reconcile mark, runs and leases. With QUEUE_SHARDS > 1, or
 * on a Redis Cluster, shard i's two queues and its reconcile keys sit under the hash tag
 * `{<prefix>:i}`, so every key one script touches shares a slot, and different shards land in
 * different slots (a cluster spreads them over its primaries); the leases sit under `{<prefix>}`.
 */
export interface KeyLayout {
  prefix: string;
  shards: number;
  cluster: boolean;
}

/** The most shards: a shard is a class of census slots (censusSlot mod shards), and there are 64. */
export const MAX_SHARDS = 64;

/** Whether keys carry hash tags (any layout but one shard on a single Redis). */
export const isTagged = (layout: KeyLayout): boolean => layout.cluster || layout.shards > 1;

/** The BullMQ prefix of shard `shard`'s two queues. */
export function shardPrefix(layout: KeyLayout, shard: number): string {
  return isTagged(layout) ? `{${layout.prefix}:${shard}}` : layout.prefix;
}

/** The prefix of keys that belong to no shard (the reconcile lease). */
export function sharedPrefix(layout: KeyLayout): string {
  return isTagged(layout) ? `{${layout.prefix}}` : layout.prefix;
}

/**
 * The wakeup census slot of an identity (0..63): the low 6 bits of the first 4 bytes of
 * md5(id). Postgres computes the same (`kp_rotor_census_slot`, drizzle/0005), so the census
 * can be summed per shard without knowing the number of shards.
 */
export function censusSlot(identityId: string): number {
  const digest = createHash("md5").update(identityId, "utf8").digest();
  return (digest[3] ?? 0) & 63;
}

/** The shard of an identity: its census slot modulo the number of shards. Stable for a given K. */
export const shardOf = (identityId: string, shards: number): number =>
  shards <= 1 ? 0 : censusSlot(identityId) % shards;
