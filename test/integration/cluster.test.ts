/**
 * The service on a Redis Cluster (issue 14): three primaries of Debian's redis-server started by
 * scripts/redis-cluster.sh on free ports for this file, QUEUE_SHARDS=3. WakeupQueues, welcomes,
 * reconcile, the per-shard census, a primary that loses its data, and QUEUE_SHARDS 1 -> 4.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.js";
import type { Context } from "../../src/context.js";
import { createMetrics } from "../../src/metrics/metrics.js";
import { shardOf, shardPrefix } from "../../src/queue/layout.js";
import { jobIdFor, scanTargets } from "../../src/queue/wakeup-queues.js";
import * as identities from "../../src/services/identities.service.js";
import { reconcile } from "../../src/services/reconcile.service.js";
import { runWatchdog } from "../../src/services/watchdog.service.js";
import { startWorkerRuntime, type WorkerRuntime } from "../../src/runtime/worker-process.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";
import { createTestEnv, nextEvent, type TestEnv } from "../helpers/env.js";
import { startTestCluster, type TestCluster } from "../helpers/redis-cluster.js";
import { checkReshardOneToFour } from "../helpers/reshard-check.js";

type RotationEvent = { identityId: string; outcome: string; at: number; deadline?: number };
type DeletionEvent = { identityId: string; deleted: number; at: number };

let cluster: TestCluster;
let env: TestEnv | undefined;
const runtimes: WorkerRuntime[] = [];

beforeAll(async () => {
  cluster = await startTestCluster();
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
});

afterEach(async () => {
  for (const runtime of runtimes.splice(0)) await runtime.close();
  await env?.cleanup();
  env = undefined;
});

async function setup(vars: Record<string, string> = {}) {
  env = await createTestEnv({
    REDIS_URL: cluster.url,
    REDIS_CLUSTER_NODES: cluster.nodes,
    QUEUE_SHARDS: "3",
    WORKER_LOCK_DURATION: "2s",
    WORKER_STALLED_INTERVAL: "1s",
    ...vars,
  });
  return env;
}

function startWorkers(ctx: Context): WorkerRuntime {
  const runtime = startWorkerRuntime(ctx, ALL_HANDLERS);
  runtimes.push(runtime);
  return runtime;
}

/** `n` ids for each of `shards` shards. */
function idsPerShard(tag: string, shards: number, n: number): string[] {
  const ids: string[] = [];
  const per = new Array<number>(shards).fill(0);
  for (let i = 0; ids.length < shards * n; i++) {
    const id = `${tag}-${i}`;
    const shard = shardOf(id, shards);
    if ((per[shard] ?? 0) < n) {
      per[shard] = (per[shard] ?? 0) + 1;
      ids.push(id);
    }
  }
  return ids;
}

const rotated = (ctx: Context, id: string) =>
  nextEvent<RotationEvent>(
    ctx.rotor.events,
    "rotation",
    (e) => e.identityId === id && e.outcome === "rotated",
  );

describe("on a Redis Cluster with QUEUE_SHARDS=3", () => {
  it("each shard's keys share one slot, the shards' slots differ, and every key is where its shard says", async () => {
    const { ctx, config } = await setup();
    const ids = idsPerShard("slot", 3, 3);
    for (const id of ids) await identities.register(ctx.rotor, id);
    await reconcile(ctx.rotor);
    const slotsByShard = new Map<string, Set<number>>();
    for (const node of scanTargets(ctx.redis)) {
      const keys = await node.keys(`{${config.queuePrefix}*`);
      for (const key of keys) {
        const tag = /^\{[^}]*\}/.exec(key)?.[0] as string;
        const slot = Number(await node.call("cluster", "keyslot", key));
        slotsByShard.set(tag, new Set([...(slotsByShard.get(tag) ?? []), slot]));
      }
    }
    const tags = [0, 1, 2].map((s) => shardPrefix(ctx.rotor.timers.layout, s));
    for (const tag of tags) expect(slotsByShard.get(tag)?.size, tag).toBe(1);
    const slots = tags.map((tag) => [...(slotsByShard.get(tag) ?? [])][0]);
    expect(new Set(slots).size).toBe(3);
    for (const id of ids) {
      const queue = ctx.rotor.timers.shardQueues[shardOf(id, 3)]?.rotation;
      expect(await queue?.getJobState(jobIdFor(id)), id).toBe("delayed");
    }
  });

  it("Bull Board lists every shard's queues and the queue gauge carries the shard", async () => {
    const { ctx } = await setup({ ROTATION_INTERVAL: "30d" });
    const ids = idsPerShard("board", 3, 2);
    for (const id of ids) await identities.register(ctx.rotor, id);
    const app = await buildApp({
      rotor: ctx.rotor,
      apiToken: undefined,
      checkReady: () => ctx.checkReady(),
      board: { user: "ops", password: "correct-horse-battery", readOnly: true },
    });
    try {
      const res = await app.inject({
        method: "GET",
        url: "/admin/queues/api/queues",
        headers: {
          authorization: `Basic ${Buffer.from("ops:correct-horse-battery").toString("base64")}`,
        },
      });
      expect(res.statusCode).toBe(200);
      const queues = res.json().queues as { name: string; counts: { delayed: number } }[];
      expect(queues.map((q) => [q.name, q.counts.delayed]).sort()).toEqual([
        ["shard0-deletion", 0],
        ["shard0-rotation", 2],
        ["shard1-deletion", 0],
        ["shard1-rotation", 2],
        ["shard2-deletion", 0],
        ["shard2-rotation", 2],
      ]);
    } finally {
      await app.close();
    }
    const metrics = createMetrics(ctx.rotor, ctx.rotor.timers);
    try {
      const { body } = await metrics.scrape();
      for (const shard of [0, 1, 2]) {
        expect(body).toContain(
          `kp_rotor_queue_jobs{queue="rotation",shard="${shard}",state="delayed"} 2`,
        );
        expect(body).toContain(
          `kp_rotor_queue_jobs{queue="deletion",shard="${shard}",state="delayed"} 0`,
        );
      }
      // The counters follow the events, labelled with the identity's shard.
      const inShard2 = ids.find((id) => shardOf(id, 3) === 2) as string;
      const at = Date.now();
      ctx.rotor.events.emit("rotation", {
        identityId: inShard2,
        outcome: "rotated",
        at,
        startedAt: at,
        deadline: at - 20,
      });
      const after = (await metrics.scrape()).body;
      expect(after).toContain('kp_rotor_rotations_total{outcome="rotated",shard="2"} 1');
      expect(after).toContain('kp_rotor_rotations_total{outcome="rotated",shard="0"} 0');
      expect(after).toContain('kp_rotor_wakeup_lateness_seconds_count{shard="2"} 1');
      expect(after).toContain('kp_rotor_wakeup_lateness_seconds_bucket{le="0.025",shard="2"} 1');
    } finally {
      metrics.close();
    }
  });

  it("rotates at each deadline and deletes after the grace, in every shard", async () => {
    const { ctx } = await setup({ ROTATION_INTERVAL: "1500ms", DELETION_GRACE: "700ms" });
    startWorkers(ctx);
    const ids = idsPerShard("rot", 3, 1);
    const rotations = ids.map((id) => rotated(ctx, id));
    const deletions = ids.map((id) =>
      nextEvent<DeletionEvent>(
        ctx.rotor.events,
        "deletion",
        (e) => e.identityId === id && e.deleted > 0,
      ),
    );
    const registered = await Promise.all(ids.map((id) => identities.register(ctx.rotor, id)));
    const events = await Promise.all(rotations);
    events.forEach((event, i) => {
      expect(event.deadline).toBe(registered[i]?.rotationDeadline);
      expect(event.at).toBeGreaterThanOrEqual(registered[i]?.rotationDeadline ?? Infinity);
    });
    const deleted = await Promise.all(deletions);
    for (const [i, d] of deleted.entries()) {
      expect(d.at).toBeGreaterThanOrEqual((events[i]?.at ?? Infinity) + 700);
    }
  });

  it("a welcome batch across shards pulls every rotation in", async () => {
    const { ctx } = await setup({ ROTATION_INTERVAL: "30d", WELCOME_ROTATION_DELAY: "300ms" });
    startWorkers(ctx);
    const ids = idsPerShard("wel", 3, 2);
    for (const id of ids) await identities.register(ctx.rotor, id);
    const rotations = ids.map((id) => rotated(ctx, id));
    const { results, notFound } = await identities.pullInMany(ctx.rotor, [...ids, "nobody"], 300);
    expect(notFound).toEqual(["nobody"]);
    const deadline = results[0]?.rotationDeadline;
    const events = await Promise.all(rotations);
    for (const event of events) {
      expect(event.deadline).toBe(deadline);
      expect(event.at).toBeGreaterThanOrEqual(deadline ?? Infinity);
    }
  });

  it("the census is compared per shard: a job lost in one shard is named and repaired", async () => {
    const { ctx } = await setup({ ROTATION_INTERVAL: "30d" });
    const ids = idsPerShard("cen", 3, 2);
    for (const id of ids) await identities.register(ctx.rotor, id);
    const options = { overdueGraceMs: 600_000, owner: "test", censusRecheckMs: 10 };
    // No reconcile has run yet: every shard lacks its mark, and the reason names them.
    const first = await runWatchdog(ctx.rotor, options);
    expect(first.reason).toBe("Redis has no reconcile mark (shards 0, 1, 2 of 3)");
    expect(first.reconciled).toBe(true);
    const lost = ids.find((id) => shardOf(id, 3) === 1) as string;
    await ctx.rotor.timers.shardQueues[1]?.rotation.remove(jobIdFor(lost));
    const report = await runWatchdog(ctx.rotor, options);
    expect(report.reason).toMatch(/rotation shard 1 1 in Redis, 2 expected/);
    expect(report.reconciled).toBe(true);
    const [view] = await ctx.rotor.timers.view("rotation", [lost]);
    expect(view?.state).toBe("delayed");
    expect((await runWatchdog(ctx.rotor, options)).reason).toBeUndefined();
  });

  it("a primary that loses its data: the workers find the missing mark and re-arm every wake-up", async () => {
    const { ctx } = await setup({ ROTATION_INTERVAL: "30d", RECONCILE_CHECK_INTERVAL: "300ms" });
    const ids = idsPerShard("loss", 3, 4);
    const registered = new Map<string, number>();
    for (const id of ids)
      registered.set(id, (await identities.register(ctx.rotor, id)).rotationDeadline);
    const runtime = startWorkers(ctx);
    await runtime.startupReconcile;
    // The primary that serves shard 0; other shards may live there too.
    const port = await cluster.primaryOf(shardPrefix(ctx.rotor.timers.layout, 0));
    const primaries = await Promise.all(
      [0, 1, 2].map((s) => cluster.primaryOf(shardPrefix(ctx.rotor.timers.layout, s))),
    );
    const lost = ids.filter((id) => primaries[shardOf(id, 3)] === port);
    expect(lost.length).toBeGreaterThanOrEqual(4);
    const healed = nextEvent<{ repairs: { rotation: { add: number } } }>(
      ctx.rotor.events,
      "reconcile",
      () => true,
      60_000,
    );
    await cluster.wipe(port);
    // The heal re-added exactly the wake-ups that primary held, and nothing else.
    expect((await healed).repairs.rotation.add).toBe(lost.length);
    for (const id of ids) {
      const [view] = await ctx.rotor.timers.view("rotation", [id]);
      expect(view, id).toEqual({ state: "delayed", fireAt: registered.get(id) });
    }
    expect(await ctx.rotor.timers.unreconciledShards()).toEqual([]);
    const report = await runWatchdog(ctx.rotor, {
      overdueGraceMs: 600_000,
      owner: "test",
      censusRecheckMs: 10,
    });
    expect(report.reason).toBeUndefined();
  });
});

it("QUEUE_SHARDS 1 -> 4 on the cluster moves every wake-up once", async () => {
  const test = await setup({ QUEUE_SHARDS: "1", ROTATION_INTERVAL: "30d", DELETION_GRACE: "1d" });
  await checkReshardOneToFour(test, 24);
});

// It takes the whole cluster down, then brings it back empty.
it("with every node down, an API request answers 503 DEPENDENCY_UNAVAILABLE instead of waiting", async () => {
  const { ctx } = await setup({ ROTATION_INTERVAL: "30d" });
  await identities.register(ctx.rotor, "outage-1");
  const app = await buildApp({
    rotor: ctx.rotor,
    apiToken: undefined,
    checkReady: () => ctx.checkReady(),
  });
  try {
    expect((await app.inject({ method: "GET", url: "/v1/identities/outage-1" })).statusCode).toBe(
      200,
    );
    cluster.killAll();
    // Until the client notices the nodes are gone, a command may still be sent and time out
    // (5 s); after that, the Cluster is not ready and refuses at once. Either way: 503.
    for (const url of ["/v1/identities/outage-1", "/v1/identities/outage-1/welcome"]) {
      const method = url.endsWith("welcome") ? "POST" : "GET";
      const res = await app.inject({ method, url });
      expect(res.statusCode, `${method} ${url}`).toBe(503);
      expect(res.json().error).toBe("DEPENDENCY_UNAVAILABLE");
    }
    const ready = await app.inject({ method: "GET", url: "/readyz" });
    expect(ready.statusCode).toBe(503);
    expect(ready.json().redis).toBe(false);
  } finally {
    await app.close();
    // Back up (empty), so that the file's cleanup can reach it.
    await Promise.all(cluster.ports.map((port) => cluster.wipe(port)));
  }
}, 120_000);
