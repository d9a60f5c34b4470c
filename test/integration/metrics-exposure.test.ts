import { networkInterfaces } from "node:os";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMetrics } from "../../src/metrics/metrics.js";
import { startWorkerMetrics } from "../../src/runtime/worker-process.js";
import { createTestEnv, freePort, type TestEnv } from "../helpers/env.js";

let env: TestEnv;

beforeAll(async () => {
  env = await createTestEnv({ METRICS_PORT: String(await freePort()) });
});

afterAll(async () => {
  await env?.cleanup();
});

describe("metrics exposure", () => {
  it("a scrape runs no query: gauges are read at most once per max age", async () => {
    let reads = 0;
    const queues = Object.fromEntries(
      Object.entries(env.ctx.rotor.timers.queues).map(([name, queue]) => [
        name,
        {
          getJobCounts: () => {
            reads++;
            return queue.getJobCounts();
          },
        },
      ]),
    );
    const queueCount = Object.keys(queues).length;
    const metrics = createMetrics(env.ctx.rotor, { shardQueues: [queues] } as never, {
      gaugeMaxAgeMs: 60_000,
    });
    try {
      const scrapes = await Promise.all(Array.from({ length: 50 }, () => metrics.scrape()));
      for (const { body } of scrapes) expect(body).toContain("kp_rotor_queue_jobs{");
      for (let i = 0; i < 50; i++) await metrics.scrape();
      expect(reads).toBe(queueCount);
    } finally {
      metrics.close();
    }
  });

  it("the metrics port listens on loopback only by default", async () => {
    expect(env.config.metricsHost).toBe("127.0.0.1");
    const server = await startWorkerMetrics(env.ctx);
    if (server === undefined) throw new Error("no metrics server");
    try {
      expect((await fetch(`http://127.0.0.1:${server.port}/metrics`)).status).toBe(200);
      const outside = Object.values(networkInterfaces())
        .flat()
        .find((i) => i?.family === "IPv4" && !i.internal)?.address;
      if (outside !== undefined) {
        await expect(fetch(`http://${outside}:${server.port}/metrics`)).rejects.toThrow();
      }
    } finally {
      await server.close();
    }
  });
});
