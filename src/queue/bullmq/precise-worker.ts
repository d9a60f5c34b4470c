import { type Processor, Worker, type WorkerOptions } from "bullmq";
import type { Cluster, Redis } from "ioredis";

/** setTimeout fires at once for delays above this (2^31-1 ms, about 24.8 days). */
export const MAX_TIMER_DELAY_MS = 2 ** 31 - 1;

/**
 * How long to wait, at `now`, before nudging a worker that blocks until `blockUntil` (BullMQ's
 * next delayed fire time, epoch ms): 0 means "nudge now". A delayed job with fire time t is
 * promoted by a moveToActive whose clock reads t or later, so the wait ends at floor(blockUntil).
 * Waits beyond setTimeout's limit come back capped at it; the caller asks again when that
 * chunk has passed (it also asks again when a timer fires early: Node's timers run on a cached,
 * truncated loop clock and may fire up to 1 ms before Date.now() reaches the target).
 */
export function nudgeDelayMs(blockUntil: number, now: number): number {
  return Math.min(Math.max(0, Math.floor(blockUntil) - now), MAX_TIMER_DELAY_MS);
}

export interface PreciseWorkerOptions extends Omit<WorkerOptions, "connection" | "drainDelay"> {
  /**
   * The worker's regular (non-blocking) connection, an ioredis client. BullMQ duplicates it for
   * the blocking BZPOPMIN; the nudge is written on this one.
   */
  connection: Redis | Cluster;
  /**
   * The longest a worker blocks on Redis before it asks its queue again, in ms (BullMQ: 10 s for
   * delayed jobs, `drainDelay` 5 s for an empty queue). It bounds how long a silently dead
   * blocking connection goes unnoticed.
   */
  maxBlockMs: number;
}

/** The most BullMQ's watchdog (a setTimeout of the block timeout + 1 s) can take. */
const MAX_BLOCK_MS = MAX_TIMER_DELAY_MS - 1_000;

type WaitForJob = (this: Worker, blockUntil: number) => Promise<number>;

/**
 * A BullMQ worker that starts a delayed job at its fire time instead of when Redis gets round to
 * timing out the worker's BZPOPMIN (Redis checks blocked clients' timeouts about `hz` times a
 * second: up to 100 ms late with the default hz 10).
 *
 * While it blocks until a known fire time, an in-process timer runs to that time; when it fires,
 * the worker adds the "jobs ready" marker (score 0, member "0", what BullMQ's own scripts add)
 * to its queue's marker set on the non-blocking connection. That serves the BZPOPMIN at once;
 * a score-0 marker makes BullMQ call moveToActive, which promotes the due delayed jobs and takes
 * one. The timer is cleared as soon as the wait ends, whatever ended it, so Redis sees nothing
 * between fire times. A nudge that lands just after the wait ended otherwise leaves a marker
 * behind: the next wait pops it and runs one moveToActive that may find nothing (harmless).
 *
 * It also blocks at most `maxBlockMs` instead of BullMQ's 10 s (5 s on an empty queue), which
 * divides the idle cost (one BZPOPMIN and one moveToActive script per block).
 */
export class PreciseWorker<DataType = unknown, ResultType = unknown> extends Worker<
  DataType,
  ResultType
> {
  readonly #nudgeClient: Redis | Cluster;
  readonly #maxBlockSeconds: number;
  #timer: NodeJS.Timeout | undefined;
  #nudgesSent = 0;

  constructor(
    name: string,
    processor: Processor<DataType, ResultType>,
    { maxBlockMs, autorun = true, ...opts }: PreciseWorkerOptions,
  ) {
    if (!Number.isFinite(maxBlockMs) || maxBlockMs < 1 || maxBlockMs > MAX_BLOCK_MS) {
      throw new RangeError(`maxBlockMs must be from 1 to ${MAX_BLOCK_MS}, got ${maxBlockMs}`);
    }
    // Not started by the base constructor: our fields must exist before the main loop runs.
    super(name, processor, { ...opts, drainDelay: maxBlockMs / 1000, autorun: false });
    this.#nudgeClient = opts.connection;
    this.#maxBlockSeconds = maxBlockMs / 1000;
    if (autorun) this.run().catch((err) => this.emit("error", err));
  }

  /** BullMQ caps a block for delayed jobs at this many seconds. */
  override get maximumBlockTimeout(): number {
    return this.#maxBlockSeconds;
  }

  /** How many nudges this worker has written (for tests and diagnostics). */
  get nudgesSent(): number {
    return this.#nudgesSent;
  }

  /** Whether a nudge timer is pending (only while the worker blocks until a fire time). */
  get nudgeArmed(): boolean {
    return this.#timer !== undefined;
  }

  #arm(blockUntil: number): void {
    this.#disarm();
    if (!(blockUntil > 0) || !Number.isFinite(blockUntil)) return;
    const tick = () => {
      this.#timer = undefined;
      const wait = nudgeDelayMs(blockUntil, Date.now());
      if (wait > 0) this.#timer = setTimeout(tick, wait);
      else this.#nudge();
    };
    // Always through a timer, even when already due: when BullMQ does not block at all (due,
    // paused, closing, rate limited) the wait ends within microtasks and clears it first.
    this.#timer = setTimeout(tick, nudgeDelayMs(blockUntil, Date.now()));
  }

  #disarm(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #nudge(): void {
    const marker = this.keys.marker;
    // Only on a live socket and never once closing started: nothing is queued to be sent later
    // by the reconnect logic (while Redis is unreachable the BZPOPMIN is not blocked anyway).
    if (this.closing || marker === undefined || this.#nudgeClient.status !== "ready") return;
    this.#nudgesSent++;
    this.#nudgeClient.zadd(marker, 0, "0").catch((err: Error) => {
      // The BZPOPMIN's own timeout still wakes the worker, only later.
      if (!this.closing) this.emit("error", err);
    });
  }

  static {
    // BullMQ's typings declare waitForJob private, but it is an ordinary method that the main
    // loop calls as this.waitForJob(blockUntil) (worker.js, _getNextJob), so it is replaced on
    // our prototype here rather than overridden in the class body (which TypeScript refuses).
    const bullmqWaitForJob = (Worker.prototype as unknown as { waitForJob?: WaitForJob })
      .waitForJob;
    if (typeof bullmqWaitForJob !== "function") {
      throw new Error("bullmq's Worker has no waitForJob method: PreciseWorker needs updating");
    }
    Object.defineProperty(PreciseWorker.prototype, "waitForJob", {
      configurable: true,
      writable: true,
      value: async function waitForJob(this: PreciseWorker, blockUntil: number) {
        this.#arm(blockUntil);
        try {
          return await bullmqWaitForJob.call(this, blockUntil);
        } finally {
          this.#disarm();
        }
      },
    });
  }
}
