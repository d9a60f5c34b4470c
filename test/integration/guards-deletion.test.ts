/**
 * Guards of the deletion wake-up (DESIGN.md, guarantee 6 and "Deletion wake-up finishing while a
 * rotation supersedes a key package"). Each test here fails when its guard is removed from src.
 */
import { nextArmFence } from "../../src/db/identities.repo.js";
import { afterEach, describe, expect, it } from "vitest";
import type { Context } from "../../src/context.js";
import * as identities from "../../src/services/identities.service.js";
import { type HandlerFactories, startWorkerRuntime } from "../../src/runtime/worker-process.js";
import {
  ALL_HANDLERS,
  createDeletionHandler,
  createRotationHandler,
} from "../../src/runtime/handlers.js";
import { createTestEnv, nextEvent, type TestEnv } from "../helpers/env.js";
import { keyPackageRows, latch, lockWaiters, within } from "../helpers/latch.js";

type RotationEvent = { identityId: string; outcome: string; at: number; deadline?: number };
type DeletionEvent = { identityId: string; deleted: number; at: number };

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(vars: Record<string, string>): Promise<TestEnv> {
  const env = await createTestEnv({
    ROTATION_INTERVAL: "30d",
    WORKER_LOCK_DURATION: "2s",
    WORKER_STALLED_INTERVAL: "1s",
    ...vars,
  });
  cleanups.push(() => env.cleanup());
  return env;
}

function startWorkers(ctx: Context, handlers: HandlerFactories = ALL_HANDLERS) {
  const runtime = startWorkerRuntime(ctx, handlers);
  cleanups.push(() => runtime.close());
  return runtime;
}

const rotated = (ctx: Context, id: string) =>
  nextEvent<RotationEvent>(
    ctx.rotor.events,
    "rotation",
    (e) => e.identityId === id && e.outcome === "rotated",
  );

const deletionOf = (ctx: Context, id: string) =>
  nextEvent<DeletionEvent>(ctx.rotor.events, "deletion", (e) => e.identityId === id);

async function rotateNow(ctx: Context, id: string): Promise<RotationEvent> {
  const done = rotated(ctx, id);
  await identities.rotateSoon(ctx.rotor, id);
  return done;
}

describe("deletion guards", () => {
  it("a deletion wake-up that fires early deletes only the packages whose delete_at passed", async () => {
    const { ctx } = await setup({ DELETION_GRACE: "1d" });
    // The start-up heal re-arms every wake-up from Postgres: were it still running at step 1 or
    // 2, it would move the deletion wake-up moved by hand below back to its delete_at.
    await startWorkers(ctx).startupReconcile;
    await identities.register(ctx.rotor, "alice");
    await rotateNow(ctx, "alice");
    await rotateNow(ctx, "alice");
    const before = await keyPackageRows(ctx, "alice");
    expect(before.map((r) => [r.generation, r.is_current])).toEqual([
      [1, false],
      [2, false],
      [3, true],
    ]);
    const [gen1, gen2] = before.map((r) => r.delete_at as number);
    expect(await ctx.rotor.timers.view("deletion", ["alice"])).toEqual([
      { state: "delayed", fireAt: gen1 },
    ]);

    // 1. The wake-up fires a day early (a stray or moved job): nothing is due, nothing deleted.
    const early = deletionOf(ctx, "alice");
    await ctx.rotor.timers.apply(
      "deletion",
      "alice",
      { kind: "reschedule", fireAt: Date.now() },
      await nextArmFence(ctx.rotor.db),
    );
    expect((await early).deleted).toBe(0);
    expect(await keyPackageRows(ctx, "alice")).toEqual(before);
    expect(await ctx.rotor.timers.view("deletion", ["alice"])).toEqual([
      { state: "delayed", fireAt: gen1 },
    ]);

    // 2. Generation 1's delete_at has passed, generation 2's is still a day away: only 1 goes.
    const past = Date.now() - 1_000;
    await ctx.database.sql`
      update key_packages set delete_at = to_timestamp(${past}::float8 / 1000)
      where identity_id = 'alice' and generation = 1`;
    const due = deletionOf(ctx, "alice");
    await ctx.rotor.timers.apply(
      "deletion",
      "alice",
      { kind: "reschedule", fireAt: past },
      await nextArmFence(ctx.rotor.db),
    );
    expect((await due).deleted).toBe(1);
    const after = await keyPackageRows(ctx, "alice");
    expect(after.map((r) => [r.generation, r.is_current, r.delete_at])).toEqual([
      [2, false, gen2],
      [3, true, null],
    ]);
    expect(await ctx.rotor.timers.view("deletion", ["alice"])).toEqual([
      { state: "delayed", fireAt: gen2 },
    ]);
  });

  it("a deletion wake-up finishing while a rotation supersedes: the rotation waits for its lock and re-arms it", async () => {
    const { ctx } = await setup({ DELETION_GRACE: "500ms" });
    // The deletion processor's first finish (nothing left to delete) is held at a gate, inside
    // whatever transaction calls it.
    const finishing = latch();
    const gate = latch();
    const handlers: HandlerFactories = {
      rotation: createRotationHandler,
      deletion: (rotor) => {
        const handle = createDeletionHandler(rotor);
        return (wake) =>
          handle({
            ...wake,
            finish: async () => {
              if (!finishing.isOpen) {
                finishing.open();
                await gate.promise;
              }
              await wake.finish();
            },
          });
      },
    };
    let deletions = 0;
    const secondDeletion = latch();
    ctx.rotor.events.on("deletion", (e) => {
      if (e.identityId === "bob" && e.deleted > 0 && ++deletions === 2) secondDeletion.open();
    });
    // The start-up heal locks pages of identities: let it finish, so that the lock waiter
    // counted below is the rotate-now queued behind the finish, not the heal.
    await startWorkers(ctx, handlers).startupReconcile;
    await identities.register(ctx.rotor, "bob");
    await rotateNow(ctx, "bob");
    // Generation 1 is deleted 500 ms later; the wake-up then finds nothing left and finishes.
    await finishing.promise;

    const second = rotated(ctx, "bob");
    const pulled = identities.rotateSoon(ctx.rotor, "bob");
    // The finish runs under the identity's row lock, so the rotate-now (and the rotation after
    // it) queues behind it. Were it to run after the commit, the rotation would go through now,
    // find the deletion job still active, leave it, and the finish would then remove it.
    const queued = await lockWaiters(ctx, 1, second);
    gate.open();
    await pulled;
    const rotation = await second;
    const rows = await keyPackageRows(ctx, "bob");
    expect(rows.map((r) => [r.generation, r.is_current])).toEqual([
      [2, false],
      [3, true],
    ]);
    expect(rows[0]?.delete_at).toBe(rotation.at + 500);
    // Generation 2's deletion wake-up was armed, so it is deleted on time.
    await within(secondDeletion.promise, 15_000, "generation 2 deleted");
    expect((await keyPackageRows(ctx, "bob")).map((r) => r.generation)).toEqual([3]);
    expect(queued).toBe(true);
  });
});
