import { CAP_WINDOW_MS, earliestAllowedRotation } from "../core/rotation-cap.js";
import type { StoreTx } from "../core/ports.js";
import { type PullInResult, planPullIns } from "../core/transitions.js";
import { assertIdentityId } from "../errors.js";
import { armUnrefused } from "./arm-fence.service.js";
import { settleAll } from "../settle.js";
import { createPullInBatcher, type PullInBatcher } from "./pull-in-batcher.js";
import type { Rotor } from "./rotor.js";

/**
 * Pulling rotation deadlines in: welcomes (to now + WELCOME_ROTATION_DELAY), rotate-now (to now),
 * and a failed check of a published package (verify.service). Earliest deadline wins; each
 * pull-in arms the wake-up under the row lock before its commit.
 */

/**
 * Pulls rotation deadlines in to now + delay (earliest wins) for one or many identities, in one
 * transaction. The pulled-in deadline and its wake-up are in place when this resolves; unknown
 * identities are returned apart and nothing is written for them.
 */
export async function pullInMany(
  rotor: Rotor,
  ids: readonly string[],
  delayMs: number,
): Promise<{ results: PullInResult[]; notFound: string[] }> {
  for (const id of ids) assertIdentityId(id);
  const unique = [...new Set(ids)];
  return rotor.store.transaction(async (tx) => {
    const locked = await tx.lockDeadlines(unique);
    // Postgres' clock (one read for the whole batch) sets the deadline: DESIGN.md, "Time".
    const now = locked[0]?.now ?? rotor.clock();
    // Over MAX_ROTATIONS_PER_HOUR the pull-in still happens, to the next allowed time.
    const allowed = await allowedRotations(rotor, tx, locked, now);
    // Welcomes during a rotation's publish are recorded; the promote keeps their deadline.
    const plan = planPullIns(locked, now, delayMs, allowed);
    const { results, changed, capped, duringPublish, deadline } = plan;
    // The UPDATE and the arm run side by side, both before the commit: earlier wake-ups may
    // be armed before the commit (if it fails they only fire early). Both settle before the
    // transaction ends, so no Redis change outlives the row locks. Every changed deadline is
    // the same value, now + delay (but for identities over the rotation cap, set apart); the arm
    // is one script call per 1,000 ids that moves every delayed wake-up earlier, and planArm only
    // for the few whose job is in another state.
    await settleAll([
      tx.setRotationDeadlines(changed, deadline),
      ...capped.map((c) => tx.setRotationDeadlines([c.identityId], c.deadline)),
      tx.recordWelcomesDuringPublish(duringPublish, deadline),
      armUnrefused(rotor, tx, locked[0]?.fence ?? 0, (fence) =>
        rotor.timers.armEarlier(
          "rotation",
          [
            ...changed.map((identityId) => ({ identityId, fireAt: deadline })),
            ...capped.map((c) => ({ identityId: c.identityId, fireAt: c.deadline })),
          ],
          now,
          fence,
        ),
      ),
    ]);
    const found = new Set(results.map((r) => r.identityId));
    return { results, notFound: unique.filter((id) => !found.has(id)) };
  });
}

/** The earliest rotation time per identity under MAX_ROTATIONS_PER_HOUR (none without a cap). */
async function allowedRotations(
  rotor: Rotor,
  tx: StoreTx,
  locked: readonly { id: string; deregistered: boolean }[],
  now: number,
): Promise<Map<string, number>> {
  const cap = rotor.timing.maxRotationsPerHour;
  const allowed = new Map<string, number>();
  if (cap === undefined) return allowed;
  const live = locked.filter((i) => !i.deregistered).map((i) => i.id);
  const recent = await tx.recentRotations(live, now - CAP_WINDOW_MS);
  for (const [id, times] of recent) allowed.set(id, earliestAllowedRotation(times, now, cap));
  return allowed;
}

/**
 * Single welcomes and rotate-now requests are committed in groups: one transaction for all that
 * arrive while the previous group commits (services/pull-in-batcher.ts). One group committer per
 * rotor, made on first use; each caller still waits for its own commit.
 */
const batchers = new WeakMap<Rotor, PullInBatcher>();
function batcherOf(rotor: Rotor): PullInBatcher {
  let batcher = batchers.get(rotor);
  if (batcher === undefined) {
    batcher = createPullInBatcher((ids, delayMs) => pullInMany(rotor, ids, delayMs));
    batchers.set(rotor, batcher);
  }
  return batcher;
}

/** A welcome consumed the identity's key package: rotate within WELCOME_ROTATION_DELAY. */
export function welcome(rotor: Rotor, id: string): Promise<PullInResult> {
  return batcherOf(rotor).pullIn(id, rotor.timing.welcomeRotationDelayMs);
}

/** Rotate as soon as a worker is free. */
export function rotateSoon(rotor: Rotor, id: string): Promise<PullInResult> {
  return batcherOf(rotor).pullIn(id, 0);
}
