/**
 * Scenario: a rolling restart of the three workers under the steady welcome load, as a deployment
 * rolls out a new version with at most one worker unavailable: each worker in turn is sent SIGTERM
 * (it stops taking wake-ups, drains the active ones for at most WORKER_LOCK_DURATION and exits),
 * a replacement is started at once, and the next one goes only once the replacement runs. No
 * rotation may be lost or doubled; lateness (rotation minus acknowledged deadline) is reported
 * for the welcomes due during the roll and for those due outside it.
 */
import { appendFileSync } from "node:fs";
import { afterEach, expect, it } from "vitest";
import { parseDuration } from "../../src/core/duration.js";
import { judgeWelcomes, readAudit } from "./checks.js";
import { type Service, sleep, waitFor } from "./harness.js";
import { type KillPoint, runningWorkers, waitForBusy } from "./kills.js";
import { Scenario, SUMMARY_FILE } from "./scenario.js";

let scenario: Scenario | undefined;
afterEach(async (ctx) => {
  await scenario?.dispose(ctx.task.result?.state === "fail");
  scenario = undefined;
});

interface Step {
  worker: string;
  replacement: string;
  /** What the worker was doing when SIGTERM came (it is sent mid-transaction when possible). */
  point: KillPoint;
  /** SIGTERM to exit. */
  drainMs: number;
  exitCode: number | null;
  signal: string | null;
  /** SIGTERM to the replacement running its BullMQ workers. */
  replacedMs: number;
}

const percentile = (sorted: number[], p: number) =>
  sorted.length === 0
    ? null
    : (sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] as number);

function summary(lateness: number[]) {
  const sorted = [...lateness].sort((a, b) => a - b);
  return {
    welcomes: sorted.length,
    p50Ms: percentile(sorted, 0.5),
    p99Ms: percentile(sorted, 0.99),
    maxMs: sorted.at(-1) ?? null,
  };
}

/** Waits until `worker` holds its Redis connections: its BullMQ workers are taking wake-ups. */
async function untilRunning(s: Scenario, worker: Service): Promise<void> {
  await waitFor(
    async () => {
      if (!worker.alive()) throw new Error(`${worker.name} exited; see ${s.h.logDir}`);
      const pid = worker.child.pid as number;
      return (await runningWorkers([pid], s.h.redis.port)).has(pid);
    },
    60_000,
    `${worker.name} to run`,
    100,
  );
}

it("rolling restart of three workers under load: no rotation lost or doubled", async () => {
  scenario = await Scenario.start({ name: "rolling restart x3", identities: 100, workers: 3 });
  const s = scenario;
  const originals = s.h.liveWorkers();
  expect(originals).toHaveLength(3);
  for (const worker of originals) await untilRunning(s, worker);
  s.startLoad();
  await sleep(8_000);

  const rollStart = Date.now();
  const steps: Step[] = [];
  for (const worker of originals) {
    expect(worker.alive()).toBe(true);
    // Up to 1.5 s for the worker to be inside a transaction, so the drain has work to finish.
    const point = await waitForBusy(s.h.sql, worker.child.pid as number, s.h.pg.port, 1_500);
    const termAt = Date.now();
    const exited = worker.kill("SIGTERM").then(() => Date.now());
    s.faults++;
    // Replaced at once, while the old one drains (one worker unavailable at a time).
    const replacement = s.h.startWorker();
    const exitedAt = await exited;
    await untilRunning(s, replacement);
    steps.push({
      worker: worker.name,
      replacement: replacement.name,
      point,
      drainMs: exitedAt - termAt,
      exitCode: worker.child.exitCode,
      signal: worker.child.signalCode,
      replacedMs: Date.now() - termAt,
    });
    await sleep(2_000);
  }
  const rollEnd = Date.now();
  await sleep(8_000);

  s.extra.rollMs = rollEnd - rollStart;
  s.extra.steps = steps;
  const report = await s.settle(0);

  // Lateness of the welcomes whose deadline fell within the roll, and of the others.
  const allowanceMs = report.extra.allowanceMs as number;
  const welcomes = judgeWelcomes(s.recorder.acks, await readAudit(s.h.sql), {
    allowanceMs,
    welcomeDelayMs: parseDuration(s.env.WELCOME_ROTATION_DELAY ?? "") as number,
    now: Date.now(),
  });
  const during = welcomes.servedBy.filter((w) => w.deadline >= rollStart && w.deadline <= rollEnd);
  const outside = welcomes.servedBy.filter((w) => w.deadline < rollStart || w.deadline > rollEnd);
  const lateness = {
    scenario: report.scenario,
    rollMs: rollEnd - rollStart,
    steps,
    duringRoll: summary(during.map((w) => w.lateMs)),
    outsideRoll: summary(outside.map((w) => w.lateMs)),
  };
  appendFileSync(SUMMARY_FILE, `${JSON.stringify({ lateness })}\n`);
  console.log(`[faults] ${report.scenario}: lateness\n${JSON.stringify(lateness, null, 2)}`);

  // Every worker stopped by itself within its grace period (close-with-grace exits 0), none crashed.
  expect(steps.map((step) => [step.exitCode, step.signal])).toEqual([
    [0, null],
    [0, null],
    [0, null],
  ]);
  expect(s.h.services.filter((sv) => sv.crashed()).map((sv) => sv.name)).toEqual([]);
  expect(s.h.liveWorkers()).toHaveLength(3);
  expect(during.length).toBeGreaterThan(0);
  expect(report.rotations).toBeGreaterThan(0);
  expect(report.lost).toBe(0);
  expect(report.duplicated).toBe(0);
  expect(report.status500).toBe(0);
  expect(report.violations).toEqual([]);
});
