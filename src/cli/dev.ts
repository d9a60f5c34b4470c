/**
 * `kp-rotor dev` (npm run dev): the whole service for trying it out and developing, on whatever
 * backends this machine has, and private ones where it has none (src/dev/backends.ts):
 * - Postgres: DATABASE_URL when set; else the server on 127.0.0.1:5432 when it answers, in a
 *   database of its own (kp_rotor_dev, created if missing); else, or with --embedded, an
 *   embedded Postgres with its data in .kp-rotor/.
 * - Redis: REDIS_URL when set; else 127.0.0.1:6379 when it answers; else, or with --embedded, a
 *   private redis-server from PATH with its data in .kp-rotor/.
 * Dev mode listens on loopback only, seals keys with the public development key (unless
 * KEY_ENCRYPTION_KEY is set), and mounts Bull Board without credentials (unless API_TOKEN or
 * BOARD_USER/BOARD_PASSWORD are set). One log line says which backends were chosen, another
 * where the API, the board, the docs and the metrics are.
 */
import { mkdirSync } from "node:fs";
import { isIP } from "node:net";
import { resolve } from "node:path";
import { loadConfig } from "../config.js";
import {
  answers,
  type Backend,
  DEFAULT_POSTGRES,
  DEFAULT_REDIS,
  embeddedPostgres,
  hasRedisServer,
  localPostgres,
  NO_REDIS_SERVER,
  privateRedis,
} from "../dev/backends.js";
import { ErrorCodes, KpRotorError } from "../errors.js";
import { createLogger } from "../logger.js";
import { serve } from "./commands.js";

/** The data directory of the private backends; KP_ROTOR_DEV_DIR moves it (tests do). */
export const DEV_DIR = ".kp-rotor";
const DEV_QUEUE_PREFIX = "kp-rotor-dev";

const isLoopback = (host: string) =>
  host === "localhost" || (isIP(host) === 4 && host.startsWith("127.")) || host === "::1";

const given = (value: string | undefined) =>
  value === undefined || value === "" ? undefined : value;

export async function runDev(options: { embedded: boolean }): Promise<number> {
  const env = process.env;
  const host = given(env.HOST) ?? "127.0.0.1";
  if (!isLoopback(host)) {
    throw new KpRotorError(
      ErrorCodes.invalidConfig,
      `HOST=${JSON.stringify(host)}: dev mode listens on loopback only (it serves Bull Board without credentials); run npm start for any other address`,
    );
  }
  const dir = resolve(given(env.KP_ROTOR_DEV_DIR) ?? DEV_DIR);
  const databaseUrl = options.embedded ? undefined : given(env.DATABASE_URL);
  const redisUrl = options.embedded ? undefined : given(env.REDIS_URL);
  const privatePostgres =
    databaseUrl === undefined && (options.embedded || !(await answers(DEFAULT_POSTGRES)));
  const privateRedisServer =
    redisUrl === undefined && (options.embedded || !(await answers(DEFAULT_REDIS)));
  if (privateRedisServer && !hasRedisServer()) {
    throw new KpRotorError(ErrorCodes.invalidConfig, NO_REDIS_SERVER);
  }

  const backends: Backend[] = [];
  const stopBackends = async () => {
    for (const backend of backends.splice(0).reverse()) await backend.stop();
  };
  try {
    if (privatePostgres || privateRedisServer) mkdirSync(dir, { recursive: true });
    const pg: Backend =
      databaseUrl !== undefined
        ? { url: databaseUrl, description: "postgres from DATABASE_URL", stop: async () => {} }
        : privatePostgres
          ? await embeddedPostgres(dir)
          : await localPostgres();
    backends.push(pg);
    const redis: Backend =
      redisUrl !== undefined
        ? { url: redisUrl, description: "redis from REDIS_URL", stop: async () => {} }
        : privateRedisServer
          ? await privateRedis(dir)
          : {
              url: `redis://${DEFAULT_REDIS.host}:${DEFAULT_REDIS.port}`,
              description: `redis ${DEFAULT_REDIS.host}:${DEFAULT_REDIS.port}`,
              stop: async () => {},
            };
    backends.push(redis);

    const keyGiven = given(env.KEY_ENCRYPTION_KEY) !== undefined;
    const config = loadConfig({
      ...env,
      HOST: host,
      DATABASE_URL: pg.url,
      REDIS_URL: redis.url,
      QUEUE_PREFIX: given(env.QUEUE_PREFIX) ?? DEV_QUEUE_PREFIX,
      ...(keyGiven ? {} : { KP_ROTOR_INSECURE_DEV_KEY: "1" }),
      // Loopback only: the API may run without a token here, and only here.
      ALLOW_UNAUTHENTICATED: given(env.ALLOW_UNAUTHENTICATED) ?? "true",
    });
    const log = createLogger(config.logLevel);
    log.info(
      { postgres: pg.description, redis: redis.description },
      `dev backends: ${pg.description}; ${redis.description}`,
    );
    return await serve(config, "start", {
      log,
      openBoard: true,
      stopLast: stopBackends,
      onListening: ({ address, metricsPort }) => {
        const metrics =
          metricsPort === undefined
            ? `${address}/metrics`
            : `http://${hostForUrl(host)}:${metricsPort}/metrics`;
        log.info(
          {
            api: `${address}/v1`,
            board: `${address}/admin/queues`,
            docs: `${address}/docs`,
            metrics,
          },
          `dev mode: API ${address}/v1/identities/<id>, board ${address}/admin/queues, docs ${address}/docs, metrics ${metrics}`,
        );
      },
    });
  } catch (err) {
    await stopBackends();
    throw err;
  }
}

const hostForUrl = (host: string) => (isIP(host) === 6 ? `[${host}]` : host);
