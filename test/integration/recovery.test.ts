import { nextArmFence } from "../../src/db/identities.repo.js";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { Redis } from "ioredis";
import { afterEach, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.js";
import type { Context } from "../../src/context.js";
import * as identities from "../../src/services/identities.service.js";
import { reconcile } from "../../src/services/reconcile.service.js";
import { runWatchdog } from "../../src/services/watchdog.service.js";
import { startWorkerRuntime, type WorkerRuntime } from "../../src/runtime/worker-process.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";
import { createTestEnv, nextEvent, startRedisServer, type TestEnv } from "../helpers/env.js";

type RotationEvent = { identityId: string; outcome: string; at: number; deadline?: number };

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(vars: Record<string, string>): Promise<TestEnv> {
  const env = await createTestEnv({
    WORKER_LOCK_DURATION: "1s",
    WORKER_STALLED_INTERVAL: "1s",
    ...vars,
  });
  cleanups.push(() => env.cleanup());
  return env;
}

function startWorkers(ctx: Context): WorkerRuntime {
  const runtime = startWorkerRuntime(ctx, ALL_HANDLERS);
  cleanups.push(() => runtime.close());
  return runtime;
}

describe("crashes and lost Redis data", () => {
  it("a worker SIGKILLed mid-rotation: another worker rotates once the job stalls", async () => {
    const env = await setup({ ROTATION_INTERVAL: "30d" });
    const { ctx } = env;
    await identities.register(ctx.rotor, "alice");
    const child = spawn(process.execPath, ["--import", "tsx", "test/helpers/hang-worker.ts"], {
      env: { ...process.env, ...env.env },
      stdio: ["ignore", "pipe", "inherit"],
    });
    cleanups.push(async () => {
      if (child.exitCode === null) child.kill("SIGKILL");
    });
    const lines = createInterface({ input: child.stdout });
    const seen = (text: string) =>
      new Promise<void>((resolve) => lines.on("line", (line) => line === text && resolve()));
    await seen("ready");
    const generating = seen("generating alice");
    const soon = await identities.rotateSoon(ctx.rotor, "alice");
    await generating;
    child.kill("SIGKILL");
    await once(child, "exit");

    const [view] = await ctx.rotor.timers.view("rotation", ["alice"]);
    expect(view).toEqual({ state: "active" });
    const rotation = nextEvent<RotationEvent>(
      ctx.rotor.events,
      "rotation",
      (e) => e.outcome === "rotated",
    );
    startWorkers(ctx);
    const event = await rotation;
    expect(event.deadline).toBe(soon.rotationDeadline);
    const status = await identities.status(ctx.rotor, "alice");
    expect(status.generation).toBe(2);
    expect(status.keyPackages.map((k) => [k.generation, k.current])).toEqual([
      [1, false],
      [2, true],
    ]);
    expect(status.wakeups.rotation).toEqual({
      state: "delayed",
      fireAt: status.nextRotationAt?.getTime(),
    });
  });

  it("Redis failing between the Postgres write and the wake-up: 503, and nothing acknowledged", async () => {
    const env = await setup({ ROTATION_INTERVAL: "30d" });
    const broken = await env.sibling();
    await identities.register(env.ctx.rotor, "bob");
    const before = await identities.status(env.ctx.rotor, "bob");
    const app = await buildApp({
      rotor: broken.rotor,
      apiToken: undefined,
      checkReady: () => broken.checkReady(),
    });
    cleanups.push(() => app.close());
    broken.redis.disconnect();
    const res = await app.inject({ method: "POST", url: "/v1/identities/bob/welcome" });
    expect(res.statusCode).toBe(503);
    expect(res.headers["retry-after"]).toBe("5");
    expect(res.json().error).toBe("DEPENDENCY_UNAVAILABLE");
    const ready = await app.inject({ method: "GET", url: "/readyz" });
    expect(ready.statusCode).toBe(503);
    const after = await identities.status(env.ctx.rotor, "bob");
    expect(after.nextRotationAt).toEqual(before.nextRotationAt);
    expect(after.wakeups.rotation).toEqual(before.wakeups.rotation);
  });

  it("Redis down (not just disconnected): 503 with Retry-After, nothing written", async () => {
    const redis = await startRedisServer();
    const env = await setup({ ROTATION_INTERVAL: "30d", REDIS_URL: redis.url });
    await identities.register(env.ctx.rotor, "bob");
    const before = await env.ctx.database
      .sql`select rotation_deadline::text as d from identities where id = 'bob'`;
    const app = await buildApp({
      rotor: env.ctx.rotor,
      apiToken: undefined,
      checkReady: () => env.ctx.checkReady(),
    });
    cleanups.push(() => app.close());
    await redis.stop();
    const res = await app.inject({ method: "POST", url: "/v1/identities/bob/welcome" });
    expect(res.statusCode).toBe(503);
    expect(res.headers["retry-after"]).toBe("5");
    const after = await env.ctx.database
      .sql`select rotation_deadline::text as d from identities where id = 'bob'`;
    expect(after).toEqual(before);
  });

  it("FLUSHALL, then reconcile rebuilds every wake-up; a second run repairs nothing", async () => {
    const redis = await startRedisServer();
    cleanups.push(() => redis.stop());
    const env = await setup({
      ROTATION_INTERVAL: "30d",
      REDIS_URL: redis.url,
      DELETION_GRACE: "1d",
    });
    const { rotor } = env.ctx;
    const ids = Array.from({ length: 60 }, (_, i) => `id-${i}`);
    for (const id of ids) await identities.register(rotor, id);
    await identities.welcome(rotor, "id-7");
    await identities.deregister(rotor, "id-59");
    const live = ids.slice(0, 59);
    const expected = await Promise.all(
      live.map(async (id) => (await identities.status(rotor, id)).nextRotationAt?.getTime()),
    );

    const admin = new Redis(redis.url);
    cleanups.push(async () => void (await admin.quit()));
    await admin.flushall();
    expect(await rotor.timers.view("rotation", ["id-0"])).toEqual([{ state: "missing" }]);
    expect(await rotor.timers.isReconciled()).toBe(false);

    const progress: number[] = [];
    const report = await reconcile(rotor, {
      pageSize: 25,
      onProgress: (done) => progress.push(done),
    });
    expect(report.identities).toBe(59);
    expect(report.repairs.rotation.add).toBe(59);
    // Pages report as they finish (two in flight): the steps are the pages, in either order.
    expect(progress.at(-1)).toBe(59);
    const steps = progress.map((done, i) => done - (progress[i - 1] ?? 0));
    expect(steps.sort((a, b) => a - b)).toEqual([9, 25, 25]);
    const views = await rotor.timers.view("rotation", live);
    expect(views).toEqual(expected.map((fireAt) => ({ state: "delayed", fireAt })));
    expect(await rotor.timers.view("rotation", ["id-59"])).toEqual([{ state: "missing" }]);

    const again = await reconcile(rotor);
    expect(again.repairs).toEqual({
      rotation: { add: 0, reschedule: 0, replace: 0, remove: 0 },
      deletion: { add: 0, reschedule: 0, replace: 0, remove: 0 },
    });
    expect(again.orphansRemoved).toBe(0);
  });

  it("reconcile arms both queues exactly, pages in flight, and a second run repairs nothing", async () => {
    const env = await setup({ ROTATION_INTERVAL: "30d" });
    const { rotor } = env.ctx;
    const { sql } = env.ctx.database;
    const base = Date.now() + 86_400_000;
    // 40 identities by SQL; every third has a superseded key package (a deletion deadline).
    await sql`
      insert into identities (id, rotation_deadline)
      select 'r-' || lpad(g::text, 3, '0'), to_timestamp((${base}::float8 + g * 1000) / 1000.0)
      from generate_series(1, 40) g`;
    await sql`
      insert into key_packages (identity_id, generation, ref, ciphersuite, key_package,
        private_key, not_before, not_after, created_at, is_current, delete_at)
      select 'r-' || lpad(g::text, 3, '0'), 1, 'ref-' || g, 'test', '\\x00'::bytea,
        '\\x00'::bytea, now(), now(), now(), false,
        to_timestamp((${base}::float8 + 500 + g * 1000) / 1000.0)
      from generate_series(1, 40) g where g % 3 = 0`;
    const ids = Array.from({ length: 40 }, (_, i) => `r-${String(i + 1).padStart(3, "0")}`);
    // A deletion wake-up nobody wants (no superseded key package): reconcile removes it.
    await rotor.timers.apply(
      "deletion",
      "r-001",
      { kind: "add", fireAt: base },
      await nextArmFence(rotor.db),
    );

    const progress: number[] = [];
    const report = await reconcile(rotor, {
      pageSize: 7,
      pagesInFlight: 3,
      onProgress: (done) => progress.push(done),
    });
    expect(report.identities).toBe(40);
    expect(report.repairs).toEqual({
      rotation: { add: 40, reschedule: 0, replace: 0, remove: 0 },
      deletion: { add: 13, reschedule: 0, replace: 0, remove: 1 },
    });
    expect(progress.at(-1)).toBe(40);
    expect(await rotor.timers.view("rotation", ids)).toEqual(
      ids.map((_, i) => ({ state: "delayed", fireAt: base + (i + 1) * 1000 })),
    );
    expect(await rotor.timers.view("deletion", ids)).toEqual(
      ids.map((_, i) =>
        (i + 1) % 3 === 0
          ? { state: "delayed", fireAt: base + 500 + (i + 1) * 1000 }
          : { state: "missing" },
      ),
    );
    const job = await rotor.timers.queues.deletion.getJob("id-r-003");
    expect(job?.name).toBe("delete");
    expect(job?.data).toEqual({});

    const again = await reconcile(rotor, { pageSize: 7 });
    expect(again.repairs).toEqual({
      rotation: { add: 0, reschedule: 0, replace: 0, remove: 0 },
      deletion: { add: 0, reschedule: 0, replace: 0, remove: 0 },
    });
  });

  it("reconcile removes orphans and moves wake-ups that are later than their deadline", async () => {
    const env = await setup({ ROTATION_INTERVAL: "30d" });
    const { rotor } = env.ctx;
    await identities.register(rotor, "carol");
    await identities.register(rotor, "dave");
    const carol = await identities.status(rotor, "carol");
    // Simulate the crash windows: a wake-up far later than its deadline, and wake-ups of
    // identities that do not exist or were deregistered.
    await rotor.timers.apply(
      "rotation",
      "carol",
      {
        kind: "reschedule",
        fireAt: Date.now() + 40 * 86_400_000,
      },
      await nextArmFence(rotor.db),
    );
    await rotor.timers.apply(
      "rotation",
      "nobody",
      {
        kind: "add",
        fireAt: Date.now() + 86_400_000,
      },
      await nextArmFence(rotor.db),
    );
    await identities.deregister(rotor, "dave");
    await rotor.timers.apply(
      "rotation",
      "dave",
      { kind: "add", fireAt: Date.now() + 86_400_000 },
      await nextArmFence(rotor.db),
    );

    const report = await reconcile(rotor);
    expect(report.repairs.rotation.reschedule).toBe(1);
    expect(report.orphansRemoved).toBe(2);
    expect(await rotor.timers.view("rotation", ["carol", "nobody", "dave"])).toEqual([
      { state: "delayed", fireAt: carol.nextRotationAt?.getTime() },
      { state: "missing" },
      { state: "missing" },
    ]);
  });

  it("the watchdog notices Redis lost its data and reconciles, with no per-identity work otherwise", async () => {
    const redis = await startRedisServer();
    cleanups.push(() => redis.stop());
    const env = await setup({ ROTATION_INTERVAL: "30d", REDIS_URL: redis.url });
    const { rotor } = env.ctx;
    await identities.register(rotor, "erin");
    await reconcile(rotor);
    const quiet = await runWatchdog(rotor, { overdueGraceMs: 60_000, owner: "test" });
    expect(quiet).toMatchObject({ reconciled: false, rearmed: 0, rearmedDeletions: 0 });

    const admin = new Redis(redis.url);
    cleanups.push(async () => void (await admin.quit()));
    await admin.flushall();
    const healed = await runWatchdog(rotor, { overdueGraceMs: 60_000, owner: "test" });
    expect(healed).toMatchObject({ reconciled: true, rearmed: 0 });
    const status = await identities.status(rotor, "erin");
    expect(status.wakeups.rotation).toEqual({
      state: "delayed",
      fireAt: status.nextRotationAt?.getTime(),
    });

    // An overdue identity whose wake-up fires far too late (moved by hand, say) is re-armed,
    // due now; the census sees nothing wrong (the job exists).
    await env.ctx.database
      .sql`update identities set rotation_deadline = now() - interval '1 hour' where id = 'erin'`;
    await rotor.timers.apply(
      "rotation",
      "erin",
      {
        kind: "reschedule",
        fireAt: Date.now() + 86_400_000,
      },
      await nextArmFence(rotor.db),
    );
    const rearmed = await runWatchdog(rotor, { overdueGraceMs: 60_000, owner: "test" });
    expect(rearmed).toMatchObject({ reconciled: false, rearmed: 1 });
    const [view] = await rotor.timers.view("rotation", ["erin"]);
    expect(view?.state === "waiting" || view?.state === "delayed").toBe(true);
  });
});
