/**
 * What every system in the side-by-side benchmark (bench/peers.ts) provides, and small helpers
 * shared by the adapters in this folder.
 */
import { Redis } from "ioredis";
import type postgres from "postgres";
import type { LoadRun } from "./ingest.js";
import {
  createPrivateDatabase,
  defer,
  mulberry32,
  pgStats,
  type PrivateDatabase,
  type PrivateRedis,
  redisInfo,
  redisDelta,
  type Info,
  type PgStats,
  pgDelta,
  sleep,
  summarize,
  type Summary,
  startPrivateRedis,
} from "../lib.js";

export const DAY = 86_400_000;

export interface Params {
  /** Identities with a far-future deadline (the "pending" set). */
  identities: number;
  /** WakeupQueues due in the lateness test, and the window they are spread over. */
  due: number;
  spreadS: number;
  /** Reschedules (welcome pull-ins) in the reschedule test. */
  reschedules: number;
  /** Lead time before the first due timer. */
  leadMs: number;
  /** Upper bound of a reschedule loop that goes one call per timer (pg-boss). */
  rescheduleSeconds: number;
  /** HTTP welcome ingest: concurrent connections, and the upper bound of the measured run. */
  ingestConnections: number;
  ingestSeconds: number;
}

export interface ScheduleResult {
  /** What was measured, in words. */
  what: string;
  count: number;
  /** The whole scheduling cost: for kp-rotor writeMs + armMs, for the peers their one call loop. */
  ms: number;
  /** count / ms, per second. */
  perS: number;
  /**
   * kp-rotor only (absent in runs before the write was counted): the durable write of the
   * identity rows (the SQL seed, as a bulk import writes them) and the arm (reconcile into an
   * empty Redis), timed in the same run; ms = writeMs + armMs.
   */
  writeMs?: number;
  armMs?: number;
  /** Durable rows written per identity (Postgres systems), and what they are. */
  rowsPerIdentity?: number;
  rows?: string;
  /** pg_database_size of the system's own database after minus before the schedule, over count. */
  dbBytesPerIdentity?: number;
  /** Redis used_memory delta per identity (Redis-based systems only). */
  redisBytesPerIdentity?: number;
  redisBytesPerTimer?: number;
  timersPerIdentity?: number;
  /**
   * kp-rotor: Redis bytes per identity in steady state (a rotation timer for every identity, a
   * deletion timer only for those rotated within the last deletion grace), measured.
   */
  steadyState?: {
    redisBytesPerIdentity: number;
    deletionTimersPerIdentity: number;
    /** The reconcile that removed the other deletion timers, and its length. */
    reconcileMs: number;
  };
  /** Bytes of BullMQ's event streams (capped, not per job) inside the figures above. */
  eventStreamBytes?: number;
  extra?: Record<string, unknown>;
}

export interface LatenessResult {
  what: string;
  count: number;
  expected: number;
  lateness: Summary;
  /** Secondary figures (kp-rotor: BullMQ pickup, rotations/s …). */
  extra?: Record<string, unknown>;
}

/** One welcome per HTTP request against the API process, closed loop over `connections`. */
export interface HttpIngestResult extends Omit<LoadRun, "pulledIn"> {
  what: string;
  connections: number;
  /** 2xx answers per second over the measured run. */
  perS: number;
  /**
   * Answers of the measured run saying the welcome moved a deadline (`pulledIn: true`; the others
   * were no-ops: earliest wins), and the same counted in Postgres (identities whose deadline came
   * within the hour), which also sees requests still in flight when a time-boxed run stopped.
   */
  changed: number;
  changedInDb: number;
  /** Distinct pre-registered identities the welcomes were spread over, and warm-up requests. */
  pool: number;
  warmup: number;
  loadGenerator: string;
  /** CPU of the API process and of the benchmark process (the load generator) over the run, % of one core. */
  apiCpuPercent?: number;
  loadGeneratorCpuPercent?: number;
}

export interface RescheduleResult {
  what: string;
  count: number;
  ms: number;
  perS: number;
}

export interface Counters {
  redis?: Info;
  pg?: PgStats;
  /** Queries the adapter counted itself (poll loop). */
  ownQueries?: number;
}

export interface Peer {
  name: string;
  /** Settings as configured, for the report. */
  settings: Record<string, string | number | boolean>;
  /** Idle-cost resources: which database and Redis server belong to this system alone. */
  database?: PrivateDatabase;
  redis?: PrivateRedis;
  /** Schedules `identities` far-future timers (1 to 30 days), measured. */
  schedule(p: Params): Promise<ScheduleResult>;
  /**
   * Starts the workers (or the poll loop) used by the idle and lateness tests, at `concurrency`
   * (each system's nearest equivalent; see `concurrencyKnob`).
   */
  startWorkers(concurrency: number): Promise<void>;
  /** What `concurrency` sets in this system, in words; undefined: it has no such setting. */
  concurrencyKnob?: string;
  /** Polled by the orchestrator until it says the workers are quiet. */
  ready?(): Promise<boolean>;
  lateness(p: Params): Promise<LatenessResult>;
  stopWorkers(): Promise<void>;
  reschedule(p: Params): Promise<RescheduleResult>;
  /** Welcome ingest over HTTP, one welcome per request (kp-rotor only). */
  ingest?(p: Params): Promise<HttpIngestResult>;
  ownQueries?(): number;
  close(): Promise<void>;
}

export interface IdleResult {
  seconds: number;
  pgXactCommitPerS: number | null;
  pgTupReturnedPerS: number | null;
  pgQueriesPer10Min: number | null;
  ownQueriesPerS: number | null;
  redisCommandsPerS: number | null;
  redisByCommand: Record<string, number> | null;
  workers: number;
  /**
   * The concurrency the workers ran at in this window (null: the system has no such setting,
   * e.g. the poll loop); absent in runs before it was recorded.
   */
  concurrency?: number | null;
  /** What that concurrency sets in this system, in words. */
  concurrencyKnob?: string;
}

/** Shared infrastructure handed to the adapters. */
export interface Infra {
  admin: postgres.Sql;
  newDatabase(): Promise<PrivateDatabase>;
  newRedis(extra?: string[]): Promise<PrivateRedis>;
  log(msg: string): void;
}

export function makeInfra(admin: postgres.Sql, log: (m: string) => void): Infra {
  return {
    admin,
    newDatabase: () => createPrivateDatabase(),
    newRedis: (extra) => startPrivateRedis(extra),
    log,
  };
}

/** A measuring connection to a private Redis (closed by the cleanup stack). */
export function measuringRedis(url: string): Redis {
  const r = new Redis(url);
  defer("measuring redis", () => r.quit());
  return r;
}

export async function usedMemory(r: Redis): Promise<number> {
  const info = await redisInfo(r);
  return Number(info.get("used_memory") ?? 0);
}

/** Bytes of the BullMQ event streams (`…:events`, capped at ~10,000 entries) in a Redis. */
export async function eventStreamBytes(r: Redis): Promise<number> {
  let total = 0;
  let cursor = "0";
  do {
    const [nextCursor, keys] = await r.scan(cursor, "MATCH", "*:events", "COUNT", 1000);
    cursor = nextCursor;
    for (const key of keys) total += Number((await r.memory("USAGE", key, "SAMPLES", 0)) ?? 0);
  } while (cursor !== "0");
  return total;
}

export { pgStats, redisInfo, redisDelta, pgDelta, sleep, summarize };

/** Waits until `count()` reaches `target` or `deadline` passes. */
export async function waitFor(count: () => number, target: number, deadline: number) {
  while (count() < target && Date.now() < deadline) await sleep(50);
}

/** Deadlines for the lateness test: uniform over [t0, t0 + spread), fixed seed. */
export function dueTimes(p: Params, t0: number): number[] {
  const random = mulberry32(7);
  return Array.from({ length: p.due }, () => Math.round(t0 + random() * p.spreadS * 1000));
}

/** Far-future fire times for the pending set, 1 to 30 days out, fixed seed. */
export function farTimes(n: number, now: number): number[] {
  const random = mulberry32(42);
  return Array.from({ length: n }, () => Math.round(now + DAY + random() * 29 * DAY));
}

export const idOf = (i: number) => `id-${String(i).padStart(8, "0")}`;
