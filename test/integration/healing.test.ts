/**
 * The healing path (DESIGN.md, "Healing"), each guard against the defect it closes:
 *  A. a reconcile that fails is never taken as done, and is retried until it completes;
 *  B. the overdue backstop pages past identities that are retrying as they should;
 *  C. lost deletion wake-ups have a backstop; partial loss with the mark intact is found by the
 *     census;
 *  E. a full loss heals with nobody running reconcile.
 */
import { nextArmFence } from "../../src/db/identities.repo.js";
import { jobIdFor } from "../../src/queue/jobs.js";
import { Redis } from "ioredis";
import postgres from "postgres";
import { afterEach, describe, expect, it } from "vitest";
import type { Context } from "../../src/context.js";
import { watchdogProbe } from "../../src/db/identities.repo.js";
import * as identities from "../../src/services/identities.service.js";
import {
  armOverdue,
  armOverdueDeletions,
  reconcile,
  ReconcileIncomplete,
} from "../../src/services/reconcile.service.js";
import { runWatchdog, startHealer } from "../../src/services/watchdog.service.js";
import { startWorkerRuntime } from "../../src/runtime/worker-process.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";
import { createTestEnv, nextEvent, startRedisServer, type TestEnv } from "../helpers/env.js";
import { holdRowLock as holdRow } from "../helpers/latch.js";

const DAY = 86_400_000;
type RotationEvent = { identityId: string; outcome: string; at: number; deadline?: number };

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(vars: Record<string, string> = {}): Promise<TestEnv & { admin: Redis }> {
  const redis = await startRedisServer();
  cleanups.push(() => redis.stop());
  const env = await createTestEnv({ ROTATION_INTERVAL: "30d", REDIS_URL: redis.url, ...vars });
  cleanups.push(() => env.cleanup());
  const admin = new Redis(redis.url);
  cleanups.push(() => admin.quit());
  return { ...env, admin };
}

/** Holds one identity's row lock from another connection until `release()`. */
async function holdRowLock(url: string, id: string): Promise<{ release(): Promise<void> }> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  const held = await holdRow(sql, id);
  return {
    async release() {
      await held.release();
      await sql.end();
    },
  };
}

async function rotationViews(ctx: Context, ids: string[]) {
  return (await ctx.rotor.timers.view("rotation", ids)).map((v) => v.state);
}

describe("a reconcile either completes or is retried (A)", () => {
  it("a reconcile failing on a held row lock leaves no mark, frees its lease, and the next run heals", async () => {
    const env = await setup();
    const { rotor } = env.ctx;
    const ids = ["h1", "h2", "h3"];
    for (const id of ids) await identities.register(rotor, id);
    await env.admin.flushall();
    const lock = await holdRowLock(env.config.databaseUrl, "h2");
    const failed: string[] = [];
    rotor.events.on("reconcile-failed", (e) => failed.push(e.reason));
    try {
      await expect(runWatchdog(rotor, { overdueGraceMs: 60_000, owner: "w1" })).rejects.toThrow();
      expect(failed).toEqual(["Redis has no reconcile mark"]);
      // Not taken as done: no mark, and the lease is free for the next attempt at once.
      expect(await rotor.timers.isReconciled()).toBe(false);
      expect(await rotor.timers.tryLease("reconcile", "someone-else", 1_000)).toBe(true);
      await rotor.timers.releaseLease("reconcile", "someone-else");
    } finally {
      await lock.release();
    }
    const report = await runWatchdog(rotor, { overdueGraceMs: 60_000, owner: "w1" });
    expect(report.reconciled).toBe(true);
    expect(report.reason).toBe("Redis has no reconcile mark");
    expect(await rotationViews(env.ctx, ids)).toEqual(["delayed", "delayed", "delayed"]);
    expect(await rotor.timers.isReconciled()).toBe(true);
  });

  it("a walk goes on past pages that fail, writes no mark, and stops at three failures in a row", async () => {
    const env = await setup();
    const { rotor } = env.ctx;
    const ids = ["x1", "x2", "x3", "x4", "x5", "x6", "x7"];
    for (const id of ids) await identities.register(rotor, id);
    const walk = { pageSize: 1, pagesInFlight: 1 };
    // A job key of the wrong type makes every arm of that identity fail (WRONGTYPE).
    const jobKey = (id: string) => rotor.timers.queues.rotation.toKey(jobIdFor(id));
    const poison = (id: string) => env.admin.set(jobKey(id), "not a job");
    const watched = ["x1", "x3", "x5", "x6", "x7"];
    const states = async () =>
      Object.fromEntries(
        (await rotor.timers.view("rotation", watched)).map((v, i) => [watched[i], v.state]),
      );

    await env.admin.flushall();
    await poison("x2");
    await expect(reconcile(rotor, walk)).rejects.toThrow(/WRONGTYPE/);
    // Every other identity was armed; the run is not taken as done.
    expect(await states()).toEqual({
      x1: "delayed",
      x3: "delayed",
      x5: "delayed",
      x6: "delayed",
      x7: "delayed",
    });
    expect(await rotor.timers.isReconciled()).toBe(false);

    // Three failures in a row (x2, x3, x4) stop the walk: x5 and after are left for the retry.
    await env.admin.flushall();
    for (const id of ["x2", "x3", "x4"]) await poison(id);
    await expect(reconcile(rotor, walk)).rejects.toThrow(/WRONGTYPE/);
    expect(await states()).toEqual({
      x1: "delayed",
      x3: "missing",
      x5: "missing",
      x6: "missing",
      x7: "missing",
    });
    expect(await rotor.timers.isReconciled()).toBe(false);

    // Once the keys are fixed, the next run arms everything and marks.
    await env.admin.del(...["x2", "x3", "x4"].map(jobKey));
    await reconcile(rotor, walk);
    expect(await rotationViews(env.ctx, ids)).toEqual(ids.map(() => "delayed"));
    expect(await rotor.timers.isReconciled()).toBe(true);
  });

  it("a page whose rows stay locked past lock_timeout is walked past, read without locks", async () => {
    const env = await setup();
    const { rotor } = env.ctx;
    const ids = ["y1", "y2", "y3", "y4"];
    for (const id of ids) await identities.register(rotor, id);
    await env.admin.flushall();
    const lock = await holdRowLock(env.config.databaseUrl, "y2");
    try {
      await expect(reconcile(rotor, { pageSize: 1, pagesInFlight: 1 })).rejects.toThrow();
      expect(await rotationViews(env.ctx, ids)).toEqual([
        "delayed",
        "missing",
        "delayed",
        "delayed",
      ]);
      expect(await rotor.timers.isReconciled()).toBe(false);
    } finally {
      await lock.release();
    }
  });

  describe("after Postgres is restored from a backup (arm_seq behind the fences in Redis)", () => {
    async function restored(ids: string[]) {
      const env = await setup();
      const { rotor } = env.ctx;
      for (const id of ids) await identities.register(rotor, id);
      await reconcile(rotor);
      const high = await rotor.timers.fenceHighWater();
      expect(high).toBeGreaterThan(0);
      const advanced: { from: number; redisFence: number }[] = [];
      rotor.events.on("arm-fence-advanced", (e) => advanced.push(e));
      // The restore: arm_seq goes back to where the backup was; Redis kept its jobs.
      await env.ctx.database.sql`select setval('arm_seq', 1)`;
      const deadline = async (id: string) =>
        (await identities.status(rotor, id)).nextRotationAt?.getTime() ?? 0;
      return { env, rotor, high, advanced, deadline };
    }

    it("the watchdog moves arm_seq past them, reconciling nothing", async () => {
      const { rotor, high, advanced } = await restored(["z1"]);
      const run = await runWatchdog(rotor, { overdueGraceMs: 60_000, owner: "w" });
      expect(run.reconciled).toBe(false);
      expect(advanced).toEqual([{ from: 1, redisFence: high }]);
      expect(await nextArmFence(rotor.db)).toBeGreaterThan(high);
      // Nothing is behind any more: the next run moves nothing.
      await runWatchdog(rotor, { overdueGraceMs: 60_000, owner: "w" });
      expect(advanced).toHaveLength(1);
    });

    it("a reconcile (a worker's start-up heal) moves it first, so its repairs go through", async () => {
      const { env, rotor, high, advanced, deadline } = await restored(["z3"]);
      await env.ctx.database.sql`
        update identities set rotation_deadline = now() + interval '1 hour' where id = 'z3'`;
      const report = await reconcile(rotor);
      expect(advanced).toEqual([{ from: 1, redisFence: high }]);
      expect(report.repairs.rotation.reschedule).toBe(1);
      expect(await rotor.timers.view("rotation", ["z3"])).toEqual([
        { state: "delayed", fireAt: await deadline("z3") },
      ]);
    });

    it("a welcome whose arm is refused moves arm_seq on and arms again, under the same locks", async () => {
      const { rotor, advanced, deadline } = await restored(["z1"]);
      const refusedBefore = rotor.timers.refusedArms();
      await identities.pullInMany(rotor, ["z1"], 5_000);
      // Its first arm was refused; the retry within the transaction went through.
      expect(rotor.timers.refusedArms()).toBe(refusedBefore + 1);
      expect(advanced).toHaveLength(1);
      const [moved] = await rotor.timers.view("rotation", ["z1"]);
      expect(moved?.state === "delayed" && moved.fireAt).toBe(await deadline("z1"));
      expect((await deadline("z1")) - Date.now()).toBeLessThan(6_000);
    });

    it("ten welcome batches refused at once all arm (no batch waits for a pool connection)", async () => {
      const ids = Array.from({ length: 10 }, (_, i) => `w${i}`);
      const { rotor, deadline } = await restored(ids);
      const results = await Promise.all(ids.map((id) => identities.pullInMany(rotor, [id], 5_000)));
      expect(results.map((r) => r.results[0]?.changed)).toEqual(ids.map(() => true));
      const views = await rotor.timers.view("rotation", ids);
      const deadlines = await Promise.all(ids.map(deadline));
      expect(views).toEqual(deadlines.map((fireAt) => ({ state: "delayed", fireAt })));
    });

    it("with the high-water mark lost too, the refusal itself raises it and a reconcile repairs", async () => {
      const { env, rotor, advanced, deadline } = await restored(["z2"]);
      await env.admin.del(`${env.config.queuePrefix}:kp-rotor:fence-high`);
      expect(await rotor.timers.fenceHighWater()).toBe(0);
      // A repair to make: the deadline moved in Postgres behind Redis' back.
      await env.ctx.database.sql`
        update identities set rotation_deadline = now() + interval '1 hour' where id = 'z2'`;
      const report = await reconcile(rotor);
      expect(advanced).toHaveLength(1);
      expect(report.repairs.rotation.reschedule).toBe(1);
      expect(await rotor.timers.view("rotation", ["z2"])).toEqual([
        { state: "delayed", fireAt: await deadline("z2") },
      ]);
    });
  });

  it("Redis losing its data during a run: the run throws and writes no mark", async () => {
    const env = await setup();
    const { rotor } = env.ctx;
    for (const id of ["r1", "r2"]) await identities.register(rotor, id);
    const run = reconcile(rotor, {
      pageSize: 1,
      pagesInFlight: 1,
      // Redis loses everything after the first page.
      onProgress: (done) => {
        if (done === 1) void env.admin.flushall();
      },
    });
    await expect(run).rejects.toBeInstanceOf(ReconcileIncomplete);
    expect(await rotor.timers.isReconciled()).toBe(false);
  });

  it("two runs side by side (an operator's beside a worker's) both complete and mark", async () => {
    const env = await setup();
    const { rotor } = env.ctx;
    for (const id of ["t1", "t2", "t3"]) await identities.register(rotor, id);
    await env.admin.flushall();
    const reports = await Promise.all([
      reconcile(rotor, { pageSize: 1, pagesInFlight: 1 }),
      reconcile(rotor, { pageSize: 1, pagesInFlight: 1 }),
    ]);
    expect(reports.map((r) => r.identities)).toEqual([3, 3]);
    expect(await rotor.timers.isReconciled()).toBe(true);
    expect(await rotationViews(env.ctx, ["t1", "t2", "t3"])).toEqual(Array(3).fill("delayed"));
  });

  it("a stopped run (shutdown) writes no mark", async () => {
    const env = await setup();
    const { rotor } = env.ctx;
    for (const id of ["s1", "s2"]) await identities.register(rotor, id);
    const abort = new AbortController();
    const run = reconcile(rotor, {
      pageSize: 1,
      pagesInFlight: 1,
      signal: abort.signal,
      onProgress: () => abort.abort(),
    });
    await expect(run).rejects.toBeInstanceOf(ReconcileIncomplete);
    expect(await rotor.timers.isReconciled()).toBe(false);
  });

  it("after FLUSHALL with a row held past lock_timeout, the workers heal by themselves, retrying (E)", async () => {
    const env = await setup({ RECONCILE_CHECK_INTERVAL: "1s" });
    const { rotor } = env.ctx;
    const ids = ["e1", "e2", "e3"];
    for (const id of ids) await identities.register(rotor, id);
    const runtime = startWorkerRuntime(env.ctx, ALL_HANDLERS);
    cleanups.push(() => runtime.close());
    await runtime.startupReconcile;
    const lock = await holdRowLock(env.config.databaseUrl, "e2");
    const healed = nextEvent(rotor.events, "reconcile", () => true, 60_000);
    await env.admin.flushall();
    // The first attempt fails on lock_timeout (10 s); release after it did.
    await new Promise((resolve) => setTimeout(resolve, 12_000));
    expect(await rotor.timers.isReconciled()).toBe(false);
    await lock.release();
    await healed;
    expect(await rotationViews(env.ctx, ids)).toEqual(["delayed", "delayed", "delayed"]);
    expect(await rotor.timers.isReconciled()).toBe(true);
  });
});

describe("the backstop cannot be saturated (B, C)", () => {
  /** Identities overdue an hour, their wake-ups retrying within the backoff, as a failing publish leaves them. */
  async function retrying(env: TestEnv, ids: string[]) {
    const { rotor } = env.ctx;
    for (const id of ids) await identities.register(rotor, id);
    await env.ctx.database.sql`
      update identities set rotation_deadline = now() - interval '1 hour' where id = any(${ids})`;
    for (const id of ids) {
      await rotor.timers.apply(
        "rotation",
        id,
        { kind: "reschedule", fireAt: Date.now() + 30_000 },
        await nextArmFence(rotor.db),
      );
    }
  }

  it("100 identities retrying do not hide one whose wake-up was lost", async () => {
    const env = await setup();
    const { rotor } = env.ctx;
    await retrying(
      env,
      Array.from({ length: 100 }, (_, i) => `retry-${String(i).padStart(3, "0")}`),
    );
    await identities.register(rotor, "zz-lost");
    // Less overdue than every retrying one: it sorts after the first 100.
    await env.ctx.database.sql`
      update identities set rotation_deadline = now() - interval '30 minutes' where id = 'zz-lost'`;
    await rotor.timers.apply(
      "rotation",
      "zz-lost",
      { kind: "remove" },
      await nextArmFence(rotor.db),
    );
    const armed = await armOverdue(rotor, Date.now() - 60_000, 100, 100);
    expect(armed.filter((a) => a.action.kind !== "none").map((a) => a.id)).toEqual(["zz-lost"]);
    expect(await rotationViews(env.ctx, ["zz-lost"])).toEqual(["delayed"]);
  });

  it("a lost deletion wake-up whose delete_at passed is re-armed", async () => {
    const env = await setup({ DELETION_GRACE: "1d" });
    const { rotor } = env.ctx;
    await identities.register(rotor, "dora");
    const rotated = nextEvent<RotationEvent>(
      rotor.events,
      "rotation",
      (e) => e.outcome === "rotated",
    );
    const runtime = startWorkerRuntime(env.ctx, { rotation: ALL_HANDLERS.rotation });
    cleanups.push(() => runtime.close());
    await identities.rotateSoon(rotor, "dora");
    await rotated;
    await env.ctx.database.sql`
      update key_packages set delete_at = now() - interval '1 hour' where identity_id = 'dora' and delete_at is not null`;
    await rotor.timers.apply("deletion", "dora", { kind: "remove" }, await nextArmFence(rotor.db));
    const armed = await armOverdueDeletions(rotor, Date.now() - 60_000, 100, 100);
    expect(armed.map((a) => [a.id, a.action.kind])).toEqual([["dora", "add"]]);
    const [view] = await rotor.timers.view("deletion", ["dora"]);
    expect(view?.state).toBe("delayed");

    // A deletion wake-up that exists but fires far too late (moved by hand): the census sees
    // nothing wrong, the watchdog's deletion scan brings it back to its delete_at.
    await runtime.startupReconcile; // the reconcile mark is there: the run below only scans
    await rotor.timers.apply(
      "deletion",
      "dora",
      { kind: "reschedule", fireAt: Date.now() + 365 * 86_400_000 },
      await nextArmFence(rotor.db),
    );
    const report = await runWatchdog(rotor, { overdueGraceMs: 60_000, owner: "w" });
    expect(report).toMatchObject({ reconciled: false, rearmedDeletions: 1 });
    const [moved] = await rotor.timers.view("deletion", ["dora"]);
    expect(
      moved?.state === "waiting" || (moved?.state === "delayed" && moved.fireAt <= Date.now()),
    ).toBe(true);
  });

  it("partial loss with the mark intact: the census finds it and a reconcile repairs only what is missing", async () => {
    const env = await setup({ DELETION_GRACE: "1d" });
    const { rotor } = env.ctx;
    const ids = ["p1", "p2", "p3", "p4", "p5"];
    for (const id of ids) await identities.register(rotor, id);
    await reconcile(rotor);
    const quiet = await runWatchdog(rotor, { overdueGraceMs: 60_000, owner: "w" });
    expect(quiet.reconciled).toBe(false);
    expect(quiet.census.rotation).toEqual({ expected: 5, counted: 5 });

    // Lost writes, as after an AOF tail loss: two rotation wake-ups; the mark survives.
    await rotor.timers.apply("rotation", "p2", { kind: "remove" }, await nextArmFence(rotor.db));
    await rotor.timers.apply("rotation", "p4", { kind: "remove" }, await nextArmFence(rotor.db));
    const report = await runWatchdog(rotor, {
      overdueGraceMs: 60_000,
      owner: "w",
      censusRecheckMs: 10,
    });
    expect(report.reconciled).toBe(true);
    expect(report.reason).toMatch(/census differs: rotation 3 in Redis, 5 expected/);
    expect(report.census.rotation).toEqual({ expected: 5, counted: 5 });
    expect(await rotationViews(env.ctx, ids)).toEqual(Array(5).fill("delayed"));
  });

  it("the census follows registrations, rotations, deletions and deregistrations", async () => {
    const env = await setup({ DELETION_GRACE: "1s" });
    const { rotor } = env.ctx;
    const runtime = startWorkerRuntime(env.ctx, ALL_HANDLERS);
    cleanups.push(() => runtime.close());
    const census = async () => {
      const { rotation, deletion } = await watchdogProbe(rotor.db, 0);
      return { rotation, deletion };
    };
    for (const id of ["c1", "c2", "c3"]) await identities.register(rotor, id);
    expect(await census()).toEqual({ rotation: 3, deletion: 0 });
    const rotated = nextEvent<RotationEvent>(
      rotor.events,
      "rotation",
      (e) => e.identityId === "c1" && e.outcome === "rotated",
    );
    const deleted = nextEvent<{ identityId: string; deleted: number }>(
      rotor.events,
      "deletion",
      (e) => e.identityId === "c1" && e.deleted > 0,
    );
    await identities.rotateSoon(rotor, "c1");
    await rotated;
    expect(await census()).toEqual({ rotation: 3, deletion: 1 });
    expect(await rotor.timers.countWakeups("deletion")).toBe(1);
    await deleted;
    expect(await census()).toEqual({ rotation: 3, deletion: 0 });
    await identities.deregister(rotor, "c3");
    expect(await census()).toEqual({ rotation: 2, deletion: 0 });
    expect(await rotor.timers.countWakeups("rotation")).toBe(2);
    await identities.register(rotor, "c3");
    expect(await census()).toEqual({ rotation: 3, deletion: 0 });
  });
  it("kp_rotor_census_rebuild recounts a census that a bulk load with triggers off left wrong", async () => {
    const env = await setup();
    const { rotor } = env.ctx;
    const census = async () => {
      const { rotation, deletion } = await watchdogProbe(rotor.db, 0);
      return { rotation, deletion };
    };
    for (const id of ["b1", "b2"]) await identities.register(rotor, id);
    await identities.deregister(rotor, "b2");
    const sql = env.ctx.database.sql;
    // A bulk load, as bench/lib.ts seedIdentities does it: triggers off, copies of b1.
    await sql.begin(async (tx) => {
      await tx`set local session_replication_role = replica`;
      await tx`
        insert into identities (id, generation, rotation_deadline, last_rotated_at,
          credential_identity, signature_public_key, signature_private_key, created_at)
        select 'bulk-' || g, generation, rotation_deadline, last_rotated_at, credential_identity,
          signature_public_key, signature_private_key, created_at
        from identities, generate_series(1, 5) g where id = 'b1'`;
      // Two of them with a superseded key package each.
      await tx`
        insert into key_packages (identity_id, generation, ref, ciphersuite, key_package,
          private_key, not_before, not_after, created_at, is_current, delete_at)
        select 'bulk-' || g, generation - 1, ref || g, ciphersuite, key_package, private_key,
          not_before, not_after, created_at, false, now() + interval '1 day'
        from key_packages, generate_series(1, 2) g where identity_id = 'b1'`;
    });
    // The triggers did not run: the census and superseded_packages know nothing of the copies.
    expect(await census()).toEqual({ rotation: 1, deletion: 0 });
    await sql`select kp_rotor_census_rebuild()`;
    expect(await census()).toEqual({ rotation: 6, deletion: 2 });
    const superseded = await sql<{ id: string; n: number }[]>`
      select id, superseded_packages as n from identities where superseded_packages > 0 order by id`;
    expect(superseded).toEqual([
      { id: "bulk-1", n: 1 },
      { id: "bulk-2", n: 1 },
    ]);
    // A second rebuild changes nothing, and the triggers keep counting from there.
    await sql`select kp_rotor_census_rebuild()`;
    expect(await census()).toEqual({ rotation: 6, deletion: 2 });
    await identities.deregister(rotor, "bulk-1");
    expect(await census()).toEqual({ rotation: 5, deletion: 1 });
  });
  it("two bulk loads side by side run one after the other, and a live welcome waits for them", async () => {
    const env = await setup();
    const { rotor } = env.ctx;
    await identities.register(rotor, "t0");
    const url = env.config.databaseUrl;
    const a = postgres(url, { max: 1, onnotice: () => {} });
    const b = postgres(url, { max: 1, onnotice: () => {} });
    cleanups.push(
      () => a.end(),
      () => b.end(),
    );
    // As README "Bulk imports" says: lock first, triggers off, insert, recount, commit.
    const load = (sql: postgres.Sql, prefix: string, hold: Promise<void>) =>
      sql.begin(async (tx) => {
        await tx`lock table identities in exclusive mode`;
        await tx`set local session_replication_role = replica`;
        await tx`
          insert into identities (id, generation, rotation_deadline, last_rotated_at,
            credential_identity, signature_public_key, signature_private_key, created_at)
          select ${prefix} || g, generation, rotation_deadline, last_rotated_at,
            credential_identity, signature_public_key, signature_private_key, created_at
          from identities, generate_series(1, 3) g where id = 't0'`;
        await hold;
        await tx`select kp_rotor_census_rebuild()`;
      });
    let release!: () => void;
    const held = new Promise<void>((r) => {
      release = r;
    });
    const first = load(a, "la-", held);
    await new Promise((r) => setTimeout(r, 200));
    const second = load(b, "lb-", Promise.resolve());
    // A live write (a welcome's pull-in locks the identity row) meanwhile.
    const live = identities.welcome(rotor, "t0");
    await new Promise((r) => setTimeout(r, 200));
    release();
    await Promise.all([first, second, live]);
    const { rotation } = await watchdogProbe(rotor.db, 0);
    expect(rotation).toBe(7);
  });

  it("after FLUSHALL, pages are armed without a view and end where viewing pages would", async () => {
    const env = await setup();
    const { rotor } = env.ctx;
    const ids = Array.from({ length: 12 }, (_, i) => `b${String(i).padStart(2, "0")}`);
    for (const id of ids) await identities.register(rotor, id);
    await reconcile(rotor);
    const wanted = await rotor.timers.view("rotation", ids);
    expect(wanted.every((v) => v.state === "delayed")).toBe(true);
    const walk = { pageSize: 2, pagesInFlight: 1 };
    // The view reads each job's delayed score (ZSCORE); a blind add does not. This Redis is the
    // test's own, so its command counts are this walk's.
    const zscores = async () =>
      Number(/cmdstat_zscore:calls=(\d+)/.exec(await env.admin.info("commandstats"))?.[1] ?? 0);
    const viewed: Record<string, number> = {};

    for (const skipViewAfterLoss of [true, false]) {
      await env.admin.flushall();
      await env.admin.config("RESETSTAT");
      // Something armed since the loss, in a later page: a blind add of it is refused (the job
      // exists) and it is planned the usual way, here moved back to its deadline.
      const now = Date.now();
      await rotor.timers.arm("rotation", "b07", now + 400 * DAY, now, await nextArmFence(rotor.db));
      const report = await reconcile(rotor, { ...walk, skipViewAfterLoss });
      viewed[String(skipViewAfterLoss)] = await zscores();
      expect(report.repairs.rotation).toEqual({ add: 11, reschedule: 1, replace: 0, remove: 0 });
      // The first page is viewed (all missing); the five after it are armed blind. No identity
      // wants a deletion wake-up, so the deletion pages are never blind (nothing to add).
      expect(report.pagesWithoutView).toEqual({ rotation: skipViewAfterLoss ? 5 : 0, deletion: 0 });
      expect(await rotor.timers.view("rotation", ids)).toEqual(wanted);
      expect(await rotor.timers.isReconciled()).toBe(true);
    }
    // Five blind pages of two identities: ten jobs, of which b07 (its add refused) is viewed
    // after all: nine views saved.
    expect((viewed.false ?? 0) - (viewed.true ?? 0)).toBe(9);
    // Nothing missing: every page is viewed, and nothing is repaired.
    const again = await reconcile(rotor, walk);
    expect(again.pagesWithoutView).toEqual({ rotation: 0, deletion: 0 });
    expect(again.repairs.rotation).toEqual({ add: 0, reschedule: 0, replace: 0, remove: 0 });
  });

  it("a reconcile after losses in some shards covers those shards alone", async () => {
    const env = await setup({ QUEUE_SHARDS: "3" });
    const { rotor } = env.ctx;
    const timers = env.ctx.rotor.timers as typeof env.ctx.rotor.timers & {
      shardOf(id: string): number;
    };
    const ids = Array.from({ length: 24 }, (_, i) => `s${i}`);
    for (const id of ids) await identities.register(rotor, id);
    await reconcile(rotor);
    const inShard = (shard: number) => ids.filter((id) => timers.shardOf(id) === shard);
    for (const shard of [0, 1, 2]) expect(inShard(shard).length).toBeGreaterThan(0);
    // Shard 1 loses everything (its mark too); shard 2 loses one wake-up, its mark intact; in
    // shard 0 one wake-up is moved a year late, which no count sees (only a walk of shard 0).
    const prefix = env.ctx.config.queuePrefix;
    const lost = await env.admin.keys(`{${prefix}:1}*`);
    expect(lost.length).toBeGreaterThan(0);
    await env.admin.del(...lost);
    const victim = inShard(2)[0] as string;
    const late = inShard(0)[0] as string;
    const now = Date.now();
    expect(
      await rotor.timers.arm("rotation", victim, null, now, await nextArmFence(rotor.db)),
    ).toEqual(expect.objectContaining({ kind: "remove" }));
    const yearLate = now + 400 * 86_400_000;
    await rotor.timers.arm("rotation", late, yearLate, now, await nextArmFence(rotor.db));
    const reports: { shards?: number[] }[] = [];
    rotor.events.on("reconcile", (r) => reports.push(r));

    const report = await runWatchdog(rotor, {
      owner: "test",
      overdueGraceMs: 180_000,
      censusRecheckMs: 10,
    });
    expect(report.reason).toMatch(/^Redis has no reconcile mark \(shards 1 of 3\); wakeup census/);
    expect(report.reason).toMatch(/rotation shard 2 \d+ in Redis/);
    expect(reports.map((r) => r.shards)).toEqual([[1, 2]]);
    const healed = [...inShard(1), ...inShard(2)];
    expect(await rotationViews(env.ctx, healed)).toEqual(healed.map(() => "delayed"));
    expect(await rotor.timers.isReconciled()).toBe(true);
    // Shard 0 was not walked: its late wake-up is still a year out. A full reconcile fixes it.
    const [before] = await rotor.timers.view("rotation", [late]);
    expect(before).toEqual({ state: "delayed", fireAt: yearLate });
    const full = await reconcile(rotor);
    expect(full.shards).toBeUndefined();
    expect(full.repairs.rotation.reschedule).toBe(1);
  });

  it("a shard lost during a scoped heal is healed right after it, with no periodic check", async () => {
    const env = await setup({ QUEUE_SHARDS: "3" });
    const { rotor } = env.ctx;
    const timers = env.ctx.rotor.timers as typeof env.ctx.rotor.timers & {
      shardOf(id: string): number;
      unreconciledShards(): Promise<number[]>;
    };
    const ids = Array.from({ length: 24 }, (_, i) => `h${i}`);
    for (const id of ids) await identities.register(rotor, id);
    const healer = startHealer(rotor, {
      owner: "test",
      overdueGraceMs: 180_000,
      markCheckIntervalMs: 0,
      watchdogIntervalMs: 0,
    });
    cleanups.push(() => healer.close());
    await healer.started;
    expect(await timers.unreconciledShards()).toEqual([]);
    const reports: { shards?: number[] }[] = [];
    rotor.events.on("reconcile", (r) => reports.push(r));
    const prefix = env.ctx.config.queuePrefix;
    const wipe = async (shard: number) => {
      const keys = await env.admin.keys(`{${prefix}:${shard}}*`);
      if (keys.length > 0) await env.admin.del(...keys);
    };
    // Shard 1 is lost; its heal waits on a row held by another connection.
    const lock = await holdRowLock(env.config.databaseUrl, ids[0] as string);
    await wipe(1);
    healer.checkMark();
    await new Promise((r) => setTimeout(r, 300));
    // Meanwhile shard 2 is lost too; the reconnect's check finds a heal in progress.
    await wipe(2);
    healer.checkMark();
    await lock.release();
    const until = Date.now() + 20_000;
    while ((await timers.unreconciledShards()).length > 0 && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(await timers.unreconciledShards()).toEqual([]);
    expect(reports.map((r) => r.shards)).toEqual([[1], [2]]);
    expect(await rotationViews(env.ctx, ids)).toEqual(ids.map(() => "delayed"));
  });
});
