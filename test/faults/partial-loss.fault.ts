/**
 * Scenarios 7 and 8: the healing path with nobody running `reconcile`.
 *  7. Partial loss with the reconcile mark intact, under load: a share of the rotation and
 *     deletion wake-ups vanish, as after an AOF tail loss or a failover to a lagging replica.
 *     The workers' census finds the difference and a reconcile repairs only what is missing.
 *  8. FLUSHALL while one identity's row is held past lock_timeout: the workers' reconcile fails
 *     part-way, writes no mark, and is retried with backoff until it completes.
 * Heal time: from the loss to the first moment every live identity's wake-ups are armed again
 * (checked under the row locks by judgeArms).
 */
import type { Cluster, Redis } from "ioredis";
import { afterEach, expect, it } from "vitest";
import { holdRowLock } from "../helpers/latch.js";
import { judgeArms } from "./checks.js";
import { sleep } from "./harness.js";
import { Scenario } from "./scenario.js";

let scenario: Scenario | undefined;
afterEach(async (ctx) => {
  await scenario?.dispose(ctx.task.result?.state === "fail");
  scenario = undefined;
});

/** Removes a share of a queue's delayed wake-ups (job hash and delayed entry), as lost writes. */
async function loseDelayed(admin: Redis | Cluster, prefix: string, queue: string, share: number) {
  const jobIds = await admin.zrange(`${prefix}:${queue}:delayed`, 0, -1);
  const lost = jobIds.filter((_, i) => i % Math.round(1 / share) === 0);
  const pipeline = admin.pipeline();
  for (const jobId of lost) {
    pipeline.zrem(`${prefix}:${queue}:delayed`, jobId);
    pipeline.del(`${prefix}:${queue}:${jobId}`);
  }
  await pipeline.exec();
  return lost.length;
}

/** Polls until every live identity's wake-ups are armed again; returns the time taken. */
async function timeToHeal(s: Scenario, since: number, limitMs: number): Promise<number> {
  for (;;) {
    const arms = await judgeArms(s.h.sql, s.h.admin, s.h.prefix);
    if (arms.problems.length === 0) return Date.now() - since;
    if (Date.now() - since > limitMs) {
      throw new Error(
        `not healed after ${limitMs} ms: ${JSON.stringify(arms.problems.slice(0, 3))}`,
      );
    }
    await sleep(200);
  }
}

it("partial loss with the mark intact, under load: the census finds it and the workers heal it", async () => {
  scenario = await Scenario.start({
    name: "7 partial loss, mark intact",
    identities: 100,
    workers: 2,
  });
  const s = scenario;
  s.startLoad();
  await sleep(8_000);
  const lostAt = Date.now();
  const lost = {
    rotation: await loseDelayed(s.h.admin, s.h.prefix, "rotation", 0.25),
    deletion: await loseDelayed(s.h.admin, s.h.prefix, "deletion", 0.5),
  };
  s.faults++;
  expect(await s.h.admin.exists(`${s.h.prefix}:kp-rotor:reconciled`)).toBe(1);
  expect(lost.rotation).toBeGreaterThan(0);
  const healMs = await timeToHeal(s, lostAt, 60_000);
  s.extra.lost = lost;
  s.extra.healMs = healMs;
  s.extra.censusLogLines = s.h.countLogLines(/wakeup census differs/);
  await sleep(5_000);
  const report = await s.settle(healMs);
  expect(s.h.countLogLines(/wakeup census differs/)).toBeGreaterThan(0);
  expect(report.status500).toBe(0);
  expect(report.violations).toEqual([]);
});

it("a reconcile failing part-way (a row held past lock_timeout) is retried until it completes", async () => {
  scenario = await Scenario.start({
    name: "8 reconcile fails part-way",
    identities: 100,
    workers: 2,
  });
  const s = scenario;
  s.startLoad();
  await sleep(8_000);
  // Hold one identity's row from another connection across the reconcile's lock_timeout (10 s).
  const held = await holdRowLock(s.h.sql, "fault-50");
  const lostAt = Date.now();
  await s.h.admin.flushall();
  s.faults++;
  await sleep(13_000);
  const markDuringHold = await s.h.admin.exists(`${s.h.prefix}:kp-rotor:reconciled`);
  await held.release();
  const healMs = await timeToHeal(s, lostAt, 120_000);
  s.extra.markWhileHeld = markDuringHold;
  s.extra.healMs = healMs;
  s.extra.reconcileFailedLogLines = s.h.countLogLines(/reconcile failed; retrying/);
  await sleep(5_000);
  const report = await s.settle(healMs);
  // The failed run left no mark, and the retry, not an operator, healed it.
  expect(markDuringHold).toBe(0);
  expect(s.h.countLogLines(/reconcile failed; retrying/)).toBeGreaterThan(0);
  expect(report.status500).toBe(0);
  expect(report.violations).toEqual([]);
});
