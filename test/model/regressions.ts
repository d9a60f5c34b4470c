import type { Scenario } from "./scenarios.js";

/**
 * Issue 10's defects A to E as model scenarios: the counterexamples the model test found (A, B,
 * D, E: shrunk by fast-check) or that were written from the issue's repro (C), each replayed
 * under many interleavings; each fails when its fix is reverted in src (see the note on issue
 * 10). F and G are cases the model's own invariant got wrong: F in World.applyCommit (deadline
 * instances), G in Invariants (a device awaited long, welcomed, and uploading at once: its upload
 * is the rotation that honours the welcome).
 */

const webhooks = ["webhook", "webhook", "webhook"] as Scenario["publishers"];
const noSkew = [0, 0, 0];

/** Two identities whose publish fails for good, two healthy ones (the healing mix's prelude). */
const fleet: Scenario["commands"] = [
  { c: "publishFails", id: "a", forever: true },
  { c: "publishFails", id: "b", forever: true },
  { c: "register", id: "a" },
  { c: "register", id: "b" },
  { c: "register", id: "c" },
  { c: "register", id: "d" },
  { c: "advance", ms: 30_000 },
];

export const REGRESSIONS: Record<string, Scenario> = {
  "A: a reconcile that fails after a full loss is retried, and leaves no mark": {
    publishers: webhooks,
    skews: noSkew,
    commands: [
      { c: "register", id: "a" },
      { c: "advance", ms: 400_000 },
      { c: "advance", ms: 400_000 },
      { c: "flushAll" },
      { c: "advance", ms: 400_000 },
    ],
    faults: [{ at: 2, kind: "fail", on: "lockLiveDeadlines" }],
  },
  "B: identities retrying forever cannot hide a lost wake-up from the overdue scan": {
    publishers: webhooks,
    skews: noSkew,
    commands: [
      ...fleet,
      { c: "welcome", ids: ["d"] },
      { c: "run", steps: 2 },
      { c: "tailLoss", back: 2 },
      { c: "welcome", ids: ["a"] },
    ],
    faults: [],
  },
  "C: a lost deletion wake-up the census cannot see is found by the deletion backstop": {
    publishers: webhooks,
    skews: noSkew,
    commands: [
      ...fleet,
      { c: "welcome", ids: ["d"] },
      { c: "advance", ms: 30_000 },
      // d has a superseded package (delete_at 20 min out); c rotates 18 min after d.
      { c: "advance", ms: 400_000 },
      { c: "advance", ms: 400_000 },
      { c: "advance", ms: 240_000 },
      { c: "welcome", ids: ["c"] },
      { c: "advance", ms: 30_000 },
      // c is deregistered, and a tail loss brings its wake-ups back: the deletion one an orphan
      // until c's delete_at, 18 min after d's (its rotation one is lost, so that queue balances).
      { c: "deregister", id: "c" },
      { c: "advance", ms: 10_000 },
      { c: "tailLoss", back: 2 },
      { c: "loseJobs", kind: "rotation", ids: ["c"] },
      // d's deletion wake-up is lost; c's orphan keeps the census even past d's heal bound.
      { c: "loseJobs", kind: "deletion", ids: ["d"] },
      { c: "advance", ms: 400_000 },
      { c: "advance", ms: 400_000 },
      { c: "advance", ms: 400_000 },
      { c: "advance", ms: 400_000 },
      { c: "advance", ms: 400_000 },
    ],
    faults: [],
  },
  "E: a worker's park that lands late, after a registration revived the identity, heals itself": {
    // Found by the healing mix (seed -773413949): d's registration fails to commit after arming;
    // the orphan fires and its worker parks it, a write that times out and lands later, after d
    // was registered again (whose arm saw the job active and left it to its worker).
    publishers: ["webhook", "webhook", "directory"],
    skews: noSkew,
    commands: [...fleet, { c: "register", id: "d" }],
    faults: [
      { at: 2, kind: "fail", on: "commit" },
      { at: 2, kind: "fail", on: "moveToDelayed" },
      { at: 1, kind: "late", on: "moveToDelayed" },
      { at: 1, kind: "fail", on: "overdueIdentities" },
    ],
  },
  "F: a rotate-now acknowledged during a publish, at the same instant, gets its own rotation": {
    // Found by the general mix (seed 100457500). The promote installs the recorded deadline,
    // equal in value to the one just served (no time passed): a new request, not a second
    // rotation for one deadline.
    publishers: webhooks,
    skews: noSkew,
    commands: [
      { c: "register", id: "a" },
      { c: "advance", ms: 400_000 },
      { c: "rotateNow", id: "a" },
      { c: "loseJobs", kind: "rotation", ids: ["a"] },
      { c: "welcome", ids: ["a"] },
      { c: "run", steps: 11 },
      { c: "rotateNow", id: "a" },
      { c: "run", steps: 1 },
    ],
    faults: [],
  },
  "D: a welcome acknowledged while a rotation publishes leads to one more rotation": {
    publishers: webhooks,
    skews: noSkew,
    commands: [
      { c: "register", id: "a" },
      { c: "run", steps: 4 },
      { c: "run", steps: 18 },
      { c: "welcome", ids: ["a"] },
      { c: "advance", ms: 1_000 },
    ],
    faults: [],
  },
  "G: a device awaited long, welcomed and uploading at once, is honoured by its upload": {
    publishers: webhooks,
    skews: [0, 5_000, 0],
    commands: [
      { c: "registerDevice", id: "p" },
      { c: "registerDevice", id: "q" },
      { c: "register", id: "a" },
      { c: "advance", ms: 30_000 },
      { c: "advance", ms: 900_000 },
      { c: "welcome", ids: ["p"] },
      { c: "upload", id: "p" },
      { c: "advance", ms: 400_000 },
      { c: "advance", ms: 1_000 },
    ],
    faults: [],
  },
};
