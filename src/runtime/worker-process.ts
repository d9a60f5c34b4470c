import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import closeWithGrace from "close-with-grace";
import { loadConfig } from "../config.js";
import { type Context, createContext, redisTarget } from "../context.js";
import { createLogger } from "../logger.js";
import { metricsFor } from "../metrics/metrics.js";
import { type MetricsServer, startMetricsServer } from "../metrics/server.js";
import { shardPrefix } from "../queue/layout.js";
import { createRedis, type TimerKind } from "../queue/wakeup-queues.js";
import { type RunningWorker, startWorker, type WakeHandler } from "../queue/wake-worker.js";
import type { Rotor } from "../services/rotor.js";
import { startHealer } from "../services/watchdog.service.js";
import { BACKOFF } from "../core/deadlines.js";

export type HandlerFactories = Partial<Record<TimerKind, (rotor: Rotor) => WakeHandler>>;

export interface WorkerRuntime {
  workers: RunningWorker[];
  /** Resolves when the start-up reconcile has ended (done, failed and retrying, or left to another process). */
  startupReconcile: Promise<void>;
  close(): Promise<void>;
}

/**
 * Starts the BullMQ workers for the given processors and the healer: the start-up reconcile (one
 * process at a time, in the background: reconcile is safe while workers run), the reconcile-mark
 * check and the watchdog (src/services/watchdog.service.ts).
 */
export function startWorkerRuntime(ctx: Context, handlers: HandlerFactories): WorkerRuntime {
  const { rotor, config } = ctx;
  const log = rotor.log.child({ component: "worker" });
  const owner = `${hostname()}:${process.pid}:${randomUUID()}`;
  const connection = createRedis(redisTarget(config), "worker");
  connection.on("error", (err) => log.warn({ err: err.message }, "redis connection error"));
  const settings = {
    concurrency: config.workerConcurrency,
    lockDurationMs: config.workerLockDurationMs,
    stalledIntervalMs: config.workerStalledIntervalMs,
    maxBlockMs: config.workerMaxBlockMs,
  };
  // One worker per queue of every shard this process serves (WORKER_SHARDS, all by default).
  const workers = config.workerShards.flatMap((shard) =>
    Object.entries(handlers).map(([kind, factory]) =>
      startWorker(
        connection,
        shardPrefix(rotor.timers.layout, shard),
        kind as TimerKind,
        factory(rotor),
        settings,
        log,
        shard,
      ),
    ),
  );
  const healer = startHealer(rotor, {
    owner,
    overdueGraceMs: settings.lockDurationMs + settings.stalledIntervalMs + BACKOFF.maxMs + 60_000,
    markCheckIntervalMs: config.markCheckIntervalMs,
    watchdogIntervalMs: config.watchdogIntervalMs,
  });
  // After a reconnect Redis may be a new, empty server: look for the mark at once.
  connection.on("ready", () => healer.checkMark());

  let closing: Promise<void> | undefined;
  return {
    workers,
    startupReconcile: healer.started,
    close() {
      closing ??= (async () => {
        // A running reconcile stops between pages and writes no mark; the next process redoes it.
        await healer.close();
        await Promise.all(workers.map((w) => w.close(settings.lockDurationMs)));
        await connection.quit().catch(() => {});
      })();
      return closing;
    },
  };
}

/**
 * Serves the process's Prometheus metrics on METRICS_PORT (GET /metrics); undefined when
 * METRICS_PORT=0. Start it before the workers, so it is closed after them and a scrape still
 * sees the drain. A port already taken (a second worker process on one machine with the
 * default port) costs the metrics, not the process: it is logged as an error.
 */
export async function startWorkerMetrics(ctx: Context): Promise<MetricsServer | undefined> {
  const { config, rotor } = ctx;
  if (config.metricsPort === 0) return undefined;
  const log = rotor.log.child({ component: "metrics-server" });
  try {
    const metrics = metricsFor(rotor, { gaugeMaxAgeMs: config.metricsGaugeMaxAgeMs });
    const server = await startMetricsServer(metrics, {
      port: config.metricsPort,
      host: config.metricsHost,
      log: rotor.log,
    });
    log.info({ port: server.port }, "metrics on GET /metrics");
    return server;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EADDRINUSE") throw err;
    log.error(
      { port: config.metricsPort },
      "METRICS_PORT is in use: this process serves no metrics (set METRICS_PORT to a free port, or 0)",
    );
    return undefined;
  }
}

/** A worker process: config, context, workers; SIGTERM stops taking jobs and finishes active ones. */
export async function runWorkerProcess(handlers: HandlerFactories): Promise<void> {
  const config = loadConfig();
  const log = createLogger(config.logLevel);
  const ctx = await createContext(config, log, { migrate: true });
  let metrics: MetricsServer | undefined;
  try {
    metrics = await startWorkerMetrics(ctx);
  } catch (err) {
    await ctx.close();
    throw err;
  }
  const runtime = startWorkerRuntime(ctx, handlers);
  log.info(
    { queues: Object.keys(handlers), concurrency: config.workerConcurrency },
    "worker started",
  );
  closeWithGrace({ delay: config.workerLockDurationMs + 5_000 }, async ({ signal, err }) => {
    if (err) log.error({ err }, "worker crashed");
    log.info({ signal }, "worker stopping");
    // Reverse order of start: workers drain, then the metrics endpoint, then the connections.
    await runtime.close();
    await metrics?.close();
    await ctx.close();
  });
}
