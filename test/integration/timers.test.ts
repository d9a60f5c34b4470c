import { afterEach, describe, expect, it } from "vitest";
import type { Context } from "../../src/context.js";
import * as identities from "../../src/services/identities.service.js";
import { startWorkerRuntime, type WorkerRuntime } from "../../src/runtime/worker-process.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";
import { createTestEnv, nextEvent, type TestEnv } from "../helpers/env.js";

type RotationEvent = { identityId: string; outcome: string; at: number; deadline?: number };
type DeletionEvent = { identityId: string; deleted: number; at: number };

let env: TestEnv | undefined;
const runtimes: WorkerRuntime[] = [];

afterEach(async () => {
  for (const runtime of runtimes.splice(0)) await runtime.close();
  await env?.cleanup();
  env = undefined;
});

async function setup(vars: Record<string, string>) {
  env = await createTestEnv({ WORKER_LOCK_DURATION: "2s", WORKER_STALLED_INTERVAL: "1s", ...vars });
  return env;
}

function startWorkers(ctx: Context): WorkerRuntime {
  const runtime = startWorkerRuntime(ctx, ALL_HANDLERS);
  runtimes.push(runtime);
  return runtime;
}

const rotated = (ctx: Context, id: string) =>
  nextEvent<RotationEvent>(
    ctx.rotor.events,
    "rotation",
    (e) => e.identityId === id && e.outcome === "rotated",
  );

async function keyPackageRows(ctx: Context, id: string) {
  return ctx.database.sql<{ generation: number; is_current: boolean; delete_at: number | null }[]>`
    select generation, is_current, (extract(epoch from delete_at) * 1000)::float8 as delete_at
    from key_packages where identity_id = ${id} order by generation`;
}

describe("rotation and deletion wake-ups", () => {
  it("rotate at the deadline, supersede the old key package and delete it after the grace", async () => {
    const { ctx } = await setup({ ROTATION_INTERVAL: "1500ms", DELETION_GRACE: "700ms" });
    startWorkers(ctx);
    const registered = await identities.register(ctx.rotor, "alice");
    const rotation = await rotated(ctx, "alice");
    expect(rotation.deadline).toBe(registered.rotationDeadline);
    expect(rotation.at).toBeGreaterThanOrEqual(registered.rotationDeadline);

    const rows = await keyPackageRows(ctx, "alice");
    expect(rows.map((r) => [r.generation, r.is_current])).toEqual([
      [1, false],
      [2, true],
    ]);
    expect(rows[0]?.delete_at).toBe(rotation.at + 700);

    const deletion = await nextEvent<DeletionEvent>(
      ctx.rotor.events,
      "deletion",
      (e) => e.deleted > 0,
    );
    expect(deletion.at).toBeGreaterThanOrEqual(rotation.at + 700);
    const after = await keyPackageRows(ctx, "alice");
    expect(after.find((r) => r.generation === 1)).toBeUndefined();
    expect(after.filter((r) => r.is_current)).toHaveLength(1);
  });

  it("a welcome pulls the rotation in to now + WELCOME_ROTATION_DELAY", async () => {
    const { ctx } = await setup({ ROTATION_INTERVAL: "30d", WELCOME_ROTATION_DELAY: "300ms" });
    startWorkers(ctx);
    await identities.register(ctx.rotor, "bob");
    const pending = rotated(ctx, "bob");
    const welcomed = await identities.welcome(ctx.rotor, "bob");
    const rotation = await pending;
    expect(rotation.deadline).toBe(welcomed.rotationDeadline);
    expect(rotation.at).toBeGreaterThanOrEqual(welcomed.rotationDeadline);
    const status = await identities.status(ctx.rotor, "bob");
    expect(status.generation).toBe(2);
    expect(status.nextRotationAt?.getTime()).toBe(rotation.at + 30 * 86_400_000);
    expect(status.wakeups.rotation).toEqual({
      state: "delayed",
      fireAt: rotation.at + 30 * 86_400_000,
    });
  });

  it("1,000 concurrent welcomes to one identity, two workers: exactly one rotation", async () => {
    const test = await setup({ ROTATION_INTERVAL: "30d", WELCOME_ROTATION_DELAY: "1s" });
    const { ctx } = test;
    const other = await test.sibling();
    await identities.register(ctx.rotor, "carol");
    // The burst comes through two processes' pools at once; the workers start after it, so the
    // result does not depend on how fast this machine gets through 1,000 transactions.
    const results = await Promise.all(
      Array.from({ length: 1000 }, (_, i) =>
        identities.welcome((i % 2 ? ctx : other).rotor, "carol"),
      ),
    );
    expect(new Set(results.map((r) => r.rotationDeadline)).size).toBe(1);
    expect(results.filter((r) => r.changed)).toHaveLength(1);

    const outcomes: string[] = [];
    for (const c of [ctx, other]) {
      c.rotor.events.on("rotation", (e) => {
        if (e.identityId === "carol") outcomes.push(e.outcome);
      });
    }
    const done = Promise.race([rotated(ctx, "carol"), rotated(other, "carol")]);
    startWorkers(ctx);
    startWorkers(other);
    const rotation = await done;
    expect(rotation.deadline).toBe(results[0]?.rotationDeadline);
    const rows = await keyPackageRows(ctx, "carol");
    expect(rows.map((r) => r.generation)).toEqual([1, 2]);
    expect(outcomes.filter((o) => o === "rotated")).toHaveLength(1);
    // The wake-up now points 30 days on: no second rotation is armed.
    const status = await identities.status(ctx.rotor, "carol");
    expect(status.wakeups.rotation).toEqual({
      state: "delayed",
      fireAt: status.nextRotationAt?.getTime(),
    });
  });

  it("a welcome that arrives while the rotation job is active is not lost", async () => {
    const test = await setup({ ROTATION_INTERVAL: "30d", WELCOME_ROTATION_DELAY: "200ms" });
    const { ctx } = test;
    const worker = await test.sibling();
    // Hold the worker's rotation in its publish step (no lock held, job active).
    const gate = latch();
    const publishing = latch();
    const publish = worker.rotor.publisher.publish;
    worker.rotor.publisher = {
      ...worker.rotor.publisher,
      publish: async (request) => {
        publishing.open();
        await gate.promise;
        return publish(request);
      },
    };
    // The start-up heal locks pages of identities: let it finish, so that the only lock waiters
    // below are the promote and the welcome, in that order.
    await startWorkers(worker).startupReconcile;
    await identities.register(ctx.rotor, "dave");
    const soon = await identities.rotateSoon(ctx.rotor, "dave");
    const first = rotated(worker, "dave");
    const second = nextEvent<RotationEvent>(
      worker.rotor.events,
      "rotation",
      (e) => e.outcome === "rotated" && e.deadline !== soon.rotationDeadline,
    );
    await publishing.promise;
    expect(await ctx.rotor.timers.view("rotation", ["dave"])).toEqual([{ state: "active" }]);

    // Line up, behind a lock the test holds: first the rotation's promote, then the welcome.
    // The promote commits the new deadline; the welcome pulls it in and finds the job still
    // active, so it leaves the re-arm to the rotation, whose re-arm step queues behind it.
    const armed: string[] = [];
    const armEarlier = ctx.rotor.timers.armEarlier;
    ctx.rotor.timers.armEarlier = async (...args) => {
      const actions = await armEarlier(...args);
      armed.push(...actions.map((a) => a.kind));
      return actions;
    };
    const holder = await ctx.database.sql.reserve();
    await holder`begin`;
    await holder`select 1 from identities where id = 'dave' for update`;
    gate.open();
    await waitForLockWaiters(ctx, { promote: 1, welcome: 0 });
    const welcomed = identities.welcome(ctx.rotor, "dave");
    await waitForLockWaiters(ctx, { promote: 1, welcome: 1 });
    await holder`commit`;
    holder.release();
    await first;
    const pulled = await welcomed;
    expect(pulled.changed).toBe(true);
    expect(armed).toEqual(["none"]);
    const rotation = await second;
    expect(rotation.deadline).toBe(pulled.rotationDeadline);
    expect(rotation.at).toBeGreaterThanOrEqual(pulled.rotationDeadline);
    expect(rotation.at - pulled.rotationDeadline).toBeLessThan(5_000);
    expect((await keyPackageRows(ctx, "dave")).map((r) => r.generation)).toEqual([1, 2, 3]);
  });

  it.each(["30d", "60d", "90d"])(
    "a %s deadline is armed exactly, and neither fires early nor overflows a timer",
    async (interval) => {
      const warnings: string[] = [];
      const onWarning = (w: Error) => warnings.push(w.name);
      process.on("warning", onWarning);
      try {
        const { ctx } = await setup({ ROTATION_INTERVAL: interval });
        const registered = await identities.register(ctx.rotor, "erin");
        const runtime = startWorkers(ctx);
        await runtime.startupReconcile;
        // Let the worker go through its blocking fetch a few times.
        const wakes: RotationEvent[] = [];
        ctx.rotor.events.on("rotation", (e) => wakes.push(e));
        await new Promise((resolve) => setTimeout(resolve, 1_500));
        const [view] = await ctx.rotor.timers.view("rotation", ["erin"]);
        expect(view).toEqual({ state: "delayed", fireAt: registered.rotationDeadline });
        const days = Number(interval.slice(0, -1));
        expect(registered.rotationDeadline - Date.now()).toBeGreaterThan(
          (days - 0.01) * 86_400_000,
        );
        expect(wakes).toEqual([]);
        expect(warnings).not.toContain("TimeoutOverflowWarning");
        const status = await identities.status(ctx.rotor, "erin");
        expect(status.generation).toBe(1);
        // The package outlives its rotation by KEY_PACKAGE_MARGIN (7 d), however long the interval.
        const current = status.keyPackages.find((kp) => kp.current);
        expect(current?.notAfter.getTime()).toBeGreaterThanOrEqual(
          registered.rotationDeadline + 7 * 86_400_000,
        );
      } finally {
        process.off("warning", onWarning);
      }
    },
  );
});

function latch() {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

/**
 * Waits until exactly these backends wait for a row lock in the test database: the rotation's
 * promote (one identity locked by id) and the welcome (a batch locked with `= any(...)`).
 */
async function waitForLockWaiters(
  ctx: Context,
  expected: { promote: number; welcome: number },
): Promise<void> {
  let seen: unknown;
  for (let i = 0; i < 500; i++) {
    const [row] = await ctx.database.sql<{ promote: number; welcome: number; other: number }[]>`
      select count(*) filter (where query like '%for update%' and query not like '%any(%')::int as promote,
             count(*) filter (where query like '%= any(%' and query like '%for update%')::int as welcome,
             count(*) filter (where query not like '%for update%')::int as other
      from pg_stat_activity
      where datname = current_database() and wait_event_type = 'Lock'`;
    seen = row;
    if (row?.promote === expected.promote && row.welcome === expected.welcome && row.other === 0)
      return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(
    `the lock waiters never became ${JSON.stringify(expected)}: ${JSON.stringify(seen)}`,
  );
}
