import type { Timing } from "../core/timers.js";
import type { Db } from "../db/client.js";
import type { Keyring } from "../keys/encryption.js";
import type { KeyPackageFactory } from "../keys/key-package.js";
import type { Publisher } from "../keys/publisher.js";
import type { Logger } from "../logger.js";
import type { Timers } from "../queue/timers.js";
import type { RotorEvents } from "./events.js";

/**
 * What every service function needs: the store, the wake-up queues, key generation, sealing
 * and publishing, the three intervals, one clock, a logger and an event emitter. Built once per process (src/app-context.ts) and
 * passed explicitly, so tests can give each one its own database, queue prefix and clock.
 */
export interface Rotor {
  db: Db;
  timers: Timers;
  keys: KeyPackageFactory;
  /** Seals and opens private key material at rest. */
  keyring: Keyring;
  /** Where a rotation publishes its new key package before it becomes current. */
  publisher: Publisher;
  timing: Timing;
  /** The one source of "now" (epoch ms). Postgres' clock is never used for deadlines. */
  clock: () => number;
  log: Logger;
  events: RotorEvents;
}

/**
 * The wake-up job a processor is running, seen from the services: it can be re-armed to a new
 * fire time or finished (removed), both while the caller holds the identity's row lock.
 */
export interface ActiveWakeup {
  readonly identityId: string;
  readonly jobId: string;
  /** Consecutive failed attempts before this one. */
  readonly failures: number;
  rearm(fireAt: number): Promise<void>;
  finish(): Promise<void>;
  /** Re-arms after a failure; `failures` is stored with the job for the next backoff. */
  retryLater(fireAt: number, failures: number): Promise<void>;
}
