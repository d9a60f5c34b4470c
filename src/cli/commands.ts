import closeWithGrace from "close-with-grace";
import { assertApiProtected, type Config, loadConfig } from "../config.js";
import { type Context, createContext } from "../context.js";
import { createDatabase, runMigrations } from "../db/client.js";
import { createLogger, type Logger } from "../logger.js";
import { type RunningApi, startApi } from "../runtime/api-process.js";
import {
  isClusterChild,
  joinClusterMetrics,
  leaveCluster,
  onClusterDrain,
  runApiPrimary,
} from "../runtime/api-cluster.js";
import { metricsFor } from "../metrics/metrics.js";
import * as identities from "../services/identities.service.js";
import { MAX_SHARDS } from "../queue/layout.js";
import { reconcile } from "../services/reconcile.service.js";
import { reshard } from "../services/reshard.service.js";
import { checkSealedKeys, rewrap } from "../services/rewrap.service.js";
import { startWorkerMetrics, startWorkerRuntime } from "../runtime/worker-process.js";
import { ALL_HANDLERS } from "../runtime/handlers.js";
import { progressBar } from "./progress.js";

/**
 * The commands that need the service: configuration first (every problem reported at once),
 * then the command. Resolves with the exit status; long-running ones never resolve and exit
 * through their graceful shutdown.
 */
export async function runCommand(
  command: string,
  identityId: string | undefined,
  flags: { quiet: boolean; embedded: boolean; from?: number },
): Promise<number> {
  if (command === "dev") {
    const { runDev } = await import("./dev.js");
    return runDev({ embedded: flags.embedded });
  }
  const { quiet } = flags;
  const config = loadConfig();
  switch (command) {
    case "migrate":
      return migrate(config);
    case "start":
    case "api":
    case "worker":
      return serve(config, command);
    default:
      return oneShot(config, command, identityId, quiet, flags.from);
  }
}

async function migrate(config: Config): Promise<number> {
  // One pooled connection for the migrator (runMigrations opens its lock's session itself).
  const database = createDatabase(config.databaseUrl, { max: 1 });
  try {
    await runMigrations(database);
    console.log("migrations applied");
    return 0;
  } finally {
    await database.close();
  }
}

export interface ServeOptions {
  log?: Logger;
  /** Bull Board without credentials when none are configured (dev mode, loopback only). */
  openBoard?: boolean;
  /** Stopped after everything else: the backends dev mode started. */
  stopLast?: () => Promise<void>;
  onListening?: (api: { address: string; metricsPort: number | undefined }) => void;
}

/** Long-running processes; SIGTERM/SIGINT close them in reverse order of start. */
export async function serve(
  config: Config,
  command: "start" | "api" | "worker",
  options: ServeOptions = {},
): Promise<number> {
  // Before anything starts: an API process without a token refuses at once, in one line.
  if (command !== "worker") assertApiProtected(config);
  const log = options.log ?? createLogger(config.logLevel);
  // API_PROCESSES > 1: this process only forks and watches the API processes (it opens no
  // connection, so nothing at start runs N times but in the children, which migrate nothing).
  const cluster = command === "api" && config.apiProcesses > 1;
  if (cluster && !isClusterChild()) return runApiPrimary(config, log);
  if (command === "start" && config.apiProcesses > 1) {
    log.warn("API_PROCESSES applies to kp-rotor api only: start serves the API in this process");
  }
  // A cluster child drains once, on its own SIGINT/SIGTERM (Ctrl-C signals the whole group) or
  // when the primary asks. Those are taken from the very start: a drain asked for while the
  // child is still starting is kept and carried out as soon as it listens.
  let drainNow: ((reason: string) => void) | undefined;
  let drainAsked: string | undefined;
  if (cluster) {
    const ask = (reason: string) => {
      if (drainNow) drainNow(reason);
      else drainAsked ??= reason;
    };
    process.on("SIGINT", () => ask("SIGINT"));
    process.on("SIGTERM", () => ask("SIGTERM"));
    onClusterDrain(() => ask("drain from the cluster primary"));
  }
  const stops: (() => Promise<void>)[] = [];
  try {
    await startServing();
  } catch (err) {
    // Not serving (Postgres or Redis not ready, a port in use): close what was opened, so that
    // the process exits (1) instead of lingering half-started; a cluster child leaves and the
    // primary replaces it.
    for (const stop of stops.reverse()) await stop().catch(() => {});
    if (cluster) leaveCluster();
    throw err;
  }

  async function startServing(): Promise<void> {
    const ctx = await createContext(config, log, { migrate: command !== "api" });
    if (options.stopLast) stops.push(options.stopLast);
    stops.push(() => ctx.close());
    // Keys sealed under a KEK this process does not have: logged, in the safety view and metrics.
    checkSealedKeys(ctx.rotor).catch((err) =>
      log.warn(
        { err: err instanceof Error ? err.message : String(err) },
        "could not check sealed keys",
      ),
    );
    // GET /metrics on METRICS_PORT, in API processes too (their counters: welcomes); in a cluster
    // the primary serves it, aggregated, and asks each child over IPC.
    const metrics = cluster ? undefined : await startWorkerMetrics(ctx);
    if (metrics) stops.push(() => metrics.close());
    if (command !== "api") stops.push(startWorkerRuntime(ctx, ALL_HANDLERS).close);
    if (command !== "worker") {
      const api: RunningApi = await startApi(ctx, {
        openBoard: options.openBoard,
        ...(cluster
          ? {
              processes: config.apiProcesses,
              metrics: joinClusterMetrics(
                metricsFor(ctx.rotor, { gaugeMaxAgeMs: config.metricsGaugeMaxAgeMs }),
              ),
            }
          : {}),
      });
      stops.push(api.close);
      log.info({ address: api.address }, "api listening");
      options.onListening?.({ address: api.address, metricsPort: metrics?.port });
    }
  }
  // Workers wait up to WORKER_LOCK_DURATION for active wake-ups; 10 s more for the rest. The
  // Kubernetes worker pods' terminationGracePeriodSeconds (deploy/k8s) is above this.
  const delay = command === "api" ? 20_000 : config.workerLockDurationMs + 10_000;
  let closing = false;
  /** Why a cluster child drains: its own signal, or the primary asked. */
  let drainReason: string | undefined;
  const grace = closeWithGrace(
    { delay, ...(cluster ? { skip: ["SIGINT", "SIGTERM"] as ("SIGINT" | "SIGTERM")[] } : {}) },
    async ({ signal, err }) => {
      closing = true;
      if (err) log.error({ err }, "fatal error");
      log.info({ signal: signal ?? drainReason }, "shutting down");
      for (const stop of stops.reverse()) await stop();
    },
  );
  if (cluster) {
    // A repeat changes nothing (close-with-grace would exit at once on a second signal, dropping
    // the requests in flight). The primary bounds the wait.
    drainNow = (reason: string) => {
      if (closing) return;
      closing = true;
      drainReason = reason;
      void grace.close();
    };
    if (drainAsked !== undefined) drainNow(drainAsked);
  }
  return new Promise<number>(() => {});
}

async function oneShot(
  config: Config,
  command: string,
  identityId: string | undefined,
  quiet: boolean,
  from?: number,
): Promise<number> {
  const log = createLogger(
    (command === "reconcile" || command === "rewrap" || command === "reshard") && !quiet
      ? "warn"
      : "error",
  );
  const ctx: Context = await createContext(config, log, { migrate: true });
  try {
    if (command === "reconcile") {
      const bar = quiet ? undefined : progressBar("reconcile");
      const report = await reconcile(ctx.rotor, {
        onProgress: (done, total) => bar?.update(done, total),
      });
      bar?.stop();
      console.log(JSON.stringify(report, null, 2));
    } else if (command === "reshard") {
      if (from === undefined || from < 1 || from > MAX_SHARDS) {
        console.error(
          `kp-rotor: reshard --from expects 1 to ${MAX_SHARDS}, the previous QUEUE_SHARDS`,
        );
        return 2;
      }
      const bar = quiet ? undefined : progressBar("reshard");
      const report = await reshard(ctx.rotor, ctx.redis, from, {
        onProgress: (done, total) => bar?.update(done, total),
      });
      bar?.stop();
      console.log(JSON.stringify(report, null, 2));
    } else if (command === "rewrap") {
      const bar = quiet ? undefined : progressBar("rewrap");
      const summary = await rewrap(ctx.rotor, {
        onProgress: (done, total) => bar?.update(done, total),
      });
      bar?.stop();
      console.log(JSON.stringify(summary, null, 2));
      return summary.unreadable + summary.failed > 0 ? 1 : 0;
    } else if (command === "status") {
      console.log(
        JSON.stringify(await identities.status(ctx.rotor, identityId as string), null, 2),
      );
    } else if (command === "rotate") {
      const result = await identities.rotateSoon(ctx.rotor, identityId as string);
      console.log(
        `rotation of ${result.identityId} due at ${new Date(result.rotationDeadline).toISOString()}`,
      );
    }
    return 0;
  } finally {
    await ctx.close();
  }
}
