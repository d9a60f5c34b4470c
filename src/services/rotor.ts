import type {
  Clock,
  DeviceNotifier,
  Publisher,
  PublishedReader,
  Store,
  Wakeups,
} from "../core/ports.js";
import type { Timing } from "../core/deadlines.js";
import type { Db } from "../db/client.js";
import type { Keyring } from "../keys/encryption.js";
import type { KeyPackageFactory } from "../keys/key-package.js";
import type { Logger } from "../logger.js";
import type { WakeupQueues } from "../queue/wakeup-queues.js";
import type { RotorEvents } from "./events.js";

export type { ActiveWakeup } from "../core/ports.js";

/**
 * What every service function needs: the ports (store, wake-up queues, publisher, clock), key
 * generation and sealing, the three intervals, a logger and an event emitter. The services use
 * nothing else, so the model test (test/model/) runs them on in-memory adapters. Passed
 * explicitly, so tests can give each one its own database, queue prefix and clock.
 */
export interface Rotor {
  /** The truth (Postgres in production): identities, deadlines, key packages, row locks. */
  store: Store;
  /** The wake-up queues (BullMQ on Redis in production). */
  timers: Wakeups;
  keys: KeyPackageFactory;
  /** Seals and opens private key material at rest. */
  keyring: Keyring;
  /** Where a rotation publishes its new key package before it becomes current. */
  publisher: Publisher;
  timing: Timing;
  /** This process's clock (epoch ms). What is due is decided by the store's clock. */
  clock: Clock;
  log: Logger;
  events: RotorEvents;
  /** Device custody (docs/device-custody.md); without it, device identities are refused. */
  devices?: DeviceSupport;
  /**
   * Checks of the published package, after each publish and at about half the interval; absent:
   * no checks (a webhook publisher without PUBLISH_VERIFY_URL).
   */
  verifier?: {
    reader: PublishedReader;
    marginMs: number;
    /** Also check at about half the interval, through an early rotation wake (opt-in). */
    midway: boolean;
  };
}

/** What device custody needs: the notifier and the upload policy. */
export interface DeviceSupport {
  notifier: DeviceNotifier;
  /** Suites an upload may use (MLS_ALLOWED_CIPHERSUITES). */
  allowedCiphersuites: readonly string[];
  /** KEY_PACKAGE_MARGIN: an upload must stay valid this long past the next rotation. */
  marginMs: number;
  /** MAX_KEY_PACKAGE_LIFETIME: the longest total lifetime an upload may have. */
  maxLifetimeMs: number;
  /** The Standard Webhooks secret (`whsec_…`) the identity's notifications are signed with. */
  secretFor(identityId: string): string;
  /** Why a notification endpoint is refused, or undefined. */
  endpointProblem(url: string): string | undefined;
}

/**
 * The rotor of a running process (src/context.ts): the ports on Postgres and BullMQ, plus the
 * database handle and the queues themselves for what is not a service (Bull Board, metrics, the
 * safety report) and for tests.
 */
export interface LiveRotor extends Rotor {
  db: Db;
  timers: WakeupQueues;
}
