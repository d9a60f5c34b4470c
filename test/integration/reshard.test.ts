/**
 * Changing QUEUE_SHARDS (issue 14, docs/cluster.md) on a single Redis: from one shard, whose
 * queues keep the names of every version before shards (`<prefix>:rotation`), to four
 * hash-tagged ones. The Redis Cluster version of the same check is in cluster.test.ts.
 */
import { afterEach, expect, it } from "vitest";
import { censusSlot } from "../../src/queue/layout.js";
import { createTestEnv, type TestEnv } from "../helpers/env.js";
import { allJobs, checkReshardOneToFour } from "../helpers/reshard-check.js";

let env: TestEnv | undefined;
afterEach(async () => {
  await env?.cleanup();
  env = undefined;
});

it("QUEUE_SHARDS 1 -> 4 moves every wake-up once, and the old queues are gone", async () => {
  env = await createTestEnv({
    ROTATION_INTERVAL: "30d",
    DELETION_GRACE: "1d",
    WORKER_LOCK_DURATION: "2s",
    WORKER_STALLED_INTERVAL: "1s",
  });
  expect(env.ctx.rotor.timers.queues.rotation.toKey("delayed")).toBe(
    `${env.config.queuePrefix}:rotation:delayed`,
  );
  await checkReshardOneToFour(env, 40);
  // Nothing of the single-shard layout is left: no job, no marker, no metadata, no mark.
  const left = await env.ctx.redis.keys(`${env.config.queuePrefix}:*`);
  expect(left.filter((k) => !k.includes(":kp-rotor:lease:"))).toEqual([]);
  expect((await allJobs(env.ctx.redis, env.config.queuePrefix)).size).toBe(44);
});

it("Postgres and the service agree on every identity's census slot, so the census splits by shard", async () => {
  env = await createTestEnv();
  const ids = Array.from({ length: 2_000 }, (_, i) => `id.${i}_${(i * 7919).toString(36)}-X`);
  const rows = await env.ctx.database.sql<{ id: string; slot: number }[]>`
    select id, kp_rotor_census_slot(id) as slot from unnest(${ids}::text[]) as id`;
  expect(rows).toHaveLength(ids.length);
  for (const row of rows) expect(row.slot, row.id).toBe(censusSlot(row.id));
  // Every slot is used: the hash spreads ids over all 64.
  expect(new Set(rows.map((r) => r.slot)).size).toBe(64);
});
