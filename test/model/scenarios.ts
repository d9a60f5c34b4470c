import fc from "fast-check";
import type { PublisherMode } from "./processes.js";
import type { Fault, FaultKind } from "./world.js";

/** The model's commands and the arbitraries that generate scenarios of them. */

export const IDS = ["a", "b", "c", "d"] as const;
/** Device identities (custody "device"): registered and uploaded for by the device mix only. */
export const DEVICE_IDS = ["p", "q"] as const;

/** Port calls a fault can be aimed at (label prefixes). */
const CALL_KINDS = [
  "lockLiveDeadlines",
  "overdueIdentities",
  "overdueDeletions",
  "lockDeadlines",
  "arm-script",
  "commit",
  "publish",
  "moveToDelayed",
  "scan",
  "completeReconcile",
] as const;

export type Command =
  | { c: "register"; id: string }
  | { c: "registerDevice"; id: string }
  /** The device builds a fresh key package (real ts-mls) and uploads it. */
  | { c: "upload"; id: string }
  | { c: "welcome"; ids: string[] }
  | { c: "rotateNow"; id: string }
  | { c: "deregister"; id: string }
  | { c: "advance"; ms: number }
  | { c: "flushAll" }
  | { c: "loseJobs"; kind: "rotation" | "deletion"; ids: string[] }
  | { c: "tailLoss"; back: number }
  | { c: "land" }
  | { c: "crash"; proc: number }
  | { c: "restart" }
  | { c: "publishFails"; id: string; forever: boolean }
  | { c: "publishHeals"; id: string }
  /** A walk of pageSize identities per page (default 2), pagesInFlight at once (default 2). */
  | { c: "reconcile"; pageSize?: 1 | 2; pagesInFlight?: 1 | 2 }
  | { c: "run"; steps: number }
  | { c: "faultNext"; on: string; k: number; kind: FaultKind };

export interface Scenario {
  publishers: PublisherMode[];
  skews: number[];
  commands: Command[];
  faults: Fault[];
  /**
   * Every armMany takes the blind path (adds first, ArmManyOptions.expectMissing) whatever the
   * hint: the port's contract is that the hint changes only the cost, so the invariants must
   * hold either way. Regressions leave it out (false).
   */
  blindArms?: boolean;
}

const id = fc.constantFrom(...IDS);
const ids = fc.uniqueArray(id, { minLength: 1, maxLength: 3 });

/** Command arbitraries the mixes share; each mix gives its own weights. */
const registerArb = fc.record({ c: fc.constant("register" as const), id });
const welcomeArb = fc.record({ c: fc.constant("welcome" as const), ids });
const advanceArb = (...ms: number[]) =>
  fc.record({ c: fc.constant("advance" as const), ms: fc.constantFrom(...ms) });
const ALL_ADVANCES = [1_000, 4_000, 30_000, 120_000, 400_000, 900_000];
const runArb = fc.record({
  c: fc.constant("run" as const),
  steps: fc.integer({ min: 1, max: 30 }),
});
const flushAllArb = fc.constant({ c: "flushAll" as const });
const loseJobsArb = fc.record({
  c: fc.constant("loseJobs" as const),
  kind: fc.constantFrom("rotation" as const, "deletion" as const),
  ids,
});
const tailLossArb = fc.record({
  c: fc.constant("tailLoss" as const),
  back: fc.integer({ min: 1, max: 3 }),
});
const landArb = fc.constant({ c: "land" as const });
const crashArb = fc.record({
  c: fc.constant("crash" as const),
  proc: fc.integer({ min: 0, max: 2 }),
});
const restartArb = fc.constant({ c: "restart" as const });

export const commandArb: fc.Arbitrary<Command> = fc.oneof(
  { arbitrary: registerArb, weight: 4 },
  { arbitrary: welcomeArb, weight: 4 },
  { arbitrary: fc.record({ c: fc.constant("rotateNow" as const), id }), weight: 1 },
  { arbitrary: fc.record({ c: fc.constant("deregister" as const), id }), weight: 1 },
  { arbitrary: advanceArb(...ALL_ADVANCES), weight: 5 },
  { arbitrary: flushAllArb, weight: 2 },
  { arbitrary: loseJobsArb, weight: 1 },
  { arbitrary: tailLossArb, weight: 1 },
  { arbitrary: landArb, weight: 1 },
  { arbitrary: crashArb, weight: 1 },
  { arbitrary: restartArb, weight: 1 },
  {
    arbitrary: fc.record({ c: fc.constant("publishFails" as const), id, forever: fc.boolean() }),
    weight: 1,
  },
  { arbitrary: fc.record({ c: fc.constant("publishHeals" as const), id }), weight: 1 },
  {
    arbitrary: fc.record({
      c: fc.constant("reconcile" as const),
      pageSize: fc.constantFrom(1 as const, 2 as const),
      pagesInFlight: fc.constantFrom(1 as const, 2 as const),
    }),
    weight: 1,
  },
  { arbitrary: runArb, weight: 4 },
  {
    // A fault on one of the next calls of a kind: a reconcile failing part-way, a lost commit...
    arbitrary: fc.record({
      c: fc.constant("faultNext" as const),
      on: fc.constantFrom(...CALL_KINDS),
      k: fc.integer({ min: 1, max: 3 }),
      kind: fc.constantFrom(
        "fail" as const,
        "fail-after" as const,
        "late" as const,
        "crash" as const,
      ),
    }),
    weight: 3,
  },
);

const faultKind = fc.constantFrom(
  "fail" as const,
  "fail-after" as const,
  "late" as const,
  "crash" as const,
);

/** Faults on any call, or aimed at the n-th call of one kind (a reconcile's pages, a commit...). */
const faultArb: fc.Arbitrary<Fault> = fc.oneof(
  fc.record({ at: fc.integer({ min: 1, max: 300 }), kind: faultKind }),
  fc.record({
    at: fc.integer({ min: 1, max: 4 }),
    kind: faultKind,
    on: fc.constantFrom(
      "lockLiveDeadlines",
      "lockLiveDeadlines",
      "overdueIdentities",
      "arm-script",
      "commit",
      "publish",
      "moveToDelayed",
      "scan",
      "completeReconcile",
    ),
  }),
);

/**
 * The healing mix: fewer kinds of commands, so that Redis losses, a heal failing part-way,
 * retrying identities and near deadlines meet in one run more often.
 */
export const healingCommandArb: fc.Arbitrary<Command> = fc.oneof(
  { arbitrary: registerArb, weight: 3 },
  { arbitrary: welcomeArb, weight: 3 },
  { arbitrary: advanceArb(4_000, 30_000, 120_000, 400_000), weight: 4 },
  { arbitrary: runArb, weight: 2 },
  { arbitrary: flushAllArb, weight: 2 },
  { arbitrary: loseJobsArb, weight: 1 },
  { arbitrary: tailLossArb, weight: 1 },
  { arbitrary: landArb, weight: 1 },
  {
    arbitrary: fc.record({
      c: fc.constant("faultNext" as const),
      on: fc.constantFrom("lockLiveDeadlines", "arm-script", "commit", "overdueIdentities", "scan"),
      k: fc.integer({ min: 1, max: 2 }),
      kind: fc.constantFrom("fail" as const, "crash" as const),
    }),
    weight: 3,
  },
  {
    arbitrary: fc.record({
      c: fc.constant("publishFails" as const),
      id,
      forever: fc.constant(true),
    }),
    weight: 2,
  },
  { arbitrary: restartArb, weight: 1 },
);

export type Mix = "general" | "healing" | "device";

const deviceId = fc.constantFrom(...DEVICE_IDS);

/**
 * The device mix: device identities next to service ones, with faults and Redis losses. "p" is
 * registered first and never answers unless the mix says "upload"; uploads come early, late,
 * twice, or not at all.
 */
export const deviceCommandArb: fc.Arbitrary<Command> = fc.oneof(
  { arbitrary: fc.record({ c: fc.constant("registerDevice" as const), id: deviceId }), weight: 2 },
  { arbitrary: fc.record({ c: fc.constant("upload" as const), id: deviceId }), weight: 4 },
  { arbitrary: registerArb, weight: 1 },
  {
    arbitrary: fc.record({
      c: fc.constant("welcome" as const),
      ids: fc.uniqueArray(fc.constantFrom(...DEVICE_IDS, "a"), { minLength: 1, maxLength: 2 }),
    }),
    weight: 4,
  },
  { arbitrary: fc.record({ c: fc.constant("deregister" as const), id: deviceId }), weight: 1 },
  { arbitrary: advanceArb(...ALL_ADVANCES), weight: 5 },
  { arbitrary: runArb, weight: 3 },
  { arbitrary: flushAllArb, weight: 1 },
  { arbitrary: landArb, weight: 1 },
  { arbitrary: crashArb, weight: 1 },
  { arbitrary: restartArb, weight: 1 },
  {
    arbitrary: fc.record({
      c: fc.constant("faultNext" as const),
      on: fc.constantFrom("notify", "commit", "arm-script", "moveToDelayed", "publish"),
      k: fc.integer({ min: 1, max: 3 }),
      kind: fc.constantFrom("fail" as const, "fail-after" as const, "crash" as const),
    }),
    weight: 2,
  },
);

export const DEVICE_PRELUDE: readonly Command[] = [
  { c: "registerDevice", id: "p" },
  { c: "registerDevice", id: "q" },
  { c: "register", id: "a" },
  { c: "advance", ms: 30_000 },
];

/**
 * The healing mix starts from a fleet where two identities' publishes fail for good (they are
 * overdue and retrying forever, as in issue 10's defect B) next to two healthy ones.
 */
export const HEALING_PRELUDE: readonly Command[] = [
  { c: "publishFails", id: "a", forever: true },
  { c: "publishFails", id: "b", forever: true },
  { c: "register", id: "a" },
  { c: "register", id: "b" },
  { c: "register", id: "c" },
  { c: "register", id: "d" },
  { c: "advance", ms: 30_000 },
];

export const scenarioArb = (maxCommands: number, mix: Mix = "general"): fc.Arbitrary<Scenario> =>
  fc.record({
    publishers: fc.array(fc.constantFrom<PublisherMode>("webhook", "directory"), {
      minLength: 3,
      maxLength: 3,
    }),
    skews: fc.array(fc.constantFrom(0, 0, 30_000, -30_000, 5_000), { minLength: 3, maxLength: 3 }),
    commands: fc
      .array(
        mix === "general" ? commandArb : mix === "healing" ? healingCommandArb : deviceCommandArb,
        {
          minLength: 1,
          maxLength: maxCommands,
          size: "medium",
        },
      )
      .map((commands) =>
        mix === "healing"
          ? [...HEALING_PRELUDE, ...commands]
          : mix === "device"
            ? [...DEVICE_PRELUDE, ...commands]
            : commands,
      ),
    faults: fc.array(faultArb, { maxLength: 8 }),
    blindArms: fc.boolean(),
  });
