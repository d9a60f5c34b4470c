/**
 * Scenario 2: Redis loses every wake-up under load, twice: restarted without persistence (a crash
 * of an in-memory Redis), then FLUSHALL. Reconcile (run once after each loss, as an operator
 * would) and the workers' watchdog rebuild the wake-ups from Postgres.
 */
import { afterEach, expect, it } from "vitest";
import { sleep } from "./harness.js";
import { Scenario } from "./scenario.js";

let scenario: Scenario | undefined;
afterEach(async (ctx) => {
  await scenario?.dispose(ctx.task.result?.state === "fail");
  scenario = undefined;
});

it("Redis restarted without persistence, then FLUSHALL, under load: every wake-up comes back", async () => {
  scenario = await Scenario.start({ name: "2 Redis restart + FLUSHALL", identities: 100, workers: 3 });
  const s = scenario;
  s.startLoad();
  await sleep(8_000);

  // 1. Crash and restart: the new server is empty.
  let lost = Date.now();
  await s.h.redis.stop();
  s.faults++;
  await s.h.redis.start();
  const afterRestart = await s.reconcile();
  const restartHealMs = Date.now() - lost;
  await sleep(10_000);

  // 2. FLUSHALL while the service runs.
  lost = Date.now();
  await s.h.admin.flushall();
  s.faults++;
  const afterFlush = await s.reconcile();
  const flushHealMs = Date.now() - lost;
  await sleep(10_000);

  s.extra.reconcileAfterRestart = afterRestart;
  s.extra.reconcileAfterFlush = afterFlush;
  s.extra.healMs = { restart: restartHealMs, flush: flushHealMs };
  const report = await s.settle(Math.max(restartHealMs, flushHealMs));
  expect(report.status500).toBe(0);
  expect(report.rotations).toBeGreaterThan(0);
  expect(s.h.liveWorkers()).toHaveLength(3);
  expect(report.violations).toEqual([]);
});
