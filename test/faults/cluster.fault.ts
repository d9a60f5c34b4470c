/**
 * Scenario: the service on a private three-primary Redis Cluster with QUEUE_SHARDS=3 (issue 14).
 * Workers are SIGKILLed mid-work, then one primary restarts empty (no persistence): the shards
 * it served lose their wake-ups and their reconcile marks. The workers find the missing marks
 * and rebuild those wake-ups from Postgres; every invariant of checks.ts holds, per shard.
 */
import { afterEach, expect, it } from "vitest";
import { sleep, waitFor } from "./harness.js";
import { waitForBusy } from "./kills.js";
import { pick } from "./load.js";
import { Scenario } from "./scenario.js";

let scenario: Scenario | undefined;
afterEach(async (ctx) => {
  await scenario?.dispose(ctx.task.result?.state === "fail");
  scenario = undefined;
});

const KILLS = Number(process.env.FAULTS_CLUSTER_KILLS ?? 10);

it("on a Redis Cluster: workers SIGKILLed, then a primary loses its data, under load: nothing lost, nothing rotated twice", async () => {
  scenario = await Scenario.start({
    name: "cluster: worker SIGKILLs + a primary restarted empty",
    identities: 100,
    workers: 3,
    cluster: true,
    env: { RECONCILE_CHECK_INTERVAL: "1s" },
  });
  const s = scenario;
  const cluster = s.h.cluster;
  if (cluster === undefined) throw new Error("the scenario did not start a cluster");
  s.startLoad();
  await sleep(5_000);

  // 1. Workers killed mid-work, one at a time, each replaced at once.
  while (s.faults < KILLS) {
    const victim = pick(s.h.liveWorkers());
    await waitForBusy(s.h.sql, victim.child.pid as number, s.h.pg.port, 1_500);
    await s.replaceWorker(victim);
    await sleep(500 + Math.random() * 1_000);
  }
  await sleep(3_000);

  // 2. The primary that serves shard 0 restarts empty.
  const shard0 = `{${s.h.prefix}:0}`;
  const port = await cluster.primaryOf(shard0);
  // A key of the test's own in the shard's slot shows the data really went (the service's own
  // keys, BullMQ's meta say, may be written again the moment the node is back).
  await s.h.admin.set(`${shard0}:fault-sentinel`, "1");
  const lostAt = Date.now();
  await cluster.wipe(port);
  s.faults++;
  expect(await s.h.admin.exists(`${shard0}:fault-sentinel`)).toBe(0);
  await waitFor(
    async () => (await s.h.admin.exists(`${shard0}:kp-rotor:reconciled`).catch(() => 0)) === 1,
    90_000,
    "the workers to rebuild the wiped shards' wake-ups",
  );
  const healMs = Date.now() - lostAt;
  s.extra.wipedPrimary = port;
  s.extra.healMs = healMs;
  await sleep(5_000);

  const report = await s.settle(healMs);
  expect(report.faults).toBe(KILLS + 1);
  expect(report.rotations).toBeGreaterThan(0);
  expect(report.status500).toBe(0);
  expect(report.violations).toEqual([]);
});
