import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type ArmAction,
  afterRotation,
  BACKOFF,
  backoffMs,
  decideRotation,
  deletionDeadline,
  type JobView,
  planArm,
  pullIn,
  type RotationState,
  type Timing,
} from "../../src/core/timers.js";

const NOW = Date.UTC(2025, 0, 15, 12, 0, 0);
const SEC = 1_000;
const DAY = 86_400_000;
const LIBXMTP: Timing = { rotationIntervalMs: 30 * DAY, welcomeRotationDelayMs: 5 * SEC, deletionGraceMs: DAY };

describe("decideRotation", () => {
  it.each<[string, RotationState | undefined, ReturnType<typeof decideRotation>]>([
    ["no row", undefined, { kind: "gone" }],
    ["deregistered", { rotationDeadline: NOW - 1, deregistered: true }, { kind: "gone" }],
    ["deregistered, future deadline", { rotationDeadline: NOW + DAY, deregistered: true }, { kind: "gone" }],
    ["null deadline", { rotationDeadline: null, deregistered: false }, { kind: "gone" }],
    ["deadline 1 ms ahead", { rotationDeadline: NOW + 1, deregistered: false }, { kind: "not-due", deadline: NOW + 1 }],
    ["deadline 30 d ahead", { rotationDeadline: NOW + 30 * DAY, deregistered: false }, { kind: "not-due", deadline: NOW + 30 * DAY }],
    ["deadline == now", { rotationDeadline: NOW, deregistered: false }, { kind: "rotate" }],
    ["deadline 1 ms past", { rotationDeadline: NOW - 1, deregistered: false }, { kind: "rotate" }],
    ["deadline long past", { rotationDeadline: NOW - 90 * DAY, deregistered: false }, { kind: "rotate" }],
  ])("%s", (_name, state, expected) => {
    expect(decideRotation(state, NOW)).toEqual(expected);
  });
});

describe("pullIn", () => {
  it.each<[string, number, number, { deadline: number; changed: boolean }]>([
    ["earlier candidate wins", NOW + 30 * DAY, 5 * SEC, { deadline: NOW + 5 * SEC, changed: true }],
    ["equal candidate is not a change", NOW + 5 * SEC, 5 * SEC, { deadline: NOW + 5 * SEC, changed: false }],
    ["later candidate keeps sooner deadline", NOW + 2 * SEC, 5 * SEC, { deadline: NOW + 2 * SEC, changed: false }],
    ["overdue deadline is not pushed later", NOW - DAY, 5 * SEC, { deadline: NOW - DAY, changed: false }],
    ["delay 0 pulls to now", NOW + DAY, 0, { deadline: NOW, changed: true }],
    ["delay 0 with deadline == now", NOW, 0, { deadline: NOW, changed: false }],
    ["1 ms earlier is a change", NOW + 5 * SEC + 1, 5 * SEC, { deadline: NOW + 5 * SEC, changed: true }],
    ["90 d delay vs 60 d deadline", NOW + 60 * DAY, 90 * DAY, { deadline: NOW + 60 * DAY, changed: false }],
    ["60 d delay vs 90 d deadline", NOW + 90 * DAY, 60 * DAY, { deadline: NOW + 60 * DAY, changed: true }],
  ])("%s", (_name, current, delay, expected) => {
    expect(pullIn(current, NOW, delay)).toEqual(expected);
  });

  it("never moves a deadline later (property)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 45 }), fc.integer({ min: 0, max: 100 * DAY }), fc.nat(100 * DAY), (current, now, delay) => {
        const r = pullIn(current, now, delay);
        expect(r.deadline).toBe(Math.min(current, now + delay));
        expect(r.changed).toBe(r.deadline !== current);
      }),
    );
  });
});

describe("afterRotation", () => {
  it.each<[string, Timing, number, number]>([
    ["libxmtp (30 d, 5 s, 1 d)", LIBXMTP, NOW + 30 * DAY, NOW + DAY],
    ["tiny (1 ms, 0, 0)", { rotationIntervalMs: 1, welcomeRotationDelayMs: 0, deletionGraceMs: 0 }, NOW + 1, NOW],
    ["tiny (50 ms, 10 ms, 20 ms)", { rotationIntervalMs: 50, welcomeRotationDelayMs: 10, deletionGraceMs: 20 }, NOW + 50, NOW + 20],
    ["60 d / 90 d", { rotationIntervalMs: 60 * DAY, welcomeRotationDelayMs: 5, deletionGraceMs: 90 * DAY }, NOW + 60 * DAY, NOW + 90 * DAY],
  ])("%s", (_name, timing, rotationDeadline, supersededDeleteAt) => {
    expect(afterRotation(NOW, timing)).toEqual({ rotationDeadline, supersededDeleteAt });
  });

  it("carries 30/60/90 d exactly", () => {
    expect(afterRotation(NOW, { ...LIBXMTP, rotationIntervalMs: 90 * DAY }).rotationDeadline - NOW).toBe(7_776_000_000);
    expect(afterRotation(NOW, LIBXMTP).rotationDeadline - NOW).toBe(2_592_000_000);
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
const FUTURE = NOW + 30 * DAY;
const OVERDUE = NOW - 10 * SEC;

describe("planArm", () => {
  it.each<[string, number | null, JobView, ArmAction]>([
    // desired = null: nothing wanted
    ["null x missing", null, { state: "missing" }, { kind: "none" }],
    ["null x delayed", null, { state: "delayed", fireAt: FUTURE }, { kind: "remove" }],
    ["null x waiting", null, { state: "waiting" }, { kind: "remove" }],
    ["null x active", null, { state: "active" }, { kind: "none" }],
    ["null x finished", null, { state: "finished" }, { kind: "remove" }],
    // desired in the future
    ["future x missing", FUTURE, { state: "missing" }, { kind: "add", fireAt: FUTURE }],
    ["future x delayed earlier", FUTURE, { state: "delayed", fireAt: FUTURE - 1 }, { kind: "reschedule", fireAt: FUTURE }],
    ["future x delayed equal", FUTURE, { state: "delayed", fireAt: FUTURE }, { kind: "none" }],
    ["future x delayed later", FUTURE, { state: "delayed", fireAt: FUTURE + 1 }, { kind: "reschedule", fireAt: FUTURE }],
    ["future x delayed in the past", FUTURE, { state: "delayed", fireAt: NOW - 1 }, { kind: "reschedule", fireAt: FUTURE }],
    ["future x waiting", FUTURE, { state: "waiting" }, { kind: "none" }],
    ["future x active", FUTURE, { state: "active" }, { kind: "none" }],
    ["future x finished", FUTURE, { state: "finished" }, { kind: "replace", fireAt: FUTURE }],
    // desired overdue (<= now)
    ["overdue x missing", OVERDUE, { state: "missing" }, { kind: "add", fireAt: OVERDUE }],
    ["overdue x delayed equal", OVERDUE, { state: "delayed", fireAt: OVERDUE }, { kind: "none" }],
    ["overdue x delayed earlier", OVERDUE, { state: "delayed", fireAt: OVERDUE - 1 }, { kind: "none" }],
    ["overdue x delayed retry at now", OVERDUE, { state: "delayed", fireAt: NOW }, { kind: "none" }],
    ["overdue x delayed retry within backoff", OVERDUE, { state: "delayed", fireAt: NOW + 4_500 }, { kind: "none" }],
    ["overdue x delayed at now+maxMs", OVERDUE, { state: "delayed", fireAt: NOW + MAX }, { kind: "none" }],
    ["overdue x delayed beyond now+maxMs", OVERDUE, { state: "delayed", fireAt: NOW + MAX + 1 }, { kind: "reschedule", fireAt: OVERDUE }],
    ["overdue x delayed 30 d later", OVERDUE, { state: "delayed", fireAt: FUTURE }, { kind: "reschedule", fireAt: OVERDUE }],
    ["deadline == now x delayed within", NOW, { state: "delayed", fireAt: NOW + MAX }, { kind: "none" }],
    ["deadline == now x delayed beyond", NOW, { state: "delayed", fireAt: NOW + MAX + 1 }, { kind: "reschedule", fireAt: NOW }],
    ["overdue x waiting", OVERDUE, { state: "waiting" }, { kind: "none" }],
    ["overdue x active", OVERDUE, { state: "active" }, { kind: "none" }],
    ["overdue x finished", OVERDUE, { state: "finished" }, { kind: "replace", fireAt: OVERDUE }],
    // 1 ms in the future is not overdue: a later retry is moved in
    ["now+1 x delayed within backoff", NOW + 1, { state: "delayed", fireAt: NOW + 2 }, { kind: "reschedule", fireAt: NOW + 1 }],
  ])("%s", (_name, desired, job, expected) => {
    expect(planArm(desired, job, NOW)).toEqual(expected);
  });

  it.each([30, 60, 90])("carries a %d-day deadline exactly", (days) => {
    const desired = NOW + days * DAY;
    expect(planArm(desired, { state: "missing" }, NOW)).toEqual({ kind: "add", fireAt: desired });
    expect(planArm(desired, { state: "finished" }, NOW)).toEqual({ kind: "replace", fireAt: desired });
    expect(planArm(desired, { state: "delayed", fireAt: desired + DAY }, NOW)).toEqual({
      kind: "reschedule",
      fireAt: desired,
    });
    expect(planArm(desired, { state: "delayed", fireAt: desired }, NOW)).toEqual({ kind: "none" });
    const { rotationDeadline } = afterRotation(NOW, { ...LIBXMTP, rotationIntervalMs: days * DAY });
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
    fc.integer({ min: 0, max: NOW + 200 * DAY }).map((fireAt): JobView => ({ state: "delayed", fireAt })),
  );

  it("a future deadline is never missed (property)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 120 * DAY }), jobArb, (ahead, job) => {
        const desired = NOW + ahead;
        const action = planArm(desired, job, NOW);
        expect(action.kind).not.toBe("remove");
        if (action.kind === "add" || action.kind === "reschedule" || action.kind === "replace") {
          expect(action.fireAt).toBe(desired);
          return;
        }
        // none: the existing job is what will wake the identity
        if (job.state === "waiting" || job.state === "active") return;
        expect(job.state).toBe("delayed");
        if (job.state === "delayed") expect(job.fireAt).toBeLessThanOrEqual(desired);
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
