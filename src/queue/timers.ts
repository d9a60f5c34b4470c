import { Queue } from "bullmq";
import { Cluster, Redis } from "ioredis";
import type { ArmItem, Wakeups } from "../core/ports.js";
import { type ArmAction, type JobView, planArm } from "../core/timers.js";
import { settleAll } from "../settle.js";
import { ARM_LUA, VIEW_LUA } from "./arm-script.js";
import { type KeyLayout, shardOf, shardPrefix, sharedPrefix } from "./layout.js";

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
 * `identityId` is only read from jobs written before it was dropped from the data.
 */
export interface WakeData {
  identityId?: string;
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

/** A connection to a single Redis or to a Redis Cluster; BullMQ and our scripts take either. */
export type RedisConnection = Redis | Cluster;

/** Where Redis is: a URL (a single server) or the seed nodes of a cluster (`host:port`). */
export type RedisTarget = string | { url: string; clusterNodes?: readonly string[] | undefined };

/**
 * A Redis connection. Request paths ("client") fail fast, so an API call answers 503 instead of
 * waiting for Redis forever; BullMQ workers ("worker") require commands that never give up. With
 * cluster nodes it is an ioredis Cluster (slots discovered from the seeds; no `keyPrefix`, which
 * BullMQ does not allow; the password and TLS of the URL apply to every node).
 */
export function createRedis(
  target: RedisTarget,
  mode: "client" | "worker" = "client",
): RedisConnection {
  const url = typeof target === "string" ? target : target.url;
  const nodes = typeof target === "string" ? undefined : target.clusterNodes;
  const options =
    mode === "worker"
      ? { maxRetriesPerRequest: null }
      : { maxRetriesPerRequest: 1, commandTimeout: 5_000, connectTimeout: 5_000 };
  if (nodes === undefined || nodes.length === 0) return new Redis(url, options);
  const parsed = new URL(url);
  const auth = {
    ...(parsed.username ? { username: decodeURIComponent(parsed.username) } : {}),
    ...(parsed.password ? { password: decodeURIComponent(parsed.password) } : {}),
    ...(parsed.protocol === "rediss:" ? { tls: {} } : {}),
  };
  return new Cluster(
    nodes.map((node) => {
      const at = node.lastIndexOf(":");
      return { host: node.slice(0, at), port: Number(node.slice(at + 1)) };
    }),
    {
      redisOptions: { ...options, ...auth },
      // Blocking and script calls go to the primary that owns the slot; never read a replica.
      scaleReads: "master",
      // While a primary fails over, retry instead of failing at once.
      retryDelayOnClusterDown: 300,
      retryDelayOnFailover: 200,
      ...(mode === "client" ? {} : { maxRedirections: 16 }),
    },
  );
}

/** The primaries to run a keyspace SCAN on: every primary of a cluster, or the one server. */
export function scanTargets(redis: RedisConnection): Redis[] {
  return redis instanceof Cluster ? redis.nodes("master") : [redis];
}

export type { ArmItem };

/** The opts field of every job armed here: BullMQ's default, short enough for a listpack hash. */
const JOB_OPTS = JSON.stringify({ attempts: 0 });

/** Items per arm-script call: bounds how long one call keeps Redis busy (about a few ms). */
const ARM_CHUNK = 1_000;

/** How often an item whose job changed state under us (a worker took it) is planned again. */
const MAX_REPLANS = 5;

type RedisWithScripts = RedisConnection & {
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

/** One shard's queue pair (rotation, deletion). */
export type ShardQueues = Record<TimerKind, Queue<WakeData>>;

/**
 * The Wakeups port (src/core/ports.ts, where each method's contract is written) on BullMQ, plus
 * what only operators and tests use: the queues themselves, a planned action applied as is, and
 * close. Every method taking identities routes each one to its shard's queue.
 */
export interface Timers extends Wakeups {
  readonly prefix: string;
  readonly layout: KeyLayout;
  /** Shard 0's queues: with one shard (the default), all of them. */
  readonly queues: ShardQueues;
  /** Every shard's queues, by shard number. */
  readonly shardQueues: readonly ShardQueues[];
  /** The shard of an identity under this layout. */
  shardOf(identityId: string): number;
  /** Wake-up jobs that will fire, per shard (the census compared per queue). */
  countWakeupsPerShard(kind: TimerKind): Promise<number[]>;
  /** Which shards lack the reconcile mark (all of them after a full loss). */
  unreconciledShards(): Promise<number[]>;
  /** Carries out a planned action; losing a race to a worker that took the job is not an error. */
  apply(kind: TimerKind, identityId: string, action: ArmAction, fence: number): Promise<void>;
  close(): Promise<void>;
}

/** Opens one shard's two queues under `prefix`. */
export function openShardQueues(
  redis: RedisConnection,
  prefix: string,
  onError: (err: Error) => void = () => {},
): ShardQueues {
  const queues = {
    rotation: new Queue<WakeData>(QUEUE_NAMES.rotation, { connection: redis, prefix }),
    deletion: new Queue<WakeData>(QUEUE_NAMES.deletion, { connection: redis, prefix }),
  };
  for (const queue of Object.values(queues)) queue.on("error", onError);
  return queues;
}

/** The arming half of the port for one shard's queues (every id given belongs to that shard). */
interface ShardArmer {
  view(kind: TimerKind, identityIds: readonly string[]): Promise<JobView[]>;
  apply(kind: TimerKind, identityId: string, action: ArmAction, fence: number): Promise<void>;
  armMany(
    kind: TimerKind,
    items: readonly ArmItem[],
    now: number,
    fence: number,
  ): Promise<ArmAction[]>;
  armEarlier(
    kind: TimerKind,
    items: readonly { identityId: string; fireAt: number }[],
    now: number,
    fence: number,
  ): Promise<ArmAction[]>;
}

function createShardArmer(redis: RedisConnection, queues: ShardQueues): ShardArmer {
  // EVALSHA, falling back to EVAL once per connection (ioredis defineCommand; on a cluster, sent
  // to the primary of the first key's slot).
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

  return { view, apply, armMany, armEarlier };
}

/**
 * Splits `items` by shard, runs `run` once per shard side by side, and puts the results back in
 * the order given. Items of one shard keep their order.
 */
async function perShard<T, R>(
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

/**
 * Opens the wake-up queues (two per shard) on one shared connection, laid out as `layout` says
 * (src/queue/layout.ts; a plain prefix means one shard on a single Redis, today's key names).
 * Connection errors surface through `onError` (the caller logs them) instead of BullMQ's default
 * of printing them raw.
 */
export function createTimers(
  redis: RedisConnection,
  prefixOrLayout: string | KeyLayout,
  onError: (err: Error) => void = () => {},
): Timers {
  const layout: KeyLayout =
    typeof prefixOrLayout === "string"
      ? { prefix: prefixOrLayout, shards: 1, cluster: false }
      : prefixOrLayout;
  const prefix = layout.prefix;
  const shardNumbers = Array.from({ length: layout.shards }, (_, i) => i);
  const shardQueues = shardNumbers.map((i) =>
    openShardQueues(redis, shardPrefix(layout, i), onError),
  );
  const armers = shardQueues.map((queues) => createShardArmer(redis, queues));
  const shardOfId = (identityId: string) => shardOf(identityId, layout.shards);
  const armerOf = (identityId: string) => armers[shardOfId(identityId)] as ShardArmer;
  const queues = shardQueues[0] as ShardQueues;

  // The reconcile mark and the runs in progress live in each shard's slot (the completion script
  // touches both), so a shard whose primary lost its data lacks its mark; the lease is shared.
  const markKey = (shard: number) => `${shardPrefix(layout, shard)}:kp-rotor:reconciled`;
  const runKey = (shard: number) => `${shardPrefix(layout, shard)}:kp-rotor:reconcile-runs`;
  const leaseKey = (name: string) => `${sharedPrefix(layout)}:kp-rotor:lease:${name}`;

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

  /**
   * One SCAN pass per primary (every primary of a cluster: SCAN sees one node's keys) over every
   * shard's job hashes; each page holds the ids found in one SCAN reply.
   */
  async function* scanAllIdentityIds(
    pageSize: number,
  ): AsyncGenerator<Record<TimerKind, string[]>> {
    const bases = shardQueues.flatMap((q) =>
      TIMER_KINDS.map((kind) => [kind, q[kind].toKey("")] as const),
    );
    const pattern =
      layout.shards > 1 || layout.cluster ? `{${prefix}:*}:*:id-*` : `${prefix}:*:id-*`;
    for (const node of scanTargets(redis)) {
      let cursor = "0";
      do {
        const [next, keys] = await node.scan(cursor, "MATCH", pattern, "COUNT", pageSize);
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
  }

  async function countWakeupsPerShard(kind: TimerKind): Promise<number[]> {
    return Promise.all(
      shardQueues.map(async (q) => {
        const counts = await q[kind].getJobCounts("active", "delayed", "wait", "prioritized");
        return Object.values(counts).reduce((sum, n) => sum + n, 0);
      }),
    );
  }

  async function unreconciledShards(): Promise<number[]> {
    // One EXISTS per shard (on a cluster the marks sit in different slots).
    const present = await Promise.all(shardNumbers.map((i) => redis.exists(markKey(i))));
    return shardNumbers.filter((i) => present[i] !== 1);
  }

  return {
    prefix,
    layout,
    queues,
    shardQueues,
    shardOf: shardOfId,
    view: (kind, identityIds) =>
      perShard(identityIds, shardOfId, (shard, ids) =>
        (armers[shard] as ShardArmer).view(kind, ids),
      ),
    apply: (kind, identityId, action, fence) =>
      armerOf(identityId).apply(kind, identityId, action, fence),
    async arm(kind, identityId, desired, now, fence) {
      const [action] = await armerOf(identityId).armMany(
        kind,
        [{ identityId, desired }],
        now,
        fence,
      );
      return action ?? { kind: "none" };
    },
    armMany: (kind, items, now, fence) =>
      perShard(
        items,
        (item) => shardOfId(item.identityId),
        (shard, group) => (armers[shard] as ShardArmer).armMany(kind, group, now, fence),
      ),
    armEarlier: (kind, items, now, fence) =>
      perShard(
        items,
        (item) => shardOfId(item.identityId),
        (shard, group) => (armers[shard] as ShardArmer).armEarlier(kind, group, now, fence),
      ),
    async beginReconcile(runId) {
      // A sorted set of the runs in progress, so that runs side by side (an operator's beside a
      // worker's) each complete; records of runs whose process died are dropped after a day.
      const now = Date.now();
      await Promise.all(
        shardNumbers.map((i) =>
          redis
            .multi()
            .zadd(runKey(i), now, runId)
            .zremrangebyscore(runKey(i), "-inf", now - 86_400_000)
            .exec(),
        ),
      );
    },
    async completeReconcile(runId) {
      const at = new Date().toISOString();
      // Per shard: a shard whose data was lost during the run lost the record and gets no mark.
      const done = await Promise.all(
        shardNumbers.map((i) =>
          redis.eval(
            "if redis.call('zrem', KEYS[1], ARGV[1]) == 1 then redis.call('set', KEYS[2], ARGV[2]) return 1 end return 0",
            2,
            runKey(i),
            markKey(i),
            runId,
            at,
          ),
        ),
      );
      return done.every((d) => d === 1);
    },
    async isReconciled() {
      return (await unreconciledShards()).length === 0;
    },
    unreconciledShards,
    async countWakeups(kind) {
      return (await countWakeupsPerShard(kind)).reduce((sum, n) => sum + n, 0);
    },
    countWakeupsPerShard,
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
      await Promise.all(shardQueues.flatMap((q) => Object.values(q)).map((q) => q.close()));
    },
  };
}
