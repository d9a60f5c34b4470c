import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import closeWithGrace from "close-with-grace";
import { loadConfig } from "./config.js";
import { type Context, createContext } from "./context.js";
import { createLogger } from "./logger.js";
import { metricsFor } from "./metrics/metrics.js";
import { type MetricsServer, startMetricsServer } from "./metrics/server.js";
import { createRedis, type TimerKind } from "./queue/timers.js";
import { type RunningWorker, startWorker, type WakeHandler } from "./queue/workers.js";
import type { Rotor } from "./services/rotor.js";
import { reconcileOnce, runWatchdog } from "./services/watchdog.service.js";
import { BACKOFF } from "./core/timers.js";

export type HandlerFactories = Partial<Record<TimerKind, (rotor: Rotor) => WakeHandler>>;

export interface WorkerRuntime {
  workers: RunningWorker[];
  /** Resolves when the start-up reconcile has finished (or was left to another process). */
  startupReconcile: Promise<void>;
  close(): Promise<void>;
}

/**
 * Starts the BullMQ workers for the given processors, the start-up reconcile (one process at a
 * time, in the background: reconcile is safe while workers run) and the watchdog timer.
 */
export function startWorkerRuntime(ctx: Context, handlers: HandlerFactories): WorkerRuntime {
  const { rotor, config } = ctx;
  const log = rotor.log.child({ component: "worker" });
  const owner = `${hostname()}:${process.pid}:${randomUUID()}`;
  const connection = createRedis(config.redisUrl, "worker");
  connection.on("error", (err) => log.warn({ err: err.message }, "redis connection error"));
  const settings = {
    concurrency: config.workerConcurrency,
    lockDurationMs: config.workerLockDurationMs,
    stalledIntervalMs: config.workerStalledIntervalMs,
    maxBlockMs: config.workerMaxBlockMs,
  };
  const workers = Object.entries(handlers).map(([kind, factory]) =>
    startWorker(connection, config.queuePrefix, kind as TimerKind, factory(rotor), settings, log),
  );
  const startupReconcile = reconcileOnce(rotor, owner, "worker start")
    .then(() => undefined)
    .catch((err) => log.error({ err }, "start-up reconcile failed; the watchdog will retry"));

  let watchdog: NodeJS.Timeout | undefined;
  if (config.watchdogIntervalMs > 0) {
    const overdueGraceMs =
      settings.lockDurationMs + settings.stalledIntervalMs + BACKOFF.maxMs + 60_000;
    let running = false;
    watchdog = setInterval(() => {
      if (running) return;
      running = true;
      runWatchdog(rotor, { overdueGraceMs, owner })
        .then((report) => {
          if (report.reconciled || report.rearmed > 0)
            log.warn(report, "watchdog repaired wake-ups");
        })
        .catch((err) => log.error({ err }, "watchdog failed"))
        .finally(() => {
          running = false;
        });
    }, config.watchdogIntervalMs);
  }

  let closing: Promise<void> | undefined;
  return {
    workers,
    startupReconcile,
    close() {
      closing ??= (async () => {
        clearInterval(watchdog);
        await Promise.all(workers.map((w) => w.close(settings.lockDurationMs)));
        await startupReconcile;
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
