import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.js";
import { getIdentity } from "../../src/db/identities.repo.js";
import { createTestEnv, type TestEnv } from "../helpers/env.js";

/**
 * Single welcomes are committed in groups (src/services/pull-in-batcher.ts). Through the real
 * API, Postgres and Redis: many concurrent welcomes each get their own committed answer, an
 * identity named twice is reported as moved once, and an unknown one gets its own 404.
 */
const TOKEN = "test-token-welcome-batching";
let env: TestEnv;
let app: FastifyInstance;
const auth = { authorization: `Bearer ${TOKEN}` };
const ids = Array.from({ length: 40 }, (_, i) => `wb-${String(i).padStart(3, "0")}`);

beforeAll(async () => {
  env = await createTestEnv({ WELCOME_ROTATION_DELAY: "5s", ROTATION_INTERVAL: "30d" });
  app = await buildApp({
    rotor: env.ctx.rotor,
    apiToken: TOKEN,
    checkReady: () => env.ctx.checkReady(),
  });
  for (const id of ids) {
    const res = await app.inject({ method: "PUT", url: `/v1/identities/${id}`, headers: auth });
    expect(res.statusCode).toBe(201);
  }
});

afterAll(async () => {
  await app?.close();
  await env?.cleanup();
});

describe("concurrent single welcomes", () => {
  it("each answer is its own committed deadline, armed in Redis", async () => {
    const twice = ids.slice(0, 10);
    const urls = [...ids, ...twice, "wb-unknown"].map((id) => `/v1/identities/${id}/welcome`);
    const before = Date.now();
    const answers = await Promise.all(
      urls.map((url) => app.inject({ method: "POST", url, headers: auth })),
    );
    const after = Date.now();

    const unknown = answers.pop();
    expect(unknown?.statusCode).toBe(404);
    expect(unknown?.json().message).toMatch(/"wb-unknown" is not registered/);
    for (const a of answers) expect(a.statusCode).toBe(202);

    const bodies = answers.map((a) => a.json());
    for (const id of ids) {
      const mine = bodies.filter((b) => b.identityId === id);
      expect(mine).toHaveLength(twice.includes(id) ? 2 : 1);
      // At least one request moved the deadline. Two welcomes of one identity in different
      // groups are ordered by its row lock; the second moves it only if its clock reading (taken
      // with the lock statement, which may have waited for the first) is earlier: earliest wins,
      // so the committed deadline is the earliest any answer named, and every answer's promise
      // (a rotation by the deadline it names) holds.
      expect(mine.filter((b) => b.pulledIn).length).toBeGreaterThanOrEqual(1);
      const deadline = Math.min(...mine.map((b) => Date.parse(b.nextRotationAt)));
      expect(deadline).toBeGreaterThanOrEqual(before + 5_000);
      expect(deadline).toBeLessThanOrEqual(after + 5_000);

      const row = await getIdentity(env.ctx.rotor.db, id);
      expect(row?.rotationDeadline?.getTime()).toBe(deadline);
      const [view] = await env.ctx.rotor.timers.view("rotation", [id]);
      expect(view).toEqual({ state: "delayed", fireAt: deadline });
    }
  });
});
