/**
 * Scenario 7: three workers, bursts of 10,000 welcomes over 100 identities (single welcomes and
 * batches, 16 at a time). A burst that fits within the welcome delay yields exactly one rotation
 * per identity: the first welcome sets the deadline, every later one finds it sooner and changes
 * nothing (earliest deadline wins), and the rotation moves it 10 minutes on.
 *
 * Scaled to the machine: WELCOME_ROTATION_DELAY is 30 s here (not 200 ms) so that a burst of
 * 10,000 welcomes through one API process on two shared cores fits inside it; the test checks
 * that it did.
 */
import { afterEach, expect, it } from "vitest";
import { timerRotations, readAudit } from "./checks.js";
import { sleep, waitFor } from "./harness.js";
import { pick, sample } from "./load.js";
import { Scenario } from "./scenario.js";

let scenario: Scenario | undefined;
afterEach(async (ctx) => {
  await scenario?.dispose(ctx.task.result?.state === "fail");
  scenario = undefined;
});

const BURSTS = Number(process.env.FAULTS_BURSTS ?? 3);
const WELCOMES = Number(process.env.FAULTS_BURST_WELCOMES ?? 10_000);
const DELAY_MS = 30_000;

it("bursts of 10,000 welcomes over 100 identities: one rotation per identity per burst", async () => {
  scenario = await Scenario.start({
    name: "7 bursts of 10,000 welcomes",
    identities: 100,
    workers: 3,
    env: { ROTATION_INTERVAL: "10m", WELCOME_ROTATION_DELAY: `${DELAY_MS / 1000}s` },
  });
  const s = scenario;
  const bursts: { startedAt: number; endedAt: number; welcomes: number; refused: number }[] = [];
  for (let b = 0; b < BURSTS; b++) {
    // Half as single welcomes, half as batches of 100: 10,000 welcomes in all.
    const work: (() => Promise<unknown>)[] = [];
    for (let i = 0; i < WELCOMES / 2; i++) work.push(() => s.recorder.welcome(pick(s.ids)));
    for (let i = 0; i < WELCOMES / 2 / 100; i++) {
      work.push(() => s.recorder.batch(sample(s.ids, 100)));
    }
    work.sort(() => Math.random() - 0.5);
    const requestsBefore = s.recorder.requests.length;
    const startedAt = Date.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < work.length) await work[next++]?.();
      }),
    );
    const endedAt = Date.now();
    const mine = s.recorder.requests.slice(requestsBefore);
    bursts.push({
      startedAt,
      endedAt,
      welcomes: mine.reduce((n, r) => n + r.size, 0),
      refused: mine.filter((r) => r.status < 200 || r.status >= 300).length,
    });
    // Wait for this burst's rotations (one per identity), then a little more for stragglers.
    await waitFor(
      async () => {
        const audit = await readAudit(s.h.sql);
        const done = new Set(
          timerRotations(audit)
            .filter((r) => (r.lastRotatedAt ?? 0) > startedAt)
            .map((r) => r.id),
        );
        return done.size === s.ids.length;
      },
      DELAY_MS + 90_000,
      `the rotations of burst ${b}`,
      500,
    );
    await sleep(2_000);
  }

  const audit = await readAudit(s.h.sql);
  const rotations = timerRotations(audit);
  const perBurst = bursts.map((burst, b) => {
    const end = bursts[b + 1]?.startedAt ?? Number.POSITIVE_INFINITY;
    const counts = new Map<string, number>();
    let early = 0;
    for (const r of rotations) {
      const at = r.lastRotatedAt ?? r.at;
      if (at <= burst.startedAt || at >= end) continue;
      counts.set(r.id, (counts.get(r.id) ?? 0) + 1);
      if (at < burst.startedAt + DELAY_MS) early++;
    }
    return {
      ...burst,
      durationMs: burst.endedAt - burst.startedAt,
      identitiesRotated: counts.size,
      rotationsTwice: [...counts.values()].filter((n) => n > 1).length,
      rotatedBeforeEarliestDeadline: early,
    };
  });
  s.extra.bursts = perBurst;
  const report = await s.settle(0);
  for (const burst of perBurst) {
    expect(burst.durationMs, "the burst must fit within the welcome delay").toBeLessThan(DELAY_MS);
    expect(burst.welcomes).toBe(WELCOMES);
    expect(burst.refused).toBe(0);
    expect(burst.identitiesRotated).toBe(s.ids.length);
    expect(burst.rotationsTwice).toBe(0);
    expect(burst.rotatedBeforeEarliestDeadline).toBe(0);
  }
  expect(report.violations).toEqual([]);
});
