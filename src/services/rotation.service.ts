import type { LockedIdentity, NewKeyPackage, PendingKeyPackage, StoreTx } from "../core/ports.js";
import { afterRotation, decideRotation } from "../core/deadlines.js";
import {
  reusablePending,
  rotationRearmAt,
  rotationSource,
  verifyAtAfterRotation,
} from "../core/transitions.js";
import { redactError } from "../safe-errors.js";
import { verifyPublished } from "./verify.service.js";
import { publishesByPromoting } from "../keys/publisher.js";
import type { Rotor } from "./rotor.js";
import { settleAll } from "../settle.js";

/**
 * A rotation in libxmtp's order: generate and store (pending), publish, and only then make the
 * new key package current, supersede the old one and roll the deadline forward.
 *
 *  1. prepare, under the row lock: the deadline must be due; reuse the pending key package if a
 *     previous attempt left one (so a retried publish sends the same package and idempotency
 *     key), otherwise generate one, seal its private half and store it as pending;
 *  2. publish, without any lock (it may be a slow network call);
 *  3. promote, under the row lock again: fenced on the generation, so of two attempts that both
 *     published the same package only one supersedes.
 * A failure anywhere leaves the deadline due; the caller retries with backoff.
 *
 * With the directory publisher, publishing *is* making the package current (the service serves
 * the current row; nothing goes anywhere; see publishesByPromoting), so steps 1 to 3 are one
 * transaction under one lock:
 * the package is stored already current, in the transaction that supersedes the old one, fenced
 * on the generation read under that lock. There is no state between the steps to recover from:
 * a failure rolls everything back and leaves the deadline due.
 */

/** A prepared key package; `promotedAt` is set when prepare already made it current. */
export interface PreparedPackage extends PendingKeyPackage {
  /** Directory publisher: published and promoted at this time, in prepare's transaction. */
  promotedAt?: number;
}

export type Prepared =
  | { kind: "gone" }
  | { kind: "not-due"; deadline: number }
  | { kind: "publish"; pending: PreparedPackage; dueDeadline: number }
  /** A device identity's rotation is due and it has uploaded nothing yet: ask it (marked awaiting). */
  | {
      kind: "await-device";
      dueDeadline: number;
      notifyUrl: string | null;
      currentRef: string | null;
      awaitingSince: number;
    };

/**
 * Step 1; runs inside the caller's transaction, which holds the identity's row lock.
 * `firstPublish` lets registration publish an identity's first key package before its deadline,
 * when it has no current one (new, or revived after deregistration).
 *
 * With the directory publisher this also publishes and promotes (steps 2 and 3) in the same
 * transaction and arms the deletion wake-up before the commit; the returned package then has
 * `promotedAt` set, and completeRotation only re-arms.
 */
export async function prepareRotation(
  rotor: Rotor,
  tx: StoreTx,
  identity: LockedIdentity,
  now: number,
  options: {
    firstPublish?: boolean;
    /** The identity's pending package, when the caller read it under the lock already. */
    pending?: PendingKeyPackage | null;
  } = {},
): Promise<Prepared> {
  const decision = decideRotation(identity, now);
  const first = options.firstPublish === true && !(await tx.hasCurrent(identity.id));
  if (decision.kind === "gone" || (decision.kind === "not-due" && !first)) return decision;
  const dueDeadline = identity.rotationDeadline as number;
  const generation = identity.generation + 1;
  const direct = publishesByPromoting(rotor.publisher);
  const existing =
    options.pending === undefined ? await tx.findPending(identity.id) : options.pending;
  // A device's upload may use any allowed suite: its pending package is its own choice, as long
  // as it still outlives the interval it would start (a publish that failed long ago leaves one
  // too short; then the device is asked again).
  const reuse =
    identity.custody === "device"
      ? existing?.generation === generation &&
        existing.notAfter.getTime() >=
          now + rotor.timing.rotationIntervalMs + (rotor.devices?.marginMs ?? 0)
      : reusablePending(existing, generation, rotor.keys.ciphersuite);
  if (existing && !reuse) await tx.deletePending(existing.id);
  if (rotationSource(identity.custody, reuse) === "await-device") {
    const [, currentRef] = await settleAll([
      tx.markAwaitingDevice(identity.id, now),
      tx.currentRef(identity.id),
    ] as const);
    return {
      kind: "await-device",
      dueDeadline,
      notifyUrl: identity.notifyUrl,
      currentRef,
      awaitingSince: identity.awaitingDeviceSince ?? now,
    };
  }

  if (reuse && existing && !direct) {
    if (!identity.publishing) await tx.markPublishing(identity.id, now);
    return { kind: "publish", pending: existing, dueDeadline };
  }
  if (reuse && existing) {
    // A pending package left by an earlier attempt (say, under the webhook publisher): it is
    // published by becoming current, here.
    const at = await promoteInPrepare(rotor, tx, identity, now, generation, (promotedAt) =>
      tx.markCurrent(existing.id, promotedAt),
    );
    return { kind: "publish", pending: { ...existing, promotedAt: at }, dueDeadline };
  }
  const fresh = await generateSealed(rotor, identity, now);
  if (!direct) {
    // From here until the promote the package may be visible where it is published: welcomes
    // in that window are recorded (markPublishing) and honoured by the promote.
    const [pending] = await settleAll([
      tx.insertPending(identity.id, generation, now, fresh),
      tx.markPublishing(identity.id, now),
    ] as const);
    return { kind: "publish", pending, dueDeadline };
  }
  let id = 0;
  const at = await promoteInPrepare(rotor, tx, identity, now, generation, async (promotedAt) => {
    id = await tx.insertCurrent(identity.id, generation, promotedAt, fresh);
  });
  return { kind: "publish", pending: { ...fresh, id, generation, promotedAt: at }, dueDeadline };
}

/**
 * The directory publisher's promote inside prepare's transaction: supersede (the fence), then
 * `makeCurrent`, then arm the deletion wake-up before the commit, as promoteRotation does.
 * Returns the promote time.
 *
 * The two statements go out together, in one round trip: Postgres runs them in order on the
 * transaction's connection. supersedeCurrent is dispatched first (a plain execute, sent when
 * called; a query builder is only sent when awaited). Were the order ever reversed, the new
 * current row would meet the old one in the unique index and the transaction would fail and be
 * retried: never a wrong state. The fence cannot fail (the generation was read under the lock
 * this transaction holds); if it did, everything rolls back.
 */
export async function promoteInPrepare(
  rotor: Rotor,
  tx: StoreTx,
  identity: LockedIdentity,
  now: number,
  generation: number,
  makeCurrent: (now: number) => Promise<void>,
): Promise<number> {
  const identityId = identity.id;
  const next = afterRotation(now, rotor.timing, identity.welcomeDeadline, identityId);
  const [superseded] = await settleAll([
    tx.supersedeCurrent({
      identityId,
      generation,
      now,
      rotationDeadline: next.rotationDeadline,
      supersededDeleteAt: next.supersededDeleteAt,
      verifyAt: plannedCheck(rotor, now, next.rotationDeadline),
    }),
    makeCurrent(now),
  ] as const);
  if (superseded.fenced) throw new Error(`identity ${identityId} changed generation under lock`);
  await rotor.timers.arm("deletion", identityId, superseded.nextDeleteAt, now, identity.fence);
  return now;
}

/** The mid-interval check of the published package, when checks are configured. */
function plannedCheck(rotor: Rotor, now: number, rotationDeadline: number): number | null {
  if (rotor.verifier?.midway !== true) return null;
  return verifyAtAfterRotation(now, rotor.timing.rotationIntervalMs, rotationDeadline);
}

/** A fresh key package for the identity, its private half sealed. */
async function generateSealed(
  rotor: Rotor,
  identity: LockedIdentity,
  now: number,
): Promise<NewKeyPackage> {
  if (identity.custody === "device") {
    // Unreachable by construction (rotationSource); a guard, since this is the one place keys are made.
    throw new Error("refusing to generate a key package for a device identity");
  }
  if (identity.signaturePublicKey === null || identity.signaturePrivateKey === null) {
    throw new Error("live identity without a signature key");
  }
  const generated = await rotor.keys.generate({
    identity: identity.credentialIdentity ?? new TextEncoder().encode(identity.id),
    signatureKeys: {
      publicKey: identity.signaturePublicKey,
      privateKey: rotor.keyring.open(
        identity.signaturePrivateKey,
        identity.id,
        "signature-private",
      ),
    },
    now,
  });
  return {
    ref: generated.ref,
    ciphersuite: rotor.keys.ciphersuite,
    keyPackage: generated.publicBytes,
    // Bound to the row it goes into: this identity's next generation and this package's ref.
    privateKey: rotor.keyring.seal(generated.privateBytes, identity.id, "key-package-private", {
      generation: identity.generation + 1,
      ref: generated.ref,
    }),
    notBefore: generated.notBefore,
    notAfter: generated.notAfter,
  };
}

/** Step 2. */
async function publishPending(
  rotor: Rotor,
  identityId: string,
  pending: PendingKeyPackage,
): Promise<void> {
  await rotor.publisher.publish({
    identityId,
    generation: pending.generation,
    ref: pending.ref,
    keyPackage: pending.keyPackage,
    notAfter: pending.notAfter,
  });
}

/** Step 3, in its own transaction; "fenced" when another attempt promoted first. */
async function promoteRotation(
  rotor: Rotor,
  identityId: string,
  pending: PendingKeyPackage,
): Promise<{ outcome: "rotated" | "fenced"; at: number }> {
  return rotor.store.transaction(async (tx) => {
    const locked = await tx.lockIdentity(identityId);
    const now = locked?.now ?? rotor.clock();
    const next = afterRotation(now, rotor.timing, locked?.welcomeDeadline ?? null, identityId);
    const promoted = await tx.promotePending({
      identityId,
      pending,
      now,
      rotationDeadline: next.rotationDeadline,
      supersededDeleteAt: next.supersededDeleteAt,
      verifyAt: plannedCheck(rotor, now, next.rotationDeadline),
    });
    // The superseded package's deletion is armed before the commit (an earlier wake-up is always
    // safe): if the re-arm step after the commit fails, or the worker dies there, nothing else
    // would arm it until the next rotation.
    if (promoted && locked) {
      await rotor.timers.arm("deletion", identityId, promoted.nextDeleteAt, now, locked.fence);
    }
    return { outcome: promoted ? "rotated" : "fenced", at: now };
  });
}

/**
 * Steps 2 to 4 for a prepared rotation: publish, promote, then re-arm under the lock (for a
 * package prepare already promoted, only the re-arm). The rotation wake-up is re-armed through
 * `rearmRotation` (a worker's own job re-arm, or a plain arm from registration); the deletion
 * wake-up is armed to the earliest delete_at.
 */
export async function completeRotation(
  rotor: Rotor,
  identityId: string,
  pending: PreparedPackage,
  rearmRotation: (deadline: number | null, fence: number) => Promise<unknown>,
): Promise<{ outcome: "rotated" | "fenced"; at: number }> {
  let promoted: { outcome: "rotated" | "fenced"; at: number };
  if (pending.promotedAt !== undefined) {
    promoted = { outcome: "rotated", at: pending.promotedAt };
  } else {
    await publishPending(rotor, identityId, pending);
    promoted = await promoteRotation(rotor, identityId, pending);
  }
  // A promote that passed armed the deletion wake-up under the lock, before its commit, to the
  // state it committed; anything that changed delete_at since arms it too, under the same lock.
  // Only an attempt that was fenced (another one promoted) arms it again here.
  const armDeletion = promoted.outcome !== "rotated";
  await rotor.store.transaction(async (tx) => {
    const localNow = rotor.clock();
    const identity = await tx.lockIdentity(identityId);
    const now = identity?.now ?? localNow;
    // Due again already (a welcome during publish, a zero interval in tests): fire at once.
    const rearmed = rearmRotation(rotationRearmAt(identity, localNow, now), identity?.fence ?? 0);
    if (!armDeletion) {
      await rearmed;
      return;
    }
    // Two different jobs: arm them side by side, and let both settle before the commit.
    await settleAll([
      rearmed,
      tx
        .nextDeleteAt(identityId)
        .then((next) => rotor.timers.arm("deletion", identityId, next, now, identity?.fence ?? 0)),
    ]);
  });
  if (promoted.outcome === "rotated" && rotor.verifier !== undefined) {
    // Read back what was just published. The rotation is committed and armed whatever this finds.
    await verifyPublished(rotor, identityId, "publish").catch((err) =>
      rotor.log.warn(
        { identityId, err: redactError(err) },
        "could not check the published key package",
      ),
    );
  }
  return promoted;
}
