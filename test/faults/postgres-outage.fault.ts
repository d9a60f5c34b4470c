/**
 * Scenario 3: Postgres restarted under load (pg_ctl restart -m fast), then unreachable for 30 s
 * (pg_ctl stop, 30 s, start). Meanwhile the API answers 503, never 500, and recovers without a
 * restart; the workers retry with backoff and recover.
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

it("Postgres restarted, then down for 30 s, under load: 503 meanwhile, nothing lost", async () => {
  scenario = await Scenario.start({
    name: "3 Postgres restart + 30 s outage",
    identities: 100,
    workers: 3,
    probes: 5,
  });
  const s = scenario;
  const api = s.h.api();
  s.startLoad();
  await sleep(8_000);

  const restartAt = Date.now();
  await s.h.pg.restart();
  s.faults++;
  const restartMs = Date.now() - restartAt;
  await sleep(10_000);

  const outageAt = Date.now();
  const probes = await s.probeWhile(async () => {
    await s.h.pg.stop("fast");
    s.faults++;
    await sleep(OUTAGE_MS);
  });
  await s.h.pg.start();
  const upAt = Date.now();
  // The same API process answers again, without a restart.
  await waitFor(
    async () => (await s.recorder.welcome(pick(s.ids))).status === 202,
    30_000,
    "the API to accept welcomes again",
    250,
  );
  const recoveredMs = Date.now() - upAt;
  await sleep(10_000);

  const duringOutage = statusesBetween(s.recorder, outageAt + 1_000, upAt - 1_000);
  s.extra.restartMs = restartMs;
  s.extra.statusesDuringOutage = duringOutage;
  s.extra.apiRecoveredAfterMs = recoveredMs;
  s.extra.probes = probes;
  const report = await s.settle(OUTAGE_MS + restartMs);
  expect(api?.alive()).toBe(true);
  expect(s.h.api()).toBe(api);
  expect(duringOutage["503"] ?? 0).toBeGreaterThan(0);
  expect(Object.keys(duringOutage).filter((k) => k !== "503")).toEqual([]);
  expect(report.status500).toBe(0);
  expect(s.h.liveWorkers()).toHaveLength(3);
  expect(report.violations).toEqual([]);
});
