import type { LockedDeadline, PendingKeyPackage } from "./ports.js";
import { decideRotation, fireTimeFor, pullIn, type RotationState } from "./deadlines.js";

/**
 * The protocol's decisions that the services take under a row lock, as pure functions of what
 * the lock read: which welcomes change what, where a rotation's wake-up goes after its promote,
 * whether an earlier attempt's pending package is reused. Free of I/O; DESIGN.md gives the why.
 */

export interface PullInResult {
  identityId: string;
  rotationDeadline: number;
  changed: boolean;
}

export interface PullInPlan {
  /** One result per live identity, in lock order. */
  results: PullInResult[];
  /** Identities whose deadline moves to `deadline` (and whose wake-up must fire by then). */
  changed: string[];
  /** Identities over MAX_ROTATIONS_PER_HOUR whose deadline moves to their next allowed time. */
  capped: { identityId: string; deadline: number }[];
  /**
   * Identities publishing a rotation's package: the welcome may have consumed the new package,
   * and the promote would roll the deadline a full interval on. Recorded, the promote keeps it.
   */
  duringPublish: string[];
  /** The pulled-in deadline, now + delay. */
  deadline: number;
}

/**
 * What a batch of welcomes (or rotate-now requests, delay 0) does to the locked identities.
 * `allowed` holds, for identities at MAX_ROTATIONS_PER_HOUR, the earliest time their next
 * rotation may happen: their pull-in goes there instead (counted, never dropped).
 */
export function planPullIns(
  locked: readonly LockedDeadline[],
  now: number,
  delayMs: number,
  allowed: ReadonlyMap<string, number> = new Map(),
): PullInPlan {
  const deadline = now + delayMs;
  const plan: PullInPlan = { results: [], changed: [], capped: [], duringPublish: [], deadline };
  for (const identity of locked) {
    if (identity.deregistered || identity.rotationDeadline === null) continue;
    const target = Math.max(deadline, allowed.get(identity.id) ?? deadline);
    const next = pullIn(identity.rotationDeadline, now, target - now);
    if (identity.publishing) plan.duringPublish.push(identity.id);
    plan.results.push({
      identityId: identity.id,
      // While publishing, the deadline that counts is the one the promote will keep.
      rotationDeadline: identity.publishing ? target : next.deadline,
      changed: next.changed || identity.publishing,
    });
    if (!next.changed) continue;
    if (next.deadline === deadline) plan.changed.push(identity.id);
    else plan.capped.push({ identityId: identity.id, deadline: next.deadline });
  }
  return plan;
}

/**
 * Where a rotation's own wake-up goes after its promote, read under the lock again: nowhere
 * (null) for an identity that is gone, to its deadline shifted by this process's skew when not
 * due, and at once when it is due again already (a welcome during publish, a zero interval).
 */
export function rotationRearmAt(
  identity: (RotationState & { verifyAt?: number | null }) | undefined,
  localNow: number,
  now: number,
): number | null {
  const decision = decideRotation(identity, now);
  if (decision.kind === "gone") return null;
  if (decision.kind !== "not-due") return localNow;
  return fireTimeFor(wakeTarget(decision.deadline, identity?.verifyAt ?? null, now), localNow, now);
}

/**
 * When the rotation wake-up should fire for a deadline that is not due: at the deadline, or
 * earlier at a pending mid-interval check of the published package (the same wake-up wakes early,
 * checks, and re-arms: no third timer). A check already due fires at once.
 */
export function wakeTarget(deadline: number, verifyAt: number | null, now: number): number {
  if (verifyAt === null || verifyAt >= deadline) return deadline;
  return Math.max(verifyAt, now);
}

/**
 * Where the rotation wake-up belongs for the state in Postgres, as the repairs arm it (reconcile,
 * a re-registration): the deadline, or a pending mid-interval check before it. Not clamped to now:
 * planArm decides what an overdue time means for the job there (it keeps a retry's backoff).
 */
export function plannedRotationWake(deadline: number, verifyAt: number | null): number;
export function plannedRotationWake(
  deadline: number | null,
  verifyAt: number | null,
): number | null;
export function plannedRotationWake(deadline: number | null, verifyAt: number | null) {
  if (deadline === null || verifyAt === null || verifyAt >= deadline) return deadline;
  return verifyAt;
}

/** The mid-interval check after a rotation at `now`: half the interval on, if before the deadline. */
export function verifyAtAfterRotation(
  now: number,
  rotationIntervalMs: number,
  rotationDeadline: number,
): number | null {
  const at = now + Math.floor(rotationIntervalMs / 2);
  return at < rotationDeadline ? at : null;
}

/** What a check of the published package found, read back from where it was published. */
export interface PublishedObservation {
  ref: string;
  signatureValid: boolean;
  notAfter: number;
}

export type PublishedVerdict =
  | { ok: true }
  | {
      ok: false;
      reason: "missing" | "ref-mismatch" | "bad-signature" | "too-short";
      detail: string;
    };

/**
 * How far short of the margin a published package may fall before it counts as too short: an
 * upload is checked against now + interval + margin when it arrives, and its deadline is set at
 * the promote, after the publish, so a package uploaded with the least life allowed must still
 * pass its read-back.
 */
export const PUBLISHED_LIFE_TOLERANCE_MS = 3_600_000;

/**
 * Judges the published package: it must be the current one (same ref), verify, and stay valid
 * until the next rotation plus the margin (so a late rotation still finds it valid), less
 * PUBLISHED_LIFE_TOLERANCE_MS.
 */
export function judgePublished(
  expectedRef: string,
  observed: PublishedObservation | null,
  rotationDeadline: number,
  marginMs: number,
): PublishedVerdict {
  if (observed === null) {
    return { ok: false, reason: "missing", detail: "nothing is published where it was published" };
  }
  if (observed.ref !== expectedRef) {
    return {
      ok: false,
      reason: "ref-mismatch",
      detail: `published ref ${observed.ref.slice(0, 16)}… is not the current ${expectedRef.slice(0, 16)}…`,
    };
  }
  if (!observed.signatureValid) {
    return {
      ok: false,
      reason: "bad-signature",
      detail: "the published package's signatures do not verify",
    };
  }
  if (observed.notAfter < rotationDeadline + marginMs - PUBLISHED_LIFE_TOLERANCE_MS) {
    return {
      ok: false,
      reason: "too-short",
      detail: `the published package expires ${new Date(observed.notAfter).toISOString()}, before the next rotation plus the margin`,
    };
  }
  return { ok: true };
}

/**
 * Whether a pending package an earlier attempt left is the one to publish for `generation`
 * (same generation and ciphersuite): a retried publish then sends the same package and
 * idempotency key. Any other pending package is stale and dropped.
 */
export function reusablePending(
  existing: PendingKeyPackage | null | undefined,
  generation: number,
  ciphersuite: string,
): boolean {
  return existing?.generation === generation && existing.ciphersuite === ciphersuite;
}

/**
 * Where a due rotation's key package comes from: the pending one an earlier attempt (or a
 * device's upload) left for this generation, a fresh one generated here (custody "service"), or
 * the device (custody "device": the service never generates its keys; it asks and waits).
 */
export function rotationSource(
  custody: "service" | "device",
  reusable: boolean,
): "reuse" | "generate" | "await-device" {
  if (reusable) return "reuse";
  return custody === "device" ? "await-device" : "generate";
}

/**
 * The id of a device notification, the same on every retry of it (the device deduplicates on
 * it): a rotate names the deadline it serves, a delete the ref it deletes.
 */
export function deviceNotificationId(
  kind: "rotate" | "delete",
  identityId: string,
  subject: number | string,
): string {
  // Standard Webhooks ids are opaque; kept free of ':' like the job ids.
  const tag = kind === "rotate" ? `rot_${subject}` : `del_${subject}`;
  return `${tag}_${Buffer.from(identityId).toString("base64url")}`;
}
