import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { Redis } from "ioredis";
import postgres from "postgres";
import { loadConfig, type Config } from "../../src/config.js";
import { type Context, createContext } from "../../src/context.js";
import { createLogger } from "../../src/logger.js";

export const ADMIN_DATABASE_URL =
  process.env.TEST_DATABASE_ADMIN_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
export const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

export const randomName = (prefix: string) => `${prefix}_${randomBytes(5).toString("hex")}`;

/** A fresh database for one test file; dropped by `drop()` (kept when KEEP_TEST_DB is set). */
export async function createTestDatabase(): Promise<{
  url: string;
  name: string;
  drop(): Promise<void>;
}> {
  const name = randomName("kp_test");
  const admin = postgres(ADMIN_DATABASE_URL, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database ${name}`);
  await admin.end();
  const url = new URL(ADMIN_DATABASE_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    name,
    async drop() {
      if (process.env.KEEP_TEST_DB) return;
      const admin = postgres(ADMIN_DATABASE_URL, { max: 1, onnotice: () => {} });
      await admin.unsafe(`drop database if exists ${name} with (force)`);
      await admin.end();
    },
  };
}

/** Deletes every Redis key under a queue prefix (never FLUSHALL: the server is shared). */
export async function deletePrefix(redisUrl: string, prefix: string): Promise<void> {
  // A test may have stopped its private Redis: then there is nothing left to delete.
  const redis = new Redis(redisUrl, {
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    lazyConnect: true,
  });
  redis.on("error", () => {});
  try {
    await redis.connect();
  } catch {
    redis.disconnect();
    return;
  }
  // `<prefix>:…` (one shard) and `{<prefix>:i}:…`, `{<prefix>}:…` (shards: src/queue/layout.ts).
  for (const pattern of [`${prefix}:*`, `{${prefix}:*`, `{${prefix}}*`]) {
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 1000);
      cursor = next;
      if (keys.length > 0) await redis.del(...keys);
    } while (cursor !== "0");
  }
  await redis.quit();
}

export interface TestEnv {
  config: Config;
  ctx: Context;
  env: Record<string, string>;
  /** Another context on the same database and prefix (a second process, in effect). */
  sibling(): Promise<Context>;
  cleanup(): Promise<void>;
}

/**
 * A migrated database, a unique queue prefix and a context on both. `env` overrides the
 * service's environment (durations such as ROTATION_INTERVAL=2s).
 */
export async function createTestEnv(env: Record<string, string> = {}): Promise<TestEnv> {
  const database = await createTestDatabase();
  const fullEnv = {
    DATABASE_URL: database.url,
    REDIS_URL: REDIS_URL,
    QUEUE_PREFIX: randomName("kpt"),
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? "silent",
    WATCHDOG_INTERVAL: "0",
    KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64"),
    ...env,
  };
  const config = loadConfig(fullEnv);
  const log = createLogger(config.logLevel);
  const ctx = await createContext(config, log, { migrate: true });
  const others: Context[] = [];
  return {
    config,
    ctx,
    env: fullEnv,
    async sibling() {
      const other = await createContext(config, log);
      others.push(other);
      return other;
    },
    async cleanup() {
      for (const other of others) await other.close();
      await ctx.close();
      // A test's private cluster is stopped by the test; never the shared Redis's keys there.
      if (config.redisClusterNodes === undefined) {
        await deletePrefix(config.redisUrl, config.queuePrefix);
      }
      await database.drop();
    },
  };
}

/** Resolves with the first event matching `predicate`, or rejects after `timeoutMs`. */
export function nextEvent<T>(
  emitter: {
    on(name: string, fn: (arg: T) => void): unknown;
    off(name: string, fn: (arg: T) => void): unknown;
  },
  name: string,
  predicate: (arg: T) => boolean = () => true,
  timeoutMs = 20_000,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(name, listener);
      reject(new Error(`no ${name} event within ${timeoutMs} ms`));
    }, timeoutMs);
    const listener = (arg: T) => {
      if (!predicate(arg)) return;
      clearTimeout(timer);
      emitter.off(name, listener);
      resolve(arg);
    };
    emitter.on(name, listener);
  });
}

/** A free TCP port on localhost. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() =>
        typeof address === "object" && address ? resolve(address.port) : reject(),
      );
    });
  });
}

/** A private Redis server, for tests that flush or stop Redis. */
export async function startRedisServer(): Promise<{ url: string; stop(): Promise<void> }> {
  const port = await freePort();
  const child = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    { stdio: "ignore" },
  );
  const url = `redis://127.0.0.1:${port}`;
  const probe = new Redis(url, {
    lazyConnect: true,
    retryStrategy: () => 50,
    maxRetriesPerRequest: null,
  });
  await probe.connect().catch(() => {});
  await probe.ping();
  await probe.quit();
  return {
    url,
    stop: () =>
      new Promise<void>((resolve) => {
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}
