/**
 * Scenario 3: Postgres restarted under load (pg_ctl restart -m fast), then unreachable for 30 s
 * (pg_ctl stop, 30 s, start). Meanwhile the API answers 503, never 500, and recovers without a
 * restart; the workers retry with backoff and recover.
 *
 * The scenario runs once (beforeAll). A process that exits on its own is restarted, as a
 * supervisor would, so the invariants are still judged; its crash is reported by its own test.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import { sleep, waitFor } from "./harness.js";
import { pick } from "./load.js";
import { type ProbeVerdict, type Report, Scenario } from "./scenario.js";

const OUTAGE_MS = Number(process.env.FAULTS_OUTAGE_MS ?? 30_000);

let scenario: Scenario | undefined;
let failed = false;
let report: Report;
let probes: ProbeVerdict;
let duringOutage: Record<string, number>;
let apiRecovered = false;
const crashed: string[] = [];

beforeAll(async () => {
  try {
    scenario = await Scenario.start({
      name: "3 Postgres restart + 30 s outage",
      identities: 100,
      workers: 3,
      probes: 5,
    });
    const s = scenario;
    s.startLoad();
    await sleep(8_000);

    const restartAt = Date.now();
    await s.h.pg.restart();
    s.faults++;
    const restartMs = Date.now() - restartAt;
    await sleep(10_000);
    crashed.push(...(await s.restartCrashed()));

    let downAt = Date.now();
    const probeRecords = await s.probeWhile(async () => {
      await s.h.pg.stop("fast");
      // pg_ctl stop -m fast can take seconds under load (it waits for a checkpoint); the outage
      // starts when it returns.
      downAt = Date.now();
      s.faults++;
      await sleep(OUTAGE_MS);
    });
    // Postgres may accept connections before pg_ctl start returns: the outage ends here.
    const startingAt = Date.now();
    await s.h.pg.start();
    const upAt = Date.now();
    crashed.push(...(await s.restartCrashed()));
    const api = s.h.api();
    // The API answers again; if it survived, without a restart.
    await waitFor(
      async () => (await s.recorder.welcome(pick(s.ids))).status === 202,
      30_000,
      "the API to accept welcomes again",
      250,
    );
    apiRecovered = api !== undefined && s.h.api() === api;
    s.extra.apiRecoveredAfterMs = Date.now() - upAt;
    await sleep(10_000);
    crashed.push(...(await s.restartCrashed()));
    probes = await s.judgeProbes(probeRecords);

    // Requests sent and answered while Postgres was down (one sent then may wait for a connection
    // and succeed once Postgres is back: that 202 is a real commit, not an outage answer).
    duringOutage = {};
    for (const r of s.recorder.requests) {
      if (r.sentAt < downAt + 1_000 || r.sentAt > startingAt - 1_000) continue;
      if (r.status !== 0 && r.answeredAt >= startingAt) continue;
      const key = String(r.status);
      duringOutage[key] = (duringOutage[key] ?? 0) + 1;
    }
    s.extra.startMs = upAt - startingAt;
    s.extra.restartMs = restartMs;
    s.extra.statusesDuringOutage = duringOutage;
    s.extra.probes = probes;
    s.extra.crashedAndRestarted = crashed;
    report = await s.settle(OUTAGE_MS + restartMs);
  } catch (err) {
    failed = true;
    throw err;
  }
});

afterAll(async () => {
  await scenario?.dispose(failed || (report?.violations.length ?? 1) > 0 || crashed.length > 0);
});

it("Postgres restarted, then down for 30 s, under load: 503 meanwhile, nothing lost", () => {
  expect(duringOutage["503"] ?? 0).toBeGreaterThan(0);
  // 503, or no answer within the client's 15 s (status 0, also not acknowledged; counted in the
  // report); never a 2xx or a 500 while Postgres is down.
  expect(Object.keys(duringOutage).filter((k) => k !== "503" && k !== "0")).toEqual([]);
  expect(report.status500).toBe(0);
  // A 503 during a Postgres outage can follow a commit whose answer was lost (ambiguous), so
  // probe traces are reported, not asserted; with pg_ctl stop -m fast none is expected.
  expect(probes.refusedOnly).toBeGreaterThan(0);
  expect(report.violations).toEqual([]);
});

// Postgres restarts can kill kp-rotor processes: postgres@3.4.9 schedules small writes with
// setImmediate and `closed()` nulls the socket meanwhile, so `nextWrite` throws
// "Cannot read properties of null (reading 'write')" from an Immediate: an uncaught exception,
// which the process's close-with-grace handler turns into a shutdown (porsager/postgres #1154,
// #1208; fixes proposed in #1168, #1209). A race: it does not happen on every run.
it("no worker or API process exits on its own, and the API recovers without a restart", () => {
  expect(crashed).toEqual([]);
  expect(apiRecovered).toBe(true);
});
