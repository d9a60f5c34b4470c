/**
 * Scenario 1: worker processes SIGKILLed at random points during rotations and deletions, at
 * least 50 kills, three workers, each killed worker replaced at once; load all along.
 */
import { afterEach, expect, it } from "vitest";
import { sleep } from "./harness.js";
import { type KillPoint, runningWorkers, waitForBusy } from "./kills.js";
import { pick } from "./load.js";
import { Scenario } from "./scenario.js";

let scenario: Scenario | undefined;
afterEach(async (ctx) => {
  await scenario?.dispose(ctx.task.result?.state === "fail");
  scenario = undefined;
});

const KILLS = Number(process.env.FAULTS_KILLS ?? 50);

it("workers SIGKILLed mid-rotation and mid-deletion: nothing lost, nothing rotated twice", async () => {
  scenario = await Scenario.start({ name: "1 worker SIGKILL x50", identities: 100, workers: 3 });
  const s = scenario;
  s.startLoad();
  await sleep(3_000);
  const points: Record<KillPoint, number> = {
    "rotation-tx": 0,
    "deletion-tx": 0,
    "locked-tx": 0,
    other: 0,
  };
  while (s.faults < KILLS) {
    // A worker needs seconds to load on a busy machine; kill only running ones, and only while
    // another one runs too (three workers, one killed at a time, each replaced at once).
    const live = s.h.liveWorkers();
    const running = await runningWorkers(
      live.map((w) => w.child.pid as number),
      s.h.redis.port,
    );
    const candidates = live.filter((w) => running.has(w.child.pid as number));
    if (candidates.length < 2) {
      await sleep(200);
      continue;
    }
    const victim = pick(candidates);
    // Wait (up to 1.5 s) for the victim to be inside a transaction, so most kills land mid-work.
    const point = await waitForBusy(s.h.sql, victim.child.pid as number, s.h.pg.port, 1_500);
    points[point]++;
    await s.replaceWorker(victim);
    await sleep(100 + Math.random() * 400);
  }
  s.extra.killPoints = points;
  // The last kill leaves jobs active until their lock lapses and a stalled check runs.
  const report = await s.settle(5_000);
  expect(report.faults).toBeGreaterThanOrEqual(KILLS);
  expect(report.rotations).toBeGreaterThan(0);
  expect(report.deletions).toBeGreaterThan(0);
  expect(report.status500).toBe(0);
  expect(report.violations).toEqual([]);
});
