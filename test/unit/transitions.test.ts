import { describe, expect, it } from "vitest";
import type { LockedDeadline, PendingKeyPackage } from "../../src/core/ports.js";
import {
  deviceNotificationId,
  judgePublished,
  PUBLISHED_LIFE_TOLERANCE_MS,
  planPullIns,
  reusablePending,
  rotationRearmAt,
  rotationSource,
  verifyAtAfterRotation,
  wakeTarget,
  plannedRotationWake,
} from "../../src/core/transitions.js";

const NOW = Date.UTC(2025, 0, 15, 12, 0, 0);
const SEC = 1_000;

const locked = (id: string, over: Partial<LockedDeadline> = {}): LockedDeadline => ({
  id,
  rotationDeadline: NOW + 3_600 * SEC,
  deregistered: false,
  publishing: false,
  now: NOW,
  fence: 1,
  ...over,
});

describe("planPullIns", () => {
  it("pulls later deadlines in, keeps sooner ones, skips tombstones", () => {
    const plan = planPullIns(
      [
        locked("later"),
        locked("sooner", { rotationDeadline: NOW + 2 * SEC }),
        locked("gone", { deregistered: true, rotationDeadline: null }),
      ],
      NOW,
      5 * SEC,
    );
    expect(plan.deadline).toBe(NOW + 5 * SEC);
    expect(plan.changed).toEqual(["later"]);
    expect(plan.duringPublish).toEqual([]);
    expect(plan.results).toEqual([
      { identityId: "later", rotationDeadline: NOW + 5 * SEC, changed: true },
      { identityId: "sooner", rotationDeadline: NOW + 2 * SEC, changed: false },
    ]);
  });

  it("records a welcome during a publish, even when the deadline is already due", () => {
    const plan = planPullIns(
      [locked("p", { publishing: true, rotationDeadline: NOW - SEC })],
      NOW,
      5 * SEC,
    );
    expect(plan.changed).toEqual([]);
    expect(plan.duringPublish).toEqual(["p"]);
    // The deadline the promote will keep, and the answer says it changed.
    expect(plan.results).toEqual([
      { identityId: "p", rotationDeadline: NOW + 5 * SEC, changed: true },
    ]);
  });
});

describe("rotationRearmAt", () => {
  const cases: [string, Parameters<typeof rotationRearmAt>, number | null][] = [
    ["gone: no wake-up", [undefined, NOW, NOW], null],
    ["tombstone: no wake-up", [{ rotationDeadline: null, deregistered: true }, NOW, NOW], null],
    [
      "not due: the deadline",
      [{ rotationDeadline: NOW + SEC, deregistered: false }, NOW, NOW],
      NOW + SEC,
    ],
    [
      "not due, local clock 30 s ahead: shifted by the skew",
      [{ rotationDeadline: NOW + SEC, deregistered: false }, NOW + 30 * SEC, NOW],
      NOW + 31 * SEC,
    ],
    [
      "due again already: at once",
      [{ rotationDeadline: NOW, deregistered: false }, NOW + 7, NOW],
      NOW + 7,
    ],
  ];
  it.each(cases)("%s", (_name, args, expected) => {
    expect(rotationRearmAt(...args)).toBe(expected);
  });
});

describe("reusablePending", () => {
  const pending = { generation: 3, ciphersuite: "X" } as PendingKeyPackage;
  it.each([
    [pending, 3, "X", true],
    [pending, 4, "X", false],
    [pending, 3, "Y", false],
    [undefined, 3, "X", false],
    [null, 3, "X", false],
  ] as const)("%o for generation %i, suite %s: %s", (existing, generation, suite, expected) => {
    expect(reusablePending(existing, generation, suite)).toBe(expected);
  });
});

describe("device custody and published checks", () => {
  const NOW = Date.UTC(2026, 11, 5);
  const DAY = 86_400_000;

  it.each([
    ["service, nothing pending", "service", false, "generate"],
    ["service, pending reusable", "service", true, "reuse"],
    ["device, nothing uploaded", "device", false, "await-device"],
    ["device, its upload pending", "device", true, "reuse"],
  ] as const)("rotationSource: %s", (_name, custody, reusable, expected) => {
    expect(rotationSource(custody, reusable)).toBe(expected);
  });

  it("a notification id is stable per subject and free of ':'", () => {
    const a = deviceNotificationId("rotate", "x:y", 5);
    expect(a).toBe(deviceNotificationId("rotate", "x:y", 5));
    expect(a).not.toBe(deviceNotificationId("rotate", "x:y", 6));
    expect(deviceNotificationId("delete", "x:y", "ab")).not.toContain(":");
  });

  it.each([
    ["no check planned", NOW + 30 * DAY, null, NOW + 30 * DAY],
    ["a check before the deadline", NOW + 30 * DAY, NOW + 15 * DAY, NOW + 15 * DAY],
    ["a check already due fires now", NOW + 30 * DAY, NOW - 1000, NOW],
    ["a check after the deadline is moot", NOW + 30 * DAY, NOW + 31 * DAY, NOW + 30 * DAY],
  ] as const)("wakeTarget: %s", (_name, deadline, verifyAt, expected) => {
    expect(wakeTarget(deadline, verifyAt, NOW)).toBe(expected);
  });

  it.each([
    ["no deadline, no wake-up", null, NOW + 15 * DAY, null],
    ["no check planned", NOW + 30 * DAY, null, NOW + 30 * DAY],
    ["a check before the deadline", NOW + 30 * DAY, NOW + 15 * DAY, NOW + 15 * DAY],
    [
      "a check already due keeps its time (planArm judges overdue)",
      NOW + 30 * DAY,
      NOW - 1000,
      NOW - 1000,
    ],
    ["a check after the deadline is moot", NOW + 30 * DAY, NOW + 31 * DAY, NOW + 30 * DAY],
  ] as const)("plannedRotationWake: %s", (_name, deadline, verifyAt, expected) => {
    expect(plannedRotationWake(deadline, verifyAt)).toBe(expected);
  });

  it("plans the check at half the interval, only before the deadline", () => {
    expect(verifyAtAfterRotation(NOW, 30 * DAY, NOW + 30 * DAY)).toBe(NOW + 15 * DAY);
    // A welcome during publish kept an earlier deadline: no check before it.
    expect(verifyAtAfterRotation(NOW, 30 * DAY, NOW + 5000)).toBeNull();
  });

  const good = { ref: "aa", signatureValid: true, notAfter: NOW + 84 * DAY };
  it.each([
    ["the current package, long-lived", good, "ok"],
    ["nothing published", null, "missing"],
    ["another package", { ...good, ref: "bb" }, "ref-mismatch"],
    ["a broken signature", { ...good, signatureValid: false }, "bad-signature"],
    ["expiring before deadline + margin", { ...good, notAfter: NOW + 36 * DAY }, "too-short"],
    ["expiring exactly at deadline + margin", { ...good, notAfter: NOW + 37 * DAY }, "ok"],
    // An upload checked against now + interval + margin, promoted a little later: still fine.
    [
      "short of deadline + margin by the tolerance",
      { ...good, notAfter: NOW + 37 * DAY - PUBLISHED_LIFE_TOLERANCE_MS },
      "ok",
    ],
    [
      "short of deadline + margin by more",
      { ...good, notAfter: NOW + 37 * DAY - PUBLISHED_LIFE_TOLERANCE_MS - 1 },
      "too-short",
    ],
  ] as const)("judgePublished: %s", (_name, observed, expected) => {
    const verdict = judgePublished("aa", observed, NOW + 30 * DAY, 7 * DAY);
    expect(verdict.ok ? "ok" : verdict.reason).toBe(expected);
  });
});
