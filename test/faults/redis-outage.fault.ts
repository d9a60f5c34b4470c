/**
 * Scenario 4: Redis unreachable for 30 s under load (the private redis-server stopped, started
 * again on the same port 30 s later, empty: so reconcile runs once). An acknowledged welcome is
 * never lost; a refused one acknowledged nothing and wrote nothing.
 */
import { afterEach, expect, it } from "vitest";
import { sleep, waitFor } from "./harness.js";
import { pick } from "./load.js";
import { Scenario, statusesBetween } from "./scenario.js";

let scenario: Scenario | undefined;
afterEach(async (ctx) => {
  await scenario?.dispose(ctx.task.result?.state === "fail");
  scenario = undefined;
});

const OUTAGE_MS = Number(process.env.FAULTS_OUTAGE_MS ?? 30_000);

it("Redis down for 30 s and back empty: acknowledged welcomes kept, refused ones wrote nothing", async () => {
  scenario = await Scenario.start({
    name: "4 Redis down 30 s",
    identities: 100,
    workers: 3,
    probes: 5,
  });
  const s = scenario;
  const api = s.h.api();
  s.startLoad();
  await sleep(8_000);

  const outageAt = Date.now();
  const probes = await s.probeWhile(async () => {
    await s.h.redis.stop();
    s.faults++;
    await sleep(OUTAGE_MS);
  });
  await s.h.redis.start();
  const upAt = Date.now();
  const reconciled = await s.reconcile();
  const healMs = Date.now() - outageAt;
  await waitFor(
    async () => (await s.recorder.welcome(pick(s.ids))).status === 202,
    30_000,
    "the API to accept welcomes again",
    250,
  );
  await sleep(10_000);

  const duringOutage = statusesBetween(s.recorder, outageAt + 1_000, upAt - 1_000);
  // A welcome that pulls a deadline in must arm its wake-up in Redis first: while Redis is down
  // none can be acknowledged. One that finds an earlier deadline already committed (typically one
  // already overdue: no worker can rotate meanwhile) changes nothing, calls no Redis and is
  // answered 202: its wake-up was armed before and reconcile restores it after the data loss.
  const pulledInWhileDown = s.recorder.acks.filter(
    (a) => a.pulledIn && a.sentAt >= outageAt + 1_000 && a.answeredAt <= upAt - 1_000,
  );
  const unchangedWhileDown = s.recorder.acks.filter(
    (a) => !a.pulledIn && a.sentAt >= outageAt + 1_000 && a.answeredAt <= upAt - 1_000,
  );
  s.extra.statusesDuringOutage = duringOutage;
  s.extra.acknowledgedWhileDown = {
    pulledIn: pulledInWhileDown.length,
    unchanged: unchangedWhileDown.length,
  };
  s.extra.probes = probes;
  s.extra.reconcile = reconciled;
  s.extra.healMs = healMs;
  const report = await s.settle(healMs);
  expect(api?.alive()).toBe(true);
  expect(duringOutage["503"] ?? 0).toBeGreaterThan(0);
  expect(Object.keys(duringOutage).filter((k) => k !== "503" && k !== "202")).toEqual([]);
  expect(pulledInWhileDown).toEqual([]);
  expect(probes.refusedOnly).toBeGreaterThan(0);
  expect(probes.traces).toEqual([]);
  expect(report.status500).toBe(0);
  expect(s.h.liveWorkers()).toHaveLength(3);
  expect(report.violations).toEqual([]);
});
