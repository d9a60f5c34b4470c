import { describe, expect, it } from "vitest";
import { simulate } from "../../bench/sim/engine.js";
import {
  createRandom,
  createWelcomeClock,
  DEFAULT_WELCOME_MODEL,
} from "../../bench/sim/welcomes.js";

/**
 * The year's simulation (npm run simulate) on small fleets whose outcome is known exactly: it
 * must drive the core's decisions so that a herd comes due together without ROTATION_JITTER and
 * spread over the jitter window with it, and count rotations, deletions and welcomes right.
 */

const DAY = 86_400_000;
const timing = (rotationJitter: number) => ({
  rotationIntervalMs: 30 * DAY,
  welcomeRotationDelayMs: 5_000,
  deletionGraceMs: DAY,
  rotationJitter,
});
const NO_WELCOMES = { ...DEFAULT_WELCOME_MODEL, dormantShare: 1 };

/** 20,000 identities registered within the first hour of day 1, no welcomes ever. */
const herd = (jitter: number) =>
  simulate({
    identities: 20_000,
    days: 62,
    timing: timing(jitter),
    welcomes: NO_WELCOMES,
    massIdentities: 20_000,
    massDay: 1,
    massHours: 1,
    seed: 7,
  });

describe("simulation", () => {
  it("without jitter, a herd registered in one hour rotates in that hour 30 and 60 days later", () => {
    const { days } = herd(0);
    expect(days[1]?.registrations).toBe(20_000);
    expect(days[31]?.rotationWakeups).toBe(20_000);
    expect(days[31]?.intervalRotations).toBe(20_000);
    expect(days[61]?.rotationWakeups).toBe(20_000);
    // The superseded first packages go one DELETION_GRACE after their rotation.
    expect(days[32]?.deletionWakeups).toBe(20_000);
    const others = days.filter((d) => d.day !== 31 && d.day !== 61);
    expect(others.every((d) => d.rotationWakeups === 0)).toBe(true);
    // 20,000 in 3,600 s: several per second at the peak.
    expect(days[31]?.peakRotationsPerSecond).toBeGreaterThanOrEqual(10);
    // Every identity keeps one rotation job; a deletion job for a day after each rotation.
    expect(days[31]?.timersAtEnd).toBe(40_000);
    expect(days[33]?.timersAtEnd).toBe(20_000);
  });

  it("with ROTATION_JITTER 10 %, the same herd is spread over the 3 days before, never later", () => {
    const plain = herd(0).days;
    const { days } = herd(0.1);
    // Registered in day 1's first hour: deadlines in (day 28, day 31 + 1 h].
    const first = days.slice(0, 28).reduce((n, d) => n + d.rotationWakeups, 0);
    const window = days.slice(28, 32).reduce((n, d) => n + d.rotationWakeups, 0);
    expect(first).toBe(0);
    expect(window).toBe(20_000);
    expect(days[31]?.rotationWakeups).toBeLessThan(20_000 / 2);
    for (const d of [28, 29, 30]) expect(days[d]?.rotationWakeups).toBeGreaterThan(20_000 / 5);
    const peak = Math.max(...days.slice(28, 32).map((d) => d.peakRotationsPerSecond));
    expect(peak * 3).toBeLessThanOrEqual(plain[31]?.peakRotationsPerSecond ?? 0);
  });

  it("counts every welcome once, and a welcome's rotation WELCOME_ROTATION_DELAY later", () => {
    const welcomes = { ...DEFAULT_WELCOME_MODEL, dormantShare: 0, activeMeanPerDay: 2 };
    const { days } = simulate({
      identities: 2_000,
      days: 10,
      timing: timing(0),
      welcomes,
      massIdentities: 0,
      massDay: 0,
      massHours: 1,
      seed: 3,
    });
    const total = (key: "welcomes" | "welcomesMoved" | "rotationWakeups" | "intervalRotations") =>
      days.reduce((n, d) => n + d[key], 0);
    // About 2 per identity per day (the cap trims the Pareto tail a little).
    expect(total("welcomes") / 2_000 / 10).toBeGreaterThan(1.5);
    expect(total("welcomes") / 2_000 / 10).toBeLessThan(2.5);
    // A moved deadline becomes exactly one rotation (5 s later; a few after the last day).
    const pulledInRotations = total("rotationWakeups") - total("intervalRotations");
    expect(pulledInRotations).toBeLessThanOrEqual(total("welcomesMoved"));
    expect(pulledInRotations).toBeGreaterThan(total("welcomesMoved") - 50);
    // Welcomes within 5 s of the one that moved the deadline change nothing.
    expect(total("welcomesMoved")).toBeLessThanOrEqual(total("welcomes"));
  });

  it("samples welcomes with the daily cycle: the busiest hour gets about 4x the quietest", () => {
    const clock = createWelcomeClock(DEFAULT_WELCOME_MODEL);
    const random = createRandom(11);
    const perHour = new Array<number>(24).fill(0);
    let t = 0;
    for (let i = 0; i < 200_000; i++) {
      t = clock.next(t, 50, random);
      const hour = Math.floor((t % 86_400) / 3_600);
      perHour[hour] = (perHour[hour] ?? 0) + 1;
    }
    const peak = perHour[20] ?? 0;
    const trough = perHour[8] ?? 0;
    // 1 + 0.6 and 1 - 0.6 at the hour's middle: a ratio of about 4.
    expect(peak / trough).toBeGreaterThan(3.3);
    expect(peak / trough).toBeLessThan(4.7);
  });
});
