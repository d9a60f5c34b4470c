import {
  Counter,
  collectDefaultMetrics,
  Gauge,
  Histogram,
  type MetricObjectWithValues,
  type MetricValue,
  Registry,
} from "prom-client";
import type { WakeupQueues } from "../queue/wakeup-queues.js";
import type { RotorEventMap } from "../services/events.js";
import type { LiveRotor as Rotor } from "../services/rotor.js";
import { lastSealedKeysReport } from "../services/rewrap.service.js";
import { awaitingDevices } from "../db/device.repo.js";
import { createSafetyRepo } from "../db/safety.repo.js";

/**
 * Prometheus metrics of one process. Counters follow `rotor.events`, so they count what this
 * process did (sum them over processes); the gauges (queue sizes, oldest current key package)
 * are read from Redis and Postgres on each scrape and are the same from every process (take the
 * max over processes).
 */
export interface Metrics {
  readonly registry: Registry;
  /**
   * The API accepted `count` welcomes (one per identity found, single or batch), of which
   * `pulledIn` moved a rotation earlier, from `principal` (see WELCOME_PRINCIPALS).
   */
  welcomesAccepted(count: number, by?: { pulledIn: number; principal: string | undefined }): void;
  /** The text exposition format, for GET /metrics. */
  scrape(): Promise<{ contentType: string; body: string }>;
  /**
   * The same as `scrape` as prom-client's JSON, for a cluster primary to aggregate
   * (`AggregatorRegistry.aggregate`): counters sum, the Redis and Postgres gauges take the max.
   */
  snapshot(): Promise<MetricObjectWithValues<MetricValue<string>>[]>;
  /** Stops following the rotor's events. */
  close(): void;
}

/** The one thing a queue must offer to be counted; keeps this module free of bullmq. */
type CountableQueues = Record<string, { getJobCounts(): Promise<Record<string, number>> }>;

/** A rotation event; lateness is measured from `startedAt`, when the wake-up began its work. */
type RotationEvent = RotorEventMap["rotation"][0];
type ReconcileSummary = RotorEventMap["reconcile"][0];

/**
 * The principal label's values: a fixed set, so an open API's client addresses (principal
 * "ip:<address>") cannot grow the series without bound; they are all "anonymous".
 */
export const WELCOME_PRINCIPALS = ["api", "ingest", "board", "anonymous"] as const;
const principalLabel = (principal: string | undefined) =>
  (WELCOME_PRINCIPALS as readonly string[]).includes(principal ?? "")
    ? (principal as string)
    : "anonymous";

/** 1 ms to 10 min: a wake-up is normally tens of ms late, minutes only after a crash. */
export const LATENESS_BUCKETS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
];
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const ROTATION_OUTCOMES = ["rotated", "not-due", "gone", "fenced", "awaiting-device", "checked"];
const TIMER_KINDS = ["rotation", "deletion"];
const REPAIR_ACTIONS = ["add", "reschedule", "replace", "remove"];
/** Collectors give up after this, so a scrape never hangs on a dependency that is down. */
const COLLECT_TIMEOUT_MS = 2_000;

/** How old the gauges read from Redis and Postgres may get before a scrape refreshes them. */
export const GAUGE_MAX_AGE_MS = 15_000;

export interface MetricsOptions {
  /** See GAUGE_MAX_AGE_MS (METRICS_GAUGE_MAX_AGE). */
  gaugeMaxAgeMs?: number;
}

/**
 * Builds the registry and subscribes to the rotor's events. Use `metricsFor(rotor)` in a
 * process, so that the API and a worker running in one process share one registry.
 *
 * A scrape costs no query: the gauges read from Redis and Postgres are cached. The first scrape
 * waits for them; a later one that finds them older than `gaugeMaxAgeMs` serves them as they
 * are and starts one refresh in the background (never two at once), so scrapers, however many
 * and however often, cause at most one read of each per `gaugeMaxAgeMs`.
 */
export function createMetrics(
  rotor: Rotor,
  timers: Pick<WakeupQueues, "shardQueues"> & Partial<Pick<WakeupQueues, "shardOf">>,
  options: MetricsOptions = {},
): Metrics {
  const gaugeMaxAgeMs = options.gaugeMaxAgeMs ?? GAUGE_MAX_AGE_MS;
  const registry = new Registry();
  const registers = [registry];
  collectDefaultMetrics({ register: registry });

  const rotations = new Counter({
    name: "kp_rotor_rotations_total",
    help: "Rotation wake-ups handled, by outcome (rotated, not-due, gone, fenced) and queue shard",
    labelNames: ["outcome", "shard"],
    registers,
  });
  const staleWakeups = new Counter({
    name: "kp_rotor_stale_wakeups_total",
    help: "Rotation wake-ups that found the deadline not due (woke early, re-armed), by queue shard",
    labelNames: ["shard"],
    registers,
  });
  const deletions = new Counter({
    name: "kp_rotor_deletions_total",
    help: "Superseded key packages deleted, by queue shard",
    labelNames: ["shard"],
    registers,
  });
  const wakeFailures = new Counter({
    name: "kp_rotor_wake_failures_total",
    help: "Wake-ups whose work failed and that were re-armed after a backoff, by kind and queue shard",
    labelNames: ["kind", "shard"],
    registers,
  });
  const welcomes = new Counter({
    name: "kp_rotor_welcomes_total",
    help: "Welcomes accepted by the API (one per registered identity, single or batch)",
    registers,
  });
  const welcomeRotations = new Counter({
    name: "kp_rotor_welcome_rotations_total",
    help: "Rotations welcomes caused (welcomes that pulled a deadline in), by principal: api, ingest, board or anonymous",
    labelNames: ["principal"],
    registers,
  });
  for (const principal of WELCOME_PRINCIPALS) welcomeRotations.labels(principal).inc(0);
  const lateness = new Histogram({
    name: "kp_rotor_wakeup_lateness_seconds",
    help: "How long after its deadline a rotation started its work (rotated wake-ups only), by queue shard",
    labelNames: ["shard"],
    buckets: LATENESS_BUCKETS,
    registers,
  });
  const duration = new Histogram({
    name: "kp_rotor_rotation_duration_seconds",
    help: "Time from the start of a rotation wake-up to its end (key generation, publishing, commit, re-arm)",
    buckets: DURATION_BUCKETS,
    registers,
  });
  const repairs = new Counter({
    name: "kp_rotor_reconcile_repairs_total",
    help: "Wake-ups repaired by reconcile, by timer kind and action (add, reschedule, replace, remove)",
    labelNames: ["kind", "action"],
    registers,
  });
  const orphans = new Counter({
    name: "kp_rotor_reconcile_orphans_removed_total",
    help: "Wake-ups of identities that are not live, removed by reconcile",
    registers,
  });
  const armFenceAdvanced = new Counter({
    name: "kp_rotor_arm_fence_advanced_total",
    help: "Times arm_seq was found behind the fences in Redis (Postgres restored from a backup) and moved past them",
    registers,
  });
  const reconcileFailures = new Counter({
    name: "kp_rotor_reconcile_failures_total",
    help: "Reconciles that did not complete (no mark written; retried with backoff until one does)",
    registers,
  });
  const collectErrors = new Counter({
    name: "kp_rotor_metrics_collect_errors_total",
    help: "Scrape-time reads that failed (Redis or Postgres unavailable), by collector",
    labelNames: ["collector"],
    registers,
  });
  // Every shard's series exist from the start (at 0), so rates and alerts see them at once.
  const shardQueues = timers.shardQueues as readonly CountableQueues[];
  const shards = shardQueues.map((_, i) => String(i));
  const shardLabel = (identityId: string) => String(timers.shardOf?.(identityId) ?? 0);
  for (const shard of shards) {
    for (const outcome of ROTATION_OUTCOMES) rotations.labels(outcome, shard).inc(0);
    for (const kind of TIMER_KINDS) wakeFailures.labels(kind, shard).inc(0);
    staleWakeups.labels(shard).inc(0);
    deletions.labels(shard).inc(0);
  }
  for (const kind of TIMER_KINDS) {
    for (const action of REPAIR_ACTIONS) repairs.labels(kind, action).inc(0);
  }

  const queueJobs = new Gauge({
    name: "kp_rotor_queue_jobs",
    // The same from every process: a cluster primary takes the max, not the sum.
    aggregator: "max",
    help: "Jobs in each wake-up queue, by queue shard and state (read from Redis, cached up to METRICS_GAUGE_MAX_AGE)",
    labelNames: ["queue", "shard", "state"],
    registers,
  });
  const oldestAge = new Gauge({
    name: "kp_rotor_oldest_current_key_package_age_seconds",
    // The same from every process: a cluster primary takes the max, not the sum.
    aggregator: "max",
    help: "Age of the oldest current key package (0 when there is none; read from Postgres, cached up to METRICS_GAUGE_MAX_AGE)",
    registers,
  });
  new Gauge({
    name: "kp_rotor_sealed_keys_unreadable",
    // The same from every process: a cluster primary takes the max, not the sum.
    aggregator: "max",
    help: "Sealed private keys naming a KEY_ENCRYPTION_KEY this process does not have (checked at start; run kp-rotor rewrap)",
    registers,
    collect() {
      const report = lastSealedKeysReport(rotor);
      if (report === undefined) this.reset();
      else this.set(report.unreadable);
    },
  });
  const readQueueJobs = async () => {
    try {
      const counts = await withTimeout(
        Promise.all(
          shardQueues.flatMap((queues, shard) =>
            Object.entries(queues).map(
              async ([name, q]) => [name, String(shard), await q.getJobCounts()] as const,
            ),
          ),
        ),
      );
      queueJobs.reset();
      for (const [queue, shard, byState] of counts) {
        for (const [state, n] of Object.entries(byState)) {
          queueJobs.labels({ queue, shard, state }).set(n);
        }
      }
    } catch (err) {
      queueJobs.reset();
      collectErrors.labels("queue_jobs").inc();
      rotor.log.warn({ component: "metrics", err }, "could not read queue counts");
    }
  };
  const readOldestAge = async () => {
    try {
      const at = await withTimeout(createSafetyRepo(rotor.db).oldestCurrentCreatedAt());
      oldestAge.set(at === null ? 0 : Math.max(0, (rotor.clock() - at.getTime()) / 1000));
    } catch (err) {
      oldestAge.reset();
      collectErrors.labels("oldest_key_package").inc();
      rotor.log.warn({ component: "metrics", err }, "could not read the oldest key package");
    }
  };
  const devicesOverdue = new Gauge({
    name: "kp_rotor_devices_overdue",
    // The same from every process: a cluster primary takes the max, not the sum.
    aggregator: "max",
    help: "Device identities whose rotation is due and whose upload has not come (read from Postgres, cached up to METRICS_GAUGE_MAX_AGE)",
    registers,
  });
  const devicesOverdueAge = new Gauge({
    name: "kp_rotor_device_longest_wait_seconds",
    // The same from every process: a cluster primary takes the max, not the sum.
    aggregator: "max",
    help: "How long the longest-waiting device identity has awaited its upload (0: none waiting)",
    registers,
  });
  const readDevicesOverdue = async () => {
    try {
      const awaiting = await withTimeout(awaitingDevices(rotor.db));
      devicesOverdue.set(awaiting.count);
      devicesOverdueAge.set(
        awaiting.oldestSince === null
          ? 0
          : Math.max(0, (rotor.clock() - awaiting.oldestSince.getTime()) / 1000),
      );
    } catch (err) {
      devicesOverdue.reset();
      devicesOverdueAge.reset();
      collectErrors.labels("devices_overdue").inc();
      rotor.log.warn({ component: "metrics", err }, "could not read the devices overdue");
    }
  };
  const deviceUploads = new Counter({
    name: "kp_rotor_device_uploads_total",
    help: "Key packages uploaded by devices and made current",
    registers,
  });
  const deviceNotifications = new Counter({
    name: "kp_rotor_device_notifications_total",
    help: "Notifications sent to devices, by type (rotate, delete) and result (ok, failed)",
    labelNames: ["type", "result"],
    registers,
  });
  for (const type of ["rotate", "delete"]) {
    for (const result of ["ok", "failed"]) deviceNotifications.labels(type, result).inc(0);
  }
  const publishedChecks = new Counter({
    name: "kp_rotor_published_checks_total",
    help: "Published key packages read back and checked, by when (publish, mid-interval) and result (ok, missing, ref-mismatch, bad-signature, too-short, unreadable); a failure other than unreadable rotates at once",
    labelNames: ["when", "result"],
    registers,
  });
  for (const when of ["publish", "mid-interval"]) publishedChecks.labels(when, "ok").inc(0);
  rotor.events.on("published-checked", (e) =>
    publishedChecks.labels(e.when, e.ok ? "ok" : (e.reason ?? "failed")).inc(),
  );
  rotor.events.on("device-upload", () => deviceUploads.inc());
  rotor.events.on("device-notify", (e) =>
    deviceNotifications.labels(e.type, e.ok ? "ok" : "failed").inc(),
  );
  const readGauges = async () => {
    await Promise.all([readQueueJobs(), readOldestAge(), readDevicesOverdue()]);
  };
  let readAt: number | undefined;
  let reading: Promise<void> | undefined;
  const refreshGauges = () => {
    reading ??= readGauges().finally(() => {
      readAt = Date.now();
      reading = undefined;
    });
    return reading;
  };

  /** The first scrape waits for the gauges; a later one refreshes stale ones in the background. */
  const freshEnough = async () => {
    if (readAt === undefined) await refreshGauges();
    else if (Date.now() - readAt >= gaugeMaxAgeMs) void refreshGauges();
  };

  const onRotation = (event: RotationEvent) => {
    const shard = shardLabel(event.identityId);
    rotations.labels(event.outcome, shard).inc();
    if (event.outcome === "not-due") staleWakeups.labels(shard).inc();
    if (event.outcome !== "rotated") return;
    const started = event.startedAt ?? event.at;
    if (event.deadline !== undefined) {
      lateness.labels(shard).observe(Math.max(0, started - event.deadline) / 1000);
    }
    if (event.startedAt !== undefined) {
      // Listeners run synchronously inside emit, which comes right after the rotation's re-arm.
      duration.observe(Math.max(0, rotor.clock() - event.startedAt) / 1000);
    }
  };
  const onDeletion = (event: RotorEventMap["deletion"][0]) =>
    deletions.labels(shardLabel(event.identityId)).inc(event.deleted);
  const onWakeFailed = (event: RotorEventMap["wake-failed"][0]) =>
    wakeFailures.labels(event.kind, shardLabel(event.identityId)).inc();
  const onReconcile = (report: ReconcileSummary) => {
    for (const [kind, actions] of Object.entries(report.repairs)) {
      for (const [action, n] of Object.entries(actions)) {
        if (n > 0) repairs.labels(kind, action).inc(n);
      }
    }
    if (report.orphansRemoved > 0) orphans.inc(report.orphansRemoved);
  };
  rotor.events.on("rotation", onRotation);
  rotor.events.on("deletion", onDeletion);
  rotor.events.on("wake-failed", onWakeFailed);
  rotor.events.on("reconcile", onReconcile);
  const onReconcileFailed = () => reconcileFailures.inc();
  rotor.events.on("reconcile-failed", onReconcileFailed);
  const onArmFenceAdvanced = () => armFenceAdvanced.inc();
  rotor.events.on("arm-fence-advanced", onArmFenceAdvanced);

  return {
    registry,
    welcomesAccepted(count, by) {
      if (count > 0) welcomes.inc(count);
      if (by !== undefined && by.pulledIn > 0) {
        welcomeRotations.labels(principalLabel(by.principal)).inc(by.pulledIn);
      }
    },
    async scrape() {
      await freshEnough();
      return { contentType: registry.contentType, body: await registry.metrics() };
    },
    async snapshot() {
      await freshEnough();
      return registry.getMetricsAsJSON();
    },
    close() {
      rotor.events.off("rotation", onRotation);
      rotor.events.off("deletion", onDeletion);
      rotor.events.off("wake-failed", onWakeFailed);
      rotor.events.off("reconcile", onReconcile);
      rotor.events.off("reconcile-failed", onReconcileFailed);
      rotor.events.off("arm-fence-advanced", onArmFenceAdvanced);
    },
  };
}

const shared = new WeakMap<Rotor, Metrics>();

/** The metrics of a process's rotor, created on first use: the API and workers share them. */
export function metricsFor(rotor: Rotor, options?: MetricsOptions): Metrics {
  let metrics = shared.get(rotor);
  if (metrics === undefined) {
    metrics = createMetrics(rotor, rotor.timers, options);
    shared.set(rotor, metrics);
  }
  return metrics;
}

async function withTimeout<T>(work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`no answer within ${COLLECT_TIMEOUT_MS} ms`)),
      COLLECT_TIMEOUT_MS,
    );
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
