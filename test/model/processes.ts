import type { Publisher, WakeupKind } from "../../src/core/ports.js";
import type { Timing } from "../../src/core/deadlines.js";
import type { Keyring } from "../../src/keys/encryption.js";
import type { KeyPackageFactory } from "../../src/keys/key-package.js";
import { createDirectoryPublisher, PublishError } from "../../src/keys/publisher.js";
import { createLogger } from "../../src/logger.js";
import { RotorEvents } from "../../src/services/events.js";
import type { Rotor } from "../../src/services/rotor.js";
import { type Healer, startHealer } from "../../src/services/watchdog.service.js";
import { createDeletionHandler, createRotationHandler } from "../../src/runtime/handlers.js";
import { createMemoryStore } from "./memory-store.js";
import { activeWakeup, createMemoryWakeups } from "./memory-wakeups.js";
import { type Proc, STALL_MS, type World } from "./world.js";

/**
 * The model's processes: an API process and worker processes, each a real Rotor on the
 * in-memory ports with its own clock skew. A worker process runs the real wake-up handlers
 * (workers/*.ts) in a BullMQ-like loop (promote due jobs by its own clock, take one, run it;
 * an active job whose worker died or whose handler left it active stalls and runs again after
 * lock duration + stalled interval) and the real healer (startHealer: start-up reconcile, the
 * mark check, the watchdog), on vitest's fake timers.
 */

export const TIMING: Timing = {
  // Ordered as in production (heal bounds < deletion grace < rotation interval, as 13 min <
  // 1 d < 30 d): a lost deletion wake-up is then not hidden by the identity's next rotation
  // re-arming it, and an orphan deletion wake-up can outlast the heal bound of a lost one.
  rotationIntervalMs: 60 * 60_000,
  // ROTATION_JITTER on, so interval deadlines are the jittered ones the services write.
  rotationJitter: 0.1,
  welcomeRotationDelayMs: 5_000,
  deletionGraceMs: 20 * 60_000,
};
export const MARK_CHECK_MS = 15_000;
export const WATCHDOG_MS = 10 * 60_000;
export const OVERDUE_GRACE_MS = 180_000;
/** The watchdog's repairs per scan and kind: small, so retrying identities can fill a page. */
export const WATCHDOG_LIMIT = 2;

export type PublisherMode = "webhook" | "directory";

export interface ModelProcess {
  proc: Proc;
  rotor: Rotor;
  worker: boolean;
  healer?: Healer;
  running: Set<Promise<void>>;
}

const log = createLogger("silent");

const keyring: Keyring = {
  currentKeyId: "model",
  keyIds: ["model"],
  seal: (b) => b,
  open: (b) => b,
};

function fakeKeys(): KeyPackageFactory {
  let n = 0;
  return {
    ciphersuite: "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
    generateSignatureKeyPair: async () => ({
      publicKey: new Uint8Array(32),
      privateKey: new Uint8Array(32),
    }),
    generate: async ({ now }) => ({
      publicBytes: new Uint8Array([1]),
      privateBytes: new Uint8Array([2]),
      ref: `ref-${++n}`,
      notBefore: new Date(now - 3_600_000),
      notAfter: new Date(now + 84 * 86_400_000),
    }),
  };
}

/** A webhook-like publisher: one scheduled step, failing for the identities in `failing`. */
function modelPublisher(world: World, proc: Proc, failing: Set<string>): Publisher {
  return {
    kind: "webhook",
    publish: (request) =>
      world.step(proc, `publish(${request.identityId} g${request.generation})`, () => {
        if (failing.has(request.identityId)) throw new PublishError("webhook answered 503");
      }),
  };
}

export function startProcess(
  world: World,
  name: string,
  options: { skew: number; worker: boolean; publisher: PublisherMode; failing: Set<string> },
): ModelProcess {
  const proc: Proc = { name, skew: options.skew, dead: false };
  const rotor: Rotor = {
    store: createMemoryStore(world, proc),
    timers: createMemoryWakeups(world, proc),
    keys: fakeKeys(),
    keyring,
    publisher:
      options.publisher === "directory"
        ? createDirectoryPublisher()
        : modelPublisher(world, proc, options.failing),
    timing: TIMING,
    clock: () => Date.now() + proc.skew,
    log,
    events: new RotorEvents(),
    devices: {
      // A device endpoint that always answers 2xx (a fault on "notify" makes it fail); whether
      // the device then uploads is the scenario's choice.
      notifier: {
        notify: (n) =>
          world.step(proc, `notify(${n.type} ${n.identityId})`, () => {
            world.notifications.push({
              type: n.type,
              identityId: n.identityId,
              ...(n.type === "delete" ? { ref: n.ref } : {}),
              at: world.now(),
              seq: world.seq,
            });
          }),
      },
      allowedCiphersuites: ["MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"],
      marginMs: 7 * 86_400_000,
      maxLifetimeMs: 90 * 86_400_000,
      secretFor: (id) => `whsec_model_${id}`,
      endpointProblem: () => undefined,
    },
  };
  const p: ModelProcess = { proc, rotor, worker: options.worker, running: new Set() };
  if (options.worker) {
    p.healer = startHealer(rotor, {
      owner: name,
      overdueGraceMs: OVERDUE_GRACE_MS,
      markCheckIntervalMs: MARK_CHECK_MS,
      watchdogIntervalMs: WATCHDOG_MS,
      limit: WATCHDOG_LIMIT,
    });
  }
  return p;
}

/** A process dies: nothing it does reaches the stores any more; its timers stop. */
export function killProcess(world: World, p: ModelProcess): void {
  world.crash(p.proc);
  void p.healer?.close();
}

const handlers = {
  rotation: createRotationHandler,
  deletion: createDeletionHandler,
} as const;

/**
 * One round of the worker loop: stalled jobs go back to wait; each live worker promotes the
 * jobs due by its own clock and takes every waiting job (one moveToActive step each).
 */
export function pumpWorkers(world: World, processes: readonly ModelProcess[]): void {
  const now = world.now();
  for (const queue of Object.values(world.redis.queues)) {
    for (const job of queue.values()) {
      // Held by no running processor (it ended with the job still active, or the worker never
      // got moveToActive's answer): the lock is not renewed, and the stall check takes it back.
      if (job.state === "active" && job.stallAt === undefined && !world.handling.has(job.token)) {
        job.stallAt = now + STALL_MS;
      }
      if (job.state === "active" && job.stallAt !== undefined && job.stallAt <= now) {
        Object.assign(job, { state: "waiting", owner: undefined, stallAt: undefined, token: 0 });
      }
    }
  }
  for (const p of processes) {
    if (!p.worker || p.proc.dead) continue;
    for (const kind of ["rotation", "deletion"] as const) {
      const local = now + p.proc.skew;
      const eligible = [...world.redis.queues[kind].entries()].filter(
        ([, j]) => j.state === "waiting" || (j.state === "delayed" && j.fireAt <= local),
      );
      for (let i = 0; i < eligible.length; i++) take(world, p, kind);
    }
  }
}

function take(world: World, p: ModelProcess, kind: WakeupKind): void {
  const handler = handlers[kind](p.rotor);
  const run = world
    .step(p.proc, `moveToActive(${kind})`, () => {
      const local = world.now() + p.proc.skew;
      const candidates = [...world.redis.queues[kind].entries()]
        .filter(([, j]) => j.state === "waiting" || (j.state === "delayed" && j.fireAt <= local))
        .sort(([, a], [, b]) =>
          a.state === b.state ? a.fireAt - b.fireAt : a.state === "waiting" ? -1 : 1,
        );
      const [entry] = candidates;
      if (entry === undefined) return undefined;
      const [id, job] = entry;
      Object.assign(job, {
        state: "active",
        owner: p.proc,
        token: world.nextToken(),
        stallAt: undefined,
      });
      return { id, job: { ...job } };
    })
    .then(async (taken) => {
      if (taken === undefined) return;
      world.handling.add(taken.job.token);
      try {
        await handler(activeWakeup(world, p.proc, kind, taken.id, taken.job)).catch(() => {});
      } finally {
        world.handling.delete(taken.job.token);
      }
    })
    .catch(() => {});
  p.running.add(run);
  void run.finally(() => p.running.delete(run));
}
