/**
 * Scenario 5: Redis, then Postgres, frozen with SIGSTOP for a few seconds mid-request and thawed
 * with SIGCONT (a slow network, a stop-the-world pause): connections stay open, requests and
 * lock renewals hang, worker locks (1 s) lapse and stalled jobs run twice.
 */
import { afterEach, expect, it } from "vitest";
import { sleep } from "./harness.js";
import { Scenario } from "./scenario.js";

let scenario: Scenario | undefined;
afterEach(async (ctx) => {
  await scenario?.dispose(ctx.task.result?.state === "fail");
  scenario = undefined;
});

const PAUSE_MS = 3_000;

it("Redis and Postgres paused (SIGSTOP/SIGCONT) mid-request: slow, never wrong", async () => {
  scenario = await Scenario.start({ name: "5 SIGSTOP Redis / Postgres", identities: 100, workers: 3 });
  const s = scenario;
  s.startLoad();
  await sleep(6_000);
  const answeredLate: Record<string, number> = {};
  for (const target of ["redis", "postgres", "redis", "postgres", "redis", "postgres"] as const) {
    const pausedAt = Date.now();
    if (target === "redis") s.h.redis.pause();
    else await s.h.pg.pause();
    s.faults++;
    await sleep(PAUSE_MS * (0.5 + Math.random()));
    if (target === "redis") s.h.redis.resume();
    else await s.h.pg.resume();
    const resumedAt = Date.now();
    await sleep(4_000);
    // Requests sent while frozen: answered once thawed (2xx) or refused (503), never 500.
    for (const r of s.recorder.requests) {
      if (r.sentAt >= pausedAt && r.sentAt < resumedAt) {
        const key = `${target}:${r.status}`;
        answeredLate[key] = (answeredLate[key] ?? 0) + 1;
      }
    }
  }
  s.extra.requestsSentWhileFrozen = answeredLate;
  const report = await s.settle(PAUSE_MS * 1.5);
  expect(report.status500).toBe(0);
  expect(s.h.liveWorkers()).toHaveLength(3);
  expect(report.violations).toEqual([]);
});
