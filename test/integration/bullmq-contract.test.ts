import { readFileSync } from "node:fs";
import { BullMQAdapter } from "@bull-board/api/bullMQAdapter";
import { queuesHandler } from "@bull-board/api/dist/handlers/queues.js";
import { type Job, Queue, Worker } from "bullmq";
import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { nextArmFence } from "../../src/db/identities.repo.js";
import { createLogger } from "../../src/logger.js";
import { PreciseWorker } from "../../src/queue/bullmq/index.js";
import { createWakeupQueues, jobIdFor, type WakeupQueues } from "../../src/queue/wakeup-queues.js";
import { startWorker } from "../../src/queue/wake-worker.js";
import { createTestEnv, type TestEnv } from "../helpers/env.js";

/**
 * The BullMQ contract (docs/bullmq-upgrade.md). src/queue writes and reads BullMQ's Redis
 * structures itself (the arm and view scripts), replaces the private Worker#waitForJob
 * (PreciseWorker) and drives jobs through moveToDelayed with the lock token (workers.ts). This file
 * pins down, on the installed BullMQ, every structure and behaviour those depend on, so that an
 * upgrade which changes any of them fails here first, with a message saying which.
 *
 * Part 1 derives each structure from what BullMQ itself writes through its public API.
 * Part 2 runs BullMQ's public API (and Bull Board's listing) over jobs armed by our scripts, and
 * our view script over jobs BullMQ added.
 */

// ---- The contract: what src/queue assumes of BullMQ, read from its 6.7.0 Lua sources. ----

/** The version the contract was read from; an upgrade must re-read it and change this. */
const PINNED_BULLMQ = "6.7.0";
/** Delayed-set score = fire time (epoch ms) * 4096 + n (getDelayedScore: 0x1000). */
const SCORE_PER_MS = 4096;
/** The marker member BullMQ scores with the delayed head's fire time (addDelayMarkerIfNeeded). */
const DELAYED_MARKER_MEMBER = "1";
/** The "a job is ready" marker (addBaseMarkerIfNeeded): member "0" with score 0. */
const READY_MARKER = ["0", "0"];
/** The fields storeJob writes for a plain delayed job; our arm script writes them plus `kseq`. */
const JOB_HASH_FIELDS = ["data", "delay", "name", "opts", "priority", "timestamp"];
/** The queue's keys, `<prefix>:<queue>:<suffix>`, that src/queue names or relies on. */
const KEY_SUFFIXES = ["delayed", "wait", "active", "marker", "meta", "id", "events"] as const;
/** Worker#waitForJob(blockUntil): one parameter. */
const WAIT_FOR_JOB_ARITY = 1;

const HOUR = 3_600_000;
const QUEUE = "rotation";

let env: TestEnv;
let prefixes = 0;
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  env = await createTestEnv();
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

afterAll(async () => {
  await env?.cleanup();
});

function connect(): Redis {
  const redis = new Redis(env.config.redisUrl, { maxRetriesPerRequest: null });
  cleanups.push(() => redis.quit());
  return redis;
}

interface Setup {
  redis: Redis;
  prefix: string;
  timers: WakeupQueues;
  queue: Queue;
  fence(): Promise<number>;
}

/**
 * The production adapter on a fresh prefix under the test env's own (so env.cleanup deletes its
 * keys), with arm fences from Postgres' arm_seq as in production.
 */
function setup(): Setup {
  const redis = connect();
  const prefix = `${env.config.queuePrefix}:contract${++prefixes}`;
  const timers = createWakeupQueues(redis, prefix);
  cleanups.push(() => timers.close());
  return {
    redis,
    prefix,
    timers,
    queue: timers.queues.rotation,
    fence: () => nextArmFence(env.ctx.rotor.db),
  };
}

/** A BullMQ Queue of our own on the same prefix and queue name (BullMQ's public API). */
function bullQueue(prefix: string): Queue {
  const queue = new Queue(QUEUE, { connection: connect(), prefix });
  cleanups.push(() => queue.close());
  return queue;
}

function latch<T = void>() {
  let open!: (value: T) => void;
  const promise = new Promise<T>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

const delayedScore = (s: Setup, jobId: string) => s.redis.zscore(s.queue.toKey("delayed"), jobId);
const fireAtOfScore = (score: string | null) => Math.floor(Number(score) / SCORE_PER_MS);
const marker = (s: Setup) => s.redis.zrange(s.queue.toKey("marker"), 0, -1, "WITHSCORES");

describe("part 1: BullMQ's structures, as BullMQ itself writes them", () => {
  it("the installed BullMQ is the pinned version this contract was read from", () => {
    const ours = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8"));
    const installed = JSON.parse(
      readFileSync(new URL("../../node_modules/bullmq/package.json", import.meta.url), "utf8"),
    );
    expect(ours.dependencies.bullmq, "package.json must pin bullmq exactly").toBe(PINNED_BULLMQ);
    expect(installed.version, "installed bullmq differs from the pin: run npm ci").toBe(
      PINNED_BULLMQ,
    );
  });

  it("Worker has the private waitForJob(blockUntil) and maximumBlockTimeout that PreciseWorker replaces", async () => {
    const waitForJob = (Worker.prototype as unknown as { waitForJob?: unknown }).waitForJob;
    expect(typeof waitForJob, "Worker.prototype.waitForJob is gone").toBe("function");
    expect((waitForJob as (...args: unknown[]) => unknown).length).toBe(WAIT_FOR_JOB_ARITY);
    const ownWait = Object.getOwnPropertyDescriptor(PreciseWorker.prototype, "waitForJob");
    expect(ownWait?.value).toBeTypeOf("function");
    expect(ownWait?.value).not.toBe(waitForJob);
    // PreciseWorker overrides this getter to cap its blocks.
    const blockCap = Object.getOwnPropertyDescriptor(Worker.prototype, "maximumBlockTimeout");
    expect(blockCap?.get, "Worker's maximumBlockTimeout getter is gone").toBeTypeOf("function");

    // The nudge goes to this.keys.marker, the set the worker's BZPOPMIN blocks on.
    const s = setup();
    const worker = new PreciseWorker(QUEUE, async () => {}, {
      connection: connect(),
      prefix: s.prefix,
      maxBlockMs: 5_000,
      autorun: false,
    });
    cleanups.push(() => worker.close());
    expect(worker.keys.marker).toBe(`${s.prefix}:${QUEUE}:marker`);
    expect(worker.maximumBlockTimeout).toBe(5);
  });

  it("key names: <prefix>:<queue>:<suffix> and the job hash <prefix>:<queue>:<jobId>", async () => {
    const s = setup();
    const base = `${s.prefix}:${QUEUE}:`;
    expect(s.queue.toKey("")).toBe(base);
    for (const suffix of KEY_SUFFIXES) {
      expect(s.queue.keys[suffix], suffix).toBe(`${base}${suffix}`);
      expect(s.queue.toKey(suffix), suffix).toBe(`${base}${suffix}`);
    }
    const queue = bullQueue(s.prefix);
    const now = Date.now();
    const job = await queue.add("rotate", {}, { jobId: "id-keys", timestamp: now, delay: HOUR });
    expect(job.id).toBe("id-keys");
    const types = async () =>
      Object.fromEntries(
        await Promise.all(
          ["id-keys", ...KEY_SUFFIXES].map(async (k) => [k, await s.redis.type(`${base}${k}`)]),
        ),
      );
    expect(await types()).toEqual({
      "id-keys": "hash",
      delayed: "zset",
      wait: "none",
      active: "none",
      marker: "zset",
      meta: "hash",
      id: "string",
      events: "stream",
    });
    expect(await s.redis.zscore(`${base}delayed`, "id-keys")).not.toBeNull();

    // Promoted: the id moves to the wait list; taken by a worker: to the active list.
    await job.promote();
    expect(await s.redis.lrange(`${base}wait`, 0, -1)).toEqual(["id-keys"]);
    const worker = new Worker(QUEUE, null, { connection: connect(), prefix: s.prefix });
    cleanups.push(() => worker.close());
    const taken = await worker.getNextJob("contract-token", { block: false });
    expect(taken?.id).toBe("id-keys");
    expect(await s.redis.lrange(`${base}active`, 0, -1)).toEqual(["id-keys"]);
    expect(await s.redis.type(`${base}wait`)).toBe("none");
    await taken?.moveToDelayed(now + HOUR, "contract-token");
    expect(await s.redis.lrange(`${base}active`, 0, -1)).toEqual([]);

    // Generated ids come from the :id counter and are integers; custom ids may be neither
    // integers nor contain ':'. So `id-<identity>` never collides with a generated id.
    const generated = await queue.add("rotate", {}, { delay: HOUR });
    expect(generated.id).toMatch(/^[0-9]+$/);
    expect(generated.id).toBe(await s.redis.get(`${base}id`));
    await expect(queue.add("rotate", {}, { jobId: "123" })).rejects.toThrow();
    await expect(queue.add("rotate", {}, { jobId: "id-a:b" })).rejects.toThrow();
  });

  it("the job hash of a delayed Queue.add has the fields our arm script writes, with the same types", async () => {
    const s = setup();
    const theirs = bullQueue(`${s.prefix}b`);
    const now = Date.now();
    const fireAt = now + HOUR;
    await theirs.add("rotate", {}, { jobId: jobIdFor("hash"), timestamp: now, delay: HOUR });
    await s.timers.arm("rotation", "hash", fireAt, now, await s.fence());

    const theirHash = await s.redis.hgetall(theirs.toKey(jobIdFor("hash")));
    const { kseq, ...ourHash } = await s.redis.hgetall(s.queue.toKey(jobIdFor("hash")));
    expect(Object.keys(theirHash).sort(), "BullMQ's job hash fields changed").toEqual(
      JOB_HASH_FIELDS,
    );
    expect(Object.keys(ourHash).sort()).toEqual(JOB_HASH_FIELDS);
    expect(kseq).toMatch(/^[0-9]+$/);
    // Field by field: the same values, except opts (ours is the short {"attempts":0}).
    expect({ ...theirHash, opts: undefined }).toEqual({ ...ourHash, opts: undefined });
    expect(theirHash).toMatchObject({
      name: "rotate",
      data: "{}",
      timestamp: String(now),
      delay: String(HOUR),
      priority: "0",
    });
    expect(JSON.parse(theirHash.opts ?? "")).toBeTypeOf("object");
    expect(JSON.parse(ourHash.opts ?? "")).toEqual({ attempts: 0 });
    // What Job.fromJSON makes of either is the same job.
    const [a, b] = await Promise.all([
      theirs.getJob(jobIdFor("hash")),
      s.queue.getJob(jobIdFor("hash")),
    ]);
    for (const job of [a, b]) {
      expect(job).toMatchObject({
        id: jobIdFor("hash"),
        name: "rotate",
        data: {},
        timestamp: now,
        delay: HOUR,
        priority: 0,
      });
    }
    expect(b?.opts.attempts ?? 0).toBe(a?.opts.attempts ?? 0);
  });

  it("delayed scores are fire time * 4096 + n, n counting same-millisecond jobs", async () => {
    const s = setup();
    const queue = bullQueue(s.prefix);
    const now = Date.now();
    const fireAt = now + HOUR;
    for (const id of ["s0", "s1", "s2"]) {
      await queue.add("rotate", {}, { jobId: jobIdFor(id), timestamp: now, delay: HOUR });
    }
    await queue.add("rotate", {}, { jobId: jobIdFor("next"), timestamp: now, delay: HOUR + 1 });
    const scores = await Promise.all(
      ["s0", "s1", "s2", "next"].map((id) => delayedScore(s, jobIdFor(id))),
    );
    expect(scores).toEqual([
      String(fireAt * SCORE_PER_MS),
      String(fireAt * SCORE_PER_MS + 1),
      String(fireAt * SCORE_PER_MS + 2),
      String((fireAt + 1) * SCORE_PER_MS),
    ]);
    // The fire time is timestamp + delay of the job BullMQ stored.
    const job = await queue.getJob(jobIdFor("s2"));
    expect(fireAtOfScore(scores[2] ?? null)).toBe((job?.timestamp ?? 0) + (job?.delay ?? 0));
    // Our script numbers on after BullMQ's jobs in that millisecond.
    await s.timers.arm("rotation", "s3", fireAt, now, await s.fence());
    expect(await delayedScore(s, jobIdFor("s3"))).toBe(String(fireAt * SCORE_PER_MS + 3));
  });

  it("the same-millisecond counter stops at 4095, in BullMQ's add and in our script alike", async () => {
    const s = setup();
    const queue = bullQueue(s.prefix);
    const now = Date.now();
    const fireAt = now + HOUR;
    const ids = Array.from({ length: SCORE_PER_MS + 1 }, (_, i) => `full${i}`);
    await s.timers.armMany(
      "rotation",
      ids.map((identityId) => ({ identityId, desired: fireAt })),
      now,
      await s.fence(),
    );
    const top = fireAt * SCORE_PER_MS + SCORE_PER_MS - 1;
    expect(await delayedScore(s, jobIdFor("full4094"))).toBe(String(top - 1));
    expect(await delayedScore(s, jobIdFor("full4095"))).toBe(String(top));
    expect(await delayedScore(s, jobIdFor("full4096"))).toBe(String(top));
    await queue.add("rotate", {}, { jobId: jobIdFor("over"), timestamp: now, delay: HOUR });
    expect(await delayedScore(s, jobIdFor("over"))).toBe(String(top));
    expect(await s.timers.view("rotation", ["full4096", "over"])).toEqual([
      { state: "delayed", fireAt },
      { state: "delayed", fireAt },
    ]);
  });

  it("the marker: member '1' scored with the delayed head's fire time; '0' at 0 when a job is ready", async () => {
    const s = setup();
    const queue = bullQueue(s.prefix);
    const now = Date.now();
    await queue.add("rotate", {}, { jobId: jobIdFor("m1"), timestamp: now, delay: HOUR });
    expect(await marker(s)).toEqual([DELAYED_MARKER_MEMBER, String(now + HOUR)]);
    // A later job leaves the marker at the head; an earlier one moves it there.
    await queue.add("rotate", {}, { jobId: jobIdFor("m2"), timestamp: now, delay: 2 * HOUR });
    expect(await marker(s)).toEqual([DELAYED_MARKER_MEMBER, String(now + HOUR)]);
    await queue.add("rotate", {}, { jobId: jobIdFor("m3"), timestamp: now, delay: HOUR / 2 });
    expect(await marker(s)).toEqual([DELAYED_MARKER_MEMBER, String(now + HOUR / 2)]);
    // Our script writes the same member the same way.
    await s.timers.arm("rotation", "m4", now + HOUR / 4, now, await s.fence());
    expect(await marker(s)).toEqual([DELAYED_MARKER_MEMBER, String(now + HOUR / 4)]);
    // A job made ready (promoted) adds the ready marker, which PreciseWorker's nudge imitates.
    await (await queue.getJob(jobIdFor("m2")))?.promote();
    expect(await marker(s)).toEqual([
      ...READY_MARKER,
      DELAYED_MARKER_MEMBER,
      String(now + HOUR / 4),
    ]);
  });
});

describe("part 2: BullMQ's public API over jobs our scripts armed, and back", () => {
  it("getJob, getState, getJobCounts and getDelayedCount read a script-armed job as delayed", async () => {
    const s = setup();
    const now = Date.now();
    const fireAt = now + HOUR;
    expect(await s.timers.arm("rotation", "read", fireAt, now, await s.fence())).toEqual({
      kind: "add",
      fireAt,
    });
    const job = await s.queue.getJob(jobIdFor("read"));
    expect(job).toMatchObject({
      id: jobIdFor("read"),
      name: "rotate",
      data: {},
      timestamp: now,
      delay: fireAt - now,
    });
    expect(await job?.getState()).toBe("delayed");
    expect(await s.queue.getJobState(jobIdFor("read"))).toBe("delayed");
    expect(await s.queue.getJobCounts("delayed", "wait", "active", "prioritized")).toEqual({
      delayed: 1,
      wait: 0,
      active: 0,
      prioritized: 0,
    });
    expect(await s.queue.getDelayedCount()).toBe(1);
    expect((await s.queue.getDelayed()).map((j) => j.id)).toEqual([jobIdFor("read")]);
    expect(await s.timers.countWakeups("rotation")).toBe(1);
  });

  it("changeDelay moves a script-armed job, keeps its fence, and our view and arm follow", async () => {
    const s = setup();
    const now = Date.now();
    await s.timers.arm("rotation", "move", now + HOUR, now, await s.fence());
    const kseq = await s.redis.hget(s.queue.toKey(jobIdFor("move")), "kseq");
    const job = await s.queue.getJob(jobIdFor("move"));
    const before = Date.now();
    await job?.changeDelay(2 * HOUR);
    const after = Date.now();
    const fireAt = fireAtOfScore(await delayedScore(s, jobIdFor("move")));
    expect(fireAt).toBeGreaterThanOrEqual(before + 2 * HOUR);
    expect(fireAt).toBeLessThanOrEqual(after + 2 * HOUR);
    expect(await s.queue.getJobState(jobIdFor("move"))).toBe("delayed");
    expect((await s.queue.getJob(jobIdFor("move")))?.delay).toBe(2 * HOUR);
    expect(await s.timers.view("rotation", ["move"])).toEqual([{ state: "delayed", fireAt }]);
    expect(await marker(s)).toEqual([DELAYED_MARKER_MEMBER, String(fireAt)]);
    expect(await s.redis.hget(s.queue.toKey(jobIdFor("move")), "kseq"), "kseq lost").toBe(kseq);
    // And our arm moves it back to an exact fire time.
    const back = now + HOUR + 7;
    await s.timers.arm("rotation", "move", back, now, await s.fence());
    expect(await s.timers.view("rotation", ["move"])).toEqual([{ state: "delayed", fireAt: back }]);
  });

  it("promote makes a script-armed job waiting; our view sees it waiting", async () => {
    const s = setup();
    const now = Date.now();
    await s.timers.arm("rotation", "promo", now + HOUR, now, await s.fence());
    const kseq = await s.redis.hget(s.queue.toKey(jobIdFor("promo")), "kseq");
    await (await s.queue.getJob(jobIdFor("promo")))?.promote();
    expect(await s.queue.getJobState(jobIdFor("promo"))).toBe("waiting");
    expect(await s.redis.lrange(s.queue.toKey("wait"), 0, -1)).toEqual([jobIdFor("promo")]);
    expect(await delayedScore(s, jobIdFor("promo"))).toBeNull();
    expect(await s.queue.getJobCounts("delayed", "wait")).toEqual({ delayed: 0, wait: 1 });
    expect(await s.timers.view("rotation", ["promo"])).toEqual([{ state: "waiting" }]);
    expect(await s.redis.zscore(s.queue.toKey("marker"), READY_MARKER[0] ?? "")).toBe(
      READY_MARKER[1],
    );
    expect(await s.redis.hget(s.queue.toKey(jobIdFor("promo")), "kseq")).toBe(kseq);
  });

  it("job.remove deletes a script-armed job; our view sees it missing", async () => {
    const s = setup();
    const now = Date.now();
    await s.timers.arm("rotation", "gone", now + HOUR, now, await s.fence());
    await (await s.queue.getJob(jobIdFor("gone")))?.remove();
    expect(await s.redis.exists(s.queue.toKey(jobIdFor("gone")))).toBe(0);
    expect(await delayedScore(s, jobIdFor("gone"))).toBeNull();
    expect(await s.queue.getJob(jobIdFor("gone"))).toBeUndefined();
    expect(await s.queue.getDelayedCount()).toBe(0);
    expect(await s.timers.view("rotation", ["gone"])).toEqual([{ state: "missing" }]);
  });

  it("a plain BullMQ Worker blocked on the marker is woken by our marker and runs the job at its fire time, not before", async () => {
    const s = setup();
    // BullMQ's Worker unchanged, only watched: what its main loop passes to waitForJob.
    const waits: number[] = [];
    const blocked = latch();
    class WatchedWorker extends Worker {}
    const bullmqWait = (
      Worker.prototype as unknown as {
        waitForJob: (this: Worker, blockUntil: number) => Promise<number>;
      }
    ).waitForJob;
    Object.defineProperty(WatchedWorker.prototype, "waitForJob", {
      value(this: Worker, blockUntil: number) {
        waits.push(blockUntil);
        if (blockUntil === 0) blocked.open();
        return bullmqWait.call(this, blockUntil);
      },
    });
    const ran = latch<{ job: Job; at: number }>();
    // It blocks first, on an empty queue, for longer than this test may take (drainDelay, in
    // seconds): only the marker our script writes can wake it for the job.
    const worker = new WatchedWorker(QUEUE, async (job) => ran.open({ job, at: Date.now() }), {
      connection: connect(),
      prefix: s.prefix,
      drainDelay: 300,
    });
    worker.on("error", () => {});
    cleanups.push(() => worker.close());
    await blocked.promise;
    const now = Date.now();
    const fireAt = now + 1_500;
    await s.timers.arm("rotation", "plain", fireAt, now, await s.fence());
    const { job, at } = await ran.promise;
    expect(job).toMatchObject({ id: jobIdFor("plain"), name: "rotate", data: {} });
    expect(at).toBeGreaterThanOrEqual(fireAt);
    expect(job.processedOn).toBeGreaterThanOrEqual(fireAt);
    // The popped marker's score became the worker's blockUntil: the fire time in epoch ms.
    expect(waits[0]).toBe(0);
    expect(waits).toContain(fireAt);
  });

  it("PreciseWorker runs it at its fire time, not before; BullMQ hands waitForJob the head's fire time", async () => {
    const s = setup();
    const blockUntils: number[] = [];
    class RecordingWorker extends PreciseWorker {}
    const precise = Object.getOwnPropertyDescriptor(PreciseWorker.prototype, "waitForJob")
      ?.value as (this: Worker, blockUntil: number) => Promise<number>;
    Object.defineProperty(RecordingWorker.prototype, "waitForJob", {
      value(this: Worker, blockUntil: number) {
        blockUntils.push(blockUntil);
        return precise.call(this, blockUntil);
      },
    });
    const now = Date.now();
    const fireAt = now + 1_500;
    await s.timers.arm("rotation", "precise", fireAt, now, await s.fence());
    const ran = latch<{ job: Job; at: number }>();
    const worker = new RecordingWorker(QUEUE, async (job) => ran.open({ job, at: Date.now() }), {
      connection: connect(),
      prefix: s.prefix,
      maxBlockMs: 60_000,
    });
    worker.on("error", () => {});
    cleanups.push(() => worker.close());
    const { job, at } = await ran.promise;
    expect(job.id).toBe(jobIdFor("precise"));
    expect(at).toBeGreaterThanOrEqual(fireAt);
    expect(job.processedOn).toBeGreaterThanOrEqual(fireAt);
    // The nudge is timed from this argument: the head's fire time in epoch ms.
    expect(blockUntils).toContain(fireAt);
  });

  it("the production worker re-arms with moveToDelayed(fireAt, token) to the exact fire time, then parks and removes", async () => {
    const s = setup();
    const now = Date.now();
    await s.timers.arm("rotation", "cycle", now + 500, now, await s.fence());
    const rearmAt = Date.now() + 1_500;
    const seen: unknown[] = [];
    const done = latch();
    const running = startWorker(
      s.redis,
      s.prefix,
      "rotation",
      async (wake) => {
        if (seen.length === 0) {
          await wake.rearm(rearmAt);
          seen.push(await s.timers.view("rotation", [wake.identityId]));
          seen.push(fireAtOfScore(await delayedScore(s, wake.jobId)));
        } else {
          seen.push(Date.now() >= rearmAt);
          await wake.finish();
          seen.push(await s.timers.view("rotation", [wake.identityId]));
          done.open();
        }
      },
      { concurrency: 1, lockDurationMs: 30_000, stalledIntervalMs: 30_000, maxBlockMs: 60_000 },
      createLogger("silent"),
    );
    cleanups.push(() => running.close(10_000));
    await done.promise;
    expect(seen).toEqual([
      [{ state: "delayed", fireAt: rearmAt }],
      rearmAt,
      true,
      [{ state: "missing" }],
    ]);
  });

  it("Bull Board's listing shows a script-armed job on the delayed tab with its fire time", async () => {
    const s = setup();
    const now = Date.now();
    const fireAt = now + HOUR;
    await s.timers.arm("rotation", "board", fireAt, now, await s.fence());
    const adapter = new BullMQAdapter(s.queue, { readOnlyMode: true });
    expect(await adapter.getJobCounts()).toMatchObject({ delayed: 1, waiting: 0, active: 0 });
    const jobs = await adapter.getJobs(["delayed"], 0, 9);
    expect(jobs.map((j) => j.id)).toEqual([jobIdFor("board")]);
    // The board's own JSON handler for the Delayed tab.
    const response = await queuesHandler({
      queues: new Map([[QUEUE, adapter]]),
      query: { activeQueue: QUEUE, status: "delayed", page: 1, jobsPerPage: 10 },
      uiConfig: { showWorkers: false },
    } as unknown as Parameters<typeof queuesHandler>[0]);
    const body = response.body as {
      queues?: { counts: object; jobs: { id?: string; timestamp: number; delay?: number }[] }[];
    };
    const listed = body.queues?.[0];
    expect(listed?.counts).toMatchObject({ delayed: 1 });
    expect(listed?.jobs).toHaveLength(1);
    const shown = listed?.jobs[0];
    expect(shown).toMatchObject({ id: jobIdFor("board"), timestamp: now, delay: fireAt - now });
    expect((shown?.timestamp ?? 0) + (shown?.delay ?? 0)).toBe(fireAt);
  });

  it("our view script reads jobs BullMQ added (delayed, waiting, active, re-delayed), and our arm moves them", async () => {
    const s = setup();
    const queue = bullQueue(s.prefix);
    const now = Date.now();
    await queue.add("rotate", {}, { jobId: jobIdFor("theirs"), timestamp: now, delay: HOUR });
    expect(await s.timers.view("rotation", ["theirs"])).toEqual([
      { state: "delayed", fireAt: now + HOUR },
    ]);
    await queue.add("rotate", {}, { jobId: jobIdFor("ready") });
    expect(await s.timers.view("rotation", ["ready"])).toEqual([{ state: "waiting" }]);
    const worker = new Worker(QUEUE, null, { connection: connect(), prefix: s.prefix });
    cleanups.push(() => worker.close());
    const taken = await worker.getNextJob("contract-token", { block: false });
    expect(taken?.id).toBe(jobIdFor("ready"));
    expect(await s.timers.view("rotation", ["ready"])).toEqual([{ state: "active" }]);
    const later = Date.now() + 2 * HOUR;
    await taken?.moveToDelayed(later, "contract-token");
    expect(await s.timers.view("rotation", ["ready"])).toEqual([
      { state: "delayed", fireAt: later },
    ]);

    // Our arm reschedules a BullMQ-added job to an exact fire time that BullMQ then reads.
    const fireAt = now + 3 * HOUR + 11;
    expect(await s.timers.arm("rotation", "theirs", fireAt, now, await s.fence())).toEqual({
      kind: "reschedule",
      fireAt,
    });
    const job = await queue.getJob(jobIdFor("theirs"));
    expect((job?.timestamp ?? 0) + (job?.delay ?? 0)).toBe(fireAt);
    expect(await s.timers.view("rotation", ["theirs"])).toEqual([{ state: "delayed", fireAt }]);
  });
});
