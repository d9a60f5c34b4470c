import { availableParallelism } from "node:os";
import { formatDuration, parseDuration } from "./core/duration.js";
import { MAX_ROTATION_JITTER } from "./core/jitter.js";
import { ErrorCodes, KpRotorError } from "./errors.js";
import { type KeysConfig, loadKeysConfig } from "./keys/keys-config.js";
import { MAX_SHARDS } from "./queue/layout.js";

/** Everything the service reads from its environment, validated once at start. */
export interface Config {
  databaseUrl: string;
  redisUrl: string;
  /**
   * Seed nodes (`host:port`) of a Redis Cluster, from REDIS_CLUSTER_NODES; undefined for a single
   * Redis at REDIS_URL. With a cluster, REDIS_URL still gives the scheme, user and password.
   */
  redisClusterNodes: string[] | undefined;
  /** QUEUE_SHARDS: rotation/deletion queue pairs the identities are spread over (docs/cluster.md). */
  queueShards: number;
  /** WORKER_SHARDS: the shards this process's workers serve (every shard by default). */
  workerShards: number[];
  port: number;
  host: string;
  /**
   * API_PROCESSES: how many processes `kp-rotor api` serves the port with (node:cluster); 1: the
   * API runs in the process itself. `auto` is os.availableParallelism().
   */
  apiProcesses: number;
  apiToken: string | undefined;
  /** Serve the API with no API_TOKEN (ALLOW_UNAUTHENTICATED=true; `npm run dev` sets it). */
  allowUnauthenticated: boolean;
  /** A second bearer token that may only report welcomes (message ingest). Needs API_TOKEN. */
  ingestToken: string | undefined;
  /** Requests per client per window (the client is its token, or its address); 0: no limit. */
  rateLimitMax: number;
  rateLimitWindowMs: number;
  /** Registrations per principal per RATE_LIMIT_WINDOW (each costs a key generation); 0: no own limit. */
  rateLimitRegisterMax: number;
  /** Failed authentications per client address per RATE_LIMIT_WINDOW before 429; 0: no limit. */
  authFailureMax: number;
  /** Longest a request may take to arrive, headers and body (REQUEST_TIMEOUT). */
  requestTimeoutMs: number;
  /** Open connections one client address may hold; 0: no limit. */
  maxConnectionsPerClient: number;
  /** Rotation deadline after a rotation (libxmtp: 30 days). */
  rotationIntervalMs: number;
  /**
   * ROTATION_JITTER as a fraction (0 to 0.5): interval deadlines come up to this share of
   * ROTATION_INTERVAL earlier, a fixed offset per identity, never later (src/core/jitter.ts).
   */
  rotationJitter: number;
  /** Rotations per identity per hour that welcomes may cause (MAX_ROTATIONS_PER_HOUR); undefined: no cap. */
  maxRotationsPerHour: number | undefined;
  /** Rotation deadline after a welcome consumed the key package (libxmtp: 5 s). */
  welcomeRotationDelayMs: number;
  /** How long a superseded key package is kept before deletion (libxmtp: 1 day). */
  deletionGraceMs: number;
  queuePrefix: string;
  workerConcurrency: number;
  /** How long a worker's claim on a running wake-up lasts without renewal (BullMQ lockDuration). */
  workerLockDurationMs: number;
  /** How often workers look for wake-ups whose claim lapsed, i.e. whose worker died. */
  workerStalledIntervalMs: number;
  /**
   * The longest an idle worker blocks on Redis before it asks its queue again (BullMQ: 10 s).
   * Wake-ups do not wait for it; it bounds how long a silently dead connection goes unnoticed.
   */
  workerMaxBlockMs: number;
  /**
   * How often a worker runs the watchdog: the wakeup census (finds wake-ups lost while the
   * reconcile mark survived) and the overdue scans. 0 disables it.
   */
  watchdogIntervalMs: number;
  /** How often a worker checks the reconcile mark (one EXISTS; finds a full loss); 0: only on reconnect. */
  markCheckIntervalMs: number;
  logLevel: string;
  /** Port of a worker process's Prometheus endpoint (GET /metrics); 0: none. */
  metricsPort: number;
  /** Address the metrics port listens on (METRICS_HOST, default loopback). */
  metricsHost: string;
  /** How old the scraped Redis and Postgres gauges may get (a scrape itself runs no query). */
  metricsGaugeMaxAgeMs: number;
  /** HTTP basic-auth credentials for Bull Board (/admin/queues), for people in a browser. */
  boardUser: string | undefined;
  boardPassword: string | undefined;
  /** Bull Board shows the queues but offers no action (retry, remove, promote, clean). */
  boardReadOnly: boolean;
  /** The OpenAPI document and its UI (/docs) are served without credentials. */
  docsPublic: boolean;
  /** Ciphersuite, key-encryption keys and the publisher (src/keys/keys-config.ts). */
  keys: KeysConfig;
}

const DEFAULTS = {
  DATABASE_URL: "postgres://postgres@127.0.0.1:5432/postgres",
  REDIS_URL: "redis://127.0.0.1:6379",
  PORT: "3000",
  HOST: "0.0.0.0",
  API_PROCESSES: "1",
  ROTATION_INTERVAL: "30d",
  ROTATION_JITTER: "0%",
  WELCOME_ROTATION_DELAY: "5s",
  DELETION_GRACE: "1d",
  QUEUE_PREFIX: "kp-rotor",
  QUEUE_SHARDS: "1",
  WORKER_CONCURRENCY: "16",
  WORKER_LOCK_DURATION: "30s",
  WORKER_STALLED_INTERVAL: "30s",
  WORKER_MAX_BLOCK: "60s",
  WATCHDOG_INTERVAL: "10m",
  RECONCILE_CHECK_INTERVAL: "15s",
  LOG_LEVEL: "info",
  RATE_LIMIT_MAX: "60000",
  RATE_LIMIT_WINDOW: "1m",
  RATE_LIMIT_REGISTER_MAX: "600",
  AUTH_FAILURE_MAX: "20",
  REQUEST_TIMEOUT: "10s",
  MAX_CONNECTIONS_PER_CLIENT: "256",
  METRICS_PORT: "9464",
  METRICS_HOST: "127.0.0.1",
  METRICS_GAUGE_MAX_AGE: "15s",
  BOARD_READ_ONLY: "false",
  DOCS_PUBLIC: "false",
  ALLOW_UNAUTHENTICATED: "false",
} as const;

const MAX_TIMER_MS = 24 * 86_400_000;
/** API_PROCESSES above this is a typo, not a host (each process holds its own pools). */
const MAX_API_PROCESSES = 256;
const QUEUE_PREFIX = /^[A-Za-z0-9._-]{1,64}$/;
const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

/**
 * Reads and validates the configuration. Every bad value is reported, each with what was wrong
 * and what was expected, in one error, so an operator fixes them all in one go.
 */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const problems: string[] = [];
  const read = (name: keyof typeof DEFAULTS): string => {
    const value = env[name];
    return value === undefined || value === "" ? DEFAULTS[name] : value;
  };
  const duration = (name: keyof typeof DEFAULTS, min: number): number => {
    const raw = read(name);
    const ms = parseDuration(raw);
    if (ms === undefined || ms < min) {
      problems.push(
        `${name}=${JSON.stringify(raw)}: expected milliseconds or a number with ms, s, m, h or d (e.g. 500ms, 5s, 30d), at least ${formatDuration(min)}`,
      );
      return 0;
    }
    return ms;
  };
  const integer = (
    name: keyof typeof DEFAULTS,
    min: number,
    max: number,
    alternative = "",
  ): number => {
    const raw = read(name);
    const value = Number(raw);
    if (!/^\d+$/.test(raw) || value < min || value > max) {
      problems.push(
        `${name}=${JSON.stringify(raw)}: expected a whole number from ${min} to ${max}${alternative}`,
      );
      return min;
    }
    return value;
  };
  const optionalInteger = (name: string, min: number, max: number): number | undefined => {
    const raw = env[name];
    if (raw === undefined || raw === "") return undefined;
    const value = Number(raw);
    if (!/^\d+$/.test(raw) || value < min || value > max) {
      problems.push(
        `${name}=${JSON.stringify(raw)}: expected a whole number from ${min} to ${max}, or unset for no cap`,
      );
      return undefined;
    }
    return value;
  };
  const percent = (name: "ROTATION_JITTER", max: number): number => {
    const raw = read(name);
    const match = /^(\d{1,3}(?:\.\d{1,3})?)%$/.exec(raw);
    const value = match ? Number(match[1]) / 100 : raw === "0" ? 0 : Number.NaN;
    if (!(value >= 0 && value <= max)) {
      problems.push(
        `${name}=${JSON.stringify(raw)}: expected a percentage from 0% to ${max * 100}% (e.g. 10% or 2.5%), or 0`,
      );
      return 0;
    }
    return value;
  };
  const flag = (name: "BOARD_READ_ONLY" | "DOCS_PUBLIC" | "ALLOW_UNAUTHENTICATED"): boolean => {
    const raw = read(name);
    if (raw !== "true" && raw !== "false") {
      problems.push(`${name}=${JSON.stringify(raw)}: expected true or false`);
    }
    return raw === "true";
  };
  const url = (name: "DATABASE_URL" | "REDIS_URL", protocols: string[]): string => {
    const raw = read(name);
    try {
      const parsed = new URL(raw);
      if (!protocols.includes(parsed.protocol)) throw new Error();
    } catch {
      problems.push(`${name}: expected a ${protocols.map((p) => `${p}//`).join(" or ")} URL`);
    }
    return raw;
  };

  const config: Config = {
    keys: loadKeysConfig(env, problems),
    databaseUrl: url("DATABASE_URL", ["postgres:", "postgresql:"]),
    redisUrl: url("REDIS_URL", ["redis:", "rediss:"]),
    port: integer("PORT", 0, 65535),
    host: read("HOST"),
    apiProcesses:
      read("API_PROCESSES") === "auto"
        ? Math.min(availableParallelism(), MAX_API_PROCESSES)
        : integer("API_PROCESSES", 1, MAX_API_PROCESSES, ", or auto (one per CPU)"),
    apiToken: env.API_TOKEN === "" ? undefined : env.API_TOKEN,
    allowUnauthenticated: flag("ALLOW_UNAUTHENTICATED"),
    ingestToken: env.INGEST_TOKEN === "" ? undefined : env.INGEST_TOKEN,
    rateLimitMax: integer("RATE_LIMIT_MAX", 0, 10_000_000),
    rateLimitWindowMs: duration("RATE_LIMIT_WINDOW", 1_000),
    rateLimitRegisterMax: integer("RATE_LIMIT_REGISTER_MAX", 0, 10_000_000),
    authFailureMax: integer("AUTH_FAILURE_MAX", 0, 10_000_000),
    requestTimeoutMs: duration("REQUEST_TIMEOUT", 1_000),
    maxConnectionsPerClient: integer("MAX_CONNECTIONS_PER_CLIENT", 0, 1_000_000),
    rotationIntervalMs: duration("ROTATION_INTERVAL", 1),
    rotationJitter: percent("ROTATION_JITTER", MAX_ROTATION_JITTER),
    maxRotationsPerHour: optionalInteger("MAX_ROTATIONS_PER_HOUR", 1, 3_600),
    welcomeRotationDelayMs: duration("WELCOME_ROTATION_DELAY", 0),
    deletionGraceMs: duration("DELETION_GRACE", 0),
    queuePrefix: read("QUEUE_PREFIX"),
    redisClusterNodes: clusterNodes(env.REDIS_CLUSTER_NODES, problems),
    queueShards: integer("QUEUE_SHARDS", 1, MAX_SHARDS),
    workerShards: [],
    workerConcurrency: integer("WORKER_CONCURRENCY", 1, 1000),
    workerLockDurationMs: duration("WORKER_LOCK_DURATION", 500),
    workerStalledIntervalMs: duration("WORKER_STALLED_INTERVAL", 500),
    workerMaxBlockMs: duration("WORKER_MAX_BLOCK", 1_000),
    watchdogIntervalMs: duration("WATCHDOG_INTERVAL", 0),
    markCheckIntervalMs: duration("RECONCILE_CHECK_INTERVAL", 0),
    logLevel: read("LOG_LEVEL"),
    metricsPort: integer("METRICS_PORT", 0, 65535),
    metricsHost: read("METRICS_HOST"),
    metricsGaugeMaxAgeMs: duration("METRICS_GAUGE_MAX_AGE", 0),
    boardUser: env.BOARD_USER === "" ? undefined : env.BOARD_USER,
    boardPassword: env.BOARD_PASSWORD === "" ? undefined : env.BOARD_PASSWORD,
    boardReadOnly: flag("BOARD_READ_ONLY"),
    docsPublic: flag("DOCS_PUBLIC"),
  };
  config.workerShards = workerShards(env.WORKER_SHARDS, config.queueShards, problems);
  if (!QUEUE_PREFIX.test(config.queuePrefix)) {
    problems.push(
      `QUEUE_PREFIX=${JSON.stringify(config.queuePrefix)}: expected 1 to 64 characters of A-Z a-z 0-9 . _ -`,
    );
  }
  for (const [name, ms] of [
    ["WATCHDOG_INTERVAL", config.watchdogIntervalMs],
    ["RECONCILE_CHECK_INTERVAL", config.markCheckIntervalMs],
    ["WORKER_LOCK_DURATION", config.workerLockDurationMs],
    ["WORKER_STALLED_INTERVAL", config.workerStalledIntervalMs],
    ["WORKER_MAX_BLOCK", config.workerMaxBlockMs],
    ["REQUEST_TIMEOUT", config.requestTimeoutMs],
  ] as const) {
    // These feed setTimeout/setInterval, which fire at once beyond 2^31-1 ms (about 24.8 days).
    if (ms > MAX_TIMER_MS) problems.push(`${name}: at most ${formatDuration(MAX_TIMER_MS)}`);
  }
  if (config.maxRotationsPerHour !== undefined && config.deletionGraceMs < 3_600_000) {
    // The cap counts the rotations of the last hour by the key packages still stored.
    problems.push("MAX_ROTATIONS_PER_HOUR: needs DELETION_GRACE of at least 1h");
  }
  if (config.ingestToken !== undefined && config.ingestToken.length < 16) {
    problems.push("INGEST_TOKEN: expected at least 16 characters");
  }
  if (config.ingestToken !== undefined && config.apiToken === undefined) {
    problems.push("INGEST_TOKEN: needs API_TOKEN too (without API_TOKEN the API is open)");
  }
  if (config.ingestToken !== undefined && config.ingestToken === config.apiToken) {
    problems.push("INGEST_TOKEN: must differ from API_TOKEN");
  }
  if (config.apiToken !== undefined && config.apiToken.length < 16) {
    problems.push("API_TOKEN: expected at least 16 characters");
  }
  if ((config.boardUser === undefined) !== (config.boardPassword === undefined)) {
    problems.push("BOARD_USER and BOARD_PASSWORD: expected both or neither");
  }
  if (config.boardUser?.includes(":")) {
    // HTTP basic auth separates user and password with the first ':'.
    problems.push("BOARD_USER: expected no ':'");
  }
  if (config.boardPassword !== undefined && config.boardPassword.length < 12) {
    problems.push("BOARD_PASSWORD: expected at least 12 characters");
  }
  if (!LOG_LEVELS.includes(config.logLevel)) {
    problems.push(
      `LOG_LEVEL=${JSON.stringify(config.logLevel)}: expected one of ${LOG_LEVELS.join(", ")}`,
    );
  }
  if (problems.length > 0) {
    throw new KpRotorError(
      ErrorCodes.invalidConfig,
      `invalid configuration:\n  - ${problems.join("\n  - ")}`,
    );
  }
  return config;
}

/**
 * Refuses to serve an API that anyone could call (deregistering an identity destroys its keys):
 * API_TOKEN is required unless ALLOW_UNAUTHENTICATED=true. One line, for the operator.
 */
export function assertApiProtected(
  config: Pick<Config, "apiToken" | "allowUnauthenticated">,
): void {
  if (config.apiToken !== undefined || config.allowUnauthenticated) return;
  throw new KpRotorError(
    ErrorCodes.invalidConfig,
    "API_TOKEN is not set: refusing to serve an API anyone can call (set API_TOKEN, 16+ characters; ALLOW_UNAUTHENTICATED=true only for local development)",
  );
}

/** REDIS_CLUSTER_NODES: `host:port` entries separated by commas; unset or empty for no cluster. */
function clusterNodes(raw: string | undefined, problems: string[]): string[] | undefined {
  if (raw === undefined || raw.trim() === "") return undefined;
  const nodes = raw.split(",").map((n) => n.trim());
  const bad = nodes.filter((node) => {
    const match = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(node);
    return match === null || Number(match[2]) < 1 || Number(match[2]) > 65535;
  });
  if (bad.length > 0) {
    problems.push(
      `REDIS_CLUSTER_NODES=${JSON.stringify(raw)}: expected host:port entries separated by commas (e.g. 10.0.0.1:6379,10.0.0.2:6379); not ${bad.map((b) => JSON.stringify(b)).join(", ")}`,
    );
    return undefined;
  }
  return nodes.map((n) => n.replace(/^\[(.*)\]:/, "$1:"));
}

/** WORKER_SHARDS: shard numbers and ranges (`0,2-3`) below QUEUE_SHARDS; unset means all. */
function workerShards(raw: string | undefined, shards: number, problems: string[]): number[] {
  const all = Array.from({ length: shards }, (_, i) => i);
  if (raw === undefined || raw.trim() === "") return all;
  const chosen = new Set<number>();
  for (const part of raw.split(",").map((p) => p.trim())) {
    const match = /^(\d+)(?:-(\d+))?$/.exec(part);
    const from = Number(match?.[1]);
    const to = Number(match?.[2] ?? match?.[1]);
    if (match === null || from > to || to >= shards) {
      problems.push(
        `WORKER_SHARDS=${JSON.stringify(raw)}: expected shard numbers or ranges from 0 to ${shards - 1} (QUEUE_SHARDS=${shards}) separated by commas, e.g. 0,2-3; not ${JSON.stringify(part)}`,
      );
      return all;
    }
    for (let i = from; i <= to; i++) chosen.add(i);
  }
  return [...chosen].sort((a, b) => a - b);
}
