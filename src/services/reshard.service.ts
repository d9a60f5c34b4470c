import type { RedisConnection } from "../queue/wakeup-queues.js";
import { type MisplacedReport, removeMisplaced } from "../queue/reshard.js";
import { type ReconcileOptions, type ReconcileReport, reconcile } from "./reconcile.service.js";
import type { LiveRotor } from "./rotor.js";

export interface ReshardReport {
  from: number;
  to: number;
  reconcile: ReconcileReport;
  misplaced: MisplacedReport;
}

/**
 * Changes QUEUE_SHARDS from `fromShards` to the rotor's (docs/cluster.md): a reconcile arms every
 * wake-up in the new layout from Postgres, under the row locks as always, then every job of the
 * old layout that is now in the wrong queue is removed. Every identity has its wake-ups in the
 * new queues before any old one goes, so none is lost, and none is left twice. Throws when a
 * job could not be removed (a worker held it): run it again.
 */
export async function reshard(
  rotor: LiveRotor,
  redis: RedisConnection,
  fromShards: number,
  options: ReconcileOptions = {},
): Promise<ReshardReport> {
  const to = rotor.timers.layout;
  const report = await reconcile(rotor, options);
  const misplaced = await removeMisplaced(redis, { ...to, shards: fromShards }, to);
  rotor.log.info(
    {
      component: "reshard",
      from: fromShards,
      to: to.shards,
      ...misplaced,
      stuck: misplaced.stuck.length,
    },
    "reshard finished",
  );
  if (misplaced.stuck.length > 0) {
    throw new Error(
      `reshard: ${misplaced.stuck.length} wake-ups of the old layout are held by a worker (a process with the old QUEUE_SHARDS still runs?); run it again`,
    );
  }
  return { from: fromShards, to: to.shards, reconcile: report, misplaced };
}
