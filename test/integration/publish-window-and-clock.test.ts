/**
 * Two guards of the rotation path, each deterministic:
 *  - a welcome acknowledged while a rotation's package is being published (visible at the
 *    receiver, not yet promoted) leads to one more rotation, at the welcome's deadline (D);
 *  - Postgres' clock decides what is due: a worker whose clock runs 30 s ahead deletes nothing
 *    early and rotates nothing twice.
 */
import { afterEach, describe, expect, it } from "vitest";
import * as identities from "../../src/services/identities.service.js";
import type { ActiveWakeup, Rotor } from "../../src/services/rotor.js";
import { handleDeletionWake, handleRotationWake } from "../../src/services/wakeups.service.js";
import { startWorkerRuntime } from "../../src/runtime/worker-process.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";
import { createTestEnv, type TestEnv } from "../helpers/env.js";

type RotationEvent = { identityId: string; outcome: string; at: number; deadline?: number };

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(vars: Record<string, string>): Promise<TestEnv> {
  const env = await createTestEnv(vars);
  cleanups.push(() => env.cleanup());
  return env;
}

/** Resolves with the n-th rotation of `id` that rotated. */
function nthRotation(rotor: Rotor, id: string, n: number): Promise<RotationEvent> {
  return new Promise((resolve) => {
    let seen = 0;
    const listener = (e: RotationEvent) => {
      if (e.identityId !== id || e.outcome !== "rotated" || ++seen < n) return;
      rotor.events.off("rotation", listener);
      resolve(e);
    };
    rotor.events.on("rotation", listener);
  });
}

describe("welcome during publish (D)", () => {
  it("a welcome acknowledged between publish and promote leads to one more rotation, at welcome + delay", async () => {
    const env = await setup({
      ROTATION_INTERVAL: "30d",
      WELCOME_ROTATION_DELAY: "1s",
      WORKER_LOCK_DURATION: "5s",
    });
    const { rotor } = env.ctx;
    await identities.register(rotor, "wendy");
    // From here the publisher is one whose package is visible before the promote (a webhook's
    // receiver has it when publish returns), and it holds the first publish until released.
    let entered!: () => void;
    const publishing = new Promise<void>((resolve) => {
      entered = resolve;
    });
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const published: string[] = [];
    rotor.publisher = {
      kind: "webhook",
      async publish(request) {
        published.push(request.ref);
        if (published.length === 1) {
          entered();
          await released;
        }
      },
    };
    const runtime = startWorkerRuntime(env.ctx, ALL_HANDLERS);
    cleanups.push(() => runtime.close());
    const first = nthRotation(rotor, "wendy", 1);
    const second = nthRotation(rotor, "wendy", 2);
    await identities.rotateSoon(rotor, "wendy");
    await publishing;

    const welcome = await identities.welcome(rotor, "wendy");
    expect(welcome.changed).toBe(true);
    release();
    await first;
    const extra = await second;
    // The second rotation served the welcome's deadline, not one 30 days out, and ran after it.
    expect(extra.deadline).toBe(welcome.rotationDeadline);
    expect(extra.at).toBeGreaterThanOrEqual(welcome.rotationDeadline);
    const status = await identities.status(rotor, "wendy");
    expect(status.generation).toBe(3);
    expect(published).toHaveLength(2);
    expect(status.nextRotationAt?.getTime()).toBeGreaterThan(Date.now() + 29 * 86_400_000);
  });
});

describe("one clock decides what is due (7)", () => {
  /** The wake-up a worker holds, as the services see it; records what they do with it. */
  function heldWakeup(identityId: string) {
    const rearms: number[] = [];
    const wake: ActiveWakeup = {
      identityId,
      jobId: `id-${identityId}`,
      failures: 0,
      async rearm(fireAt) {
        rearms.push(fireAt);
      },
      async finish() {
        throw new Error("not expected to finish");
      },
      async retryLater() {
        throw new Error("not expected to fail");
      },
    };
    return { wake, rearms };
  }

  it("a worker whose clock runs 30 s ahead deletes nothing early and rotates nothing twice", async () => {
    const env = await setup({ ROTATION_INTERVAL: "20s", DELETION_GRACE: "20s" });
    const { rotor } = env.ctx;
    const skewMs = 30_000;
    const ahead: Rotor = { ...rotor, clock: () => Date.now() + skewMs };
    await identities.register(rotor, "sam");
    await identities.rotateSoon(rotor, "sam");

    // Rotated by a worker whose clock is right: it stamps the next deadline and delete_at.
    const rotation = heldWakeup("sam");
    expect(await handleRotationWake(rotor, rotation.wake)).toBe("rotated");
    const rotated = await identities.status(rotor, "sam");
    expect(rotated.generation).toBe(2);
    const deadline = rotated.nextRotationAt?.getTime() as number;
    const deleteAt = rotated.nextDeletionAt?.getTime() as number;

    // 20 s before the deadline by Postgres' clock, 10 s after it by the worker's.
    const again = heldWakeup("sam");
    expect(await handleRotationWake(ahead, again.wake)).toBe("not-due");
    expect((await identities.status(rotor, "sam")).generation).toBe(2);
    // Re-armed in the worker's frame, so that it fires when the deadline has passed in Postgres'.
    expect(again.rearms).toHaveLength(1);
    expect(again.rearms[0]).toBeGreaterThanOrEqual(deadline + skewMs - 1_000);

    const deletion = heldWakeup("sam");
    expect(await handleDeletionWake(ahead, deletion.wake)).toEqual({ deleted: 0, next: deleteAt });
    const kept = await identities.status(rotor, "sam");
    expect(kept.keyPackages.map((k) => k.state)).toEqual(["superseded", "current"]);
    expect(deletion.rearms[0]).toBeGreaterThanOrEqual(deleteAt + skewMs - 1_000);
  });
});
