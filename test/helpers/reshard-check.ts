import { expect } from "vitest";
import { type Context, createContext } from "../../src/context.js";
import { loadConfig } from "../../src/config.js";
import { createLogger } from "../../src/logger.js";
import { shardOf, shardPrefix } from "../../src/queue/layout.js";
import { type RedisConnection, scanTargets } from "../../src/queue/wakeup-queues.js";
import * as identities from "../../src/services/identities.service.js";
import { reshard } from "../../src/services/reshard.service.js";
import { runWatchdog } from "../../src/services/watchdog.service.js";
import { startWorkerRuntime } from "../../src/runtime/worker-process.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";
import { nextEvent, type TestEnv } from "./env.js";

/** Every wake-up job hash under `prefix` (one shard or many), as "kind id" -> the queue prefixes holding it. */
export async function allJobs(
  redis: RedisConnection,
  prefix: string,
): Promise<Map<string, string[]>> {
  const found = new Map<string, string[]>();
  for (const node of scanTargets(redis)) {
    for (const pattern of [`${prefix}:*`, `{${prefix}:*`]) {
      let cursor = "0";
      do {
        const [next, keys] = await node.scan(cursor, "MATCH", pattern, "COUNT", 1000);
        cursor = next;
        for (const key of keys) {
          const match = /^(.*):(rotation|deletion):id-([^:]+)$/.exec(key);
          if (match === null) continue;
          const name = `${match[2]} ${match[3]}`;
          found.set(name, [...(found.get(name) ?? []), match[1] as string]);
        }
      } while (cursor !== "0");
    }
  }
  return found;
}

/**
 * Issue 14's reshard check: identities armed under QUEUE_SHARDS=1 (`env`, with some rotated so
 * that they have deletion wake-ups), then `kp-rotor reshard --from 1` under QUEUE_SHARDS=4.
 * Afterwards every wake-up is in the queue its identity's new shard names, exactly once, at the
 * deadline Postgres holds, and the census agrees shard by shard.
 */
export async function checkReshardOneToFour(env: TestEnv, count: number): Promise<void> {
  const { ctx } = env;
  const ids = Array.from({ length: count }, (_, i) => `rs-${i}`);
  for (const id of ids) await identities.register(ctx.rotor, id);
  // A few rotate (under K=1), so they also have deletion wake-ups to move.
  const rotatedIds = ids.slice(0, 4);
  const runtime = startWorkerRuntime(ctx, ALL_HANDLERS);
  try {
    await runtime.startupReconcile;
    const done = rotatedIds.map((id) =>
      nextEvent<{ identityId: string; outcome: string }>(
        ctx.rotor.events,
        "rotation",
        (e) => e.identityId === id && e.outcome === "rotated",
      ),
    );
    for (const id of rotatedIds) await identities.rotateSoon(ctx.rotor, id);
    await Promise.all(done);
  } finally {
    await runtime.close();
  }
  const before = await allJobs(ctx.redis, env.config.queuePrefix);
  expect(before.size).toBe(count + rotatedIds.length);
  for (const [, holders] of before)
    expect(holders).toEqual([shardPrefix(ctx.rotor.timers.layout, 0)]);

  const config4 = loadConfig({ ...env.env, QUEUE_SHARDS: "4" });
  const ctx4: Context = await createContext(config4, createLogger("silent"));
  try {
    const report = await reshard(ctx4.rotor, ctx4.redis, 1);
    const layout4 = ctx4.rotor.timers.layout;
    const after = await allJobs(ctx4.redis, env.config.queuePrefix);
    const expected = [
      ...ids.map((id) => `rotation ${id}`),
      ...rotatedIds.map((id) => `deletion ${id}`),
    ].sort();
    expect([...after.keys()].sort()).toEqual(expected);
    for (const [name, holders] of after) {
      const id = name.split(" ")[1] as string;
      // Exactly one job, in the queue of its shard under K=4.
      expect(holders, name).toEqual([shardPrefix(layout4, shardOf(id, 4))]);
    }
    // Every shard got some (the hash spreads them), and every fire time is the deadline.
    expect(new Set(ids.map((id) => shardOf(id, 4))).size).toBe(4);
    for (const id of ids) {
      const status = await identities.status(ctx4.rotor, id);
      expect(status.wakeups.rotation).toEqual({
        state: "delayed",
        fireAt: status.nextRotationAt?.getTime(),
      });
      if (rotatedIds.includes(id)) expect(status.wakeups.deletion?.state).toBe("delayed");
    }
    expect(report.misplaced.stuck).toEqual([]);
    expect(report.misplaced.removed + report.misplaced.kept).toBe(before.size);
    // The census, compared per shard, finds nothing to repair.
    const watch = await runWatchdog(ctx4.rotor, {
      overdueGraceMs: 600_000,
      owner: "test",
      censusRecheckMs: 10,
    });
    expect(watch.reason).toBeUndefined();
    expect(watch.shards?.rotation.map((r) => r.counted)).toEqual(
      [0, 1, 2, 3].map((s) => ids.filter((id) => shardOf(id, 4) === s).length),
    );
  } finally {
    await ctx4.close();
  }
}
