import { afterRotation, decideRotation } from "../core/timers.js";
import type { Tx } from "../db/client.js";
import { type LockedIdentity, lockIdentity } from "../db/identities.repo.js";
import * as kps from "../db/key-packages.repo.js";
import type { Rotor } from "./rotor.js";

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
 */

export type Prepared =
  | { kind: "gone" }
  | { kind: "not-due"; deadline: number }
  | { kind: "publish"; pending: kps.PendingKeyPackage; dueDeadline: number };

/**
 * Step 1; runs inside the caller's transaction, which holds the identity's row lock.
 * `firstPublish` lets registration publish an identity's first key package before its deadline,
 * when it has no current one (new, or revived after deregistration).
 */
export async function prepareRotation(
  rotor: Rotor,
  tx: Tx,
  identity: LockedIdentity,
  now: number,
  options: { firstPublish?: boolean } = {},
): Promise<Prepared> {
  const decision = decideRotation(identity, now);
  const first = options.firstPublish === true && !(await kps.hasCurrent(tx, identity.id));
  if (decision.kind === "gone" || (decision.kind === "not-due" && !first)) return decision;
  const dueDeadline = identity.rotationDeadline as number;
  const generation = identity.generation + 1;
  const existing = await kps.findPending(tx, identity.id);
  if (existing?.generation === generation && existing.ciphersuite === rotor.keys.ciphersuite) {
    return { kind: "publish", pending: existing, dueDeadline };
  }
  if (existing) await kps.deletePending(tx, existing.id);
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
  const pending = await kps.insertPending(tx, identity.id, generation, now, {
    ref: generated.ref,
    ciphersuite: rotor.keys.ciphersuite,
    keyPackage: generated.publicBytes,
    privateKey: rotor.keyring.seal(generated.privateBytes, identity.id, "key-package-private"),
    notBefore: generated.notBefore,
    notAfter: generated.notAfter,
  });
  return { kind: "publish", pending, dueDeadline };
}

/** Step 2. */
async function publishPending(
  rotor: Rotor,
  identityId: string,
  pending: kps.PendingKeyPackage,
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
  pending: kps.PendingKeyPackage,
): Promise<{ outcome: "rotated" | "fenced"; at: number }> {
  return rotor.db.transaction(async (tx) => {
    await lockIdentity(tx, identityId);
    const now = rotor.clock();
    const next = afterRotation(now, rotor.timing);
    const promoted = await kps.promotePending(tx, {
      identityId,
      pending,
      now,
      rotationDeadline: next.rotationDeadline,
      supersededDeleteAt: next.supersededDeleteAt,
    });
    // The superseded package's deletion is armed before the commit (an earlier wake-up is always
    // safe): if the re-arm step after the commit fails, or the worker dies there, nothing else
    // would arm it until the next rotation.
    if (promoted)
      await rotor.timers.arm("deletion", identityId, await kps.nextDeleteAt(tx, identityId), now);
    return { outcome: promoted ? "rotated" : "fenced", at: now };
  });
}

/**
 * Steps 2 to 4 for a prepared rotation: publish, promote, then re-arm under the lock. The
 * rotation wake-up is re-armed through `rearmRotation` (a worker's own job re-arm, or a plain
 * arm from registration); the deletion wake-up is armed to the earliest delete_at.
 */
export async function completeRotation(
  rotor: Rotor,
  identityId: string,
  pending: kps.PendingKeyPackage,
  rearmRotation: (deadline: number | null) => Promise<unknown>,
): Promise<{ outcome: "rotated" | "fenced"; at: number }> {
  await publishPending(rotor, identityId, pending);
  const promoted = await promoteRotation(rotor, identityId, pending);
  await rotor.db.transaction(async (tx) => {
    const identity = await lockIdentity(tx, identityId);
    const now = rotor.clock();
    const decision = decideRotation(identity, now);
    // Due again already (a zero interval in tests): fire at once rather than lose it.
    await rearmRotation(
      decision.kind === "gone" ? null : decision.kind === "not-due" ? decision.deadline : now,
    );
    await rotor.timers.arm("deletion", identityId, await kps.nextDeleteAt(tx, identityId), now);
  });
  return promoted;
}
