/**
 * The timer decisions, free of I/O. Every function takes the current time as a parameter so the
 * unit tests (and the model test) drive it with an explicit clock. Times are epoch milliseconds.
 * The reasoning behind each rule is in DESIGN.md.
 */

import { jitteredIntervalMs } from "./jitter.js";

/** The three intervals of the protocol (libxmtp's production values are 30 d, 5 s and 1 d). */
export interface Timing {
  rotationIntervalMs: number;
  /**
   * ROTATION_JITTER as a fraction (0.1 for 10%): an interval deadline comes up to this share of
   * the interval earlier, by a stable hash of the identity (src/core/jitter.ts);
   * never later. Absent or 0: no jitter.
   */
  rotationJitter?: number | undefined;
  welcomeRotationDelayMs: number;
  deletionGraceMs: number;
  /** Rotations per identity per hour that welcomes and rotate-now may cause; absent: no cap. */
  maxRotationsPerHour?: number | undefined;
}

/** The identity as the rotation wake-up sees it under the row lock; undefined when there is no row. */
export interface RotationState {
  rotationDeadline: number | null;
  deregistered: boolean;
}

export type RotationDecision =
  | { kind: "gone" }
  | { kind: "not-due"; deadline: number }
  | { kind: "rotate" };

/** What a rotation wake-up does: rotate only when the stored deadline has passed. */
export function decideRotation(state: RotationState | undefined, now: number): RotationDecision {
  if (state === undefined || state.deregistered || state.rotationDeadline === null) {
    return { kind: "gone" };
  }
  if (state.rotationDeadline > now) return { kind: "not-due", deadline: state.rotationDeadline };
  return { kind: "rotate" };
}

/**
 * The deadlines a successful rotation of `identityId` at `now` writes. `welcomeDeadline` is the
 * earliest deadline asked for by welcomes acknowledged while the new package was being
 * published: such a welcome may have consumed the new package already, so the next rotation is
 * due then, not a full interval later. The interval deadline is jittered by ROTATION_JITTER
 * (`timing.rotationJitter`): in (now + interval x (1 - jitter), now + interval], never later.
 */
export function afterRotation(
  now: number,
  timing: Timing,
  welcomeDeadline: number | null,
  identityId: string,
): { rotationDeadline: number; supersededDeleteAt: number } {
  const interval =
    now + jitteredIntervalMs(timing.rotationIntervalMs, timing.rotationJitter ?? 0, identityId);
  return {
    rotationDeadline: welcomeDeadline === null ? interval : Math.min(interval, welcomeDeadline),
    supersededDeleteAt: now + timing.deletionGraceMs,
  };
}

/**
 * The fire time to give a wake-up that should run at `deadline` (Postgres' clock), from a
 * process whose clock reads `localNow` when Postgres reads `dbNow`. BullMQ fires a job by the
 * clock of the worker that promotes it; a worker running ahead would otherwise fire early, find
 * nothing due, re-arm to the same deadline and fire again at once until the deadline. Shifted by
 * the skew, it fires when the deadline has passed by Postgres' clock. A clock running behind is
 * not corrected (it fires late by its skew; an earlier wake-up is never made later).
 */
export function fireTimeFor(deadline: number, localNow: number, dbNow: number): number {
  return deadline + Math.max(0, localNow - dbNow);
}

/** Wake-up jobs counted in Redis against the census kept in Postgres, per queue. */
export interface CensusReading {
  expected: number;
  counted: number;
}

/**
 * Whether the queues may have lost wake-ups. Every path arms before its commit and removes after
 * it, so without loss Redis never holds fewer jobs than Postgres expects, and more only for a
 * moment (or orphans that a reconcile removes). A difference either way that is still there on
 * a second reading is a loss (or lasting orphans, which can hide one): run a diff reconcile.
 */
export function censusMismatch(readings: readonly CensusReading[]): boolean {
  return readings.some((r) => r.counted !== r.expected);
}

/**
 * A welcome (or an explicit rotate request, with delay 0) pulls the deadline in; the earliest
 * deadline wins, so a welcome never pushes a sooner deadline later and a burst of welcomes
 * collapses into the first one's deadline.
 */
export function pullIn(
  current: number,
  now: number,
  delayMs: number,
): { deadline: number; changed: boolean } {
  const candidate = now + delayMs;
  return candidate < current
    ? { deadline: candidate, changed: true }
    : { deadline: current, changed: false };
}

/** The deletion deadline of an identity: the earliest delete_at among its superseded packages. */
export function deletionDeadline(deleteAts: readonly number[]): number | null {
  let earliest: number | null = null;
  for (const at of deleteAts) if (earliest === null || at < earliest) earliest = at;
  return earliest;
}

/**
 * How far ahead a worker parks a finished job before removing it (a held job cannot be removed).
 * Short on purpose: should that park land late, after its caller timed out and a registration
 * revived the identity meanwhile, the parked wake-up fires within a minute, finds the identity
 * live and re-arms it from Postgres; and should the removal be lost, it fires, finds the
 * tombstone and finishes again. (A park a year out would hold a revived identity's wake-up until
 * the overdue scan found it, after its deadline.)
 */
export const FINISH_PARK_MS = 60_000;

/** Retry delay after the n-th consecutive failure (n >= 1): 2 s, x1.5 each time, at most 60 s. */
export const BACKOFF = { initialMs: 2_000, factor: 1.5, maxMs: 60_000 } as const;
export function backoffMs(failures: number): number {
  // The count comes back from job data; anything odd counts as a first failure.
  const n = Number.isSafeInteger(failures) ? Math.max(1, failures) : 1;
  return Math.min(BACKOFF.maxMs, Math.round(BACKOFF.initialMs * BACKOFF.factor ** (n - 1)));
}

/** A wake-up job as read from the queue. */
export type JobView =
  | { state: "missing" }
  | { state: "delayed"; fireAt: number }
  | { state: "waiting" | "active" }
  | { state: "finished" };

export type ArmAction =
  | { kind: "none" }
  | { kind: "add"; fireAt: number }
  | { kind: "reschedule"; fireAt: number }
  | { kind: "replace"; fireAt: number }
  | { kind: "remove" };

/**
 * Whether reconcile's next page should arm expecting the jobs to be missing (Wakeups.armMany's
 * expectMissing): when at least half of the `wanted` wake-ups (items with a fire time) on a page
 * it just armed had to be added, as after Redis lost its data. Either answer arms the same; the
 * wrong one only costs reads.
 */
export function mostlyMissing(actions: readonly ArmAction[], wanted: number): boolean {
  if (wanted === 0) return false;
  const added = actions.filter((a) => a.kind === "add").length;
  return added * 2 >= wanted;
}

/**
 * How to make a wake-up match its deadline (`desired`, or null for "no wake-up wanted").
 * Called only while holding the identity's row lock, so the answer cannot be overtaken by another
 * arm of the same identity.
 *
 * - an active job is left alone: its own processor re-arms it under the same lock when done;
 * - a waiting job fires as soon as a worker is free, which is never later than a deadline;
 * - a delayed job is moved to exactly the deadline, except that an overdue deadline keeps a
 *   retry that fires within the maximum backoff (so re-arming does not defeat the backoff);
 * - a finished job (completed or failed) blocks its id and is replaced.
 */
export function planArm(desired: number | null, job: JobView, now: number): ArmAction {
  if (desired === null) {
    if (job.state === "missing" || job.state === "active") return { kind: "none" };
    return { kind: "remove" };
  }
  switch (job.state) {
    case "missing":
      return { kind: "add", fireAt: desired };
    case "finished":
      return { kind: "replace", fireAt: desired };
    case "waiting":
    case "active":
      return { kind: "none" };
    case "delayed": {
      if (job.fireAt === desired) return { kind: "none" };
      // Strictly past: a deadline of exactly now is a rotate-now, which must not wait.
      const overdue = desired < now;
      if (overdue && job.fireAt <= now + BACKOFF.maxMs) return { kind: "none" };
      return { kind: "reschedule", fireAt: desired };
    }
  }
}
