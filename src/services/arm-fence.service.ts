import type { Rotor } from "./rotor.js";

/**
 * The arm fence against a Postgres restored from a backup (DESIGN.md, "Fenced arms"): moves
 * arm_seq past the highest fence Redis has seen when it is behind it, which happens only when
 * Postgres was restored while Redis kept its jobs; every arm would then be refused by the fence.
 * Returns whether it moved. Run before every reconcile and watchdog run, and by any caller that
 * saw an arm refused (Wakeups.refusedArms); one GET per shard and one statement.
 */
export async function catchUpArmFence(rotor: Rotor): Promise<boolean> {
  const high = await rotor.timers.fenceHighWater();
  if (high === 0) return false;
  const was = await rotor.store.advanceArmFence(high);
  if (was === undefined) return false;
  rotor.log.error(
    { component: "arm-fence", armSeq: was, redisFence: high },
    "arm_seq was behind the fences in Redis (Postgres restored from a backup?); moved it past them",
  );
  rotor.events.emit("arm-fence-advanced", { from: was, redisFence: high });
  return true;
}
