import type { ArmItem, ArmManyOptions } from "../core/ports.js";
import { type ArmAction, type JobView, planArm } from "../core/deadlines.js";
import { armExpectingMissing } from "../core/arm-expecting-missing.js";
import { settleAll } from "../settle.js";
import { privateJobs } from "./bullmq/index.js";
import type { RedisConnection } from "./connection.js";
import { JOB_NAMES, jobIdFor, type ShardQueues, type TimerKind } from "./jobs.js";

/*
 * Arming within one shard's queue pair: the view and arm scripts (behind src/queue/bullmq),
 * planArm per identity and the re-plans when a worker moved a job under us. createWakeupQueues
 * (wakeup-queues.ts) gives each shard one of these and splits every call by shard with perShard.
 */

/** How often an item whose job changed state under us (a worker took it) is planned again. */
const MAX_REPLANS = 5;

/** The arming half of the port for one shard's queues (every id given belongs to that shard). */
export interface ShardArmer {
  view(kind: TimerKind, identityIds: readonly string[]): Promise<JobView[]>;
  apply(kind: TimerKind, identityId: string, action: ArmAction, fence: number): Promise<void>;
  armMany(
    kind: TimerKind,
    items: readonly ArmItem[],
    now: number,
    fence: number,
    options?: ArmManyOptions,
  ): Promise<ArmAction[]>;
  armEarlier(
    kind: TimerKind,
    items: readonly { identityId: string; fireAt: number }[],
    now: number,
    fence: number,
  ): Promise<ArmAction[]>;
}

export function createShardArmer(
  redis: RedisConnection,
  queues: ShardQueues,
  fenceHighKey: string,
  /** Told how many items of each arm-script call the fence refused (code 3). */
  onRefused: (count: number) => void = () => {},
): ShardArmer {
  const jobs = privateJobs(redis);

  async function view(kind: TimerKind, identityIds: readonly string[]): Promise<JobView[]> {
    if (identityIds.length === 0) return [];
    const peeks = await jobs.peek(queues[kind], identityIds.map(jobIdFor));
    return Promise.all(
      identityIds.map((id, i): JobView | Promise<JobView> => {
        const peek = peeks[i];
        if (peek?.state === "missing") return { state: "missing" };
        if (peek?.state === "delayed") return peek;
        return slowState(kind, id);
      }),
    );
  }

  /** Jobs that are not delayed are rare (about to run, running, or finished); ask BullMQ. */
  async function slowState(kind: TimerKind, identityId: string): Promise<JobView> {
    const state = await queues[kind].getJobState(jobIdFor(identityId));
    switch (state) {
      case "active":
        return { state: "active" };
      case "completed":
      case "failed":
        return { state: "finished" };
      case "unknown":
        return { state: "missing" };
      case "delayed": {
        // Moved to delayed between our two reads: read its fire time again.
        const fireAt = await jobs.delayedFireAt(queues[kind], jobIdFor(identityId));
        return fireAt === null ? { state: "waiting" } : { state: "delayed", fireAt };
      }
      default:
        return { state: "waiting" };
    }
  }

  /**
   * Adds missing jobs ("a"), moves delayed ones ("r") or moves delayed ones earlier only ("e") to
   * exactly their fire time, or deletes delayed ones ("d"), in order, one script call per chunk,
   * all under one arm fence. Returns the script's code per item (ARM_LUA): 0 done; 1 not in the
   * planned state (a worker took the job, or it exists when an add was planned), to be planned
   * again; 2 ("e" only) already fires at or before it; 3 refused by the fence.
   */
  async function armScript(
    kind: TimerKind,
    ops: readonly { op: "a" | "r" | "e" | "d"; identityId: string; fireAt: number }[],
    now: number,
    fence: number,
  ): Promise<number[]> {
    if (ops.length === 0) return [];
    const jobOps = ops.map(({ op, identityId, fireAt }) => ({
      op,
      jobId: jobIdFor(identityId),
      fireAt,
    }));
    const results = await jobs.arm(queues[kind], jobOps, now, JOB_NAMES[kind], fence, fenceHighKey);
    const refused = results.filter((r) => r === 3).length;
    if (refused > 0) onRefused(refused);
    return results;
  }

  async function apply(
    kind: TimerKind,
    identityId: string,
    action: ArmAction,
    fence: number,
  ): Promise<void> {
    const queue = queues[kind];
    const jobId = jobIdFor(identityId);
    switch (action.kind) {
      case "none":
        return;
      case "add":
      case "reschedule":
        // Not done means a worker took the job (it runs now and reads Postgres under the lock
        // the caller holds), a job already exists, or a newer arm decided: no error.
        await armScript(
          kind,
          [{ op: action.kind === "add" ? "a" : "r", identityId, fireAt: action.fireAt }],
          Date.now(),
          fence,
        );
        return;
      case "replace":
        await queue.remove(jobId);
        await armScript(kind, [{ op: "a", identityId, fireAt: action.fireAt }], Date.now(), fence);
        return;
      case "remove": {
        // A delayed job is removed under the fence. Other states are rare here: a finished job
        // goes through BullMQ; a waiting one too (it would run and find nothing to do); BullMQ
        // refuses an active one, whose worker decides under our lock afterwards.
        const [result] = await armScript(
          kind,
          [{ op: "d", identityId, fireAt: 0 }],
          Date.now(),
          fence,
        );
        if (result === 1) await queue.remove(jobId);
        return;
      }
    }
  }

  async function armMany(
    kind: TimerKind,
    items: readonly ArmItem[],
    now: number,
    fence: number,
    options: ArmManyOptions = {},
  ): Promise<ArmAction[]> {
    if (options.expectMissing !== true) return armViewing(kind, items, now, fence);
    return armExpectingMissing(items, {
      addAll: (adds) =>
        armScript(
          kind,
          adds.map((a) => ({ op: "a" as const, ...a })),
          now,
          fence,
        ),
      armViewing: (rest) => armViewing(kind, rest, now, fence),
    });
  }

  /** View every job, planArm each, then one arm-script call for the adds and moves. */
  async function armViewing(
    kind: TimerKind,
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
    const fast: { op: "a" | "r"; identityId: string; fireAt: number; index: number }[] = [];
    const slow: Promise<void>[] = [];
    items.forEach((item, index) => {
      const action = actions[index] as ArmAction;
      if (action.kind === "add" || action.kind === "reschedule") {
        const op = action.kind === "add" ? "a" : "r";
        fast.push({ op, identityId: item.identityId, fireAt: action.fireAt, index });
      } else if (action.kind !== "none") {
        slow.push(apply(kind, item.identityId, action, fence));
      }
    });
    const fastDone = armScript(kind, fast, now, fence);
    // Settle everything before returning or throwing: the caller's row locks must outlive
    // every Redis change made for them.
    await settleAll([fastDone, ...slow]);
    const done = await fastDone;
    fast.forEach((f, i) => {
      if (done[i] === 3) actions[f.index] = { kind: "none" };
    });
    // A worker moved the job between our view and the script: plan that identity again.
    const replans = fast.flatMap((f, i) => (done[i] === 1 ? [f] : []));
    await settleAll(
      replans.map(async (f) => {
        const desired = items[f.index]?.desired ?? null;
        actions[f.index] = await armOne(kind, f.identityId, desired, now, fence);
      }),
    );
    return actions;
  }

  async function armEarlier(
    kind: TimerKind,
    items: readonly { identityId: string; fireAt: number }[],
    now: number,
    fence: number,
  ): Promise<ArmAction[]> {
    const results = await armScript(
      kind,
      items.map((item) => ({ op: "e" as const, ...item })),
      now,
      fence,
    );
    const actions: ArmAction[] = items.map((item, i) =>
      results[i] === 0 ? { kind: "reschedule", fireAt: item.fireAt } : { kind: "none" },
    );
    // Not delayed (result 1): view and plan those the general way.
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
  }

  /** One identity, planned again after each state change a worker makes under us. */
  async function armOne(
    kind: TimerKind,
    identityId: string,
    desired: number | null,
    now: number,
    fence: number,
  ): Promise<ArmAction> {
    for (let attempt = 0; attempt < MAX_REPLANS; attempt++) {
      const [current] = await view(kind, [identityId]);
      const action = planArm(desired, current ?? { state: "missing" }, now);
      if (action.kind !== "add" && action.kind !== "reschedule") {
        await apply(kind, identityId, action, fence);
        return action;
      }
      const op = action.kind === "add" ? "a" : "r";
      const [result] = await armScript(
        kind,
        [{ op, identityId, fireAt: action.fireAt }],
        now,
        fence,
      );
      if (result === 0) return action;
      if (result === 3) return { kind: "none" };
    }
    throw new Error(`the ${kind} wake-up of ${identityId} kept changing state while being armed`);
  }

  return { view, apply, armMany, armEarlier };
}

/**
 * Splits `items` by shard, runs `run` once per shard side by side, and puts the results back in
 * the order given. Items of one shard keep their order.
 */
export async function perShard<T, R>(
  items: readonly T[],
  shardOfItem: (item: T) => number,
  run: (shard: number, items: T[]) => Promise<R[]>,
): Promise<R[]> {
  const groups = new Map<number, { items: T[]; at: number[] }>();
  items.forEach((item, i) => {
    const shard = shardOfItem(item);
    let group = groups.get(shard);
    if (group === undefined) {
      group = { items: [], at: [] };
      groups.set(shard, group);
    }
    group.items.push(item);
    group.at.push(i);
  });
  const out = new Array<R>(items.length);
  const settled = await Promise.allSettled(
    [...groups].map(async ([shard, group]) => {
      const results = await run(shard, group.items);
      group.at.forEach((at, k) => {
        out[at] = results[k] as R;
      });
    }),
  );
  // Every shard's Redis work has settled before a failure is reported (the caller's row locks
  // must outlive every change made for them).
  for (const result of settled) if (result.status === "rejected") throw result.reason;
  return out;
}
