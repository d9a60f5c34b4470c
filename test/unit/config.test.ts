import { availableParallelism } from "node:os";
import { describe, expect, it } from "vitest";
import { type Config, loadConfig } from "../../src/config.js";
import { KpRotorError } from "../../src/errors.js";

const DAY = 86_400_000;
/** Every environment gets a key-encryption key: without one the service refuses to start. */
const KEY = Buffer.from(Array.from({ length: 32 }, (_, i) => i + 7)).toString("base64");
const load = (env: Record<string, string | undefined>) =>
  loadConfig({ KEY_ENCRYPTION_KEY: KEY, ...env });
const TOKEN = "0123456789abcdef";

/** Runs loadConfig expecting it to throw; returns the KpRotorError. */
function configError(env: Record<string, string | undefined>): KpRotorError {
  try {
    load(env);
  } catch (error) {
    expect(error).toBeInstanceOf(KpRotorError);
    return error as KpRotorError;
  }
  throw new Error(`loadConfig accepted ${JSON.stringify(env)}`);
}

/** The bullet lines of the error message. */
const problems = (error: KpRotorError) =>
  error.message.split("\n").filter((line) => line.startsWith("  - "));

describe("loadConfig defaults", () => {
  const expected: Omit<
    Config,
    "keys" | "metricsPort" | "boardUser" | "boardPassword" | "boardReadOnly" | "docsPublic"
  > = {
    databaseUrl: "postgres://postgres@127.0.0.1:5432/postgres",
    redisUrl: "redis://127.0.0.1:6379",
    redisClusterNodes: undefined,
    queueShards: 1,
    workerShards: [0],
    port: 3000,
    host: "0.0.0.0",
    apiProcesses: 1,
    apiToken: undefined,
    allowUnauthenticated: false,
    ingestToken: undefined,
    rateLimitMax: 60_000,
    rateLimitWindowMs: 60_000,
    rateLimitRegisterMax: 600,
    authFailureMax: 20,
    requestTimeoutMs: 10_000,
    maxConnectionsPerClient: 256,
    metricsHost: "127.0.0.1",
    metricsGaugeMaxAgeMs: 15_000,
    maxRotationsPerHour: undefined,
    rotationIntervalMs: 2_592_000_000,
    rotationJitter: 0,
    welcomeRotationDelayMs: 5_000,
    deletionGraceMs: DAY,
    queuePrefix: "kp-rotor",
    workerConcurrency: 16,
    workerLockDurationMs: 30_000,
    workerStalledIntervalMs: 30_000,
    workerMaxBlockMs: 60_000,
    watchdogIntervalMs: 600_000,
    markCheckIntervalMs: 15_000,
    logLevel: "info",
  };

  it("uses every default for an empty environment", () => {
    expect(load({})).toMatchObject(expected);
  });

  it("treats empty strings as unset", () => {
    expect(
      load({
        DATABASE_URL: "",
        PORT: "",
        ROTATION_INTERVAL: "",
        API_TOKEN: "",
        LOG_LEVEL: "",
      }),
    ).toMatchObject(expected);
  });
});

describe("loadConfig overrides", () => {
  it.each<[Record<string, string>, Partial<Config>]>([
    [
      { DATABASE_URL: "postgresql://u:p@db:5433/kp" },
      { databaseUrl: "postgresql://u:p@db:5433/kp" },
    ],
    [{ REDIS_URL: "rediss://cache:6380/2" }, { redisUrl: "rediss://cache:6380/2" }],
    [{ PORT: "0" }, { port: 0 }],
    [{ PORT: "65535" }, { port: 65535 }],
    [{ HOST: "127.0.0.1" }, { host: "127.0.0.1" }],
    [{ API_TOKEN: TOKEN }, { apiToken: TOKEN }],
    [{ ROTATION_INTERVAL: "90d" }, { rotationIntervalMs: 90 * DAY }],
    [{ ROTATION_INTERVAL: "1" }, { rotationIntervalMs: 1 }],
    [{ ROTATION_JITTER: "10%" }, { rotationJitter: 0.1 }],
    [{ ROTATION_JITTER: "2.5%" }, { rotationJitter: 0.025 }],
    [{ ROTATION_JITTER: "50%" }, { rotationJitter: 0.5 }],
    [{ ROTATION_JITTER: "0" }, { rotationJitter: 0 }],
    [{ ROTATION_JITTER: "0%" }, { rotationJitter: 0 }],
    [{ WELCOME_ROTATION_DELAY: "0" }, { welcomeRotationDelayMs: 0 }],
    [{ WELCOME_ROTATION_DELAY: "250ms" }, { welcomeRotationDelayMs: 250 }],
    [{ DELETION_GRACE: "2h" }, { deletionGraceMs: 7_200_000 }],
    [{ QUEUE_PREFIX: "kp.test_1-a" }, { queuePrefix: "kp.test_1-a" }],
    [{ WORKER_CONCURRENCY: "1000" }, { workerConcurrency: 1000 }],
    [{ API_PROCESSES: "1" }, { apiProcesses: 1 }],
    [{ API_PROCESSES: "4" }, { apiProcesses: 4 }],
    [{ API_PROCESSES: "auto" }, { apiProcesses: Math.min(availableParallelism(), 256) }],
    [{ WORKER_LOCK_DURATION: "500ms" }, { workerLockDurationMs: 500 }],
    [{ WORKER_STALLED_INTERVAL: "24d" }, { workerStalledIntervalMs: 24 * DAY }],
    [{ WORKER_MAX_BLOCK: "1s" }, { workerMaxBlockMs: 1_000 }],
    [{ WORKER_MAX_BLOCK: "10m" }, { workerMaxBlockMs: 600_000 }],
    [{ WORKER_MAX_BLOCK: "24d" }, { workerMaxBlockMs: 24 * DAY }],
    [{ WATCHDOG_INTERVAL: "0" }, { watchdogIntervalMs: 0 }],
    [{ WATCHDOG_INTERVAL: "24d" }, { watchdogIntervalMs: 24 * DAY }],
    [{ LOG_LEVEL: "silent" }, { logLevel: "silent" }],
  ])("%j", (env, expected) => {
    expect(load(env)).toMatchObject(expected);
  });
});

describe("loadConfig: Redis Cluster and queue shards", () => {
  it("reads REDIS_CLUSTER_NODES, QUEUE_SHARDS and WORKER_SHARDS", () => {
    const config = load({
      REDIS_CLUSTER_NODES: "10.0.0.1:7000, redis-b.local:7001,[::1]:7002",
      QUEUE_SHARDS: "8",
      WORKER_SHARDS: "5,0-2,1",
    });
    expect(config.redisClusterNodes).toEqual(["10.0.0.1:7000", "redis-b.local:7001", "::1:7002"]);
    expect(config.queueShards).toBe(8);
    expect(config.workerShards).toEqual([0, 1, 2, 5]);
  });

  it("serves every shard when WORKER_SHARDS is unset", () => {
    expect(load({ QUEUE_SHARDS: "3" }).workerShards).toEqual([0, 1, 2]);
  });

  it.each<[Record<string, string>, string]>([
    [
      { REDIS_CLUSTER_NODES: "10.0.0.1,10.0.0.2:7000" },
      'REDIS_CLUSTER_NODES="10.0.0.1,10.0.0.2:7000": expected host:port entries separated by commas (e.g. 10.0.0.1:6379,10.0.0.2:6379); not "10.0.0.1"',
    ],
    [
      { REDIS_CLUSTER_NODES: "redis://a:1" },
      'REDIS_CLUSTER_NODES="redis://a:1": expected host:port entries separated by commas (e.g. 10.0.0.1:6379,10.0.0.2:6379); not "redis://a:1"',
    ],
    [{ QUEUE_SHARDS: "0" }, 'QUEUE_SHARDS="0": expected a whole number from 1 to 64'],
    [{ QUEUE_SHARDS: "65" }, 'QUEUE_SHARDS="65": expected a whole number from 1 to 64'],
    [
      { QUEUE_SHARDS: "4", WORKER_SHARDS: "4" },
      'WORKER_SHARDS="4": expected shard numbers or ranges from 0 to 3 (QUEUE_SHARDS=4) separated by commas, e.g. 0,2-3; not "4"',
    ],
    [
      { QUEUE_SHARDS: "4", WORKER_SHARDS: "3-1" },
      'WORKER_SHARDS="3-1": expected shard numbers or ranges from 0 to 3 (QUEUE_SHARDS=4) separated by commas, e.g. 0,2-3; not "3-1"',
    ],
  ])("refuses %j", (env, message) => {
    expect(problems(configError(env))).toEqual([`  - ${message}`]);
  });
});

describe("loadConfig rejects", () => {
  it.each<[string, Record<string, string>, string]>([
    [
      "non-postgres DATABASE_URL",
      { DATABASE_URL: "mysql://x/y" },
      "DATABASE_URL: expected a postgres:// or postgresql:// URL",
    ],
    [
      "unparseable DATABASE_URL",
      { DATABASE_URL: "not a url" },
      "DATABASE_URL: expected a postgres:// or postgresql:// URL",
    ],
    [
      "http REDIS_URL",
      { REDIS_URL: "http://cache" },
      "REDIS_URL: expected a redis:// or rediss:// URL",
    ],
    [
      "ROTATION_JITTER above half an interval (it could halve the interval)",
      { ROTATION_JITTER: "50.1%" },
      'ROTATION_JITTER="50.1%": expected a percentage from 0% to 50% (e.g. 10% or 2.5%), or 0',
    ],
    [
      "ROTATION_JITTER as a bare fraction (ambiguous: 0.1 or 0.1%?)",
      { ROTATION_JITTER: "0.1" },
      'ROTATION_JITTER="0.1": expected a percentage from 0% to 50%',
    ],
    ["negative ROTATION_JITTER", { ROTATION_JITTER: "-5%" }, 'ROTATION_JITTER="-5%": expected'],
    ["ROTATION_JITTER with a space", { ROTATION_JITTER: "10 %" }, 'ROTATION_JITTER="10 %"'],
    [
      "PORT above range",
      { PORT: "65536" },
      'PORT="65536": expected a whole number from 0 to 65535',
    ],
    ["negative PORT", { PORT: "-1" }, 'PORT="-1": expected a whole number from 0 to 65535'],
    ["PORT with exponent", { PORT: "3e3" }, 'PORT="3e3": expected a whole number from 0 to 65535'],
    [
      "zero API_PROCESSES",
      { API_PROCESSES: "0" },
      'API_PROCESSES="0": expected a whole number from 1 to 256, or auto (one per CPU)',
    ],
    ["fractional API_PROCESSES", { API_PROCESSES: "1.5" }, 'API_PROCESSES="1.5": expected'],
    ["API_PROCESSES above range", { API_PROCESSES: "257" }, 'API_PROCESSES="257": expected'],
    ["API_PROCESSES of another word", { API_PROCESSES: "max" }, 'API_PROCESSES="max": expected'],
    [
      "zero concurrency",
      { WORKER_CONCURRENCY: "0" },
      'WORKER_CONCURRENCY="0": expected a whole number from 1 to 1000',
    ],
    [
      "zero rotation interval",
      { ROTATION_INTERVAL: "0" },
      'ROTATION_INTERVAL="0": expected milliseconds',
    ],
    [
      "fractional grace",
      { DELETION_GRACE: "1.5d" },
      'DELETION_GRACE="1.5d": expected milliseconds',
    ],
    [
      "lock below 500 ms",
      { WORKER_LOCK_DURATION: "499" },
      'WORKER_LOCK_DURATION="499": expected milliseconds',
    ],
    ["watchdog beyond 24 d", { WATCHDOG_INTERVAL: "25d" }, "WATCHDOG_INTERVAL: at most 24d"],
    [
      "watchdog 24 d + 1 ms",
      { WATCHDOG_INTERVAL: `${24 * DAY + 1}` },
      "WATCHDOG_INTERVAL: at most 24d",
    ],
    ["lock beyond 24 d", { WORKER_LOCK_DURATION: "30d" }, "WORKER_LOCK_DURATION: at most 24d"],
    [
      "stalled beyond 24 d",
      { WORKER_STALLED_INTERVAL: "577h" },
      "WORKER_STALLED_INTERVAL: at most 24d",
    ],
    [
      "max block below 1 s",
      { WORKER_MAX_BLOCK: "999ms" },
      'WORKER_MAX_BLOCK="999ms": expected milliseconds',
    ],
    ["max block beyond 24 d", { WORKER_MAX_BLOCK: "25d" }, "WORKER_MAX_BLOCK: at most 24d"],
    [
      "short API_TOKEN",
      { API_TOKEN: TOKEN.slice(1) },
      "API_TOKEN: expected at least 16 characters",
    ],
    [
      "bad QUEUE_PREFIX",
      { QUEUE_PREFIX: "kp:rotor" },
      'QUEUE_PREFIX="kp:rotor": expected 1 to 64 characters',
    ],
    ["long QUEUE_PREFIX", { QUEUE_PREFIX: "q".repeat(65) }, "QUEUE_PREFIX="],
    [
      "unknown LOG_LEVEL",
      { LOG_LEVEL: "verbose" },
      'LOG_LEVEL="verbose": expected one of fatal, error',
    ],
  ])("%s", (_name, env, fragment) => {
    const error = configError(env);
    expect(error.code).toBe("INVALID_CONFIG");
    expect(error.name).toBe("KpRotorError");
    const lines = problems(error);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(fragment);
  });

  it("reports every bad variable in one error", () => {
    const error = configError({
      DATABASE_URL: "http://db",
      REDIS_URL: "nope",
      PORT: "http",
      ROTATION_INTERVAL: "5 s",
      ROTATION_JITTER: "60%",
      WELCOME_ROTATION_DELAY: "-1",
      DELETION_GRACE: "1.5d",
      WORKER_CONCURRENCY: "1001",
      WATCHDOG_INTERVAL: "90d",
      WORKER_LOCK_DURATION: "25d",
      API_TOKEN: "short",
      QUEUE_PREFIX: "a b",
      LOG_LEVEL: "loud",
    });
    expect(error.code).toBe("INVALID_CONFIG");
    expect(error.message.startsWith("invalid configuration:\n")).toBe(true);
    const names = problems(error).map((line) => /^ {2}- ([A-Z_]+)/.exec(line)?.[1]);
    expect(names.sort()).toEqual(
      [
        "API_TOKEN",
        "DATABASE_URL",
        "DELETION_GRACE",
        "LOG_LEVEL",
        "PORT",
        "QUEUE_PREFIX",
        "REDIS_URL",
        "ROTATION_INTERVAL",
        "ROTATION_JITTER",
        "WATCHDOG_INTERVAL",
        "WELCOME_ROTATION_DELAY",
        "WORKER_CONCURRENCY",
        "WORKER_LOCK_DURATION",
      ].sort(),
    );
  });

  it("does not echo a bad DATABASE_URL (it may hold a password)", () => {
    const error = configError({ DATABASE_URL: "mysql://user:s3cret@db/kp" });
    expect(error.message).not.toContain("s3cret");
  });
});
