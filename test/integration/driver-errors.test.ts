/**
 * Driver failures are classified where the drivers are called (db/errors.ts, queue/errors.ts):
 * the Store and the wake-up queues reject with the service's own DEPENDENCY_UNAVAILABLE, the
 * driver's error kept as the cause; anything else passes through unchanged.
 */
import { createServer } from "node:net";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createDatabase } from "../../src/db/client.js";
import { createPostgresStore } from "../../src/db/store.js";
import { causes as causesOf, ErrorCodes, KpRotorError } from "../../src/errors.js";
import { createRedis, createWakeupQueues } from "../../src/queue/wakeup-queues.js";
import * as identities from "../../src/services/identities.service.js";
import { createTestEnv, type TestEnv } from "../helpers/env.js";

let env: TestEnv;

beforeAll(async () => {
  env = await createTestEnv();
  await identities.register(env.ctx.rotor, "held");
});

afterAll(async () => {
  await env?.cleanup();
});

/** A port on loopback that nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const unavailable = (what: string) =>
  expect.objectContaining({ code: ErrorCodes.unavailable, message: `${what} is unavailable` });

describe("driver errors, classified at the adapters", () => {
  it("Postgres refusing connections is DEPENDENCY_UNAVAILABLE, with the driver's error as cause", async () => {
    const database = createDatabase(`postgres://postgres@127.0.0.1:${await closedPort()}/none`);
    try {
      const err = await createPostgresStore(database.db)
        .getIdentity("held")
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(KpRotorError);
      expect(err).toEqual(unavailable("Postgres"));
      const cause = (err as Error).cause as { code?: string; cause?: { code?: string } };
      expect([cause.code, cause.cause?.code]).toContain("ECONNREFUSED");
    } finally {
      await database.close();
    }
  });

  it("a lock wait cancelled by Postgres (57014) is DEPENDENCY_UNAVAILABLE", async () => {
    const holder = postgres(env.config.databaseUrl, { max: 1, onnotice: () => {} });
    try {
      const store = env.ctx.rotor.store;
      let waiting: Promise<unknown> = Promise.resolve();
      await holder.begin(async (tx) => {
        await tx`select 1 from identities where id = 'held' for update`;
        waiting = store
          .transaction((t) => t.lockIdentity("held"))
          .then(
            () => "locked",
            (e: unknown) => e,
          );
        // Cancel the waiting statement once Postgres shows it waiting on the lock.
        for (let i = 0; i < 100; i++) {
          const [row] = await tx`select count(*)::int as n from pg_stat_activity
            where application_name = 'kp-rotor' and wait_event_type = 'Lock'`;
          if ((row?.n ?? 0) > 0) break;
          await new Promise((r) => setTimeout(r, 20));
        }
        await tx`select pg_cancel_backend(pid) from pg_stat_activity
          where application_name = 'kp-rotor' and wait_event_type = 'Lock'`;
      });
      const err = await waiting;
      expect(err).toEqual(unavailable("Postgres"));
    } finally {
      await holder.end();
    }
  });

  it("a Postgres error that is the caller's (bad bytes in a parameter) is left alone", async () => {
    const err = await env.ctx.rotor.store.getIdentity("a\u0000b").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err).not.toBeInstanceOf(KpRotorError);
    const codes = [...causesOf(err)].map((e) => (e as { code?: unknown }).code);
    expect(codes).toContain("22021");
  });

  it("Redis gone is DEPENDENCY_UNAVAILABLE from the wake-up queues", async () => {
    const redis = createRedis(`redis://127.0.0.1:${await closedPort()}`);
    redis.on("error", () => {});
    const timers = createWakeupQueues(redis, env.config.queuePrefix);
    try {
      const err = await timers.view("rotation", ["held"]).catch((e: unknown) => e);
      expect(err).toEqual(unavailable("Redis"));
    } finally {
      redis.disconnect();
    }
  });
});
