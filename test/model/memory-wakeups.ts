import type {
  ActiveWakeup,
  ArmItem,
  ArmManyOptions,
  Wakeups,
  WakeupKind,
} from "../../src/core/ports.js";
import { type ArmAction, FINISH_PARK_MS, type JobView, planArm } from "../../src/core/deadlines.js";
import { armExpectingMissing } from "../../src/core/arm-expecting-missing.js";
import type { Job, Proc, World } from "./world.js";

/**
 * The Wakeups port in memory, with BullMQ's job states (delayed, waiting, active, finished)
 * and what the production adapter (src/queue/wakeup-queues.ts) does per Redis call: a view, the arm
 * script (add if missing, move if delayed, move earlier only, delete if delayed; each checks the
 * state and the arm fence atomically and reports what it did not do), BullMQ's remove (refused
 * for an active job), the reconcile
 * mark and run record, and leases. Each Redis call is one scheduled step; one process's calls
 * run in the order sent (one connection). Writes may time out and land later (World.late).
 */

type Op = { op: "a" | "r" | "e" | "d"; identityId: string; fireAt: number };

const MAX_REPLANS = 5;

export function createMemoryWakeups(world: World, proc: Proc): Wakeups {
  let chain: Promise<unknown> = Promise.resolve();
  /** One Redis call of this process, in the order sent. */
  const call = <T>(label: string, effect: () => T, write = false): Promise<T> => {
    const run = chain.then(() => world.step(proc, label, effect, write));
    chain = run.catch(() => {});
    return run;
  };
  const q = (kind: WakeupKind) => world.redis.queues[kind];

  const viewOne = (kind: WakeupKind, id: string): JobView => {
    const job = q(kind).get(id);
    if (job === undefined) return { state: "missing" };
    if (job.state === "delayed") return { state: "delayed", fireAt: job.fireAt };
    return { state: job.state };
  };
  const view = (kind: WakeupKind, ids: readonly string[]) =>
    ids.length === 0 ? Promise.resolve([]) : call("view", () => ids.map((id) => viewOne(kind, id)));

  let refused = 0;
  const script = (kind: WakeupKind, ops: readonly Op[], fence: number) =>
    ops.length === 0
      ? Promise.resolve([] as number[])
      : call(
          `arm-script(${kind} #${fence} ${ops.map((o) => `${o.op}:${o.identityId}@${o.fireAt}`).join(",")})`,
          () => {
            world.redis.fenceHigh = Math.max(world.redis.fenceHigh, fence);
            return ops.map(({ op, identityId, fireAt }) => {
              const job = q(kind).get(identityId);
              // The fence: a write older than the job's last script write changes nothing.
              if (job?.kseq !== undefined && job.kseq > fence) {
                world.redis.fenceHigh = Math.max(world.redis.fenceHigh, job.kseq);
                return 3;
              }
              if (op === "a") {
                if (job) return 1;
                q(kind).set(identityId, {
                  state: "delayed",
                  fireAt,
                  failures: 0,
                  token: 0,
                  kseq: fence,
                });
                return 0;
              }
              if (job?.state !== "delayed") return 1;
              if (op === "d") {
                q(kind).delete(identityId);
                return 0;
              }
              if (op === "e" && job.fireAt <= fireAt) return 2;
              job.fireAt = fireAt;
              job.kseq = fence;
              return 0;
            });
          },
          true,
        ).then((results) => {
          // Counted when the reply reaches the caller, as the production adapter does.
          refused += results.filter((r) => r === 3).length;
          return results;
        });

  const remove = (kind: WakeupKind, id: string) =>
    call(
      `remove(${kind} ${id})`,
      () => {
        const job = q(kind).get(id);
        if (job === undefined || job.state === "active") return 0;
        q(kind).delete(id);
        return 1;
      },
      true,
    );

  async function apply(
    kind: WakeupKind,
    id: string,
    action: ArmAction,
    fence: number,
  ): Promise<void> {
    if (action.kind === "add" || action.kind === "reschedule") {
      await script(
        kind,
        [{ op: action.kind === "add" ? "a" : "r", identityId: id, fireAt: action.fireAt }],
        fence,
      );
    } else if (action.kind === "replace") {
      await remove(kind, id);
      await script(kind, [{ op: "a", identityId: id, fireAt: action.fireAt }], fence);
    } else if (action.kind === "remove") {
      // A delayed job is deleted under the fence; other states go through BullMQ's remove.
      const [result] = await script(kind, [{ op: "d", identityId: id, fireAt: 0 }], fence);
      if (result === 1) await remove(kind, id);
    }
  }

  async function armOne(
    kind: WakeupKind,
    id: string,
    desired: number | null,
    now: number,
    fence: number,
  ) {
    for (let attempt = 0; attempt < MAX_REPLANS; attempt++) {
      const [current] = await view(kind, [id]);
      const action = planArm(desired, current ?? { state: "missing" }, now);
      if (action.kind !== "add" && action.kind !== "reschedule") {
        await apply(kind, id, action, fence);
        return action;
      }
      const op = action.kind === "add" ? "a" : "r";
      const [result] = await script(kind, [{ op, identityId: id, fireAt: action.fireAt }], fence);
      if (result === 0) return action;
      if (result === 3) return { kind: "none" } as ArmAction;
    }
    throw new Error(`the ${kind} wake-up of ${id} kept changing state`);
  }

  async function armMany(
    kind: WakeupKind,
    items: readonly ArmItem[],
    now: number,
    fence: number,
    options: ArmManyOptions = {},
  ): Promise<ArmAction[]> {
    if (options.expectMissing !== true && !world.blindArms) {
      return armViewing(kind, items, now, fence);
    }
    // The production adapter's own algorithm, over this port's script and view.
    return armExpectingMissing(items, {
      addAll: (adds) =>
        script(
          kind,
          adds.map((a) => ({ op: "a" as const, ...a })),
          fence,
        ),
      armViewing: (rest) => armViewing(kind, rest, now, fence),
    });
  }

  async function armViewing(
    kind: WakeupKind,
    items: readonly ArmItem[],
    now: number,
    fence: number,
  ): Promise<ArmAction[]> {
    const views = await view(
      kind,
      items.map((i) => i.identityId),
    );
    const actions = items.map((item, i) =>
      planArm(item.desired, views[i] ?? { state: "missing" }, now),
    );
    const fast: (Op & { index: number })[] = [];
    const slow: Promise<void>[] = [];
    items.forEach((item, index) => {
      const action = actions[index] as ArmAction;
      if (action.kind === "add" || action.kind === "reschedule") {
        fast.push({
          op: action.kind === "add" ? "a" : "r",
          identityId: item.identityId,
          fireAt: action.fireAt,
          index,
        });
      } else if (action.kind !== "none") slow.push(apply(kind, item.identityId, action, fence));
    });
    const fastDone = script(kind, fast, fence);
    await Promise.allSettled([fastDone, ...slow]);
    const done = await fastDone;
    await Promise.all(slow);
    fast.forEach((f, i) => {
      if (done[i] === 3) actions[f.index] = { kind: "none" };
    });
    const replans = fast.filter((_, i) => done[i] === 1);
    const settled = await Promise.allSettled(
      replans.map(async (f) => {
        const desired = items[f.index]?.desired ?? null;
        actions[f.index] = await armOne(kind, f.identityId, desired, now, fence);
      }),
    );
    for (const s of settled) if (s.status === "rejected") throw s.reason;
    return actions;
  }

  return {
    view,
    armMany,
    fenceHighWater: () => call("fenceHighWater", () => world.redis.fenceHigh),
    refusedArms: () => refused,
    async arm(kind, identityId, desired, now, fence) {
      const [action] = await armMany(kind, [{ identityId, desired }], now, fence);
      return action ?? { kind: "none" };
    },
    async armEarlier(kind, items, now, fence) {
      const results = await script(
        kind,
        items.map((i) => ({ op: "e" as const, ...i })),
        fence,
      );
      const actions: ArmAction[] = items.map((item, i) =>
        results[i] === 0 ? { kind: "reschedule", fireAt: item.fireAt } : { kind: "none" },
      );
      const rest = items.flatMap((item, i) => (results[i] === 1 ? [{ item, i }] : []));
      if (rest.length === 0) return actions;
      const planned = await armMany(
        kind,
        rest.map(({ item }) => ({ identityId: item.identityId, desired: item.fireAt })),
        now,
        fence,
      );
      rest.forEach(({ i }, k) => {
        actions[i] = planned[k] as ArmAction;
      });
      return actions;
    },
    beginReconcile: (runId) =>
      call(
        "beginReconcile",
        () => {
          world.redis.runIds.add(runId);
        },
        true,
      ),
    completeReconcile: (runId) =>
      call("completeReconcile", () => {
        if (!world.redis.runIds.delete(runId)) return false;
        world.redis.mark = true;
        return true;
      }),
    isReconciled: () => call("isReconciled", () => world.redis.mark),
    countWakeups: (kind) =>
      call(
        `countWakeups(${kind})`,
        () => [...q(kind).values()].filter((j) => j.state !== "finished").length,
      ),
    tryLease: (name, owner, ttlMs) =>
      call(`tryLease(${name})`, () => {
        const lease = world.redis.leases.get(name);
        if (lease && lease.owner !== owner && lease.until > world.now()) return false;
        world.redis.leases.set(name, { owner, until: world.now() + ttlMs });
        return true;
      }),
    releaseLease: (name, owner) =>
      call(`releaseLease(${name})`, () => {
        if (world.redis.leases.get(name)?.owner === owner) world.redis.leases.delete(name);
      }),
    async *scanAllIdentityIds(pageSize) {
      const keys: [WakeupKind, string][] = [];
      for (const kind of ["rotation", "deletion"] as const) {
        for (const id of q(kind).keys()) keys.push([kind, id]);
      }
      for (let i = 0; i < keys.length; i += pageSize) {
        const page = await call("scan", () => {
          const out: Record<WakeupKind, string[]> = { rotation: [], deletion: [] };
          for (const [kind, id] of keys.slice(i, i + pageSize))
            if (q(kind).has(id)) out[kind].push(id);
          return out;
        });
        yield page;
      }
    },
  };
}

/**
 * The job a worker of `proc` took, as the services see it: BullMQ's moveToDelayed and remove,
 * refused (as BullMQ does) once the worker's lock on the job is gone (stalled and taken again).
 */
export function activeWakeup(
  world: World,
  proc: Proc,
  kind: WakeupKind,
  id: string,
  job: Job,
): ActiveWakeup {
  const token = job.token;
  const q = world.redis.queues;
  const held = () => {
    const current = q[kind].get(id);
    if (current?.state !== "active" || current.token !== token)
      throw new Error(`Missing lock for job ${id}`);
    return current;
  };
  const moveToDelayed = (fireAt: number, failures?: number) =>
    world.step(
      proc,
      `moveToDelayed(${kind} ${id}@${fireAt})`,
      () => {
        const current = held();
        Object.assign(current, { state: "delayed", fireAt, owner: undefined, stallAt: undefined });
        if (failures !== undefined) current.failures = failures;
      },
      true,
    );
  return {
    identityId: id,
    jobId: `id-${id}`,
    failures: job.failures,
    rearm: (fireAt) => moveToDelayed(fireAt, 0),
    async finish() {
      await moveToDelayed(world.now() + FINISH_PARK_MS);
      await world.step(
        proc,
        `remove(${kind} ${id})`,
        () => {
          const current = q[kind].get(id);
          if (current?.state !== "active") q[kind].delete(id);
        },
        true,
      );
    },
    async retryLater(fireAt, failures) {
      const update = () => {
        held().failures = failures;
      };
      await world.step(proc, `updateData(${kind} ${id})`, update, true);
      await moveToDelayed(fireAt);
    },
  };
}
