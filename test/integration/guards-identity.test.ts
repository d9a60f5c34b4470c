/**
 * Guards of the per-identity lock when there is no live row to lock (DESIGN.md, "One lock per
 * identity" and "Deregistration racing a registration"). Each test fails when its guard is removed
 * from src: it lines up the race deterministically, with a gate between the steps.
 */
import { nextArmFence } from "../../src/db/identities.repo.js";
import { afterEach, describe, expect, it } from "vitest";
import type { Context } from "../../src/context.js";
import type { Store } from "../../src/core/ports.js";
import * as identities from "../../src/services/identities.service.js";
import type { Rotor } from "../../src/services/rotor.js";
import { type HandlerFactories, startWorkerRuntime } from "../../src/runtime/worker-process.js";
import { createDeletionHandler, createRotationHandler } from "../../src/runtime/handlers.js";
import { createTestEnv, type TestEnv } from "../helpers/env.js";
import { type Latch, latch, lockWaiters, within } from "../helpers/latch.js";

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(vars: Record<string, string> = {}): Promise<TestEnv> {
  const env = await createTestEnv({
    ROTATION_INTERVAL: "30d",
    WORKER_LOCK_DURATION: "2s",
    WORKER_STALLED_INTERVAL: "1s",
    ...vars,
  });
  cleanups.push(() => env.cleanup());
  return env;
}

/**
 * The same database, but the `n`-th transaction started through it first opens `reached`, then
 * waits for `gate`: a pause between two transactions of one service call.
 */
function gateTransaction(store: Store, n: number, reached: Latch, gate: Latch): Store {
  let calls = 0;
  return new Proxy(store, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (prop !== "transaction") return typeof value === "function" ? value.bind(target) : value;
      return async (...args: Parameters<Store["transaction"]>) => {
        if (++calls === n) {
          reached.open();
          await gate.promise;
        }
        return target.transaction(...args);
      };
    },
  });
}

async function rotationWakeup(ctx: Context, id: string) {
  const status = await identities.status(ctx.rotor, id);
  return { deadline: status.nextRotationAt?.getTime(), wakeup: status.wakeups.rotation };
}

describe("identity lock guards", () => {
  it("deregistration leaves the wake-ups of a registration that revived the identity in between", async () => {
    const { ctx } = await setup();
    await identities.register(ctx.rotor, "alice");
    // Deregistration pauses between its two transactions: the tombstone is committed, the
    // wake-ups are not removed yet.
    const between = latch();
    const gate = latch();
    const paused: Rotor = {
      ...ctx.rotor,
      store: gateTransaction(ctx.rotor.store, 2, between, gate),
    };
    const deregistering = identities.deregister(paused, "alice");
    await within(between.promise, 10_000, "deregistration committed its tombstone");
    await expect(identities.status(ctx.rotor, "alice")).rejects.toThrow(/not registered/);

    const again = await identities.register(ctx.rotor, "alice");
    expect(again.created).toBe(true);
    const revived = await rotationWakeup(ctx, "alice");
    expect(revived.wakeup).toEqual({ state: "delayed", fireAt: revived.deadline });

    // The second transaction finds the row live again under its lock and leaves the wake-up.
    gate.open();
    await deregistering;
    expect(await rotationWakeup(ctx, "alice")).toEqual(revived);
    expect((await identities.status(ctx.rotor, "alice")).generation).toBe(again.generation);
  });

  it("a wake-up of an unknown id locks a tombstone, so a registration racing it keeps its wake-up", async () => {
    const { ctx } = await setup();
    // The rotation processor's first finish (the id is gone) is held at a gate, inside the
    // transaction that decided it.
    const finishing = latch();
    const gate = latch();
    const handled = latch();
    const handlers: HandlerFactories = {
      deletion: createDeletionHandler,
      rotation: (rotor) => {
        const handle = createRotationHandler(rotor);
        return async (wake) => {
          await handle({
            ...wake,
            finish: async () => {
              if (!finishing.isOpen) {
                finishing.open();
                await gate.promise;
              }
              await wake.finish();
            },
          });
          if (wake.identityId === "ghost") handled.open();
        };
      },
    };
    const runtime = startWorkerRuntime(ctx, handlers);
    cleanups.push(() => runtime.close());
    await runtime.startupReconcile;
    // A wake-up nobody owns (left by a deregistration that crashed, or by hand), due now.
    await ctx.rotor.timers.apply(
      "rotation",
      "ghost",
      { kind: "add", fireAt: Date.now() },
      await nextArmFence(ctx.rotor.db),
    );
    await within(finishing.promise, 10_000, "the wake-up of ghost decided to finish");

    // The registration must wait for the wake-up's transaction: its insert meets the tombstone
    // the wake-up inserted and locked. Without that row, it would arm while the job is active
    // (doing nothing), and the wake-up would then remove the registration's only wake-up.
    const registering = identities.register(ctx.rotor, "ghost");
    const queued = await lockWaiters(ctx, 1, registering);
    gate.open();
    const registered = await registering;
    await within(handled.promise, 10_000, "the wake-up of ghost finished");
    expect(registered.created).toBe(true);
    const armed = await rotationWakeup(ctx, "ghost");
    expect(armed.wakeup).toEqual({ state: "delayed", fireAt: armed.deadline });
    expect(queued).toBe(true);
  });
});
