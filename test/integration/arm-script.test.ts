import { type Job, Queue, Worker } from "bullmq";
import { Redis } from "ioredis";
import { afterEach, describe, expect, it } from "vitest";
import { createWakeupQueues, jobIdFor, type WakeupQueues } from "../../src/queue/wakeup-queues.js";
import { deletePrefix, REDIS_URL, randomName } from "../helpers/env.js";

/**
 * The arm script writes BullMQ's structures itself. These tests hold it against BullMQ: a job it
 * adds must look and behave like one Queue.add makes, and it must never move a job that left
 * the delayed set (a worker took it) nor duplicate one that exists.
 */

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const HOUR = 3_600_000;

/** Arm fences for these Redis-only tests: each call newer than the last. */
let lastFence = 0;
const fence = () => ++lastFence;

function connect(): Redis {
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: null });
  cleanups.push(() => redis.quit());
  return redis;
}

function setup(): { redis: Redis; prefix: string; timers: WakeupQueues; queue: Queue } {
  const redis = connect();
  const prefix = randomName("kpa");
  const timers = createWakeupQueues(redis, prefix);
  cleanups.push(() => deletePrefix(REDIS_URL, prefix));
  cleanups.push(() => timers.close());
  return { redis, prefix, timers, queue: timers.queues.rotation };
}

function worker(
  prefix: string,
  processor: (job: Job) => Promise<unknown>,
  name = "rotation",
): Worker {
  const w = new Worker(name, processor, {
    connection: connect(),
    prefix,
    concurrency: 4,
  });
  w.on("error", () => {});
  cleanups.push(() => w.close());
  return w;
}

function latch() {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

/** Starts a worker that takes the next due job and holds it (active) until released. */
async function holdNextJob(prefix: string): Promise<() => void> {
  const taken = latch();
  const release = latch();
  worker(prefix, async () => {
    taken.open();
    await release.promise;
  });
  await taken.promise;
  return release.open;
}

const delayedScore = async (redis: Redis, queue: Queue, jobId: string) =>
  redis.zscore(queue.toKey("delayed"), jobId);

describe("the arm script against BullMQ", () => {
  it("adds a job BullMQ cannot tell from its own: fields, state, score, processing", async () => {
    const ours = setup();
    // BullMQ's own job, in a queue of its own, for the same fire time.
    const theirsPrefix = randomName("kpb");
    cleanups.push(() => deletePrefix(REDIS_URL, theirsPrefix));
    const theirs = new Queue("rotation", { connection: ours.redis, prefix: theirsPrefix });
    cleanups.push(() => theirs.close());

    const now = Date.now();
    const fireAt = now + 1_500;
    const actions = await ours.timers.armMany(
      "rotation",
      [{ identityId: "alice", desired: fireAt }],
      now,
      fence(),
    );
    expect(actions).toEqual([{ kind: "add", fireAt }]);
    await theirs.add(
      "rotate",
      {},
      { jobId: jobIdFor("alice"), timestamp: now, delay: fireAt - now },
    );

    // BullMQ's fields, plus our arm fence (kseq), which BullMQ never reads.
    const { kseq, ...ourHash } = await ours.redis.hgetall(ours.queue.toKey(jobIdFor("alice")));
    const theirHash = await ours.redis.hgetall(theirs.toKey(jobIdFor("alice")));
    expect(kseq).toMatch(/^[0-9]+$/);
    expect(Object.keys(ourHash).sort()).toEqual(Object.keys(theirHash).sort());
    expect(ourHash).toEqual({
      name: "rotate",
      data: "{}",
      opts: '{"attempts":0}',
      timestamp: String(now),
      delay: String(fireAt - now),
      priority: "0",
    });
    expect({ ...theirHash, opts: undefined }).toEqual({ ...ourHash, opts: undefined });
    expect(await ours.redis.object("ENCODING", ours.queue.toKey(jobIdFor("alice")))).toBe(
      "listpack",
    );

    // Same delayed score for the same fire time, same marker.
    const ourScore = await delayedScore(ours.redis, ours.queue, jobIdFor("alice"));
    expect(ourScore).toBe(String(fireAt * 4096));
    expect(await delayedScore(ours.redis, theirs, jobIdFor("alice"))).toBe(ourScore);
    expect(await ours.redis.zscore(ours.queue.toKey("marker"), "1")).toBe(
      await ours.redis.zscore(theirs.toKey("marker"), "1"),
    );

    // getJob and getJobState read it as an ordinary delayed job.
    expect(await ours.queue.getJobState(jobIdFor("alice"))).toBe("delayed");
    const job = await ours.queue.getJob(jobIdFor("alice"));
    expect(job?.id).toBe(jobIdFor("alice"));
    expect(job?.name).toBe("rotate");
    expect(job?.data).toEqual({});
    expect(job?.timestamp).toBe(now);
    expect(job?.delay).toBe(fireAt - now);
    expect(job?.opts.attempts).toBe(0);
    expect(await ours.queue.getDelayedCount()).toBe(1);

    // A plain BullMQ worker runs it once, not before its fire time.
    const processed: { id?: string; name: string; data: unknown; processedOn?: number }[] = [];
    const ran = latch();
    worker(ours.prefix, async (j) => {
      processed.push({ id: j.id, name: j.name, data: j.data, processedOn: j.processedOn });
      ran.open();
    });
    await ran.promise;
    expect(processed).toHaveLength(1);
    expect(processed[0]).toMatchObject({ id: jobIdFor("alice"), name: "rotate", data: {} });
    expect(processed[0]?.processedOn).toBeGreaterThanOrEqual(fireAt);
  });

  it("moves a delayed job to exactly the fire time, earlier and later, and keeps timestamp + delay = fire time", async () => {
    const { redis, timers, queue } = setup();
    const now = Date.now();
    await timers.armMany(
      "rotation",
      [{ identityId: "bob", desired: now + 10 * HOUR }],
      now,
      fence(),
    );
    const earlier = now + HOUR + 1;
    expect(
      await timers.armMany("rotation", [{ identityId: "bob", desired: earlier }], now, fence()),
    ).toEqual([{ kind: "reschedule", fireAt: earlier }]);
    expect(await delayedScore(redis, queue, jobIdFor("bob"))).toBe(String(earlier * 4096));
    expect(Math.floor(Number(await redis.zscore(queue.toKey("marker"), "1")))).toBe(earlier);
    const later = now + 20 * HOUR;
    await timers.arm("rotation", "bob", later, now, fence());
    expect(await timers.view("rotation", ["bob"])).toEqual([{ state: "delayed", fireAt: later }]);
    const job = await queue.getJob(jobIdFor("bob"));
    expect((job?.timestamp ?? 0) + (job?.delay ?? 0)).toBe(later);
    // The marker follows the head (now the only job, later).
    expect(Math.floor(Number(await redis.zscore(queue.toKey("marker"), "1")))).toBe(later);
  });

  it("numbers same-millisecond jobs like BullMQ and applies items in the order given", async () => {
    const { redis, timers, queue } = setup();
    const now = Date.now();
    const fireAt = now + HOUR;
    const ids = ["c", "a", "b"];
    await timers.armMany(
      "rotation",
      ids.map((identityId) => ({ identityId, desired: fireAt })),
      now,
      fence(),
    );
    const scores = await Promise.all(ids.map((id) => delayedScore(redis, queue, jobIdFor(id))));
    expect(scores).toEqual([0, 1, 2].map((n) => String(fireAt * 4096 + n)));
    // BullMQ's own add numbers after them, in the same millisecond window.
    await queue.add("rotate", {}, { jobId: "other", timestamp: now, delay: fireAt - now });
    expect(await delayedScore(redis, queue, "other")).toBe(String(fireAt * 4096 + 3));
  });

  it("reschedule of a job that vanished adds it; add of a job that exists changes nothing", async () => {
    const { redis, timers, queue } = setup();
    const now = Date.now();
    await timers.apply("rotation", "carol", { kind: "reschedule", fireAt: now + HOUR }, fence());
    expect(await timers.view("rotation", ["carol"])).toEqual([
      { state: "delayed", fireAt: now + HOUR },
    ]);
    expect(await redis.hget(queue.toKey(jobIdFor("carol")), "name")).toBe("rotate");

    await timers.apply("rotation", "carol", { kind: "add", fireAt: now + 2 * HOUR }, fence());
    expect(await timers.view("rotation", ["carol"])).toEqual([
      { state: "delayed", fireAt: now + HOUR },
    ]);
    expect(await queue.getDelayedCount()).toBe(1);
  });

  it("a planned add that finds the job there (a duplicate item) is planned again", async () => {
    const { timers } = setup();
    const now = Date.now();
    const actions = await timers.armMany(
      "rotation",
      [
        { identityId: "dave", desired: now + 2 * HOUR },
        { identityId: "dave", desired: now + HOUR },
      ],
      now,
      fence(),
    );
    expect(actions).toEqual([
      { kind: "add", fireAt: now + 2 * HOUR },
      { kind: "reschedule", fireAt: now + HOUR },
    ]);
    expect(await timers.view("rotation", ["dave"])).toEqual([
      { state: "delayed", fireAt: now + HOUR },
    ]);
  });

  it("leaves an active job alone, and never puts it back in the delayed set", async () => {
    const { redis, prefix, timers, queue } = setup();
    const now = Date.now();
    await timers.armMany("rotation", [{ identityId: "erin", desired: now }], now, fence());
    const release = await holdNextJob(prefix);
    expect(await timers.view("rotation", ["erin"])).toEqual([{ state: "active" }]);
    expect(
      await timers.armMany("rotation", [{ identityId: "erin", desired: now + HOUR }], now, fence()),
    ).toEqual([{ kind: "none" }]);
    // A stale plan (the job was delayed when viewed) is refused by the script itself.
    await timers.apply("rotation", "erin", { kind: "reschedule", fireAt: now + HOUR }, fence());
    expect(await delayedScore(redis, queue, jobIdFor("erin"))).toBeNull();
    expect(await queue.getJobState(jobIdFor("erin"))).toBe("active");
    release();
  });

  it("armEarlier moves later jobs to exactly the fire time, keeps sooner ones, plans the rest", async () => {
    const { redis, prefix, timers, queue } = setup();
    const now = Date.now();
    await timers.armMany(
      "rotation",
      [
        { identityId: "late", desired: now + 30 * 24 * HOUR },
        { identityId: "soon", desired: now + HOUR },
        { identityId: "busy", desired: now },
      ],
      now,
      fence(),
    );
    const release = await holdNextJob(prefix);
    const fireAt = now + 2 * HOUR;
    const ids = ["late", "soon", "busy", "gone"];
    const actions = await timers.armEarlier(
      "rotation",
      ids.map((identityId) => ({ identityId, fireAt })),
      now,
      fence(),
    );
    expect(actions).toEqual([
      { kind: "reschedule", fireAt },
      { kind: "none" },
      { kind: "none" },
      { kind: "add", fireAt },
    ]);
    expect(await timers.view("rotation", ids)).toEqual([
      { state: "delayed", fireAt },
      { state: "delayed", fireAt: now + HOUR },
      { state: "active" },
      { state: "delayed", fireAt },
    ]);
    expect(await delayedScore(redis, queue, jobIdFor("late"))).toBe(String(fireAt * 4096));
    const late = await queue.getJob(jobIdFor("late"));
    expect((late?.timestamp ?? 0) + (late?.delay ?? 0)).toBe(fireAt);
    release();
  });

  it("a job a worker promoted after the view stays waiting: no job in two states", async () => {
    const { redis, timers, queue } = setup();
    const now = Date.now();
    await timers.armMany("rotation", [{ identityId: "frank", desired: now + HOUR }], now, fence());
    const [view] = await timers.view("rotation", ["frank"]);
    expect(view).toEqual({ state: "delayed", fireAt: now + HOUR });
    // What a worker's moveToActive does to a due job: delayed -> wait.
    await (await queue.getJob(jobIdFor("frank")))?.promote();
    await timers.apply(
      "rotation",
      "frank",
      { kind: "reschedule", fireAt: now + 2 * HOUR },
      fence(),
    );
    expect(await delayedScore(redis, queue, jobIdFor("frank"))).toBeNull();
    expect(await queue.getJobState(jobIdFor("frank"))).toBe("waiting");
    expect(await queue.getWaitingCount()).toBe(1);
    // And arming it again plans nothing (a waiting job fires as soon as a worker is free).
    expect(await timers.arm("rotation", "frank", now + 3 * HOUR, now, fence())).toEqual({
      kind: "none",
    });
  });

  it("replaces a finished job, removes on null", async () => {
    const { prefix, timers, queue } = setup();
    const now = Date.now();
    await timers.armMany("rotation", [{ identityId: "gina", desired: now }], now, fence());
    const done = latch();
    const w = worker(prefix, async () => "ok");
    w.on("completed", () => done.open());
    await done.promise;
    await w.close();
    expect(await timers.view("rotation", ["gina"])).toEqual([{ state: "finished" }]);
    expect(await timers.arm("rotation", "gina", now + HOUR, now, fence())).toEqual({
      kind: "replace",
      fireAt: now + HOUR,
    });
    expect(await timers.view("rotation", ["gina"])).toEqual([
      { state: "delayed", fireAt: now + HOUR },
    ]);
    const job = await queue.getJob(jobIdFor("gina"));
    expect(job?.data).toEqual({});
    expect(await timers.arm("rotation", "gina", null, now, fence())).toEqual({ kind: "remove" });
    expect(await timers.view("rotation", ["gina"])).toEqual([{ state: "missing" }]);
  });

  it("an overdue batch is promoted and run most overdue first", async () => {
    const { prefix, timers } = setup();
    const now = Date.now();
    const ids = ["k3", "k1", "k2"];
    // Deadline order (the order armOverdue passes them in): k3 is the most overdue.
    await timers.armMany(
      "rotation",
      ids.map((identityId, i) => ({ identityId, desired: now - 3_000 + i * 1_000 })),
      now,
      fence(),
    );
    const order: string[] = [];
    const all = latch();
    const w = new Worker(
      "rotation",
      async (job) => {
        order.push(job.id ?? "");
        if (order.length === ids.length) all.open();
      },
      { connection: connect(), prefix, concurrency: 1 },
    );
    cleanups.push(() => w.close());
    await all.promise;
    expect(order).toEqual(ids.map(jobIdFor));
  });
});

describe("armMany expecting missing jobs (a reconcile after a loss)", () => {
  it("ends in the same state, with the same actions, as armMany with a view, in every job state", async () => {
    const now = Date.now();
    const t = now + HOUR;
    // Built the same way on two queue prefixes; armed with a view on one, blind on the other.
    const build = async () => {
      const { prefix, timers } = setup();
      const arm = (id: string, at: number, f = fence()) =>
        timers.armMany("rotation", [{ identityId: id, desired: at }], now, f);
      await arm("at-time", t);
      await arm("later", t + HOUR);
      await arm("unwanted", t);
      await arm("retrying", now + 30_000); // a retry within the backoff, deadline overdue
      await arm("newer-fence", t + HOUR, fence() + 1_000_000); // written by a newer arm
      await arm("done", now - 1_000);
      await arm("done-newer-fence", now - 1_000, fence() + 1_000_000);
      await arm("active", now - 1_000);
      // "done" and "done-newer-fence" run to completion; "active" is taken and never finishes.
      const finished = latch();
      let count = 0;
      const w = worker(prefix, async (job) => {
        if (job.id === jobIdFor("active")) await new Promise(() => {});
        if (++count === 2) finished.open();
      });
      await finished.promise;
      await w.close(true);
      // A job BullMQ added with no delay waits for a worker.
      await timers.queues.rotation.add("rotation", {}, { jobId: jobIdFor("waiting") });
      return timers;
    };
    const items = [
      { identityId: "missing", desired: t },
      { identityId: "missing-overdue", desired: now - 10 * 60_000 },
      { identityId: "missing-unwanted", desired: null },
      { identityId: "at-time", desired: t },
      { identityId: "later", desired: t },
      { identityId: "unwanted", desired: null },
      { identityId: "retrying", desired: now - 5 * 60_000 },
      { identityId: "newer-fence", desired: t },
      { identityId: "done", desired: t },
      { identityId: "done-newer-fence", desired: t },
      { identityId: "active", desired: t },
      { identityId: "waiting", desired: t },
      { identityId: "missing", desired: t }, // one id twice in a page
    ];
    const ids = [...new Set(items.map((i) => i.identityId))];
    const viewing = await build();
    const blind = await build();
    expect(await blind.view("rotation", ids)).toEqual(await viewing.view("rotation", ids));
    const f = fence();
    const viewed = await viewing.armMany("rotation", items, now, f);
    const blindActions = await blind.armMany("rotation", items, now, f, { expectMissing: true });
    expect(blindActions).toEqual(viewed);
    const after = await viewing.view("rotation", ids);
    expect(await blind.view("rotation", ids)).toEqual(after);
    // What each state came to (the same on both): added, moved, removed, replaced, or kept.
    expect(Object.fromEntries(ids.map((id, i) => [id, after[i]]))).toEqual({
      missing: { state: "delayed", fireAt: t },
      "missing-overdue": { state: "delayed", fireAt: now - 10 * 60_000 },
      "missing-unwanted": { state: "missing" },
      "at-time": { state: "delayed", fireAt: t },
      later: { state: "delayed", fireAt: t },
      unwanted: { state: "missing" },
      retrying: { state: "delayed", fireAt: now + 30_000 },
      "newer-fence": { state: "delayed", fireAt: t + HOUR },
      done: { state: "delayed", fireAt: t },
      "done-newer-fence": { state: "delayed", fireAt: t },
      active: { state: "active" },
      waiting: { state: "waiting" },
    });
  });
});

describe("the arm fence", () => {
  it("a write with an older fence, landing after a newer one (timed out, resent), changes nothing", async () => {
    const { redis, timers, queue } = setup();
    const now = Date.now();
    const stale = fence();
    const newer = fence();
    // The newer arm (a welcome, say) pulled the wake-up in to 5 s...
    await timers.arm("rotation", "hal", now + 5_000, now, newer);
    // ...then the older one (a re-arm to 30 days that timed out on the client) lands.
    expect(
      await timers.apply(
        "rotation",
        "hal",
        { kind: "reschedule", fireAt: now + 30 * 86_400_000 },
        stale,
      ),
    ).toBeUndefined();
    expect(await timers.view("rotation", ["hal"])).toEqual([
      { state: "delayed", fireAt: now + 5_000 },
    ]);
    expect(await timers.arm("rotation", "hal", now + 30 * 86_400_000, now, stale)).toEqual({
      kind: "none",
    });
    // A stale removal leaves it too; the same move with a newer fence goes through.
    await timers.apply("rotation", "hal", { kind: "remove" }, stale);
    expect(await timers.view("rotation", ["hal"])).toEqual([
      { state: "delayed", fireAt: now + 5_000 },
    ]);
    expect(await redis.hget(queue.toKey(jobIdFor("hal")), "kseq")).toBe(String(newer));
    await timers.apply("rotation", "hal", { kind: "reschedule", fireAt: now + HOUR }, fence());
    expect(await timers.view("rotation", ["hal"])).toEqual([
      { state: "delayed", fireAt: now + HOUR },
    ]);
    await timers.apply("rotation", "hal", { kind: "remove" }, fence());
    expect(await timers.view("rotation", ["hal"])).toEqual([{ state: "missing" }]);
  });
});
