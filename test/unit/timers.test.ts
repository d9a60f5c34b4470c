import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { jitteredIntervalMs, jitterUnit, MAX_ROTATION_JITTER } from "../../src/core/jitter.js";
import {
  type ArmAction,
  afterRotation,
  BACKOFF,
  backoffMs,
  decideRotation,
  deletionDeadline,
  type JobView,
  mostlyMissing,
  planArm,
  pullIn,
  type RotationState,
  type Timing,
} from "../../src/core/deadlines.js";

const NOW = Date.UTC(2025, 0, 15, 12, 0, 0);
const SEC = 1_000;
const DAY = 86_400_000;
const LIBXMTP: Timing = {
  rotationIntervalMs: 30 * DAY,
  welcomeRotationDelayMs: 5 * SEC,
  deletionGraceMs: DAY,
};

describe("decideRotation", () => {
  const row = (rotationDeadline: number | null, deregistered = false): RotationState => ({
    rotationDeadline,
    deregistered,
  });
  it.each<[string, RotationState | undefined, ReturnType<typeof decideRotation>]>([
    ["no row", undefined, { kind: "gone" }],
    ["deregistered, past deadline", row(NOW - 1, true), { kind: "gone" }],
    ["deregistered, future deadline", row(NOW + DAY, true), { kind: "gone" }],
    ["null deadline", row(null), { kind: "gone" }],
    ["deadline 1 ms ahead", row(NOW + 1), { kind: "not-due", deadline: NOW + 1 }],
    ["deadline 30 d ahead", row(NOW + 30 * DAY), { kind: "not-due", deadline: NOW + 30 * DAY }],
    ["deadline == now", row(NOW), { kind: "rotate" }],
    ["deadline 1 ms past", row(NOW - 1), { kind: "rotate" }],
    ["deadline long past", row(NOW - 90 * DAY), { kind: "rotate" }],
  ])("%s", (_name, state, expected) => {
    expect(decideRotation(state, NOW)).toEqual(expected);
  });
});

describe("pullIn", () => {
  // [name, current deadline, delay, resulting deadline, changed]
  it.each<[string, number, number, number, boolean]>([
    ["earlier candidate wins", NOW + 30 * DAY, 5 * SEC, NOW + 5 * SEC, true],
    ["equal candidate is not a change", NOW + 5 * SEC, 5 * SEC, NOW + 5 * SEC, false],
    ["later candidate keeps sooner deadline", NOW + 2 * SEC, 5 * SEC, NOW + 2 * SEC, false],
    ["overdue deadline is not pushed later", NOW - DAY, 5 * SEC, NOW - DAY, false],
    ["delay 0 pulls to now", NOW + DAY, 0, NOW, true],
    ["delay 0 with deadline == now", NOW, 0, NOW, false],
    ["1 ms earlier is a change", NOW + 5 * SEC + 1, 5 * SEC, NOW + 5 * SEC, true],
    ["90 d delay vs 60 d deadline", NOW + 60 * DAY, 90 * DAY, NOW + 60 * DAY, false],
    ["60 d delay vs 90 d deadline", NOW + 90 * DAY, 60 * DAY, NOW + 60 * DAY, true],
  ])("%s", (_name, current, delay, deadline, changed) => {
    expect(pullIn(current, NOW, delay)).toEqual({ deadline, changed });
  });

  it("never moves a deadline later (property)", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 45 }),
        fc.integer({ min: 0, max: 100 * DAY }),
        fc.nat(100 * DAY),
        (current, now, delay) => {
          const r = pullIn(current, now, delay);
          expect(r.deadline).toBe(Math.min(current, now + delay));
          expect(r.changed).toBe(r.deadline !== current);
        },
      ),
    );
  });
});

describe("afterRotation", () => {
  // [name, rotation interval, welcome delay, deletion grace] -> deadlines relative to NOW
  it.each<[string, number, number, number]>([
    ["libxmtp (30 d, 5 s, 1 d)", 30 * DAY, 5 * SEC, DAY],
    ["tiny (1 ms, 0, 0)", 1, 0, 0],
    ["tiny (50 ms, 10 ms, 20 ms)", 50, 10, 20],
    ["60 d / 90 d", 60 * DAY, 5, 90 * DAY],
  ])("%s", (_name, rotationIntervalMs, welcomeRotationDelayMs, deletionGraceMs) => {
    const timing = { rotationIntervalMs, welcomeRotationDelayMs, deletionGraceMs };
    expect(afterRotation(NOW, timing, null, "alice")).toEqual({
      rotationDeadline: NOW + rotationIntervalMs,
      supersededDeleteAt: NOW + deletionGraceMs,
    });
  });

  it("writes the libxmtp deadlines as exact epoch milliseconds", () => {
    // NOW = 2025-01-15T12:00:00Z = 1736942400000
    expect(afterRotation(NOW, LIBXMTP, null, "alice")).toEqual({
      rotationDeadline: 1_739_534_400_000,
      supersededDeleteAt: 1_737_028_800_000,
    });
  });
});

describe("afterRotation with ROTATION_JITTER", () => {
  const JITTERED: Timing = { ...LIBXMTP, rotationJitter: 0.1 };
  const earliest = NOW + 27 * DAY;
  const latest = NOW + 30 * DAY;

  it("puts the interval deadline in (now + 27 d, now + 30 d] at 10 %, and the deletion 1 d out", () => {
    const deadlines = new Set<number>();
    for (let i = 0; i < 1_000; i++) {
      const next = afterRotation(NOW, JITTERED, null, `id-${i}`);
      expect(next.rotationDeadline).toBeGreaterThan(earliest);
      expect(next.rotationDeadline).toBeLessThanOrEqual(latest);
      expect(Number.isInteger(next.rotationDeadline)).toBe(true);
      expect(next.supersededDeleteAt).toBe(NOW + DAY);
      deadlines.add(next.rotationDeadline);
    }
    // Spread, not a constant offset: 1,000 identities land on (almost) 1,000 distinct deadlines.
    expect(deadlines.size).toBeGreaterThan(990);
  });

  it("spreads a herd evenly over the jitter window (ten 0.3-day slices, each 7 % to 13 %)", () => {
    const slices = new Array<number>(10).fill(0);
    for (let i = 0; i < 10_000; i++) {
      const { rotationDeadline } = afterRotation(NOW, JITTERED, null, `herd-${i}`);
      const slice = Math.floor((latest - rotationDeadline) / (0.3 * DAY));
      slices[slice] = (slices[slice] ?? 0) + 1;
    }
    for (const count of slices) {
      expect(count).toBeGreaterThan(700);
      expect(count).toBeLessThan(1_300);
    }
  });

  it("is stable per identity: the same offset in every process and at every rotation", () => {
    const at = (identityId: string, now = NOW) =>
      afterRotation(now, JITTERED, null, identityId).rotationDeadline;
    expect(at("alice")).toBe(at("alice"));
    expect(at("alice", NOW + DAY) - at("alice")).toBe(DAY);
    // The same values in every process and release: changing the hash moves every deadline.
    expect([at("alice"), at("bob")]).toEqual([
      NOW + 30 * DAY - Math.floor(3 * DAY * jitterUnit("alice")),
      NOW + 30 * DAY - Math.floor(3 * DAY * jitterUnit("bob")),
    ]);
    expect(jitterUnit("alice")).toBe(0.9143804381601512);
    expect(at("alice")).not.toBe(at("bob"));
  });

  it("is off at 0 and when unset: the full interval", () => {
    for (const timing of [LIBXMTP, { ...LIBXMTP, rotationJitter: 0 }]) {
      expect(afterRotation(NOW, timing, null, "alice").rotationDeadline).toBe(latest);
    }
  });

  it("keeps an earlier welcome deadline, which jitter never pushes later", () => {
    const welcome = NOW + 5 * SEC;
    expect(afterRotation(NOW, JITTERED, welcome, "alice").rotationDeadline).toBe(welcome);
  });

  it("stays within (interval x (1 - jitter), interval], never later (property)", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 42 }),
        fc.integer({ min: 1, max: 400 * DAY }),
        fc.double({ min: 0, max: MAX_ROTATION_JITTER, noNaN: true }),
        fc.string({ minLength: 1, maxLength: 128 }),
        fc.option(fc.integer({ min: 0, max: 2 ** 42 }), { nil: null }),
        (now, interval, jitter, identityId, welcome) => {
          const timing = { ...LIBXMTP, rotationIntervalMs: interval, rotationJitter: jitter };
          const { rotationDeadline } = afterRotation(now, timing, welcome, identityId);
          const jittered = jitteredIntervalMs(interval, jitter, identityId);
          expect(Number.isSafeInteger(jittered)).toBe(true);
          // Earlier by less than interval x jitter (so by nothing at jitter 0).
          expect(interval - jittered).toBeGreaterThanOrEqual(0);
          if (jitter > 0) expect(interval - jittered).toBeLessThan(interval * jitter);
          else expect(jittered).toBe(interval);
          expect(rotationDeadline).toBe(
            welcome === null ? now + jittered : Math.min(now + jittered, welcome),
          );
          const unit = jitterUnit(identityId);
          expect(unit).toBeGreaterThanOrEqual(0);
          expect(unit).toBeLessThan(1);
        },
      ),
    );
  });

  it("never moves an identity's interval deadline earlier than the previous rotation's (property)", () => {
    // A wake-up left at an older interval deadline (a lost Redis write) is then never later
    // than the deadline now due: it fires early, finds nothing due and re-arms.
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 42 }),
        fc.nat(400 * DAY),
        fc.integer({ min: 1, max: 400 * DAY }),
        fc.double({ min: 0, max: MAX_ROTATION_JITTER, noNaN: true }),
        fc.string({ minLength: 1, maxLength: 128 }),
        (first, gap, interval, jitter, identityId) => {
          const timing = { ...LIBXMTP, rotationIntervalMs: interval, rotationJitter: jitter };
          const before = afterRotation(first, timing, null, identityId).rotationDeadline;
          const after = afterRotation(first + gap, timing, null, identityId).rotationDeadline;
          expect(after - before).toBe(gap);
        },
      ),
    );
  });

  it("never goes beyond half an interval earlier, even if handed more", () => {
    for (let i = 0; i < 1_000; i++) {
      expect(jitteredIntervalMs(30 * DAY, 0.9, `x${i}`)).toBeGreaterThan(15 * DAY);
    }
  });
});

describe("deletionDeadline", () => {
  it.each<[string, number[], number | null]>([
    ["empty", [], null],
    ["one", [NOW + DAY], NOW + DAY],
    ["min first", [NOW, NOW + DAY, NOW + 2 * DAY], NOW],
    ["min last", [NOW + 3 * DAY, NOW + DAY, NOW - 5], NOW - 5],
    ["min in the middle, duplicates", [NOW + 9, NOW + 2, NOW + 2, NOW + 7], NOW + 2],
    ["zero is a real value", [5, 0, 3], 0],
  ])("%s", (_name, deleteAts, expected) => {
    expect(deletionDeadline(deleteAts)).toBe(expected);
  });
});

describe("backoffMs", () => {
  it.each([
    [-5, 2_000],
    [0, 2_000],
    [1, 2_000],
    [2, 3_000],
    [3, 4_500],
    [4, 6_750],
    [5, 10_125],
    [6, 15_188],
    [7, 22_781],
    [8, 34_172],
    [9, 51_258],
    [10, 60_000],
    [11, 60_000],
    [1_000, 60_000],
    [Number.MAX_SAFE_INTEGER, 60_000],
  ])("failures=%d -> %d ms", (failures, expected) => {
    expect(backoffMs(failures)).toBe(expected);
  });

  it("is non-decreasing and never above BACKOFF.maxMs", () => {
    expect(BACKOFF).toEqual({ initialMs: 2_000, factor: 1.5, maxMs: 60_000 });
    let previous = 0;
    for (let n = -3; n <= 200; n++) {
      const ms = backoffMs(n);
      expect(ms).toBeGreaterThanOrEqual(previous);
      expect(ms).toBeLessThanOrEqual(60_000);
      previous = ms;
    }
  });
});

const MAX = BACKOFF.maxMs;
const missing: JobView = { state: "missing" };
const waiting: JobView = { state: "waiting" };
const active: JobView = { state: "active" };
const finished: JobView = { state: "finished" };
const delayed = (fireAt: number): JobView => ({ state: "delayed", fireAt });
const none: ArmAction = { kind: "none" };
const remove: ArmAction = { kind: "remove" };
const add = (fireAt: number): ArmAction => ({ kind: "add", fireAt });
const resched = (fireAt: number): ArmAction => ({ kind: "reschedule", fireAt });
const replace = (fireAt: number): ArmAction => ({ kind: "replace", fireAt });
const FUTURE = NOW + 30 * DAY;
const OVERDUE = NOW - 10 * SEC;

describe("mostlyMissing", () => {
  const add = { kind: "add", fireAt: 1 } as const;
  const none = { kind: "none" } as const;
  const move = { kind: "reschedule", fireAt: 1 } as const;
  it.each([
    ["nothing wanted", [none, none], 0, false],
    ["every wanted job added", [add, add, none], 2, true],
    ["half added", [add, move], 2, true],
    ["fewer than half added", [add, move, none], 3, false],
    ["none added", [move, none], 2, false],
  ] as const)("%s", (_name, actions, wanted, expected) => {
    expect(mostlyMissing(actions, wanted)).toBe(expected);
  });
});

describe("planArm", () => {
  it.each<[string, number | null, JobView, ArmAction]>([
    // desired = null: nothing wanted
    ["null x missing", null, missing, none],
    ["null x delayed", null, delayed(FUTURE), remove],
    ["null x waiting", null, waiting, remove],
    ["null x active", null, active, none],
    ["null x finished", null, finished, remove],
    // desired in the future
    ["future x missing", FUTURE, missing, add(FUTURE)],
    ["future x delayed earlier", FUTURE, delayed(FUTURE - 1), resched(FUTURE)],
    ["future x delayed equal", FUTURE, delayed(FUTURE), none],
    ["future x delayed later", FUTURE, delayed(FUTURE + 1), resched(FUTURE)],
    ["future x delayed in the past", FUTURE, delayed(NOW - 1), resched(FUTURE)],
    ["future x waiting", FUTURE, waiting, none],
    ["future x active", FUTURE, active, none],
    ["future x finished", FUTURE, finished, replace(FUTURE)],
    // desired overdue (<= now)
    ["overdue x missing", OVERDUE, missing, add(OVERDUE)],
    ["overdue x delayed equal", OVERDUE, delayed(OVERDUE), none],
    ["overdue x delayed earlier", OVERDUE, delayed(OVERDUE - 1), none],
    ["overdue x delayed retry at now", OVERDUE, delayed(NOW), none],
    ["overdue x delayed retry within backoff", OVERDUE, delayed(NOW + 4_500), none],
    ["overdue x delayed at now+maxMs", OVERDUE, delayed(NOW + MAX), none],
    ["overdue x delayed beyond now+maxMs", OVERDUE, delayed(NOW + MAX + 1), resched(OVERDUE)],
    ["overdue x delayed 30 d later", OVERDUE, delayed(FUTURE), resched(OVERDUE)],
    // A deadline of exactly now (rotate-now) is not overdue: a later job is moved in.
    ["deadline == now x delayed within", NOW, delayed(NOW + MAX), resched(NOW)],
    ["deadline == now x delayed beyond", NOW, delayed(NOW + MAX + 1), resched(NOW)],
    ["overdue x waiting", OVERDUE, waiting, none],
    ["overdue x active", OVERDUE, active, none],
    ["overdue x finished", OVERDUE, finished, replace(OVERDUE)],
    // 1 ms in the future is not overdue: a later retry is moved in
    ["now+1 x delayed within backoff", NOW + 1, delayed(NOW + 2), resched(NOW + 1)],
  ])("%s", (_name, desired, job, expected) => {
    expect(planArm(desired, job, NOW)).toEqual(expected);
  });

  it.each([30, 60, 90])("carries a %d-day deadline exactly", (days) => {
    const desired = NOW + days * DAY;
    expect(planArm(desired, { state: "missing" }, NOW)).toEqual({ kind: "add", fireAt: desired });
    expect(planArm(desired, { state: "finished" }, NOW)).toEqual({
      kind: "replace",
      fireAt: desired,
    });
    expect(planArm(desired, { state: "delayed", fireAt: desired + DAY }, NOW)).toEqual({
      kind: "reschedule",
      fireAt: desired,
    });
    expect(planArm(desired, { state: "delayed", fireAt: desired }, NOW)).toEqual({ kind: "none" });
    const { rotationDeadline } = afterRotation(
      NOW,
      { ...LIBXMTP, rotationIntervalMs: days * DAY },
      null,
      "alice",
    );
    expect(rotationDeadline).toBe(desired);
    expect(pullIn(rotationDeadline, NOW, LIBXMTP.welcomeRotationDelayMs)).toEqual({
      deadline: NOW + 5 * SEC,
      changed: true,
    });
    expect(pullIn(NOW + 120 * DAY, NOW, days * DAY)).toEqual({ deadline: desired, changed: true });
  });

  const jobArb: fc.Arbitrary<JobView> = fc.oneof(
    fc.constant<JobView>({ state: "missing" }),
    fc.constant<JobView>({ state: "waiting" }),
    fc.constant<JobView>({ state: "active" }),
    fc.constant<JobView>({ state: "finished" }),
    fc
      .integer({ min: 0, max: NOW + 200 * DAY })
      .map((fireAt): JobView => ({ state: "delayed", fireAt })),
  );

  /** The wake-up after applying `action` to `job`: when it fires, or "now" if it is already due. */
  const apply = (job: JobView, action: ArmAction): number | "now" | undefined => {
    if (action.kind === "add" || action.kind === "reschedule" || action.kind === "replace") {
      return action.fireAt;
    }
    if (action.kind === "remove") return undefined;
    if (job.state === "waiting" || job.state === "active") return "now";
    return job.state === "delayed" ? job.fireAt : undefined;
  };

  it("a future deadline is never missed (property)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 120 * DAY }), jobArb, (ahead, job) => {
        const desired = NOW + ahead;
        const fireAt = apply(job, planArm(desired, job, NOW));
        expect(fireAt).toBeDefined();
        if (fireAt !== "now") expect(fireAt).toBeLessThanOrEqual(desired);
      }),
    );
  });

  it("with no deadline wanted, leaves nothing that will fire except an active run (property)", () => {
    fc.assert(
      fc.property(jobArb, (job) => {
        const action = planArm(null, job, NOW);
        const expected = job.state === "missing" || job.state === "active" ? "none" : "remove";
        expect(action.kind).toBe(expected);
      }),
    );
  });
});
