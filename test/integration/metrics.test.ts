import { nextArmFence } from "../../src/db/identities.repo.js";
import type { EventEmitter } from "node:events";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMetrics } from "../../src/metrics/metrics.js";
import type { MetricsServer } from "../../src/metrics/server.js";
import { createRedis, createWakeupQueues } from "../../src/queue/wakeup-queues.js";
import { type RunningApi, startApi } from "../../src/runtime/api-process.js";
import type { RotorEventMap } from "../../src/services/events.js";
import { reconcile } from "../../src/services/reconcile.service.js";
import {
  startWorkerMetrics,
  startWorkerRuntime,
  type WorkerRuntime,
} from "../../src/runtime/worker-process.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";
import { createTestEnv, freePort, nextEvent, type TestEnv } from "../helpers/env.js";

/**
 * The metrics follow the rotor's events one to one, so each counter is checked against the
 * events this process emitted; the gauges are read from Redis and Postgres on scrape.
 */

const TOKEN = "test-token-0123456789abcdef";
type RotationEvent = RotorEventMap["rotation"][0] & { startedAt?: number };
type DeletionEvent = RotorEventMap["deletion"][0];
type FailureEvent = RotorEventMap["wake-failed"][0];

let env: TestEnv;
let api: RunningApi;
let runtime: WorkerRuntime;
let metricsServer: MetricsServer | undefined;
const rotations: RotationEvent[] = [];
const deletions: DeletionEvent[] = [];
const failures: FailureEvent[] = [];

beforeAll(async () => {
  env = await createTestEnv({
    PORT: "0",
    HOST: "127.0.0.1",
    API_TOKEN: TOKEN,
    METRICS_PORT: String(await freePort()),
    ROTATION_INTERVAL: "30d",
    WELCOME_ROTATION_DELAY: "0",
    DELETION_GRACE: "0",
    WORKER_LOCK_DURATION: "2s",
    WORKER_STALLED_INTERVAL: "1s",
  });
  const { events } = env.ctx.rotor;
  events.on("rotation", (e) => rotations.push(e));
  events.on("deletion", (e) => deletions.push(e));
  events.on("wake-failed", (e) => failures.push(e));
  metricsServer = await startWorkerMetrics(env.ctx);
  runtime = startWorkerRuntime(env.ctx, ALL_HANDLERS);
  await runtime.startupReconcile;
  api = await startApi(env.ctx);
});

afterAll(async () => {
  await api?.close();
  await runtime?.close();
  await metricsServer?.close();
  await env?.cleanup();
});

/** Parses the text exposition format into `name{labels}` -> value. */
function parse(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const cut = line.lastIndexOf(" ");
    samples.set(line.slice(0, cut), Number(line.slice(cut + 1)));
  }
  return samples;
}

async function scrapeWorker(): Promise<Map<string, number>> {
  const res = await fetch(`http://127.0.0.1:${metricsServer?.port}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
  return parse(await res.text());
}

const call = async (method: string, path: string, body?: unknown) => {
  const res = await fetch(`${api.address}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${TOKEN}`,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    body: body === undefined ? null : JSON.stringify(body),
  });
  expect(res.status).toBeLessThan(300);
  return res.json() as Promise<Record<string, unknown>>;
};

const rotated = (id: string) =>
  nextEvent<RotationEvent>(
    env.ctx.rotor.events,
    "rotation",
    (e) => e.identityId === id && e.outcome === "rotated",
  );
const deleted = (id: string) =>
  nextEvent<DeletionEvent>(
    env.ctx.rotor.events,
    "deletion",
    (e) => e.identityId === id && e.deleted > 0,
  );
const count = (events: RotationEvent[], outcome: string) =>
  events.filter((e) => e.outcome === outcome).length;

describe("metrics", () => {
  it("counts welcomes, rotations and deletions, with lateness; gauges read on scrape", async () => {
    const t0 = Date.now();
    await call("PUT", "/v1/identities/bob"); // never rotated: the oldest current key package
    const t1 = Date.now();
    await call("PUT", "/v1/identities/alice");
    await call("PUT", "/v1/identities/carol");

    const aliceDone = Promise.all([rotated("alice"), deleted("alice")]);
    const batch = await call("POST", "/v1/welcomes", { identityIds: ["alice", "nobody"] });
    expect(batch.notFound).toEqual(["nobody"]);
    await aliceDone;
    const carolDone = Promise.all([rotated("carol"), deleted("carol")]);
    await call("POST", "/v1/identities/carol/welcome");
    await carolDone;

    const s0 = Date.now();
    const m = await scrapeWorker();
    const s1 = Date.now();

    expect(m.get("kp_rotor_welcomes_total")).toBe(2);
    for (const outcome of ["rotated", "not-due", "gone", "fenced"]) {
      expect(m.get(`kp_rotor_rotations_total{outcome="${outcome}",shard="0"}`)).toBe(
        count(rotations, outcome),
      );
    }
    expect(count(rotations, "rotated")).toBeGreaterThanOrEqual(2);
    expect(m.get('kp_rotor_stale_wakeups_total{shard="0"}')).toBe(count(rotations, "not-due"));
    expect(m.get('kp_rotor_deletions_total{shard="0"}')).toBe(
      deletions.reduce((n, e) => n + e.deleted, 0),
    );

    const late = rotations.filter((e) => e.outcome === "rotated" && e.deadline !== undefined);
    expect(m.get('kp_rotor_wakeup_lateness_seconds_count{shard="0"}')).toBe(late.length);
    // A wake-up may start a little before its deadline by this process's clock and still find
    // it due by Postgres' (the lock wait in between); the histogram counts that as 0 s late.
    const lateSum = late.reduce(
      (s, e) => s + Math.max(0, (e.startedAt ?? e.at) - (e.deadline ?? 0)),
      0,
    );
    expect(m.get('kp_rotor_wakeup_lateness_seconds_sum{shard="0"}')).toBeCloseTo(lateSum / 1000, 6);
    expect(m.get('kp_rotor_wakeup_lateness_seconds_bucket{le="+Inf",shard="0"}')).toBe(late.length);
    expect(m.get('kp_rotor_wakeup_lateness_seconds_bucket{le="0.001",shard="0"}')).toBeDefined();
    expect(m.get('kp_rotor_wakeup_lateness_seconds_bucket{le="600",shard="0"}')).toBe(late.length);
    expect(m.get("kp_rotor_rotation_duration_seconds_count")).toBe(
      rotations.filter((e) => e.outcome === "rotated" && e.startedAt !== undefined).length,
    );

    // Gauges: three identities each wait for their next rotation; nothing else is queued.
    expect(m.get('kp_rotor_queue_jobs{queue="rotation",shard="0",state="delayed"}')).toBe(3);
    for (const state of ["active", "waiting", "failed", "completed"]) {
      expect(m.get(`kp_rotor_queue_jobs{queue="rotation",shard="0",state="${state}"}`)).toBe(0);
      expect(m.get(`kp_rotor_queue_jobs{queue="deletion",shard="0",state="${state}"}`)).toBe(0);
    }
    // bob's key package was created between t0 and t1, and read between s0 and s1.
    const age = m.get("kp_rotor_oldest_current_key_package_age_seconds") ?? Number.NaN;
    expect(age).toBeGreaterThanOrEqual((s0 - t1) / 1000 - 0.001);
    expect(age).toBeLessThanOrEqual((s1 - t0) / 1000 + 0.001);

    // Default process metrics are there too.
    expect(m.has("process_cpu_user_seconds_total")).toBe(true);
  });

  it("counts stale wake-ups and failed wake-ups", async () => {
    const { rotor } = env.ctx;
    // A wake-up that fires before its deadline (as after a crash): it finds nothing due.
    const stale = nextEvent<RotationEvent>(
      rotor.events,
      "rotation",
      (e) => e.identityId === "bob" && e.outcome === "not-due",
    );
    await rotor.timers.apply(
      "rotation",
      "bob",
      { kind: "reschedule", fireAt: Date.now() },
      await nextArmFence(rotor.db),
    );
    await stale;

    // Key generation fails once for carol, then works again: one failure, then a rotation.
    const generate = rotor.keys.generate;
    rotor.keys = {
      ...rotor.keys,
      generate: async () => {
        rotor.keys = { ...rotor.keys, generate };
        throw new Error("injected key generation failure");
      },
    };
    const failed = nextEvent<FailureEvent>(
      rotor.events,
      "wake-failed",
      (e) => e.identityId === "carol",
    );
    const recovered = rotated("carol");
    await call("POST", "/v1/identities/carol/rotate");
    await failed;
    await recovered;

    const m = await scrapeWorker();
    expect(m.get('kp_rotor_stale_wakeups_total{shard="0"}')).toBe(count(rotations, "not-due"));
    expect(count(rotations, "not-due")).toBeGreaterThanOrEqual(1);
    for (const kind of ["rotation", "deletion"]) {
      expect(m.get(`kp_rotor_wake_failures_total{kind="${kind}",shard="0"}`)).toBe(
        failures.filter((e) => e.kind === kind).length,
      );
    }
    expect(m.get('kp_rotor_wake_failures_total{kind="rotation",shard="0"}')).toBeGreaterThanOrEqual(
      1,
    );
  });

  it("counts reconcile repairs by kind and action", async () => {
    const { rotor } = env.ctx;
    const before = (await scrapeWorker()).get(
      'kp_rotor_reconcile_repairs_total{kind="rotation",action="add"}',
    );
    // Lose bob's rotation wake-up, as a Redis without persistence would.
    await rotor.timers.apply("rotation", "bob", { kind: "remove" }, await nextArmFence(rotor.db));
    const events = rotor.events as unknown as EventEmitter;
    let emitted = false;
    const seen = () => {
      emitted = true;
    };
    events.on("reconcile", seen);
    const report = await reconcile(rotor);
    events.off("reconcile", seen);
    // Until reconcile() emits its report, hand it over as it will.
    if (!emitted) events.emit("reconcile", report);
    expect(report.repairs.rotation.add).toBe(1);

    const m = await scrapeWorker();
    expect(m.get('kp_rotor_reconcile_repairs_total{kind="rotation",action="add"}')).toBe(
      (before ?? 0) + 1,
    );
  });

  it("serves /metrics on the API behind the token, and nothing else on the worker port", async () => {
    const open = await fetch(`${api.address}/metrics`);
    expect(open.status).toBe(401);
    await open.body?.cancel();
    const res = await fetch(`${api.address}/metrics`, {
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain/);
    // The API and the worker of one process share one registry.
    expect(parse(await res.text()).get("kp_rotor_welcomes_total")).toBe(2);

    const other = await fetch(`http://127.0.0.1:${metricsServer?.port}/`);
    expect(other.status).toBe(404);
    await other.body?.cancel();
  });

  it("a scrape survives Redis being unreachable: the queue gauge is left out and counted", async () => {
    // Queues on a Redis that is not there (nothing listens on a free port).
    const redis = createRedis(`redis://127.0.0.1:${await freePort()}`);
    redis.on("error", () => {});
    const timers = createWakeupQueues(redis, "kp-metrics-down");
    for (const queue of Object.values(timers.queues)) queue.on("error", () => {});
    const metrics = createMetrics(env.ctx.rotor, timers);
    try {
      const first = parse((await metrics.scrape()).body);
      expect([...first.keys()].some((k) => k.startsWith("kp_rotor_queue_jobs{"))).toBe(false);
      expect(first.has("kp_rotor_oldest_current_key_package_age_seconds")).toBe(true);
      // Collectors run while the scrape is written: their errors show from the next scrape on.
      const second = parse((await metrics.scrape()).body);
      expect(
        second.get('kp_rotor_metrics_collect_errors_total{collector="queue_jobs"}'),
      ).toBeGreaterThanOrEqual(1);
    } finally {
      metrics.close();
      redis.disconnect();
    }
  });
});
