import { afterRotation, backoffMs, decideRotation } from "../core/timers.js";
import * as repo from "../db/identities.repo.js";
import type { ActiveWakeup, Rotor } from "./rotor.js";

/**
 * What a wake-up does when its job fires. Both kinds follow the same two steps (DESIGN.md,
 * "Commit, then re-arm"):
 *  1. under the row lock, decide from Postgres and do the work; commit;
 *  2. under the row lock again, re-arm the job to the deadline now committed (or finish it).
 * When step 1 wrote nothing (not due, or gone) both steps share one transaction.
 */

export type RotationOutcome = "rotated" | "not-due" | "gone" | "fenced";
export type DeletionOutcome = { deleted: number; next: number | null } | "gone";

export async function handleRotationWake(
  rotor: Rotor,
  wake: ActiveWakeup,
): Promise<RotationOutcome> {
  const id = wake.identityId;
  let at = 0;
  let dueDeadline: number | undefined;
  const outcome = await rotor.db.transaction(async (tx): Promise<RotationOutcome> => {
    const identity = await repo.lockOrTombstone(tx, id);
    const now = rotor.clock();
    at = now;
    const decision = decideRotation(identity, now);
    if (decision.kind === "gone") {
      await wake.finish();
      return "gone";
    }
    if (decision.kind === "not-due") {
      await wake.rearm(decision.deadline);
      return "not-due";
    }
    dueDeadline = identity.rotationDeadline ?? undefined;
    if (identity.signaturePublicKey === null || identity.signaturePrivateKey === null) {
      throw new Error("live identity without a signature key");
    }
    const keyPackage = await rotor.keys.generate({
      identity: new TextEncoder().encode(id),
      signatureKeys: {
        publicKey: identity.signaturePublicKey,
        privateKey: identity.signaturePrivateKey,
      },
      now,
    });
    const next = afterRotation(now, rotor.timing);
    const recorded = await repo.recordRotation(tx, {
      id,
      expectedGeneration: identity.generation,
      now,
      rotationDeadline: next.rotationDeadline,
      supersededDeleteAt: next.supersededDeleteAt,
      keyPackage: {
        ref: keyPackage.ref,
        ciphersuite: rotor.keys.ciphersuite,
        keyPackage: keyPackage.publicBytes,
        privateKey: keyPackage.privateBytes,
        notBefore: keyPackage.notBefore,
        notAfter: keyPackage.notAfter,
      },
    });
    return recorded ? "rotated" : "fenced";
  });
  if (outcome === "rotated" || outcome === "fenced") {
    await rotor.db.transaction(async (tx) => {
      const identity = await repo.lockIdentity(tx, id);
      const now = rotor.clock();
      const decision = decideRotation(identity, now);
      if (decision.kind === "gone") await wake.finish();
      // Due again already (a zero interval in tests): fire at once rather than lose it.
      else await wake.rearm(decision.kind === "not-due" ? decision.deadline : now);
      await rotor.timers.arm("deletion", id, await repo.nextDeleteAt(tx, id), now);
    });
  }
  rotor.events.emit("rotation", { identityId: id, outcome, at, deadline: dueDeadline });
  return outcome;
}

export async function handleDeletionWake(
  rotor: Rotor,
  wake: ActiveWakeup,
): Promise<DeletionOutcome> {
  const id = wake.identityId;
  const at = rotor.clock();
  const deleted = await rotor.db.transaction(async (tx) => {
    const identity = await repo.lockOrTombstone(tx, id);
    if (identity.deregistered) {
      await wake.finish();
      return "gone" as const;
    }
    return repo.deleteDueKeyPackages(tx, id, rotor.clock());
  });
  if (deleted === "gone") return deleted;
  const next = await rotor.db.transaction(async (tx) => {
    const identity = await repo.lockIdentity(tx, id);
    const next = identity?.deregistered === false ? await repo.nextDeleteAt(tx, id) : null;
    if (next === null) await wake.finish();
    else await wake.rearm(next);
    return next;
  });
  rotor.events.emit("deletion", { identityId: id, deleted, at });
  return { deleted, next };
}

/**
 * A wake-up that threw (Postgres down, key generation failed): the deadline stays due in
 * Postgres and the job comes back after the backoff, forever. This runs without the row lock
 * because Postgres may be unreachable; the price is that a welcome arriving meanwhile waits for
 * the retry (at most BACKOFF.maxMs), see DESIGN.md.
 */
export async function handleWakeFailure(
  rotor: Rotor,
  wake: ActiveWakeup,
  kind: "rotation" | "deletion",
  error: unknown,
): Promise<number> {
  const failures = wake.failures + 1;
  const delay = backoffMs(failures);
  const message = error instanceof Error ? error.message : String(error);
  rotor.log.warn(
    {
      identityId: wake.identityId,
      jobId: wake.jobId,
      kind,
      failures,
      retryInMs: delay,
      err: message,
    },
    "wake-up failed; retrying after backoff",
  );
  rotor.events.emit("wake-failed", { identityId: wake.identityId, kind, failures, error: message });
  await wake.retryLater(rotor.clock() + delay, failures);
  if (kind === "rotation") {
    await repo
      .recordRotationFailure(rotor.db, wake.identityId, rotor.clock(), message)
      .catch(() => {
        // Postgres is likely the reason we are here; the job's own counter still drives the backoff.
      });
  }
  return delay;
}
