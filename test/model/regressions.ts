import type { Scenario } from "./scenarios.js";

/**
 * Issue 10's defects A to D as model scenarios: the counterexamples the model test found (A, B,
 * D: shrunk by fast-check) or that were written from the issue's repro (C), each replayed under
 * many interleavings. Each fails when its fix is reverted in src (see the note on issue 10).
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
      { c: "welcome", ids: ["c"] },
      { c: "advance", ms: 30_000 },
      // c's deletion wake-up finishes: parked a year, and its worker dies before the removal.
      { c: "faultNext", on: "remove(deletion", k: 1, kind: "crash" },
      { c: "advance", ms: 400_000 },
      { c: "welcome", ids: ["d"] },
      { c: "advance", ms: 30_000 },
      // d's deletion wake-up is lost; c's parked job keeps the census even.
      { c: "loseJobs", kind: "deletion", ids: ["d"] },
      { c: "advance", ms: 400_000 },
      { c: "advance", ms: 400_000 },
      { c: "advance", ms: 400_000 },
      { c: "advance", ms: 400_000 },
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
};
