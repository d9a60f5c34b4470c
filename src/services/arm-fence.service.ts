import type { StoreTx } from "../core/ports.js";
import { ErrorCodes, KpRotorError } from "../errors.js";
import type { Rotor } from "./rotor.js";

/*
 * The arm fence against a Postgres restored from a backup (DESIGN.md, "Fenced arms"). When
 * arm_seq is behind the fences Redis holds, which happens only when Postgres was restored while
 * Redis kept its jobs, every arm is refused by the fence; these move arm_seq past the highest
 * fence Redis has recorded (one GET per shard, one statement).
 */

/** Before every reconcile and watchdog run: moves arm_seq on if it is behind. */
export function catchUpArmFence(rotor: Rotor): Promise<void> {
  return catchUp(rotor, (high) => rotor.store.advanceArmFence(high));
}

/** Attempts of one arm under one set of row locks, each with a fresh fence after a catch-up. */
const ATTEMPTS = 3;

/**
 * Runs `arm` (every arm of one transaction, with its fence) so that none of it stays refused: if
 * the fence refused any arm while it ran (Wakeups.refusedArms), moves arm_seq past Redis' mark on
 * this transaction's connection, draws a fresh fence under the locks still held, and arms again;
 * arms that went through the first time plan nothing the second. The count is per process, so
 * another caller's refusal costs a repeat here, never a wrong answer; after ATTEMPTS it fails
 * (503), and the transaction rolls back.
 */
export async function armUnrefused(
  rotor: Rotor,
  tx: StoreTx,
  fence: number,
  arm: (fence: number) => Promise<unknown>,
): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const before = rotor.timers.refusedArms();
    await arm(fence);
    if (rotor.timers.refusedArms() === before) return;
    if (attempt === ATTEMPTS) {
      throw new KpRotorError(
        ErrorCodes.unavailable,
        "a wake-up could not be armed: the arm fence refused it (arm_seq behind Redis' fences); nothing was changed, retry",
      );
    }
    await catchUp(rotor, (high) => tx.advanceArmFence(high));
    fence = await tx.nextArmFence();
  }
}

/** Reads Redis' mark and, if arm_seq is behind it, moves it on with `advance`; says so loudly. */
async function catchUp(
  rotor: Rotor,
  advance: (high: number) => Promise<number | undefined>,
): Promise<void> {
  const high = await rotor.timers.fenceHighWater();
  if (high === 0) return;
  const was = await advance(high);
  if (was === undefined) return;
  rotor.log.error(
    { component: "arm-fence", armSeq: was, redisFence: high },
    "arm_seq was behind the fences in Redis (Postgres restored from a backup?); moved it past them",
  );
  rotor.events.emit("arm-fence-advanced", { from: was, redisFence: high });
}
