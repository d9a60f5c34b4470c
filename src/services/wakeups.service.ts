import type { ActiveWakeup } from "../core/ports.js";
import { backoffMs, fireTimeFor } from "../core/deadlines.js";
import { wakeTarget } from "../core/transitions.js";
import { verifyPublished } from "./verify.service.js";
import { formatSafeError, redactError } from "../safe-errors.js";
import { settleAll } from "../settle.js";
import { deleteNotification, devicesOf, rotateNotification } from "./device.service.js";
import { completeRotation, prepareRotation } from "./rotation.service.js";
import type { Rotor } from "./rotor.js";

/**
 * What a wake-up does when its job fires. Both kinds follow the same two steps (DESIGN.md,
 * "Commit, then re-arm"):
 *  1. under the row lock, decide from Postgres and do the work; commit;
 *  2. under the row lock again, re-arm the job to the deadline now committed (or finish it).
 * When step 1 wrote nothing (not due, or gone) both steps share one transaction.
 */

export type RotationOutcome =
  | "rotated"
  | "not-due"
  | "gone"
  | "fenced"
  | "awaiting-device"
  | "checked";

export type DeletionOutcome = { deleted: number; next: number | null } | "gone";

export async function handleRotationWake(
  rotor: Rotor,
  wake: ActiveWakeup,
): Promise<RotationOutcome> {
  const id = wake.identityId;
  const startedAt = rotor.clock();
  const prepared = await rotor.store.transaction(async (tx) => {
    // A wake-up nearly always has its row: lock it, and leave a tombstone only when it is missing.
    // The pending package is read in the same round trip: Postgres runs the two statements in
    // order on the transaction's connection (both are sent when awaited, lock first), so the
    // read takes its snapshot after the lock is granted. (Were the order ever reversed, prepare
    // would at worst miss a pending package and fail on the unique index: a retry, no harm.)
    const [locked, pending] = await settleAll([tx.lockIdentity(id), tx.findPending(id)] as const);
    const identity = locked ?? (await tx.lockOrTombstone(id));
    // Postgres' clock decides what is due (DESIGN.md, "Time").
    const step = await prepareRotation(rotor, tx, identity, identity.now, {
      pending: pending ?? null,
    });
    // Nothing was written for these two: re-arm or finish in the same transaction.
    if (step.kind === "gone") await wake.finish();
    if (step.kind === "not-due") {
      // An early wake for the mid-interval check of the published package: taken once (cleared
      // before the commit), then the wake-up goes back to the deadline.
      const check = identity.verifyAt !== null && identity.verifyAt <= identity.now;
      if (check) await tx.clearVerifyAt(id);
      const verifyAt = check ? null : identity.verifyAt;
      await wake.rearm(
        fireTimeFor(wakeTarget(step.deadline, verifyAt, identity.now), startedAt, identity.now),
      );
      return check ? { kind: "check" as const, deadline: step.deadline } : step;
    }
    return step;
  });
  if (prepared.kind === "check") {
    // Re-armed already; a check that fails to run is logged, never retried as a rotation.
    await verifyPublished(rotor, id, "mid-interval").catch((err) =>
      rotor.log.warn(
        { identityId: id, err: redactError(err) },
        "could not check the published key package",
      ),
    );
    rotor.events.emit("rotation", {
      identityId: id,
      outcome: "checked",
      at: rotor.clock(),
      startedAt,
    });
    return "checked";
  }
  if (prepared.kind === "await-device") {
    await askDevice(rotor, wake, prepared);
    rotor.events.emit("rotation", {
      identityId: id,
      outcome: "awaiting-device",
      at: rotor.clock(),
      startedAt,
    });
    return "awaiting-device";
  }
  if (prepared.kind !== "publish") {
    const at = rotor.clock();
    rotor.events.emit("rotation", { identityId: id, outcome: prepared.kind, at, startedAt });
    return prepared.kind;
  }
  const { outcome, at } = await completeRotation(rotor, id, prepared.pending, (deadline) =>
    deadline === null ? wake.finish() : wake.rearm(deadline),
  );
  rotor.events.emit("rotation", {
    identityId: id,
    outcome,
    at,
    startedAt,
    deadline: prepared.dueDeadline,
  });
  return outcome;
}

/**
 * A device identity whose rotation is due and which has uploaded nothing: send it a signed
 * `rotate` (outside any lock: a network call), then come back after the backoff and ask again,
 * until an upload rolls the deadline forward. The deadline stays due in Postgres throughout, so
 * nothing is lost if this process dies; a failed notification is recorded like a failed publish.
 */
async function askDevice(
  rotor: Rotor,
  wake: ActiveWakeup,
  step: { dueDeadline: number; notifyUrl: string | null; currentRef: string | null },
): Promise<void> {
  const id = wake.identityId;
  const failures = wake.failures + 1;
  try {
    if (step.notifyUrl === null) throw new Error("device identity without a notification endpoint");
    const notification = rotateNotification(id, step.notifyUrl, step.dueDeadline, step.currentRef);
    try {
      await devicesOf(rotor).notifier.notify(notification);
      rotor.events.emit("device-notify", {
        identityId: id,
        type: "rotate",
        id: notification.id,
        ok: true,
      });
    } catch (err) {
      const error = formatSafeError(err);
      rotor.events.emit("device-notify", {
        identityId: id,
        type: "rotate",
        id: notification.id,
        ok: false,
        error,
      });
      await rotor.store.recordRotationFailure(id, rotor.clock(), error).catch(() => {});
    }
  } finally {
    // Ask again after the usual backoff (2 s, x1.5, at most 60 s) while no upload comes.
    await wake.retryLater(rotor.clock() + backoffMs(failures), failures);
  }
}

export async function handleDeletionWake(
  rotor: Rotor,
  wake: ActiveWakeup,
): Promise<DeletionOutcome> {
  const id = wake.identityId;
  const at = rotor.clock();
  const step = await rotor.store.transaction(async (tx) => {
    const identity = await tx.lockOrTombstone(id);
    if (identity.deregistered) {
      await wake.finish();
      return "gone" as const;
    }
    // Due by Postgres' clock, never this process's: a clock running ahead deletes nothing early.
    if (identity.custody !== "device") return tx.deleteDueKeyPackages(id, identity.now);
    // A device is told each ref before it is deleted here (at least once; see below).
    return { refs: await tx.dueDeletionRefs(id, identity.now), notifyUrl: identity.notifyUrl };
  });
  if (step === "gone") return step;
  const deleted = typeof step === "number" ? step : await deleteForDevice(rotor, id, step);
  const next = await rotor.store.transaction(async (tx) => {
    const localNow = rotor.clock();
    const identity = await tx.lockIdentity(id);
    const next = identity?.deregistered === false ? await tx.nextDeleteAt(id) : null;
    if (next === null || identity === undefined) await wake.finish();
    else await wake.rearm(fireTimeFor(next, localNow, identity.now));
    return next;
  });
  rotor.events.emit("deletion", { identityId: id, deleted, at });
  return { deleted, next };
}

/**
 * A device identity's due deletions: a signed `delete` per ref first (outside the lock; a failure
 * throws, the rows stay due and the wake-up retries with backoff: at least once, the device
 * deduplicates on the notification id), then the rows, only those refs, under the lock again.
 * The old package stopped being served when it was superseded; this ends its life here.
 */
async function deleteForDevice(
  rotor: Rotor,
  id: string,
  step: { refs: string[]; notifyUrl: string | null },
): Promise<number> {
  if (step.refs.length === 0) return 0;
  if (step.notifyUrl !== null) {
    for (const ref of step.refs) {
      const notification = deleteNotification(id, step.notifyUrl, ref);
      try {
        await devicesOf(rotor).notifier.notify(notification);
      } catch (err) {
        rotor.events.emit("device-notify", {
          identityId: id,
          type: "delete",
          id: notification.id,
          ok: false,
          error: formatSafeError(err),
        });
        throw err;
      }
      rotor.events.emit("device-notify", {
        identityId: id,
        type: "delete",
        id: notification.id,
        ok: true,
      });
    }
  }
  return rotor.store.transaction(async (tx) => {
    const identity = await tx.lockIdentity(id);
    if (identity === undefined || identity.deregistered) return 0;
    return tx.deleteDueKeyPackagesIn(id, identity.now, step.refs);
  });
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
  // last_error and the event get a code and this service's own words; the log the details.
  const message = formatSafeError(error);
  rotor.log.warn(
    {
      identityId: wake.identityId,
      jobId: wake.jobId,
      kind,
      failures,
      retryInMs: delay,
      err: redactError(error),
    },
    "wake-up failed; retrying after backoff",
  );
  rotor.events.emit("wake-failed", { identityId: wake.identityId, kind, failures, error: message });
  await wake.retryLater(rotor.clock() + delay, failures);
  if (kind === "rotation") {
    await rotor.store.recordRotationFailure(wake.identityId, rotor.clock(), message).catch(() => {
      // Postgres is likely the reason we are here; the job's own counter still drives the backoff.
    });
  }
  return delay;
}
