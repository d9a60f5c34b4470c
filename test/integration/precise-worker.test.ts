import { type ChildProcess, spawn } from "node:child_process";
import { Queue } from "bullmq";
import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../../src/logger.js";
import type { ActiveWakeup } from "../../src/services/rotor.js";
import { PreciseWorker } from "../../src/queue/bullmq/index.js";
import { QUEUE_NAMES, type WakeData } from "../../src/queue/wakeup-queues.js";
import { type RunningWorker, startWorker } from "../../src/queue/wake-worker.js";
import { freePort, randomName } from "../helpers/env.js";

/**
 * The nudge (src/queue/bullmq/precise-worker.ts) on a private redis-server at `--hz 1`: Redis checks
 * blocked clients' timeouts about once a second, so a worker woken by its BZPOPMIN's timeout
 * would start a due job up to a second late. MONITOR shows every command in execution order,
 * with the connection it came from ("lua" for commands inside scripts), which is how these tests
 * tell the nudge (a ZADD of the marker by a client) from BullMQ's own markers (ZADDs by scripts).
 */

const DAY = 86_400_000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface MonitorLine {
  /** Redis' clock when it ran the command, epoch ms. */
  at: number;
  /** "lua" for a command inside a script, otherwise the client's address. */
  source: string;
  args: string[];
}

let server: ChildProcess | undefined;
let url = "";
let monitor: Redis | undefined;
const lines: MonitorLine[] = [];
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  const port = await freePort();
  server = spawn(
    "redis-server",
    [
      ...["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      ...["--hz", "1", "--dynamic-hz", "no"],
    ],
    { stdio: "ignore" },
  );
  url = `redis://127.0.0.1:${port}`;
  const probe = new Redis(url, { lazyConnect: true, retryStrategy: () => 50 });
  probe.on("error", () => {});
  await probe.connect().catch(() => {});
  await probe.ping();
  expect(await probe.config("GET", "hz")).toEqual(["hz", "1"]);
  await probe.quit();
  monitor = await new Redis(url).monitor();
  monitor.on("monitor", (time: string, args: string[], source: string) => {
    lines.push({ at: Number(time) * 1000, source, args });
  });
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

afterAll(async () => {
  monitor?.disconnect();
  if (server && server.exitCode === null) {
    const exited = new Promise((resolve) => server?.once("exit", resolve));
    server.kill("SIGTERM");
    await exited;
  }
});

function connection(): Redis {
  const redis = new Redis(url, { maxRetriesPerRequest: null });
  cleanups.push(() => redis.quit().catch(() => {}));
  return redis;
}

function queueFor(prefix: string, name = "q"): Queue {
  const queue = new Queue(name, { connection: connection(), prefix });
  cleanups.push(() => queue.close());
  return queue;
}

/** Waits until MONITOR has delivered every command Redis ran before this call. */
async function monitorCaughtUp(redis: Redis): Promise<void> {
  const token = randomName("sync");
  await redis.echo(token);
  for (let i = 0; i < 400; i++) {
    if (lines.some((l) => l.args[0]?.toLowerCase() === "echo" && l.args[1] === token)) return;
    await sleep(5);
  }
  throw new Error("MONITOR fell behind");
}

/** The nudges (a client's ZADD of the marker to score 0) and BullMQ's promotions of a job. */
const nudgesOf = (marker: string, from = 0) =>
  lines
    .slice(from)
    .filter(
      (l) =>
        l.source !== "lua" &&
        l.args[0]?.toLowerCase() === "zadd" &&
        l.args[1] === marker &&
        l.args[2] === "0" &&
        l.args[3] === "0",
    );

/** Index of the script command that moved `jobId` out of the delayed set (its promotion). */
const promotionIndex = (delayedKey: string, jobId: string) =>
  lines.findIndex(
    (l) =>
      l.source === "lua" &&
      l.args[0]?.toLowerCase() === "zrem" &&
      l.args[1] === delayedKey &&
      l.args.slice(2).includes(jobId),
  );

/** Resolves when the worker's blocking connection is blocked in BZPOPMIN on `marker`. */
async function blockedOn(redis: Redis, marker: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const list = (await redis.client("LIST")) as string;
    if (list.split("\n").some((l) => / cmd=bzpopmin\b/.test(l) && l.includes(" flags=b"))) {
      // CLIENT LIST does not show the key; the marker must be empty (nothing left to pop).
      if ((await redis.zcard(marker)) === 0) return;
    }
    await sleep(25);
  }
  throw new Error("the worker did not block");
}

function startPrecise(
  prefix: string,
  processed: (id: string | undefined, at: number) => void,
  opts: { maxBlockMs?: number; blockSeconds?: number } = {},
): PreciseWorker {
  const blockSeconds = opts.blockSeconds;
  /** With `blockSeconds`: as if Redis could not time out a BZPOPMIN before that many seconds. */
  class Worker extends PreciseWorker {
    protected override getBlockTimeout(blockUntil: number): number {
      const timeout = super.getBlockTimeout(blockUntil);
      return blockSeconds !== undefined && blockUntil > 0 && timeout > 0 ? blockSeconds : timeout;
    }
  }
  const worker = new Worker(
    "q",
    async (job) => {
      processed(job.id, Date.now());
    },
    {
      connection: connection(),
      prefix,
      maxBlockMs: opts.maxBlockMs ?? 60_000,
      stalledInterval: 60_000,
    },
  );
  worker.on("error", () => {});
  cleanups.push(() => worker.close());
  return worker;
}

describe("PreciseWorker", () => {
  it("starts a delayed job at its fire time by nudging the marker, not at its BZPOPMIN timeout", async () => {
    const prefix = randomName("pw");
    const queue = queueFor(prefix);
    const marker = queue.keys.marker as string;
    const done = new Promise<number>((resolve) => {
      // The worker's BZPOPMIN for the job waits 30 s (see startPrecise): only a marker can wake
      // it before that, and the job is added so that nothing but the nudge adds one at the time.
      startPrecise(prefix, (_id, at) => resolve(at), { blockSeconds: 30 });
    });
    const probe = connection();
    await blockedOn(probe, marker);
    const from = lines.length;
    const now = Date.now();
    const fireAt = now + 1_000;
    await queue.add("job", {}, { jobId: "j1", timestamp: now, delay: fireAt - now });

    // Far below the 30 s block: a worker without the nudge cannot have processed the job yet.
    const processedAt = await Promise.race([
      done,
      sleep(15_000).then(() => Promise.reject(new Error("not processed before the timeout"))),
    ]);
    expect(processedAt).toBeGreaterThanOrEqual(fireAt);
    await monitorCaughtUp(probe);

    // The BZPOPMIN that waited for the job was the 30 s one; one nudge, at the fire time, before
    // the job left the delayed set.
    const blocks = lines
      .slice(from)
      .filter((l) => l.args[0]?.toLowerCase() === "bzpopmin" && l.args[1] === marker);
    expect(blocks.map((l) => l.args[2])).toContain("30");
    const nudges = nudgesOf(marker, from);
    expect(nudges).toHaveLength(1);
    expect(nudges[0]?.at).toBeGreaterThanOrEqual(fireAt);
    const promoted = promotionIndex(queue.keys.delayed as string, "j1");
    expect(promoted).toBeGreaterThan(lines.indexOf(nudges[0] as MonitorLine));
  });

  it("with its real block timeouts: jobs start at their fire times, nudges only at fire times", async () => {
    const prefix = randomName("pw");
    const queue = queueFor(prefix);
    const marker = queue.keys.marker as string;
    const processed = new Map<string, number>();
    const worker = startPrecise(prefix, (id, at) => processed.set(id ?? "", at));
    const probe = connection();
    await blockedOn(probe, marker);
    const from = lines.length;
    const now = Date.now();
    const fireAts = [700, 1_300, 1_900].map((d) => now + d);
    await Promise.all(
      fireAts.map((fireAt, i) =>
        queue.add("job", {}, { jobId: `j${i}`, timestamp: now, delay: fireAt - now }),
      ),
    );
    for (let i = 0; i < 200 && processed.size < fireAts.length; i++) await sleep(50);
    expect([...processed.keys()].sort()).toEqual(["j0", "j1", "j2"]);
    await monitorCaughtUp(probe);
    fireAts.forEach((fireAt, i) => {
      expect(processed.get(`j${i}`)).toBeGreaterThanOrEqual(fireAt);
    });
    // Every nudge comes at or after a fire time, and there is at most one per fire time: a
    // nudge is only sent while blocked until that fire time, and then the block ends.
    // (At least one: Redis would have to time out all three blocks first, at hz 1.)
    const nudges = nudgesOf(marker, from);
    expect(nudges.length).toBeGreaterThanOrEqual(1);
    expect(nudges.length).toBeLessThanOrEqual(fireAts.length);
    expect(worker.nudgesSent).toBe(nudges.length);
    for (const nudge of nudges) {
      expect(fireAts.some((f) => nudge.at >= f)).toBe(true);
    }
  });

  it("sends nothing between fire times, even for a fire time beyond setTimeout's limit", async () => {
    const prefix = randomName("pw");
    const queue = queueFor(prefix);
    const marker = queue.keys.marker as string;
    const now = Date.now();
    await queue.add("job", {}, { jobId: "far", timestamp: now, delay: 30 * DAY });
    const worker = startPrecise(prefix, () => {}, { maxBlockMs: 60_000 });
    const probe = connection();
    await blockedOn(probe, marker);
    const probeAddress = /addr=(\S+)/.exec((await probe.client("INFO")) as string)?.[1];
    const from = lines.length;
    await sleep(1_500);
    await monitorCaughtUp(probe);
    const sent = lines.slice(from).filter((l) => l.source !== probeAddress);
    expect(sent).toEqual([]);
    expect(worker.nudgeArmed).toBe(true);
    expect(worker.nudgesSent).toBe(0);
    // It blocks for its cap (60 s), not BullMQ's 10 s.
    const block = lines.filter((l) => l.args[0]?.toLowerCase() === "bzpopmin").at(-1);
    expect(block?.args.slice(1)).toEqual([marker, "60"]);
  });

  it("close() clears the timer and no nudge follows", async () => {
    const prefix = randomName("pw");
    const queue = queueFor(prefix);
    const marker = queue.keys.marker as string;
    let ran = false;
    const worker = startPrecise(prefix, () => {
      ran = true;
    });
    const probe = connection();
    await blockedOn(probe, marker);
    const now = Date.now();
    const fireAt = now + 800;
    await queue.add("job", {}, { jobId: "j", timestamp: now, delay: fireAt - now });
    for (let i = 0; i < 100 && !worker.nudgeArmed; i++) await sleep(10);
    expect(worker.nudgeArmed).toBe(true);
    const from = lines.length;
    await worker.close();
    expect(worker.nudgeArmed).toBe(false);
    while (Date.now() < fireAt + 300) await sleep(50);
    await monitorCaughtUp(probe);
    expect(nudgesOf(marker, from)).toEqual([]);
    expect(worker.nudgesSent).toBe(0);
    expect(ran).toBe(false);
    expect(await queue.getJobState("j")).toBe("delayed");
  });
});

describe("startWorker's wake-ups", () => {
  let running: RunningWorker | undefined;
  afterEach(async () => {
    await running?.close(5_000);
    running = undefined;
  });

  it("take the identity from the job id and keep only the failure count in the data", async () => {
    const prefix = randomName("pw");
    const queue = new Queue<WakeData>(QUEUE_NAMES.rotation, { connection: connection(), prefix });
    cleanups.push(() => queue.close());
    const seen: { identityId: string; jobId: string; failures: number }[] = [];
    const handler = async (wake: ActiveWakeup) => {
      seen.push({ identityId: wake.identityId, jobId: wake.jobId, failures: wake.failures });
      // alice fails once, then succeeds; the others succeed.
      if (wake.identityId === "alice" && wake.failures === 0) {
        await wake.retryLater(Date.now() + 50, 1);
      } else {
        await wake.rearm(Date.now() + DAY);
      }
    };
    running = startWorker(
      connection(),
      prefix,
      "rotation",
      handler,
      { concurrency: 4, lockDurationMs: 5_000, stalledIntervalMs: 5_000, maxBlockMs: 60_000 },
      createLogger("silent"),
    );
    await queue.add("rotate", {}, { jobId: "id-alice" });
    // A job that already failed twice: its count comes from the data.
    await queue.add("rotate", { failures: 2 }, { jobId: "id-bob" });

    const jobIds = ["id-alice", "id-bob"];
    // Three calls started, then each handler finished (its job is delayed again).
    for (let i = 0; i < 200 && seen.length < 3; i++) await sleep(25);
    for (let i = 0; i < 200; i++) {
      const states = await Promise.all(jobIds.map((id) => queue.getJobState(id)));
      if (states.every((state) => state === "delayed")) break;
      await sleep(25);
    }
    const byIdentity = (id: string) => seen.filter((s) => s.identityId === id);
    expect(byIdentity("alice")).toEqual([
      { identityId: "alice", jobId: "id-alice", failures: 0 },
      { identityId: "alice", jobId: "id-alice", failures: 1 },
    ]);
    expect(byIdentity("bob")).toEqual([{ identityId: "bob", jobId: "id-bob", failures: 2 }]);
    for (const jobId of jobIds) {
      expect(await queue.getJobState(jobId)).toBe("delayed");
    }
    // Success clears the failure count to {}.
    expect((await queue.getJob("id-alice"))?.data).toEqual({});
    expect((await queue.getJob("id-bob"))?.data).toEqual({});
  });

  it("retryLater writes only the failure count", async () => {
    const prefix = randomName("pw");
    const queue = new Queue<WakeData>(QUEUE_NAMES.rotation, { connection: connection(), prefix });
    cleanups.push(() => queue.close());
    let calls = 0;
    running = startWorker(
      connection(),
      prefix,
      "rotation",
      async (wake) => {
        calls++;
        await wake.retryLater(Date.now() + DAY, wake.failures + 1);
      },
      { concurrency: 1, lockDurationMs: 5_000, stalledIntervalMs: 5_000, maxBlockMs: 60_000 },
      createLogger("silent"),
    );
    await queue.add("rotate", {}, { jobId: "id-dave" });
    for (let i = 0; i < 200 && calls < 1; i++) await sleep(25);
    for (let i = 0; i < 200 && (await queue.getJobState("id-dave")) !== "delayed"; i++) {
      await sleep(25);
    }
    expect((await queue.getJob("id-dave"))?.data).toEqual({ failures: 1 });
  });
});
