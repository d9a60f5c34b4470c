import { describe, expect, it } from "vitest";
import { MAX_TIMER_DELAY_MS, nudgeDelayMs } from "../../src/queue/bullmq/index.js";

const DAY = 86_400_000;
const T0 = Date.UTC(2026, 0, 1);

/**
 * Runs the worker's timer loop on an explicit clock: each timer fires exactly when asked, plus
 * `drift(i)` ms (negative: early, as Node's loop clock allows). Returns the delays set and the
 * clock when the nudge was sent.
 */
function simulate(blockUntil: number, now: number, drift: (i: number) => number = () => 0) {
  const delays: number[] = [];
  let clock = now;
  for (let i = 0; ; i++) {
    const delay = nudgeDelayMs(blockUntil, clock);
    if (i > 0 && delay === 0) return { delays, sentAt: clock };
    if (i > 1_000) throw new Error("the timer loop does not end");
    delays.push(delay);
    clock += delay + drift(i);
  }
}

describe("nudgeDelayMs", () => {
  it("is 0 at and after the fire time", () => {
    expect(nudgeDelayMs(T0, T0)).toBe(0);
    expect(nudgeDelayMs(T0, T0 + 1)).toBe(0);
    expect(nudgeDelayMs(T0, T0 + DAY)).toBe(0);
  });

  it("is the time left before it", () => {
    expect(nudgeDelayMs(T0, T0 - 1)).toBe(1);
    expect(nudgeDelayMs(T0, T0 - 5_000)).toBe(5_000);
  });

  it("waits for the whole millisecond of a fractional fire time (a score / 4096)", () => {
    // A job at T0 with a same-millisecond counter of 7 is scored T0 * 4096 + 7.
    const blockUntil = (T0 * 4096 + 7) / 4096;
    expect(nudgeDelayMs(blockUntil, T0)).toBe(0);
    expect(nudgeDelayMs(blockUntil, T0 - 1)).toBe(1);
  });

  it("caps a wait beyond setTimeout's limit, so that a far fire time takes several timers", () => {
    expect(MAX_TIMER_DELAY_MS).toBe(2_147_483_647);
    const far = T0 + 30 * DAY;
    expect(nudgeDelayMs(far, T0)).toBe(MAX_TIMER_DELAY_MS);
    const run = simulate(far, T0);
    expect(run.delays).toEqual([MAX_TIMER_DELAY_MS, 30 * DAY - MAX_TIMER_DELAY_MS]);
    expect(run.sentAt).toBe(far);
  });

  it("sets one timer for a near fire time, and none beyond 0 when already due", () => {
    expect(simulate(T0 + 1_500, T0)).toEqual({ delays: [1_500], sentAt: T0 + 1_500 });
    expect(simulate(T0, T0 + 3)).toEqual({ delays: [0], sentAt: T0 + 3 });
  });

  it("never sends before the fire time when timers fire early: it waits again", () => {
    // The timer fires 1 ms early (Node's cached, truncated loop clock against Date.now()).
    const run = simulate(T0 + 1_000, T0, (i) => (i === 0 ? -1 : 0));
    expect(run.delays).toEqual([1_000, 1]);
    expect(run.sentAt).toBe(T0 + 1_000);
    // Early by more than the whole wait: still not sent before the fire time.
    const wild = simulate(T0 + 10, T0, (i) => (i === 0 ? -9 : 0));
    expect(wild.delays).toEqual([10, 9]);
    expect(wild.sentAt).toBe(T0 + 10);
  });

  it("sends at the first check at or after the fire time when a timer fires late", () => {
    const run = simulate(T0 + 1_000, T0, () => 40);
    expect(run.delays).toEqual([1_000]);
    expect(run.sentAt).toBe(T0 + 1_040);
  });
});
