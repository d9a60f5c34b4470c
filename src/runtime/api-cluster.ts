import cluster, { type Worker } from "node:cluster";
import {
  AggregatorRegistry,
  Counter,
  Gauge,
  type MetricObjectWithValues,
  type MetricValue,
  Registry,
} from "prom-client";
import type { Config } from "../config.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics/metrics.js";
import { startMetricsServer } from "../metrics/server.js";

// API_PROCESSES > 1: `kp-rotor api` becomes a node:cluster primary that holds no connection to
// Postgres or Redis. It forks the API processes (they share PORT; on Linux the primary accepts
// and hands connections round-robin), replaces one that dies, drains them all on SIGTERM/SIGINT,
// and alone serves METRICS_PORT: the children's metrics, aggregated over IPC.

type Snapshot = MetricObjectWithValues<MetricValue<string>>[];
type Message =
  | { kind: "kp-rotor:snapshot"; id: number }
  | { kind: "kp-rotor:snapshot-reply"; id: number; metrics?: Snapshot; error?: string }
  | { kind: "kp-rotor:scrape"; id: number }
  | { kind: "kp-rotor:scrape-reply"; id: number; body?: string; error?: string }
  | { kind: "kp-rotor:drain" };

const isMessage = (value: unknown): value is Message =>
  typeof value === "object" &&
  value !== null &&
  typeof (value as { kind?: unknown }).kind === "string" &&
  (value as { kind: string }).kind.startsWith("kp-rotor:");

/** A child's snapshot may take the metrics' own collect timeout (2 s) and some IPC on top. */
const SNAPSHOT_TIMEOUT_MS = 5_000;
/** The children drain within 20 s (src/cli/commands.ts); the primary waits a little longer. */
export const CLUSTER_STOP_TIMEOUT_MS = 25_000;
/** A child that ran this long before it died is not part of a crash loop. */
const HEALTHY_RUN_MS = 60_000;

/**
 * How long to wait before replacing a child that died after `failures` quick deaths in a row:
 * 250 ms, doubling, at most 30 s, so a crash loop (a bad deploy, a database that refuses) costs
 * a fork every 30 s, not a spinning CPU.
 */
export function restartDelayMs(failures: number): number {
  return Math.min(30_000, 250 * 2 ** Math.min(failures, 10));
}

export interface ApiPrimaryOptions {
  /** How long SIGTERM waits for the children before it kills the rest (and exits 1). */
  stopTimeoutMs?: number;
}

/**
 * The cluster primary: forks `config.apiProcesses` API processes (each runs `kp-rotor api`
 * again, as a cluster worker) and resolves with the exit status once a signal stopped them all:
 * 0 when every child drained and exited in time.
 */
export async function runApiPrimary(
  config: Config,
  log: Logger,
  options: ApiPrimaryOptions = {},
): Promise<number> {
  const plog = log.child({ component: "api-primary" });
  // Taken at once: a signal during start-up still drains what has been forked.
  // A second signal changes nothing (without a listener it would kill the primary, and the
  // children, losing their IPC channel, would exit at once instead of draining).
  const signalled = new Promise<NodeJS.Signals>((resolve) => {
    process.on("SIGTERM", () => resolve("SIGTERM"));
    process.on("SIGINT", () => resolve("SIGINT"));
  });
  const registry = new Registry();
  const liveGauge = new Gauge({
    name: "kp_rotor_api_processes",
    help: "API processes listening under this cluster primary (API_PROCESSES)",
    registers: [registry],
  });
  const restarts = new Counter({
    name: "kp_rotor_api_process_restarts_total",
    help: "API processes that died unexpectedly and were replaced by the cluster primary",
    registers: [registry],
  });

  interface Slot {
    worker: Worker | undefined;
    startedAt: number;
    failures: number;
    timer: NodeJS.Timeout | undefined;
  }
  const slots: Slot[] = [];
  /** Children that answered `listening`: the ones a scrape asks. */
  const listening = new Set<Worker>();
  let stopping = false;
  let allExited: () => void = () => {};
  const exited = new Promise<void>((resolve) => {
    allExited = resolve;
  });
  const running = () => slots.filter((s) => s.worker !== undefined).length;

  let nextId = 0;
  const pending = new Map<number, (reply: Message) => void>();
  /** Asks one child for its metrics as JSON. */
  const snapshotOf = (worker: Worker) =>
    new Promise<Snapshot>((resolve, reject) => {
      const id = ++nextId;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`api process ${worker.process.pid} sent no metrics`));
      }, SNAPSHOT_TIMEOUT_MS);
      pending.set(id, (reply) => {
        clearTimeout(timer);
        pending.delete(id);
        if (reply.kind === "kp-rotor:snapshot-reply" && reply.metrics) resolve(reply.metrics);
        else
          reject(new Error(reply.kind === "kp-rotor:snapshot-reply" ? reply.error : "bad reply"));
      });
      worker.send({ kind: "kp-rotor:snapshot", id } satisfies Message);
    });
  /**
   * Every listening child's metrics, aggregated: counters and histograms sum, gauges that every
   * process reads alike take the max. A child that does not answer fails the scrape: a partial
   * sum would look to Prometheus like a counter reset.
   */
  const scrape = async () => {
    const children = [...listening];
    if (children.length === 0) throw new Error("no api process is listening yet");
    const snapshots = await Promise.all(children.map(snapshotOf));
    liveGauge.set(listening.size);
    const merged = Registry.merge([AggregatorRegistry.aggregate(snapshots), registry]);
    return { contentType: merged.contentType, body: await merged.metrics() };
  };

  const fork = (slot: Slot) => {
    slot.timer = undefined;
    const worker = cluster.fork();
    slot.worker = worker;
    slot.startedAt = Date.now();
    worker.on("message", (message: unknown) => {
      if (!isMessage(message)) return;
      if (message.kind === "kp-rotor:snapshot-reply") pending.get(message.id)?.(message);
      else if (message.kind === "kp-rotor:scrape") {
        // A child's own GET /metrics (behind API_TOKEN) shows the same aggregate.
        scrape().then(
          ({ body }) => worker.send({ kind: "kp-rotor:scrape-reply", id: message.id, body }),
          (err: unknown) =>
            worker.send({ kind: "kp-rotor:scrape-reply", id: message.id, error: String(err) }),
        );
      }
    });
    // A send to a child that has just died fails here; its exit is handled below.
    worker.on("error", (err) =>
      plog.warn({ apiPid: worker.process.pid, err }, "api process ipc error"),
    );
    worker.on("listening", () => {
      listening.add(worker);
      plog.info({ apiPid: worker.process.pid }, "api process listening");
    });
    worker.on("exit", (code, signal) => {
      listening.delete(worker);
      slot.worker = undefined;
      if (stopping) {
        plog.info({ apiPid: worker.process.pid, code, signal }, "api process exited");
        if (running() === 0) allExited();
        return;
      }
      // Quick deaths in a row before this one; a child that ran long enough starts afresh.
      const quick = Date.now() - slot.startedAt >= HEALTHY_RUN_MS ? 0 : slot.failures;
      slot.failures = quick + 1;
      const delayMs = restartDelayMs(quick);
      restarts.inc();
      plog.error(
        { apiPid: worker.process.pid, code, signal, restartInMs: delayMs },
        "api process died unexpectedly; replacing it",
      );
      slot.timer = setTimeout(() => fork(slot), delayMs);
    });
  };

  const metricsServer =
    config.metricsPort === 0
      ? undefined
      : await startMetricsServer(
          { scrape },
          {
            port: config.metricsPort,
            host: config.metricsHost,
            log: plog,
          },
        );
  if (metricsServer) plog.info({ port: metricsServer.port }, "aggregated metrics on GET /metrics");
  for (let i = 0; i < config.apiProcesses; i++) {
    const slot: Slot = { worker: undefined, startedAt: 0, failures: 0, timer: undefined };
    slots.push(slot);
    fork(slot);
  }
  plog.info({ processes: config.apiProcesses, port: config.port }, "api cluster started");

  const signal = await signalled;
  stopping = true;
  plog.info({ signal }, "shutting down: draining the api processes");
  await metricsServer?.close();
  for (const slot of slots) {
    clearTimeout(slot.timer);
    // Each child drains as a single API process does (readiness off, then close). Asked over
    // IPC, not by a signal: after Ctrl-C in a terminal the children have their own SIGINT, and a
    // second signal would make them exit at once (close-with-grace). Not worker.kill(), which
    // disconnects the IPC channel first (a child then exits without draining).
    const worker = slot.worker;
    if (worker === undefined) continue;
    try {
      worker.send({ kind: "kp-rotor:drain" } satisfies Message);
    } catch {
      worker.process.kill("SIGTERM");
    }
  }
  if (running() === 0) allExited();
  const stopTimeoutMs = options.stopTimeoutMs ?? CLUSTER_STOP_TIMEOUT_MS;
  let timer: NodeJS.Timeout | undefined;
  const inTime = await Promise.race([
    exited.then(() => true),
    new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), stopTimeoutMs);
    }),
  ]);
  clearTimeout(timer);
  if (inTime) {
    plog.info("every api process exited");
    return 0;
  }
  plog.error({ stopTimeoutMs }, "api processes still running after the stop timeout; killing them");
  for (const slot of slots) slot.worker?.process.kill("SIGKILL");
  await exited;
  return 1;
}

/** In a cluster child: runs `drain` (the graceful shutdown) when the primary asks for it. */
export function onClusterDrain(drain: () => void): void {
  process.on("message", (message: unknown) => {
    if (isMessage(message) && message.kind === "kp-rotor:drain") drain();
  });
}

/**
 * In a cluster child: answers the primary's requests for this process's metrics, and returns
 * metrics whose scrape (the API's GET /metrics) is the primary's aggregate of every child.
 */
export function joinClusterMetrics(metrics: Metrics): Metrics {
  let nextId = 0;
  const pending = new Map<number, (reply: Message) => void>();
  process.on("message", (message: unknown) => {
    if (!isMessage(message)) return;
    if (message.kind === "kp-rotor:snapshot") {
      metrics.snapshot().then(
        (snapshot) =>
          process.send?.({ kind: "kp-rotor:snapshot-reply", id: message.id, metrics: snapshot }),
        (err: unknown) =>
          process.send?.({ kind: "kp-rotor:snapshot-reply", id: message.id, error: String(err) }),
      );
    } else if (message.kind === "kp-rotor:scrape-reply") {
      pending.get(message.id)?.(message);
    }
  });
  const scrape = () =>
    new Promise<{ contentType: string; body: string }>((resolve, reject) => {
      const id = ++nextId;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error("the cluster primary sent no metrics"));
      }, SNAPSHOT_TIMEOUT_MS * 2);
      pending.set(id, (reply) => {
        clearTimeout(timer);
        pending.delete(id);
        if (reply.kind === "kp-rotor:scrape-reply" && reply.body !== undefined) {
          resolve({ contentType: metrics.registry.contentType, body: reply.body });
        } else {
          reject(new Error(reply.kind === "kp-rotor:scrape-reply" ? reply.error : "bad reply"));
        }
      });
      process.send?.({ kind: "kp-rotor:scrape", id } satisfies Message);
    });
  return {
    registry: metrics.registry,
    welcomesAccepted: (count, by) => metrics.welcomesAccepted(count, by),
    scrape,
    snapshot: () => metrics.snapshot(),
    close: () => metrics.close(),
  };
}

/**
 * In a cluster child that could not start: closes the IPC channel (which would keep it alive)
 * as a deliberate disconnect, so the process ends with its own exit status.
 */
export function leaveCluster(): void {
  cluster.worker?.disconnect();
}

/** Whether this process is an API process forked by a cluster primary. */
export const isClusterChild = (): boolean => cluster.isWorker;
