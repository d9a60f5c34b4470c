import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jitteredIntervalMs } from "../../src/core/jitter.js";
import * as identities from "../../src/services/identities.service.js";
import { createTestEnv, type TestEnv } from "../helpers/env.js";

/**
 * ROTATION_JITTER end to end: a registered identity's first interval deadline, as stored in
 * Postgres and armed in Redis, is the pure core's jittered one, within
 * (rotated + 30 d x 0.9, rotated + 30 d]. Real Postgres and Redis.
 */

const DAY = 86_400_000;
const INTERVAL = 30 * DAY;
let env: TestEnv;

beforeAll(async () => {
  env = await createTestEnv({ ROTATION_INTERVAL: "30d", ROTATION_JITTER: "10%" });
});

afterAll(async () => {
  await env?.cleanup();
});

describe("ROTATION_JITTER", () => {
  it("gives registered identities deadlines within the bound, the same in Postgres and Redis", async () => {
    const ids = Array.from({ length: 12 }, (_, i) => `jitter-${i}`);
    for (const id of ids) await identities.register(env.ctx.rotor, id);
    const rows = await env.ctx.database.sql<
      { id: string; generation: number; deadline: number; rotated: number }[]
    >`select id, generation,
        (extract(epoch from rotation_deadline) * 1000)::float8 as deadline,
        (extract(epoch from last_rotated_at) * 1000)::float8 as rotated
      from identities where id = any(${ids}) order by id`;
    expect(rows).toHaveLength(ids.length);
    const wakeups = await env.ctx.rotor.timers.view(
      "rotation",
      rows.map((r) => r.id),
    );
    const offsets = new Set<number>();
    rows.forEach((row, i) => {
      const { rotated, deadline } = row;
      expect(row.generation).toBe(1);
      expect(deadline).toBeGreaterThan(rotated + INTERVAL * 0.9);
      expect(deadline).toBeLessThanOrEqual(rotated + INTERVAL);
      // Exactly the core's value for this identity and generation: the service applies it.
      expect(deadline - rotated).toBe(jitteredIntervalMs(INTERVAL, 0.1, row.id));
      // The wake-up fires at the deadline (this process's clock is Postgres': no skew shift).
      expect(wakeups[i]).toEqual({ state: "delayed", fireAt: deadline });
      offsets.add(rotated + INTERVAL - deadline);
    });
    // Spread: twelve identities registered together do not share one deadline offset.
    expect(offsets.size).toBeGreaterThan(6);
  });
});
