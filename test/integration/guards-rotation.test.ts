/**
 * Guards of the rotation (DESIGN.md, guarantees 3 and 4): the generation fence between two
 * attempts for one deadline and against a deregistration while publishing, and "earliest
 * deadline wins" for welcomes. Each test fails when its
 * guard is removed from src.
 */
import { nextArmFence } from "../../src/db/identities.repo.js";
import { afterEach, describe, expect, it } from "vitest";
import * as identities from "../../src/services/identities.service.js";
import { completeRotation, prepareRotation } from "../../src/services/rotation.service.js";
import { createTestEnv, type TestEnv } from "../helpers/env.js";
import { keyPackageRows, latch, within } from "../helpers/latch.js";

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(vars: Record<string, string> = {}): Promise<TestEnv> {
  const env = await createTestEnv({ ROTATION_INTERVAL: "30d", DELETION_GRACE: "1d", ...vars });
  cleanups.push(() => env.cleanup());
  return env;
}

describe("rotation guards", () => {
  it("two attempts for one deadline both publish; the generation fence lets one promote", async () => {
    const { ctx } = await setup();
    const { rotor } = ctx;
    await identities.register(rotor, "dave");
    // A publisher that is not the directory's own publish (so the rotation runs in four steps:
    // prepare, publish without a lock, promote, re-arm) and that lets no publish return before
    // both attempts have published.
    const refs: string[] = [];
    const bothPublished = latch();
    const publish = rotor.publisher.publish;
    rotor.publisher = {
      ...rotor.publisher,
      publish: async (request) => {
        refs.push(request.ref);
        if (refs.length === 2) bothPublished.open();
        await within(bothPublished.promise, 10_000, "the second attempt published");
        return publish(request);
      },
    };
    await identities.rotateSoon(rotor, "dave");

    // Two attempts for the same due deadline (a stalled job run twice, or a registration racing
    // a worker): each prepares under the row lock; the second reuses the first one's package.
    const prepare = () =>
      rotor.store.transaction(async (tx) => {
        const identity = await tx.lockOrTombstone("dave");
        return prepareRotation(rotor, tx, identity, identity.now);
      });
    const first = await prepare();
    const second = await prepare();
    if (first.kind !== "publish" || second.kind !== "publish") throw new Error("not due");
    expect(second.pending.id).toBe(first.pending.id);
    expect(first.pending.generation).toBe(2);

    const rearm = (deadline: number | null, fence: number) =>
      rotor.timers.arm("rotation", "dave", deadline, rotor.clock(), fence);
    const results = await Promise.all([
      completeRotation(rotor, "dave", first.pending, rearm),
      completeRotation(rotor, "dave", second.pending, rearm),
    ]);
    expect(refs).toEqual([first.pending.ref, first.pending.ref]);
    expect(results.map((r) => r.outcome).sort()).toEqual(["fenced", "rotated"]);

    // Exactly one rotation: one generation on, one package superseded, nothing failed.
    const status = await identities.status(rotor, "dave");
    expect(status).toMatchObject({ generation: 2, rotationFailures: 0, lastError: null });
    const rows = await keyPackageRows(ctx, "dave");
    expect(rows.map((r) => [r.generation, r.is_current])).toEqual([
      [1, false],
      [2, true],
    ]);
    const promotedAt = results.find((r) => r.outcome === "rotated")?.at as number;
    expect(rows[0]?.delete_at).toBe(promotedAt + 86_400_000);
    expect(status.nextRotationAt?.getTime()).toBe(promotedAt + 30 * 86_400_000);
    expect(status.wakeups).toEqual({
      rotation: { state: "delayed", fireAt: promotedAt + 30 * 86_400_000 },
      deletion: { state: "delayed", fireAt: promotedAt + 86_400_000 },
    });
  });

  it("a deregistration while a rotation publishes: the promote is fenced and leaves no wake-up", async () => {
    const { ctx } = await setup();
    const { rotor } = ctx;
    await identities.register(rotor, "fay");
    const publishing = latch();
    const gate = latch();
    const publish = rotor.publisher.publish;
    rotor.publisher = {
      ...rotor.publisher,
      publish: async (request) => {
        publishing.open();
        await gate.promise;
        return publish(request);
      },
    };
    await identities.rotateSoon(rotor, "fay");
    const prepared = await rotor.store.transaction(async (tx) => {
      const identity = await tx.lockOrTombstone("fay");
      return prepareRotation(rotor, tx, identity, identity.now);
    });
    if (prepared.kind !== "publish") throw new Error("not due");
    const rearm = (deadline: number | null, fence: number) =>
      rotor.timers.arm("rotation", "fay", deadline, rotor.clock(), fence);
    const completing = completeRotation(rotor, "fay", prepared.pending, rearm);
    // Publishing holds no lock: the deregistration goes through meanwhile.
    await within(publishing.promise, 10_000, "the rotation published");
    await identities.deregister(rotor, "fay");
    gate.open();
    // The fence sees a tombstone (generation unchanged): nothing is promoted or re-armed.
    expect((await completing).outcome).toBe("fenced");
    const [row] = await ctx.database.sql<{ deadline: Date | null; generation: number }[]>`
      select rotation_deadline as deadline, generation from identities where id = 'fay'`;
    expect(row).toEqual({ deadline: null, generation: 1 });
    expect(await keyPackageRows(ctx, "fay")).toEqual([]);
    expect(await rotor.timers.view("rotation", ["fay"])).toEqual([{ state: "missing" }]);
    expect(await rotor.timers.view("deletion", ["fay"])).toEqual([{ state: "missing" }]);
  });

  it("a welcome never pushes a sooner deadline later, in Postgres or in Redis", async () => {
    const { ctx } = await setup({ WELCOME_ROTATION_DELAY: "5s" });
    const { rotor } = ctx;
    await identities.register(rotor, "erin");
    // Rotate-now: due at once (no worker runs here, so it stays due).
    const soon = await identities.rotateSoon(rotor, "erin");
    expect(soon.changed).toBe(true);
    const welcomed = await identities.welcome(rotor, "erin");
    expect(welcomed).toEqual({ ...soon, changed: false });
    const batch = await identities.pullInMany(rotor, ["erin", "erin"], 5_000);
    expect(batch.results).toEqual([{ ...soon, changed: false }]);

    const status = await identities.status(rotor, "erin");
    expect(status.nextRotationAt?.getTime()).toBe(soon.rotationDeadline);
    expect(status.wakeups.rotation).toEqual({ state: "delayed", fireAt: soon.rotationDeadline });
    // And a welcome that does come sooner than the deadline moves both.
    await ctx.database.sql`
      update identities set rotation_deadline = now() + interval '1 day' where id = 'erin'`;
    await rotor.timers.apply(
      "rotation",
      "erin",
      {
        kind: "reschedule",
        fireAt: Date.now() + 86_400_000,
      },
      await nextArmFence(rotor.db),
    );
    const pulled = await identities.welcome(rotor, "erin");
    expect(pulled.changed).toBe(true);
    const after = await identities.status(rotor, "erin");
    expect(after.nextRotationAt?.getTime()).toBe(pulled.rotationDeadline);
    expect(after.wakeups.rotation).toEqual({ state: "delayed", fireAt: pulled.rotationDeadline });
  });
});
