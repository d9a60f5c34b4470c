import { Queue } from "bullmq";
import { Redis } from "ioredis";
import type { ArmItem, Wakeups } from "../core/ports.js";
import { type ArmAction, type JobView, planArm } from "../core/timers.js";
import { settleAll } from "../settle.js";
import { ARM_LUA, VIEW_LUA } from "./arm-script.js";
import { withRedisErrors } from "./errors.js";

/**
 * The wake-up queues. This directory holds the only files that import bullmq. A job is only a
 * wake-up: it carries the identity id and nothing else, and its processor reads the truth from
 * Postgres (DESIGN.md, "Postgres is the truth").
 */
export const TIMER_KINDS = ["rotation", "deletion"] as const;
export type TimerKind = (typeof TIMER_KINDS)[number];

/** The queue names, and the job name shown in Bull Board. */
export const QUEUE_NAMES: Record<TimerKind, string> = {
  rotation: "rotation",
  deletion: "deletion",
};
const JOB_NAMES: Record<TimerKind, string> = { rotation: "rotate", deletion: "delete" };

/**
 * What a wake-up job carries: nothing while all is well (`{}`; the identity id is in the job id),
 * and `failures`, the count of consecutive failed attempts for the backoff, while retrying.
 */
export interface WakeData {
  failures?: number;
}

/**
 * One job per identity and queue. BullMQ rejects ids that parse as integers and ids with ':',
 * so the identity id (which may be "123") gets a fixed prefix.
 */
export const jobIdFor = (identityId: string): string => `id-${identityId}`;
export const identityIdOf = (jobId: string): string | undefined =>
  jobId.startsWith("id-") ? jobId.slice(3) : undefined;

/** BullMQ's delayed set is scored by fire time * 4096 + a same-millisecond counter. */
const fireAtOf = (score: string): number => Math.floor(Number(score) / 4096);

/**
 * A Redis connection. Request paths ("client") fail fast, so an API call answers 503 instead of
 * waiting for Redis forever; BullMQ workers ("worker") require commands that never give up.
 */
export function createRedis(url: string, mode: "client" | "worker" = "client"): Redis {
  return mode === "worker"
    ? new Redis(url, { maxRetriesPerRequest: null })
    : new Redis(url, { maxRetriesPerRequest: 1, commandTimeout: 5_000, connectTimeout: 5_000 });
}

export type { ArmItem };

/** The opts field of every job armed here: BullMQ's default, short enough for a listpack hash. */
const JOB_OPTS = JSON.stringify({ attempts: 0 });

/** Items per arm-script call: bounds how long one call keeps Redis busy (about a few ms). */
const ARM_CHUNK = 1_000;

/** How often an item whose job changed state under us (a worker took it) is planned again. */
const MAX_REPLANS = 5;

type RedisWithScripts = Redis & {
  kpRotorView(delayedKey: string, prefix: string, ...jobIds: string[]): Promise<string[]>;
  kpRotorArm(
    delayedKey: string,
    markerKey: string,
    prefix: string,
    now: string,
    name: string,
    opts: string,
    ...items: string[]
  ): Promise<number[]>;
};

/**
 * The Wakeups port (src/core/ports.ts, where each method's contract is written) on BullMQ, plus
 * what only operators and tests use: the queues themselves, a planned action applied as is, and
 * close.
 */
export interface Timers extends Wakeups {
  readonly prefix: string;
  readonly queues: Record<TimerKind, Queue<WakeData>>;
  /** Carries out a planned action; losing a race to a worker that took the job is not an error. */
  apply(kind: TimerKind, identityId: string, action: ArmAction, fence: number): Promise<void>;
  close(): Promise<void>;
}

/**
 * Opens the two queues on one shared Redis connection under `prefix`. Connection errors surface
 * through `onError` (the caller logs them) instead of BullMQ's default of printing them raw.
 */
export function createTimers(
  redis: Redis,
  prefix: string,
  onError: (err: Error) => void = () => {},
): Timers {
  const queues = {
    rotation: new Queue<WakeData>(QUEUE_NAMES.rotation, { connection: redis, prefix }),
    deletion: new Queue<WakeData>(QUEUE_NAMES.deletion, { connection: redis, prefix }),
  };
  for (const queue of Object.values(queues)) queue.on("error", onError);
  // EVALSHA, falling back to EVAL once per connection (ioredis defineCommand).
  const scripted = redis as RedisWithScripts;
  if (typeof scripted.kpRotorView !== "function") {
    redis.defineCommand("kpRotorView", { numberOfKeys: 1, lua: VIEW_LUA });
    redis.defineCommand("kpRotorArm", { numberOfKeys: 2, lua: ARM_LUA });
  }

  async function view(kind: TimerKind, identityIds: readonly string[]): Promise<JobView[]> {
    if (identityIds.length === 0) return [];
    const queue = queues[kind];
    const calls: Promise<string[]>[] = [];
    for (let i = 0; i < identityIds.length; i += ARM_CHUNK) {
      const jobIds = identityIds.slice(i, i + ARM_CHUNK).map(jobIdFor);
      calls.push(scripted.kpRotorView(queue.toKey("delayed"), queue.toKey(""), ...jobIds));
    }
    const replies = (await Promise.all(calls)).flat();
    return Promise.all(
      identityIds.map((id, i): JobView | Promise<JobView> => {
        const reply = replies[i];
        if (reply === "m") return { state: "missing" };
        if (reply === "x" || reply === undefined) return slowState(kind, id);
        return { state: "delayed", fireAt: fireAtOf(reply) };
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
        // Moved to delayed between our two reads: read its score again.
        const score = await redis.zscore(queues[kind].toKey("delayed"), jobIdFor(identityId));
        return score === null
          ? { state: "waiting" }
          : { state: "delayed", fireAt: fireAtOf(score) };
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
    const queue = queues[kind];
    const calls: Promise<number[]>[] = [];
    for (let i = 0; i < ops.length; i += ARM_CHUNK) {
      const args: string[] = [];
      for (const { op, identityId, fireAt } of ops.slice(i, i + ARM_CHUNK)) {
        args.push(op, jobIdFor(identityId), String(Math.round(fireAt)));
      }
      // Pipelined: ioredis sends the calls back to back, Redis runs them in this order.
      calls.push(
        scripted.kpRotorArm(
          queue.toKey("delayed"),
          queue.toKey("marker"),
          queue.toKey(""),
          String(Math.round(now)),
          JOB_NAMES[kind],
          JOB_OPTS,
          String(fence),
          ...args,
        ),
      );
    }
    return (await Promise.all(calls)).flat();
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

  async function arm(
    kind: TimerKind,
    identityId: string,
    desired: number | null,
    now: number,
    fence: number,
  ): Promise<ArmAction> {
    const [action] = await armMany(kind, [{ identityId, desired }], now, fence);
    return action ?? { kind: "none" };
  }

  const markKey = `${prefix}:kp-rotor:reconciled`;
  const runKey = `${prefix}:kp-rotor:reconcile-runs`;

  const leaseKey = (name: string) => `${prefix}:kp-rotor:lease:${name}`;

  async function tryLease(name: string, owner: string, ttlMs: number): Promise<boolean> {
    const key = leaseKey(name);
    if ((await redis.set(key, owner, "PX", ttlMs, "NX")) === "OK") return true;
    // Renew only our own lease (compare-and-set in one script).
    const renewed = await redis.eval(
      "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0",
      1,
      key,
      owner,
      ttlMs,
    );
    return renewed === 1;
  }

  async function* scanAllIdentityIds(
    pageSize: number,
  ): AsyncGenerator<Record<TimerKind, string[]>> {
    const bases = TIMER_KINDS.map((kind) => [kind, queues[kind].toKey("")] as const);
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}:*:id-*`, "COUNT", pageSize);
      cursor = next;
      const page: Record<TimerKind, string[]> = { rotation: [], deletion: [] };
      for (const key of keys) {
        for (const [kind, base] of bases) {
          if (!key.startsWith(base)) continue;
          const rest = key.slice(base.length);
          // Job hashes are <base>id-<identity>; an identity id never contains ':', so longer
          // keys (locks, logs) are skipped.
          const identityId = rest.includes(":") ? undefined : identityIdOf(rest);
          if (identityId !== undefined) page[kind].push(identityId);
        }
      }
      if (page.rotation.length > 0 || page.deletion.length > 0) yield page;
    } while (cursor !== "0");
  }

  // Connection failures and timeouts leave as DEPENDENCY_UNAVAILABLE (queue/errors.ts).
  return withRedisErrors({
    prefix,
    queues,
    view,
    apply,
    arm,
    armMany,
    armEarlier,
    async beginReconcile(runId) {
      // A sorted set of the runs in progress, so that runs side by side (an operator's beside a
      // worker's) each complete; records of runs whose process died are dropped after a day.
      const now = Date.now();
      await redis
        .multi()
        .zadd(runKey, now, runId)
        .zremrangebyscore(runKey, "-inf", now - 86_400_000)
        .exec();
    },
    async completeReconcile(runId) {
      const done = await redis.eval(
        "if redis.call('zrem', KEYS[1], ARGV[1]) == 1 then redis.call('set', KEYS[2], ARGV[2]) return 1 end return 0",
        2,
        runKey,
        markKey,
        runId,
        new Date().toISOString(),
      );
      return done === 1;
    },
    async isReconciled() {
      return (await redis.exists(markKey)) === 1;
    },
    async countWakeups(kind) {
      const counts = await queues[kind].getJobCounts("active", "delayed", "wait", "prioritized");
      return Object.values(counts).reduce((sum, n) => sum + n, 0);
    },
    tryLease,
    async releaseLease(name, owner) {
      await redis.eval(
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
        1,
        leaseKey(name),
        owner,
      );
    },
    scanAllIdentityIds,
    async close() {
      await Promise.all(Object.values(queues).map((q) => q.close()));
    },
  });
}
