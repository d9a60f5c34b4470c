import { Queue } from "bullmq";
import { Redis } from "ioredis";
import { type ArmAction, type JobView, planArm } from "../core/timers.js";

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

/** What a wake-up job carries; `failures` counts consecutive failed attempts for the backoff. */
export interface WakeData {
  identityId: string;
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

export interface Timers {
  readonly prefix: string;
  readonly queues: Record<TimerKind, Queue<WakeData>>;
  /** Reads the state and fire time of identities' wake-up jobs, pipelined. */
  view(kind: TimerKind, identityIds: readonly string[]): Promise<JobView[]>;
  /** Carries out a planned action; losing a race to a worker that took the job is not an error. */
  apply(kind: TimerKind, identityId: string, action: ArmAction): Promise<void>;
  /**
   * Makes the identity's wake-up fire at `desired` (null: no wake-up). The caller must hold the
   * identity's row lock (DESIGN.md, "One lock per identity"). Returns what was done.
   */
  arm(kind: TimerKind, identityId: string, desired: number | null, now: number): Promise<ArmAction>;
  /** Records that Redis holds reconciled wake-ups; the mark vanishes if Redis loses its data. */
  markReconciled(): Promise<void>;
  isReconciled(): Promise<boolean>;
  /** Takes (or renews) a lease so that one process at a time runs the start-up reconcile. */
  tryLease(name: string, owner: string, ttlMs: number): Promise<boolean>;
  releaseLease(name: string, owner: string): Promise<void>;
  /** Yields the identity ids of all wake-up jobs of a queue, in pages (SCAN: no blocking). */
  scanIdentityIds(kind: TimerKind, pageSize: number): AsyncGenerator<string[]>;
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

  async function view(kind: TimerKind, identityIds: readonly string[]): Promise<JobView[]> {
    const queue = queues[kind];
    const pipeline = redis.pipeline();
    for (const id of identityIds) {
      const jobId = jobIdFor(id);
      pipeline.zscore(queue.toKey("delayed"), jobId);
      pipeline.exists(queue.toKey(jobId));
    }
    const replies = (await pipeline.exec()) ?? [];
    const views: JobView[] = [];
    for (let i = 0; i < identityIds.length; i++) {
      const [scoreErr, score] = replies[2 * i] ?? [];
      const [existsErr, exists] = replies[2 * i + 1] ?? [];
      if (scoreErr || existsErr) throw scoreErr ?? existsErr;
      if (typeof score === "string") views.push({ state: "delayed", fireAt: fireAtOf(score) });
      else if (exists === 0) views.push({ state: "missing" });
      else views.push(await slowState(kind, identityIds[i] as string));
    }
    return views;
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

  async function add(kind: TimerKind, identityId: string, fireAt: number): Promise<void> {
    const now = Date.now();
    await queues[kind].add(
      JOB_NAMES[kind],
      { identityId },
      // An explicit timestamp makes the fire time exactly timestamp + delay = fireAt.
      { jobId: jobIdFor(identityId), timestamp: now, delay: Math.max(0, fireAt - now) },
    );
  }

  /**
   * Moves a delayed job to `fireAt`. BullMQ's changeDelay takes a delay and adds it to its own
   * Date.now(), read after an await, so under load the fire time can land a few ms late. We read
   * the score back (we hold the row lock, nobody else moves it) and correct by the measured
   * overshoot until it is not later than `fireAt`: a wake-up may come a little early (it then
   * re-arms to the deadline), never late.
   */
  async function reschedule(kind: TimerKind, identityId: string, fireAt: number): Promise<void> {
    const queue = queues[kind];
    const jobId = jobIdFor(identityId);
    const job = await queue.getJob(jobId);
    if (job === undefined) return add(kind, identityId, fireAt);
    // The margin is what the last attempt landed late by, so a correction lands early by only
    // about the time BullMQ took to read its clock (usually 0 or 1 ms).
    for (let margin = 0; ; ) {
      const delay = Math.max(0, fireAt - Date.now() - margin);
      try {
        await job.changeDelay(delay);
      } catch (err) {
        // It left the delayed set (promoted, so it runs now and reads Postgres under the lock
        // we hold) or vanished (then it must be added again).
        if (!isNotDelayed(err)) throw err;
        if (!(await queue.getJob(jobId))) await add(kind, identityId, fireAt);
        return;
      }
      const score = await redis.zscore(queue.toKey("delayed"), jobId);
      if (score === null || fireAtOf(score) <= fireAt || delay === 0) return;
      margin += fireAtOf(score) - fireAt;
    }
  }

  async function apply(kind: TimerKind, identityId: string, action: ArmAction): Promise<void> {
    const queue = queues[kind];
    const jobId = jobIdFor(identityId);
    switch (action.kind) {
      case "none":
        return;
      case "add":
        return add(kind, identityId, action.fireAt);
      case "reschedule":
        return reschedule(kind, identityId, action.fireAt);
      case "replace":
        await queue.remove(jobId);
        return add(kind, identityId, action.fireAt);
      case "remove":
        // Returns 0 for a job a worker holds; that worker decides under our lock afterwards.
        await queue.remove(jobId);
        return;
    }
  }

  async function arm(
    kind: TimerKind,
    identityId: string,
    desired: number | null,
    now: number,
  ): Promise<ArmAction> {
    const [current] = await view(kind, [identityId]);
    const action = planArm(desired, current ?? { state: "missing" }, now);
    await apply(kind, identityId, action);
    return action;
  }

  const markKey = `${prefix}:kp-rotor:reconciled`;

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

  async function* scanIdentityIds(kind: TimerKind, pageSize: number): AsyncGenerator<string[]> {
    const base = queues[kind].toKey("");
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${base}id-*`, "COUNT", pageSize);
      cursor = next;
      // Job hashes are <base>id-<identity>; an identity id never contains ':', so longer keys
      // (locks, logs) are skipped.
      const ids = keys.map((k) => k.slice(base.length)).filter((rest) => !rest.includes(":"));
      const identityIds = ids.flatMap((jobId) => identityIdOf(jobId) ?? []);
      if (identityIds.length > 0) yield identityIds;
    } while (cursor !== "0");
  }

  return {
    prefix,
    queues,
    view,
    apply,
    arm,
    async markReconciled() {
      await redis.set(markKey, new Date().toISOString());
    },
    async isReconciled() {
      return (await redis.exists(markKey)) === 1;
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
    scanIdentityIds,
    async close() {
      await Promise.all(Object.values(queues).map((q) => q.close()));
    },
  };
}

/** BullMQ's changeDelay refuses jobs that are not delayed (code -3) or missing (code -1). */
function isNotDelayed(err: unknown): boolean {
  const message = err instanceof Error ? err.message : "";
  return /is not in the delayed state|Missing key for job/.test(message);
}
