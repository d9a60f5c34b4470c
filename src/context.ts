import type { Config } from "./config.js";
import { createDatabase, type Database, runMigrations } from "./db/client.js";
import { createPostgresStore } from "./db/store.js";
import { createKeyring } from "./keys/encryption.js";
import { createKeyPackageFactory } from "./keys/key-package.js";
import { createDirectoryPublisher, createWebhookPublisher } from "./keys/publisher.js";
import { createDirectoryReader, createUrlReader } from "./keys/published-reader.js";
import {
  createDeviceNotifier,
  deriveNotifyMaster,
  deviceEndpointProblem,
  deviceSecret,
} from "./keys/device-notifier.js";
import type { Logger } from "./logger.js";
import type { KeyLayout } from "./queue/layout.js";
import {
  createRedis,
  createWakeupQueues,
  type RedisConnection,
  whenReady,
} from "./queue/wakeup-queues.js";
import { RotorEvents } from "./services/events.js";
import type { LiveRotor } from "./services/rotor.js";

/** The process-wide resources behind a Rotor, opened in order and closed in reverse. */
export interface Context {
  config: Config;
  rotor: LiveRotor;
  database: Database;
  redis: RedisConnection;
  /** Postgres and Redis both answer. */
  checkReady(): Promise<{ postgres: boolean; redis: boolean }>;
  close(): Promise<void>;
}

export interface ContextOptions {
  migrate?: boolean;
  clock?: () => number;
}

export async function createContext(
  config: Config,
  log: Logger,
  options: ContextOptions = {},
): Promise<Context> {
  const database = createDatabase(config.databaseUrl);
  const closers: (() => Promise<unknown>)[] = [() => database.close()];
  const close = async () => {
    for (const closer of closers.splice(0).reverse()) {
      await closer().catch((err) => log.warn({ err }, "error while closing"));
    }
  };
  try {
    if (options.migrate) await runMigrations(database);
    const redis = createRedis(redisTarget(config));
    closers.push(async () => redis.quit());
    redis.on("error", (err) => log.warn({ err: err.message }, "redis connection error"));
    // A client Cluster refuses commands until ready (it fails fast in an outage, see createRedis).
    await whenReady(redis);
    const timers = createWakeupQueues(redis, keyLayout(config), (err) =>
      log.warn({ err: err.message }, "queue error"),
    );
    closers.push(() => timers.close());
    const device = config.keys.device;
    if (config.rotationIntervalMs + device.marginMs > device.maxLifetimeMs) {
      log.warn(
        "ROTATION_INTERVAL + KEY_PACKAGE_MARGIN is longer than MAX_KEY_PACKAGE_LIFETIME: no key package a device uploads can pass the lifetime checks; raise MAX_KEY_PACKAGE_LIFETIME if device identities are used",
      );
    }
    // A generated package outlives the next rotation by KEY_PACKAGE_MARGIN, whatever the interval
    // (plus a day for the time between generation and promote, a retried publish included).
    const keys = await createKeyPackageFactory(
      config.keys.ciphersuite,
      config.rotationIntervalMs + device.marginMs + 86_400_000,
    );
    const keyring = createKeyring(config.keys.encryptionKey, config.keys.previousEncryptionKey);
    if (config.keys.insecureDevKey) {
      log.warn(
        "KP_ROTOR_INSECURE_DEV_KEY: private keys are sealed with a PUBLIC development key; anyone with the database can read them. Set KEY_ENCRYPTION_KEY for any real use.",
      );
    }
    const publisher =
      config.keys.publisher.kind === "webhook"
        ? createWebhookPublisher(config.keys.publisher)
        : createDirectoryPublisher();
    const store = createPostgresStore(database.db);
    const verify = config.keys.verify;
    const reader =
      verify.kind === "directory"
        ? createDirectoryReader(store)
        : verify.kind === "url"
          ? createUrlReader(verify.template, 5_000)
          : undefined;
    const rotor: LiveRotor = {
      db: database.db,
      store,
      timers,
      keys,
      keyring,
      publisher,
      timing: {
        rotationIntervalMs: config.rotationIntervalMs,
        rotationJitter: config.rotationJitter,
        welcomeRotationDelayMs: config.welcomeRotationDelayMs,
        deletionGraceMs: config.deletionGraceMs,
        maxRotationsPerHour: config.maxRotationsPerHour,
      },
      clock: options.clock ?? Date.now,
      log,
      events: new RotorEvents(),
      devices: devicesFor(config),
      ...(reader === undefined
        ? {}
        : {
            verifier: {
              reader,
              marginMs: config.keys.device.marginMs,
              midway: config.keys.verifyMidway,
            },
          }),
    };
    return {
      config,
      rotor,
      database,
      redis,
      async checkReady() {
        const [postgres, redisOk] = await Promise.all([
          withTimeout(database.ping(), 2_000),
          withTimeout(
            redis.ping().then((r) => r === "PONG"),
            2_000,
          ),
        ]);
        return { postgres, redis: redisOk };
      },
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

/** Where the queues are, from the configuration (src/queue/layout.ts). */
export function keyLayout(
  config: Pick<Config, "queuePrefix" | "queueShards" | "redisClusterNodes">,
): KeyLayout {
  return {
    prefix: config.queuePrefix,
    shards: config.queueShards,
    cluster: config.redisClusterNodes !== undefined,
  };
}

/** The Redis to connect to: REDIS_URL, or the cluster of REDIS_CLUSTER_NODES. */
export function redisTarget(config: Pick<Config, "redisUrl" | "redisClusterNodes">) {
  return { url: config.redisUrl, clusterNodes: config.redisClusterNodes };
}

/** Device custody's notifier and upload policy (docs/device-custody.md). */
function devicesFor(config: Config) {
  const device = config.keys.device;
  const master = device.notifySecret ?? deriveNotifyMaster(config.keys.encryptionKey);
  return {
    notifier: createDeviceNotifier({ master, timeoutMs: device.notifyTimeoutMs }),
    allowedCiphersuites: device.allowedCiphersuites,
    marginMs: device.marginMs,
    maxLifetimeMs: device.maxLifetimeMs,
    secretFor: (identityId: string) => deviceSecret(master, identityId),
    endpointProblem: (url: string) => deviceEndpointProblem(url, device.allowHttp),
  };
}

async function withTimeout(check: Promise<boolean>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([check.catch(() => false), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
