import { afterEach, describe, expect, it } from "vitest";
import type { Context } from "../../src/context.js";
import * as repo from "../../src/db/identities.repo.js";
import * as kps from "../../src/db/key-packages.repo.js";
import {
  createDirectoryPublisher,
  createWebhookPublisher,
  PublishError,
  publishesByPromoting,
} from "../../src/keys/publisher.js";
import * as identities from "../../src/services/identities.service.js";
import { completeRotation, prepareRotation } from "../../src/services/rotation.service.js";
import { startWorkerRuntime } from "../../src/runtime/worker-process.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";
import { createTestEnv, nextEvent, type TestEnv } from "../helpers/env.js";
import { holdRowLock } from "../helpers/latch.js";

/**
 * The directory publisher's rotation: store, publish and promote in one transaction under one
 * lock, then re-arm (src/services/rotation.service.ts). Real Postgres and Redis; failures are
 * injected by wrapping a real function for one call.
 */

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(vars: Record<string, string> = {}): Promise<TestEnv> {
  const env = await createTestEnv({ ROTATION_INTERVAL: "30d", DELETION_GRACE: "1d", ...vars });
  cleanups.push(() => env.cleanup());
  return env;
}

/**
 * One rotation attempt the way registration runs it (and a worker, but with a plain arm for the
 * re-arm): prepare under the lock, then complete. `rearm` defaults to arming the rotation wake-up.
 */
async function rotateOnce(
  ctx: Context,
  id: string,
  rearm?: (deadline: number | null) => Promise<unknown>,
): Promise<string> {
  const { rotor } = ctx;
  const prepared = await rotor.store.transaction(async (tx) =>
    prepareRotation(rotor, tx, await tx.lockOrTombstone(id), rotor.clock()),
  );
  if (prepared.kind !== "publish") return prepared.kind;
  const done = await completeRotation(
    rotor,
    id,
    prepared.pending,
    rearm ??
      ((deadline, fence) => rotor.timers.arm("rotation", id, deadline, rotor.clock(), fence)),
  );
  return done.outcome;
}

async function packages(ctx: Context, id: string) {
  const status = await identities.status(ctx.rotor, id);
  return status.keyPackages.map((k) => [k.generation, k.state]);
}

/** Registers `id` (first package current) and makes its rotation due now. */
async function registeredAndDue(ctx: Context, id: string) {
  await identities.register(ctx.rotor, id);
  await identities.rotateSoon(ctx.rotor, id);
  return identities.status(ctx.rotor, id);
}

describe("directory rotation in one transaction", () => {
  it("is used for the service's own directory publisher only", async () => {
    expect(publishesByPromoting(createDirectoryPublisher())).toBe(true);
    const directory = createDirectoryPublisher();
    // A wrapped publish may do something: it must run between store and promote.
    expect(publishesByPromoting({ ...directory, publish: async (r) => directory.publish(r) })).toBe(
      false,
    );
    const webhook = createWebhookPublisher({
      url: "http://127.0.0.1:9/",
      secrets: ["0123456789abcdef"],
      timeoutMs: 100,
    });
    expect(publishesByPromoting(webhook)).toBe(false);
  });

  it("makes the new package current, supersedes the old one exactly once and arms both wake-ups", async () => {
    const { ctx } = await setup();
    const before = await registeredAndDue(ctx, "erin");
    expect(before.generation).toBe(1);

    expect(await rotateOnce(ctx, "erin")).toBe("rotated");
    const after = await identities.status(ctx.rotor, "erin");
    expect(after.generation).toBe(2);
    expect(after.keyPackages.map((k) => [k.generation, k.state])).toEqual([
      [1, "superseded"],
      [2, "current"],
    ]);
    const current = after.keyPackages[1];
    expect(current?.publishedAt).toEqual(after.lastRotatedAt);
    expect(after.keyPackages[0]?.deleteAt?.getTime()).toBe(after.nextDeletionAt?.getTime());
    expect(after.wakeups.deletion).toEqual({
      state: "delayed",
      fireAt: after.nextDeletionAt?.getTime(),
    });
    expect(after.wakeups.rotation).toEqual({
      state: "delayed",
      fireAt: after.nextRotationAt?.getTime(),
    });

    // The deadline moved on: a second attempt for the same deadline rotates nothing.
    expect(await rotateOnce(ctx, "erin")).toBe("not-due");
    expect(await packages(ctx, "erin")).toEqual([
      [1, "superseded"],
      [2, "current"],
    ]);
  });

  it("two attempts for one deadline, side by side, rotate once", async () => {
    const env = await setup();
    const other = await env.sibling();
    await registeredAndDue(env.ctx, "frank");
    const outcomes = await Promise.all([rotateOnce(env.ctx, "frank"), rotateOnce(other, "frank")]);
    expect(outcomes.sort()).toEqual(["not-due", "rotated"]);
    expect(await packages(env.ctx, "frank")).toEqual([
      [1, "superseded"],
      [2, "current"],
    ]);
  });

  it("is fenced on the generation: a stale write changes nothing", async () => {
    const { ctx } = await setup();
    await registeredAndDue(ctx, "gina");
    const fenced = await ctx.rotor.db.transaction(async (tx) => {
      await repo.lockIdentity(tx, "gina");
      const now = ctx.rotor.clock();
      return kps.supersedeCurrent(tx, {
        identityId: "gina",
        generation: 1, // the identity is at generation 1 already: this write is stale
        now,
        rotationDeadline: now + 1_000,
        supersededDeleteAt: now + 1_000,
      });
    });
    expect(fenced).toEqual({ fenced: true, nextDeleteAt: null });
    const status = await identities.status(ctx.rotor, "gina");
    expect(status.generation).toBe(1);
    expect(status.keyPackages.map((k) => [k.generation, k.state])).toEqual([[1, "current"]]);
  });

  it("a failure before the commit leaves nothing behind, and the retry rotates once", async () => {
    const { ctx } = await setup();
    const due = await registeredAndDue(ctx, "hugo");
    const arm = ctx.rotor.timers.arm;
    let failed = 0;
    ctx.rotor.timers.arm = async (kind, ...rest) => {
      if (kind === "deletion" && failed++ === 0) throw new Error("injected: crash before commit");
      return arm(kind, ...rest);
    };
    await expect(rotateOnce(ctx, "hugo")).rejects.toThrow(/injected/);
    const unchanged = await identities.status(ctx.rotor, "hugo");
    expect(unchanged.generation).toBe(1);
    expect(unchanged.nextRotationAt).toEqual(due.nextRotationAt);
    expect(unchanged.keyPackages.map((k) => [k.generation, k.state])).toEqual([[1, "current"]]);

    expect(await rotateOnce(ctx, "hugo")).toBe("rotated");
    expect(await packages(ctx, "hugo")).toEqual([
      [1, "superseded"],
      [2, "current"],
    ]);
  });

  it("a failure after the commit, before the re-arm, is recovered by the next attempt", async () => {
    const { ctx } = await setup();
    await registeredAndDue(ctx, "iris");
    await expect(
      rotateOnce(ctx, "iris", async () => {
        throw new Error("injected: crash before re-arm");
      }),
    ).rejects.toThrow(/injected/);
    // Committed: rotated once, and the deletion wake-up was armed before the commit.
    const committed = await identities.status(ctx.rotor, "iris");
    expect(committed.generation).toBe(2);
    expect(committed.wakeups.deletion).toEqual({
      state: "delayed",
      fireAt: committed.nextDeletionAt?.getTime(),
    });
    // The rotation wake-up is still the old one (due now); when it fires it finds nothing due
    // and re-arms to the committed deadline.
    expect(committed.wakeups.rotation).not.toEqual({
      state: "delayed",
      fireAt: committed.nextRotationAt?.getTime(),
    });
    const recovery = nextEvent<{ identityId: string; outcome: string }>(
      ctx.rotor.events,
      "rotation",
      (e) => e.identityId === "iris",
    );
    // The worker's start-up heal repairs this wake-up too (it moves a delayed job to its
    // deadline): were it to get there before the worker takes the job, nothing would fire. Hold
    // iris's row until the worker holds the job; a heal leaves an active job to its worker.
    const held = await holdRowLock(ctx.database.sql, "iris");
    const runtime = startWorkerRuntime(ctx, ALL_HANDLERS);
    cleanups.push(() => runtime.close());
    cleanups.push(() => held.release());
    for (let i = 0; ; i++) {
      const [view] = await ctx.rotor.timers.view("rotation", ["iris"]);
      if (view?.state === "active") break;
      if (i >= 1_000) throw new Error("the worker did not take the wake-up within 20 s");
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await held.release();
    expect((await recovery).outcome).toBe("not-due");
    const recovered = await identities.status(ctx.rotor, "iris");
    expect(recovered.generation).toBe(2);
    expect(recovered.wakeups.rotation).toEqual({
      state: "delayed",
      fireAt: recovered.nextRotationAt?.getTime(),
    });
    expect(recovered.keyPackages.map((k) => [k.generation, k.state])).toEqual([
      [1, "superseded"],
      [2, "current"],
    ]);
  });

  it("publishes a pending package an earlier attempt left (same package), without generating", async () => {
    const { ctx } = await setup();
    const directory = ctx.rotor.publisher;
    // An earlier attempt under a publisher that failed left generation 1 pending.
    ctx.rotor.publisher = {
      kind: "webhook",
      publish: async () => {
        throw new PublishError("injected: webhook down");
      },
    };
    const registered = await identities.register(ctx.rotor, "jane");
    expect(registered.publishError).toMatch(/injected/);
    const [pending] = (await identities.status(ctx.rotor, "jane")).keyPackages;
    expect(pending?.state).toBe("pending");

    ctx.rotor.publisher = directory;
    await identities.rotateSoon(ctx.rotor, "jane");
    expect(await rotateOnce(ctx, "jane")).toBe("rotated");
    const status = await identities.status(ctx.rotor, "jane");
    expect(status.generation).toBe(1);
    expect(status.keyPackages.map((k) => [k.generation, k.state, k.ref])).toEqual([
      [1, "current", pending?.ref],
    ]);
  });
});
