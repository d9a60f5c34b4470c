/**
 * A step-by-step simulator of kp-rotor's timer protocol, for the model test
 * (test/unit/model.test.ts). No I/O, one simulated clock.
 *
 * What is simulated:
 *  - "Postgres": per identity a row (rotation deadline, generation, deregistered flag, key packages
 *    with current / delete_at), transactions with private staged copies (commit publishes them,
 *    rollback drops them) and per-identity row locks (`SELECT ... FOR UPDATE`, and the
 *    `INSERT ... ON CONFLICT DO NOTHING` of lockOrTombstone, which blocks on a concurrent insert).
 *  - "BullMQ": per queue and identity one job: missing | delayed(fireAt) | waiting |
 *    active(token) | finished, with the semantics the code relies on (add is a no-op when the id
 *    exists, changeDelay only on delayed, remove refuses a locked active job, moveToDelayed only
 *    with the owner's token, a worker's fetch promotes due delayed jobs, a dead worker's active job
 *    goes back to waiting after lock duration + stalled interval), and FLUSHALL.
 *  - Every service function as the code runs it: one atomic step per Postgres statement or Redis
 *    call, so that any other operation, worker fetch, crash or clock jump can come in between. The
 *    decisions are the REAL pure functions of src/core/timers.ts.
 *  - A reference model of what must be committed (deadlines, generations, key packages), fed by
 *    commits, compared after every step, and the invariants of the test.
 *
 * What is abstracted away: SQL and drizzle, key generation (one fallible no-op step), the Redis
 * pipelines of `view` (one atomic read per identity), changeDelay's read-back loop (the simulated
 * clock is shared, so changeDelay lands exactly), status fields (rotation_failures, last_error),
 * logging and events, the watchdog's periodic timer (the final phase runs reconcile when Redis
 * lost data, which is what the watchdog would do), API batches (one identity per welcome), lock
 * renewal (a live worker always keeps its locks), lock wait queues (any waiter may get a freed
 * lock) and Postgres deadlock detection (the protocol never waits in a cycle).
 */
import {
  type ArmAction,
  afterRotation,
  BACKOFF,
  backoffMs,
  decideRotation,
  deletionDeadline,
  type JobView,
  planArm,
  pullIn,
  type RotationState,
  type Timing,
} from "../../src/core/timers.js";

export const SEC = 1_000;
export const MIN = 60 * SEC;
export const DAY = 86_400_000;
/** Production values (libxmtp): 30 d, 5 s, 1 d. */
export const TIMING: Timing = {
  rotationIntervalMs: 30 * DAY,
  welcomeRotationDelayMs: 5 * SEC,
  deletionGraceMs: DAY,
};
/** WORKER_LOCK_DURATION and WORKER_STALLED_INTERVAL defaults. */
export const LOCK_MS = 30 * SEC;
export const STALLED_INTERVAL_MS = 30 * SEC;
/** Worst case from a worker's death to its job waiting again. */
export const STALL_MS = LOCK_MS + STALLED_INTERVAL_MS;
/** src/queue/workers.ts parks a finished job this far ahead before removing it. */
export const PARK_MS = 365 * DAY;
/** Reconcile page size (500 in production; small here so that pages and multi-row locks occur). */
export const PAGE_SIZE = 2;
export const T0 = Date.UTC(2025, 0, 1);

export const IDS = ["a", "b", "c"] as const;
export type Id = (typeof IDS)[number];
export type Kind = "rotation" | "deletion";
export const KINDS: readonly Kind[] = ["rotation", "deletion"];
export type Fault = "none" | "before" | "after";

/** Deliberately broken variants, to show that the invariants can fail. Never in src. */
export interface Variant {
  /** BROKEN: a welcome commits its pulled-in deadline, unlocks, and only then arms the wake-up. */
  welcomeArmsAfterCommit?: boolean;
  /**
   * BROKEN: a deletion wake-up that finds nothing left lets the job complete through BullMQ
   * after its transaction (the processor returns) instead of removing it under the lock.
   */
  deletionCompletesAfterUnlock?: boolean;
  /** BROKEN: a rotation moves its wake-up to the new deadline before its commit, not after. */
  rotationRearmsBeforeCommit?: boolean;
}

export interface SimOptions {
  variant: Variant;
  /**
   * Which identities the arm invariant skips at a given moment:
   *  - "lock": only those whose row lock is held (the strict reading of "One lock per identity":
   *    outside the lock, the wake-up must already be right);
   *  - "in-flight": also those with any unfinished operation or wake-up handler.
   */
  armExemption: "lock" | "in-flight";
  trace?: string[];
}

/** An injected failure (Postgres or Redis refused, key generation failed). */
export class IoFailure extends Error {}
/** An error BullMQ returns (job missing, not delayed, lock mismatch, locked). */
export class BullError extends Error {
  constructor(
    readonly code: "missing" | "notDelayed" | "lock" | "locked",
    message: string,
  ) {
    super(message);
  }
}
/** An invariant of the test does not hold. */
export class InvariantViolation extends Error {}

const isIoError = (e: unknown): e is IoFailure | BullError =>
  e instanceof IoFailure || e instanceof BullError;

interface Kp {
  gen: number;
  current: boolean;
  deleteAt: number | null;
}
interface Row {
  generation: number;
  rotationDeadline: number | null;
  deregistered: boolean;
  kps: Kp[];
}
const cloneRow = (r: Row): Row => ({ ...r, kps: r.kps.map((k) => ({ ...k })) });
const tombstoneRow = (): Row => ({
  generation: 0,
  rotationDeadline: null,
  deregistered: true,
  kps: [],
});

interface Tx {
  n: number;
  /** Rows this transaction locked, as it sees them (staged writes included). */
  staged: Map<string, Row>;
  onCommit: (() => void)[];
  done: boolean;
}

interface Job {
  state: "delayed" | "waiting" | "active" | "finished";
  fireAt: number;
  failures: number;
  token: number | null;
  /** A live worker holds (and renews) the job's lock. */
  lockHeld: boolean;
  /** When the holder died or stopped renewing; the lock lapses LOCK_MS later. */
  orphanedAt: number | null;
  /** Set when a failed attempt parked the job for its backoff; cleared by any other move. */
  retryAt: number | null;
}

/** Where a process waits between two steps; `blocked` says whether the next step can run now. */
interface Pause {
  label: string;
  blocked?: () => boolean;
}
type Gen<T> = Generator<Pause, T, void>;

interface Wake {
  kind: Kind;
  id: string;
  token: number;
  failures: number;
}

export interface Proc {
  pid: number;
  name: string;
  /** "api" (requests, reconcile) or "w0", "w1" (worker processes). */
  owner: string;
  /** The identity an API operation is about. */
  target?: string;
  wake?: Wake;
  gen: Gen<void>;
  pause: Pause | undefined;
  txs: Set<Tx>;
  done: boolean;
}

interface RefIdentity {
  live: boolean;
  deadline: number | null;
  /** Which committed deadline this is; a rotation consumes one. */
  serial: number;
  generation: number;
  /** gen -> delete_at (null: current) */
  kps: Map<number, number | null>;
}

export interface Obligation {
  what: string;
  id: string;
  deadline: number;
  commitSeq: number;
}

const BULL_NOT_DELAYED = "is not in the delayed state";

export function fmtT(t: number): string {
  const d = t - T0;
  const sign = d < 0 ? "-" : "";
  const a = Math.abs(d);
  const days = Math.floor(a / DAY);
  const rest = a % DAY;
  const h = Math.floor(rest / 3_600_000);
  const m = Math.floor((rest % 3_600_000) / MIN);
  const s = (rest % MIN) / SEC;
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${sign}${days}d${pad(h)}:${pad(m)}:${s.toFixed(3).padStart(6, "0")}`;
}

const describeJob = (j: Job | undefined): string => {
  if (j === undefined) return "missing";
  switch (j.state) {
    case "delayed":
      return `delayed(${fmtT(j.fireAt)}${j.retryAt !== null ? ", backoff" : ""})`;
    case "active":
      return `active(token ${j.token ?? "-"}${j.lockHeld ? "" : ", orphaned"})`;
    default:
      return j.state;
  }
};

export class Sim {
  now = T0;
  /** Logical time: one tick per executed step. */
  seq = 0;
  readonly rows = new Map<string, Row>();
  readonly locks = new Map<string, Tx>();
  readonly jobs = new Map<string, Job>();
  procs: Proc[] = [];
  readonly variant: Variant;
  readonly opts: SimOptions;
  private pendingFault: Fault = "none";
  private nextPid = 1;
  private nextTx = 1;
  private nextToken = 1;
  /** Crashes that killed a handler and flushes, and how many of them a finished reconcile covers. */
  damage = 0;
  healed = 0;
  faultsInjected = false;
  crashedWorker = false;
  flushed = false;
  inFinalPhase = false;
  finalStart = 0;
  // Reference model and logs.
  readonly ref = new Map<string, RefIdentity>();
  private serialCounter = 0;
  private readonly consumed = new Set<number>();
  readonly rotations: { id: string; deadline: number; at: number; readSeq: number }[] = [];
  readonly obligations: Obligation[] = [];
  readonly deregistrations: { id: string; seq: number }[] = [];
  readonly superseded: { id: string; gen: number; deleteAt: number; seq: number }[] = [];
  readonly deletions = new Map<string, number>();

  constructor(opts: SimOptions) {
    this.opts = opts;
    this.variant = opts.variant;
  }

  log(line: string): void {
    this.opts.trace?.push(`[${this.seq}] ${fmtT(this.now)} ${line}`);
  }

  violation(message: string): never {
    throw new InvariantViolation(`${message}\n${this.describeState()}`);
  }

  describeState(): string {
    const lines: string[] = [`  state at ${fmtT(this.now)} (step ${this.seq}):`];
    for (const id of IDS) {
      const r = this.rows.get(id);
      const row =
        r === undefined
          ? "no row"
          : `${r.deregistered ? "tombstone" : "live"} gen=${r.generation} deadline=${
              r.rotationDeadline === null ? "-" : fmtT(r.rotationDeadline)
            } kps=[${r.kps
              .map((k) => `${k.gen}:${k.current ? "current" : fmtT(k.deleteAt ?? 0)}`)
              .join(" ")}]`;
      const jobs = KINDS.map((k) => `${k}=${describeJob(this.jobs.get(`${k}:${id}`))}`).join(" ");
      const lock = this.locks.has(id) ? " (locked)" : "";
      lines.push(`    ${id}${lock}: ${row}; ${jobs}`);
    }
    for (const p of this.procs) lines.push(`    in flight: ${p.name} before ${p.pause?.label}`);
    return lines.join("\n");
  }

  // ---------------------------------------------------------------- processes and steps

  spawn(owner: string, name: string, make: (p: Proc) => Gen<void>, extra: Partial<Proc> = {}) {
    const pid = this.nextPid++;
    const p: Proc = {
      pid,
      name: `${name}#${pid}`,
      owner,
      gen: undefined as unknown as Gen<void>,
      pause: undefined,
      txs: new Set(),
      done: false,
      ...extra,
    };
    p.gen = make(p);
    this.procs.push(p);
    this.log(`start ${p.name}`);
    // Run to the first step boundary; no effect happens before the first step.
    const first = p.gen.next();
    if (first.done) this.endProc(p);
    else p.pause = first.value;
    return p;
  }

  isBlocked(p: Proc): boolean {
    return p.pause?.blocked?.() ?? false;
  }

  /** Executes the next step of `p`; a fault makes that step fail before or after its effect. */
  stepProc(p: Proc, fault: Fault): "stepped" | "blocked" | "done" {
    if (p.done) return "done";
    if (this.isBlocked(p)) return "blocked";
    this.seq++;
    this.log(`${p.name}: ${p.pause?.label ?? "?"}${fault === "none" ? "" : ` [fails ${fault}]`}`);
    if (fault !== "none") this.faultsInjected = true;
    this.pendingFault = fault;
    const r = p.gen.next();
    this.pendingFault = "none";
    if (r.done) this.endProc(p);
    else p.pause = r.value;
    this.check();
    return "stepped";
  }

  private endProc(p: Proc): void {
    p.done = true;
    p.pause = undefined;
    this.procs = this.procs.filter((q) => q !== p);
    for (const tx of p.txs) this.rollback(p, tx);
    // The processor ends by throwing DelayedError: BullMQ leaves the job where the handler put it.
    // If it is still active (the handler could not move it), nobody renews its lock: it stalls.
    if (p.wake) this.orphan(p.wake);
    this.log(`end ${p.name}`);
  }

  /** Kills every process of `owner`: transactions roll back, held jobs stall. */
  crash(owner: string): void {
    const victims = this.procs.filter((p) => p.owner === owner);
    this.log(`CRASH ${owner} (${victims.map((p) => p.name).join(", ") || "idle"})`);
    for (const p of victims) {
      p.done = true;
      for (const tx of p.txs) this.rollback(p, tx);
      if (p.wake) this.orphan(p.wake);
    }
    this.procs = this.procs.filter((p) => !victims.includes(p));
    if (owner !== "api" && victims.some((p) => p.wake !== undefined)) {
      // A restarted worker reconciles at start (src/worker-process.ts).
      this.damage++;
      this.crashedWorker = true;
    }
    this.check();
  }

  private orphan(w: Wake): void {
    const j = this.jobs.get(`${w.kind}:${w.id}`);
    if (j?.state === "active" && j.token === w.token && j.lockHeld) {
      j.lockHeld = false;
      j.orphanedAt = this.now;
    }
  }

  private takeFault(): Fault {
    const f = this.pendingFault;
    this.pendingFault = "none";
    return f;
  }

  /** One atomic step: the process pauses before it, then the effect runs (or fails). */
  *io<T>(label: string, effect: () => T, blocked?: () => boolean): Gen<T> {
    yield { label, blocked };
    const fault = this.takeFault();
    if (fault === "before") throw new IoFailure(`${label} failed`);
    const result = effect();
    if (fault === "after") throw new IoFailure(`${label} succeeded but its answer was lost`);
    return result;
  }

  // ---------------------------------------------------------------- Postgres

  private begin(p: Proc): Tx {
    const tx: Tx = { n: this.nextTx++, staged: new Map(), onCommit: [], done: false };
    p.txs.add(tx);
    return tx;
  }

  private commit(p: Proc, tx: Tx): void {
    if (tx.done) return;
    for (const [id, row] of tx.staged) this.rows.set(id, cloneRow(row));
    tx.done = true;
    p.txs.delete(tx);
    this.release(tx);
    for (const f of tx.onCommit) f();
  }

  private rollback(p: Proc, tx: Tx): void {
    if (tx.done) return;
    tx.done = true;
    p.txs.delete(tx);
    this.release(tx);
  }

  private release(tx: Tx): void {
    for (const [id, holder] of [...this.locks]) if (holder === tx) this.locks.delete(id);
  }

  private lockedByOther(tx: Tx, id: string): boolean {
    const holder = this.locks.get(id);
    return holder !== undefined && holder !== tx;
  }

  /** Runs `body` in a transaction: commit as a last step, rollback on any error. */
  *transaction<T>(p: Proc, body: (tx: Tx) => Gen<T>): Gen<T> {
    const tx = this.begin(p);
    try {
      const result = yield* body(tx);
      yield* this.io("commit", () => this.commit(p, tx));
      return result;
    } catch (e) {
      this.rollback(p, tx);
      throw e;
    }
  }

  private acquire(tx: Tx, id: string, orTombstone: boolean): Row | undefined {
    if (this.lockedByOther(tx, id)) throw new Error(`model bug: ${id} is locked`);
    const committed = this.rows.get(id);
    if (committed === undefined && !orTombstone && !tx.staged.has(id)) return undefined;
    this.locks.set(id, tx);
    if (!tx.staged.has(id)) tx.staged.set(id, committed ? cloneRow(committed) : tombstoneRow());
    return tx.staged.get(id);
  }

  /** repo.lockIdentity: SELECT ... FOR UPDATE; a row nobody committed yet is not seen. */
  *lockIdentity(tx: Tx, id: string, label = `lockIdentity(${id})`): Gen<Row | undefined> {
    return yield* this.io(
      label,
      () => this.acquire(tx, id, false),
      () => this.rows.has(id) && this.lockedByOther(tx, id),
    );
  }

  /** repo.lockOrTombstone: INSERT tombstone ON CONFLICT DO NOTHING, then lock. */
  *lockOrTombstone(tx: Tx, id: string): Gen<Row> {
    const row = yield* this.io(
      `lockOrTombstone(${id})`,
      () => this.acquire(tx, id, true),
      () => this.lockedByOther(tx, id),
    );
    if (row === undefined) throw new Error("model bug: lockOrTombstone without a row");
    return row;
  }

  private staged(tx: Tx, id: string): Row {
    const row = tx.staged.get(id);
    if (row === undefined || this.locks.get(id) !== tx) {
      throw new Error(`model bug: write to ${id} without its lock`);
    }
    return row;
  }

  private static deleteAts(row: Row): number[] {
    return row.kps.flatMap((k) => (k.deleteAt === null ? [] : [k.deleteAt]));
  }

  private isLiveCommitted(id: string): boolean {
    const r = this.rows.get(id);
    return r !== undefined && !r.deregistered;
  }

  // ---------------------------------------------------------------- BullMQ

  private jobKey(kind: Kind, id: string): string {
    return `${kind}:${id}`;
  }

  private view(kind: Kind, id: string): JobView {
    const j = this.jobs.get(this.jobKey(kind, id));
    if (j === undefined) return { state: "missing" };
    switch (j.state) {
      case "delayed":
        return { state: "delayed", fireAt: j.fireAt };
      case "waiting":
        return { state: "waiting" };
      case "active":
        return { state: "active" };
      case "finished":
        return { state: "finished" };
    }
  }

  private qAdd(kind: Kind, id: string, fireAt: number): void {
    const key = this.jobKey(kind, id);
    if (this.jobs.has(key)) return; // an existing job id makes add a no-op
    const delay = Math.max(0, fireAt - this.now);
    this.jobs.set(key, {
      state: delay === 0 ? "waiting" : "delayed",
      fireAt: this.now + delay,
      failures: 0,
      token: null,
      lockHeld: false,
      orphanedAt: null,
      retryAt: null,
    });
  }

  private lockLive(j: Job): boolean {
    return (
      j.state === "active" &&
      (j.lockHeld || (j.orphanedAt !== null && this.now < j.orphanedAt + LOCK_MS))
    );
  }

  /** Queue.remove: 0 for a job whose lock is held. */
  private qRemove(kind: Kind, id: string): number {
    const key = this.jobKey(kind, id);
    const j = this.jobs.get(key);
    if (j !== undefined && this.lockLive(j)) return 0;
    this.jobs.delete(key);
    return 1;
  }

  private qChangeDelay(kind: Kind, id: string, fireAt: number): void {
    const j = this.jobs.get(this.jobKey(kind, id));
    if (j === undefined) throw new BullError("missing", `Missing key for job ${kind}:${id}`);
    if (j.state !== "delayed") {
      throw new BullError("notDelayed", `Job ${kind}:${id} ${BULL_NOT_DELAYED}`);
    }
    j.fireAt = this.now + Math.max(0, fireAt - this.now);
    j.retryAt = null;
  }

  private moveToDelayed(w: Wake, fireAt: number, retry: boolean): void {
    const j = this.jobs.get(this.jobKey(w.kind, w.id));
    if (j === undefined) throw new BullError("missing", `Missing key for job ${w.kind}:${w.id}`);
    if (j.state !== "active" || j.token !== w.token) {
      throw new BullError("lock", `Missing lock for job ${w.kind}:${w.id}`);
    }
    j.state = "delayed";
    j.fireAt = Math.max(fireAt, this.now);
    j.token = null;
    j.lockHeld = false;
    j.orphanedAt = null;
    j.retryAt = retry ? j.fireAt : null;
  }

  private updateData(w: Wake, failures: number): void {
    const j = this.jobs.get(this.jobKey(w.kind, w.id));
    if (j === undefined) throw new BullError("missing", `Missing key for job ${w.kind}:${w.id}`);
    j.failures = failures;
  }

  /** Job.remove (after the handler parked it): throws when the job is locked. */
  private jobRemove(w: Wake): void {
    if (this.qRemove(w.kind, w.id) === 0) {
      throw new BullError("locked", `Job ${w.kind}:${w.id} could not be removed: locked`);
    }
  }

  /** BROKEN variant only: the processor returns and BullMQ completes the job. */
  private complete(w: Wake): void {
    const j = this.jobs.get(this.jobKey(w.kind, w.id));
    if (j === undefined || j.state !== "active" || j.token !== w.token) {
      throw new BullError("lock", `Missing lock for job ${w.kind}:${w.id}`);
    }
    j.state = "finished";
    j.token = null;
    j.lockHeld = false;
    j.orphanedAt = null;
  }

  private promote(kind: Kind): void {
    for (const [key, j] of this.jobs) {
      if (key.startsWith(`${kind}:`) && j.state === "delayed" && j.fireAt <= this.now) {
        j.state = "waiting";
      }
    }
  }

  waitingJobs(kind: Kind): string[] {
    return [...this.jobs]
      .filter(([key, j]) => key.startsWith(`${kind}:`) && j.state === "waiting")
      .map(([key]) => key.slice(kind.length + 1))
      .sort();
  }

  /** A worker's fetch: promote due delayed jobs, take one waiting job, run its processor. */
  take(worker: number, kind: Kind, pick: number): boolean {
    this.promote(kind);
    const waiting = this.waitingJobs(kind);
    if (waiting.length === 0) return false;
    const id = waiting[pick % waiting.length] as string;
    const j = this.jobs.get(this.jobKey(kind, id));
    if (j === undefined) return false;
    this.seq++;
    j.state = "active";
    j.token = this.nextToken++;
    j.lockHeld = true;
    j.orphanedAt = null;
    j.retryAt = null;
    const wake: Wake = { kind, id, token: j.token, failures: j.failures };
    this.spawn(
      `w${worker}`,
      `${kind}-wake(${id})@w${worker}`,
      (p) => (kind === "rotation" ? rotationProcessor(this, p, wake) : deletionProcessor(this, p, wake)),
      { wake },
    );
    this.check();
    return true;
  }

  /** Stall recovery: a job whose holder died is back to waiting lock + stalled interval later. */
  private recoverStalled(): void {
    for (const j of this.jobs.values()) {
      if (j.state === "active" && !j.lockHeld && j.orphanedAt !== null) {
        if (this.now >= j.orphanedAt + STALL_MS) {
          j.state = "waiting";
          j.token = null;
          j.orphanedAt = null;
        }
      }
    }
  }

  advance(ms: number): void {
    this.now += ms;
    this.log(`clock +${ms} ms`);
    this.recoverStalled();
    this.check();
  }

  /** The next moment something happens by itself: a delayed job falls due or a stall recovers. */
  nextEvent(): number | undefined {
    let next: number | undefined;
    for (const j of this.jobs.values()) {
      let at: number | undefined;
      if (j.state === "delayed") at = j.fireAt;
      else if (j.state === "active" && !j.lockHeld && j.orphanedAt !== null) {
        at = j.orphanedAt + STALL_MS;
      }
      if (at !== undefined && at > this.now && (next === undefined || at < next)) next = at;
    }
    return next;
  }

  flush(): void {
    this.log("FLUSHALL");
    this.jobs.clear();
    this.damage++;
    this.flushed = true;
    this.check();
  }

  // ---------------------------------------------------------------- Timers (src/queue/timers.ts)

  /** Timers.apply: one Redis call per step, tolerating jobs that moved meanwhile. */
  *apply(kind: Kind, id: string, action: ArmAction): Gen<void> {
    const tag = `${kind}(${id})`;
    switch (action.kind) {
      case "none":
        return;
      case "add": {
        const fireAt = action.fireAt;
        yield* this.io(`add ${tag} at ${fmtT(fireAt)}`, () => this.qAdd(kind, id, fireAt));
        return;
      }
      case "reschedule": {
        const fireAt = action.fireAt;
        const exists = yield* this.io(`getJob ${tag}`, () =>
          this.jobs.has(this.jobKey(kind, id)),
        );
        if (!exists) {
          yield* this.io(`add ${tag} at ${fmtT(fireAt)}`, () => this.qAdd(kind, id, fireAt));
          return;
        }
        try {
          yield* this.io(`changeDelay ${tag} to ${fmtT(fireAt)}`, () =>
            this.qChangeDelay(kind, id, fireAt),
          );
        } catch (e) {
          // timers.ts isNotDelayed: "not in the delayed state" or "Missing key for job"
          if (!(e instanceof BullError && (e.code === "notDelayed" || e.code === "missing"))) {
            throw e;
          }
          const still = yield* this.io(`getJob ${tag}`, () =>
            this.jobs.has(this.jobKey(kind, id)),
          );
          if (!still) {
            yield* this.io(`add ${tag} at ${fmtT(fireAt)}`, () => this.qAdd(kind, id, fireAt));
          }
        }
        return;
      }
      case "replace": {
        const fireAt = action.fireAt;
        yield* this.io(`remove ${tag}`, () => this.qRemove(kind, id));
        yield* this.io(`add ${tag} at ${fmtT(fireAt)}`, () => this.qAdd(kind, id, fireAt));
        return;
      }
      case "remove":
        yield* this.io(`remove ${tag}`, () => this.qRemove(kind, id));
        return;
    }
  }

  /** Timers.arm: view, planArm (the real one), apply. The caller holds the row lock. */
  *arm(kind: Kind, id: string, desired: number | null, now: number): Gen<ArmAction> {
    const view = yield* this.io(`view ${kind}(${id})`, () => this.view(kind, id));
    const action = planArm(desired, view, now);
    yield* this.apply(kind, id, action);
    return action;
  }

  // ---------------------------------------------------------------- ActiveWakeup (src/queue/workers.ts)

  private *rearm(w: Wake, fireAt: number): Gen<void> {
    if (w.failures > 0) yield* this.io(`updateData(failures=0)`, () => this.updateData(w, 0));
    yield* this.io(`moveToDelayed ${w.kind}(${w.id}) to ${fmtT(fireAt)}`, () =>
      this.moveToDelayed(w, fireAt, false),
    );
  }

  private *finishWake(w: Wake): Gen<void> {
    yield* this.io(`moveToDelayed ${w.kind}(${w.id}) to park`, () =>
      this.moveToDelayed(w, this.now + PARK_MS, false),
    );
    yield* this.io(`job.remove ${w.kind}(${w.id})`, () => this.jobRemove(w));
  }

  private *retryLater(w: Wake, fireAt: number, failures: number): Gen<void> {
    yield* this.io(`updateData(failures=${failures})`, () => this.updateData(w, failures));
    yield* this.io(`moveToDelayed ${w.kind}(${w.id}) to ${fmtT(fireAt)} (backoff)`, () =>
      this.moveToDelayed(w, fireAt, true),
    );
  }

  // ---------------------------------------------------------------- services

  /** identities.service register */
  *register(p: Proc, id: string): Gen<void> {
    yield* this.transaction(p, (tx) => this.registerTx(tx, id));
    this.log(`${p.name}: 2xx`);
  }

  private *registerTx(tx: Tx, id: string): Gen<void> {
    const existing = yield* this.lockOrTombstone(tx, id);
    const now = this.now;
    if (!existing.deregistered && existing.rotationDeadline !== null) {
      yield* this.arm("rotation", id, existing.rotationDeadline, now);
      return;
    }
    yield* this.io("generate keys", () => undefined);
    const generation = existing.generation + 1;
    const rotationDeadline = now + TIMING.rotationIntervalMs;
    yield* this.io(`insertIdentity(${id})`, () => {
      const row = this.staged(tx, id);
      row.generation = generation;
      row.rotationDeadline = rotationDeadline;
      row.deregistered = false;
      row.kps = [...row.kps, { gen: generation, current: true, deleteAt: null }];
      tx.onCommit.push(() => this.refRegister(id, now));
    });
    // Arming before commit is safe: if the commit fails, the wake-up finds no live identity.
    yield* this.arm("rotation", id, rotationDeadline, now);
  }

  /** identities.service welcome (delay 5 s) and rotateSoon (delay 0), via pullInMany. */
  *pullInOne(p: Proc, id: string, delayMs: number, what: string): Gen<void> {
    let commitSeq = -1;
    const result = yield* this.transaction(
      p,
      (tx) => this.pullInTx(tx, id, delayMs, () => (commitSeq = this.seq)),
    );
    if (result === undefined) {
      this.log(`${p.name}: 404`);
      return;
    }
    if (this.variant.welcomeArmsAfterCommit && result.next.changed) {
      yield* this.arm("rotation", id, result.next.deadline, result.now);
    }
    // The 2xx answer: from here on the client relies on a rotation by this deadline.
    this.obligations.push({ what, id, deadline: result.next.deadline, commitSeq });
    this.log(`${p.name}: 2xx, deadline ${fmtT(result.next.deadline)}`);
  }

  private *pullInTx(
    tx: Tx,
    id: string,
    delayMs: number,
    committed: () => void,
  ): Gen<{ next: { deadline: number; changed: boolean }; now: number } | undefined> {
    const identity = yield* this.lockIdentity(tx, id, `lockIdentities([${id}])`);
    const now = this.now;
    if (identity === undefined || identity.deregistered || identity.rotationDeadline === null) {
      return undefined;
    }
    const next = pullIn(identity.rotationDeadline, now, delayMs);
    tx.onCommit.push(() => {
      this.refPullIn(id, now, delayMs, next);
      committed();
    });
    if (next.changed) {
      yield* this.io(`setRotationDeadlines(${id} -> ${fmtT(next.deadline)})`, () => {
        this.staged(tx, id).rotationDeadline = next.deadline;
      });
      // Earlier wake-ups may be armed before the commit: if it fails they only fire early.
      if (!this.variant.welcomeArmsAfterCommit) {
        yield* this.arm("rotation", id, next.deadline, now);
      }
    }
    return { next, now };
  }

  /** identities.service deregister: tombstone in one commit, wake-ups removed in a second tx. */
  *deregister(p: Proc, id: string): Gen<void> {
    const found = yield* this.transaction(p, (tx) => this.tombstoneTx(tx, id));
    if (!found) {
      this.log(`${p.name}: 404`);
      return;
    }
    yield* this.transaction(p, (tx) => this.unarmTx(tx, id));
    this.log(`${p.name}: 2xx`);
  }

  private *tombstoneTx(tx: Tx, id: string): Gen<boolean> {
    const identity = yield* this.lockIdentity(tx, id);
    if (identity === undefined || identity.deregistered) return false;
    yield* this.io(`tombstone(${id})`, () => {
      const row = this.staged(tx, id);
      row.kps = [];
      row.deregistered = true;
      row.rotationDeadline = null;
      tx.onCommit.push(() => this.refDeregister(id));
    });
    return true;
  }

  private *unarmTx(tx: Tx, id: string): Gen<void> {
    yield* this.lockIdentity(tx, id);
    const now = this.now;
    yield* this.arm("rotation", id, null, now);
    yield* this.arm("deletion", id, null, now);
  }

  /** wakeups.service handleRotationWake */
  *handleRotationWake(p: Proc, w: Wake): Gen<void> {
    const outcome = yield* this.transaction(p, (tx) => this.rotationT1(tx, w));
    if (outcome === "rotated" || outcome === "fenced") {
      yield* this.transaction(p, (tx) => this.rotationT2(tx, w));
    }
    this.log(`${p.name}: ${outcome}`);
  }

  private *rotationT1(tx: Tx, w: Wake): Gen<"rotated" | "not-due" | "gone" | "fenced"> {
    const id = w.id;
    const identity = yield* this.lockOrTombstone(tx, id);
    const now = this.now;
    const readSeq = this.seq;
    const state: RotationState = {
      rotationDeadline: identity.rotationDeadline,
      deregistered: identity.deregistered,
    };
    const decision = decideRotation(state, now);
    if (decision.kind === "gone") {
      yield* this.finishWake(w);
      return "gone";
    }
    if (decision.kind === "not-due") {
      yield* this.rearm(w, decision.deadline);
      return "not-due";
    }
    const expectedGeneration = identity.generation;
    yield* this.io("keys.generate", () => undefined);
    const next = afterRotation(now, TIMING);
    const recorded = yield* this.io(`recordRotation(${id})`, () => {
      const row = this.staged(tx, id);
      if (row.generation !== expectedGeneration) return false;
      row.generation = expectedGeneration + 1;
      row.rotationDeadline = next.rotationDeadline;
      for (const k of row.kps) {
        if (k.current) {
          k.current = false;
          k.deleteAt = next.supersededDeleteAt;
        }
      }
      row.kps.push({ gen: expectedGeneration + 1, current: true, deleteAt: null });
      tx.onCommit.push(() => this.refRotate(id, now, readSeq));
      return true;
    });
    if (this.variant.rotationRearmsBeforeCommit && recorded) {
      yield* this.rearm(w, next.rotationDeadline);
    }
    return recorded ? "rotated" : "fenced";
  }

  private *rotationT2(tx: Tx, w: Wake): Gen<void> {
    const id = w.id;
    const identity = yield* this.lockIdentity(tx, id);
    const now = this.now;
    const decision = decideRotation(identity, now);
    if (!this.variant.rotationRearmsBeforeCommit) {
      if (decision.kind === "gone") yield* this.finishWake(w);
      // Due again already (a zero interval in tests): fire at once rather than lose it.
      else yield* this.rearm(w, decision.kind === "not-due" ? decision.deadline : now);
    }
    const next = yield* this.io(`nextDeleteAt(${id})`, () =>
      deletionDeadline(Sim.deleteAts(this.staged(tx, id))),
    );
    yield* this.arm("deletion", id, next, now);
  }

  /** wakeups.service handleDeletionWake */
  *handleDeletionWake(p: Proc, w: Wake): Gen<void> {
    const deleted = yield* this.transaction(p, (tx) => this.deletionT1(tx, w));
    if (deleted === "gone") {
      this.log(`${p.name}: gone`);
      return;
    }
    const next = yield* this.transaction(p, (tx) => this.deletionT2(tx, w));
    if (this.variant.deletionCompletesAfterUnlock && next === null) {
      // BROKEN: the processor returns and BullMQ completes the job, after the lock is gone.
      yield* this.io(`moveToCompleted ${w.kind}(${w.id})`, () => this.complete(w));
    }
    this.log(`${p.name}: deleted ${deleted}, next ${next === null ? "-" : fmtT(next)}`);
  }

  private *deletionT1(tx: Tx, w: Wake): Gen<number | "gone"> {
    const identity = yield* this.lockOrTombstone(tx, w.id);
    if (identity.deregistered) {
      yield* this.finishWake(w);
      return "gone";
    }
    return yield* this.io(`deleteDueKeyPackages(${w.id})`, () => {
      const now = this.now;
      const row = this.staged(tx, w.id);
      const due = row.kps.filter((k) => k.deleteAt !== null && k.deleteAt <= now);
      row.kps = row.kps.filter((k) => !due.includes(k));
      const gens = due.map((k) => k.gen);
      tx.onCommit.push(() => this.refDelete(w.id, now, gens));
      return due.length;
    });
  }

  private *deletionT2(tx: Tx, w: Wake): Gen<number | null> {
    const identity = yield* this.lockIdentity(tx, w.id);
    const next =
      identity?.deregistered === false
        ? yield* this.io(`nextDeleteAt(${w.id})`, () =>
            deletionDeadline(Sim.deleteAts(this.staged(tx, w.id))),
          )
        : null;
    if (next !== null) yield* this.rearm(w, next);
    else if (!this.variant.deletionCompletesAfterUnlock) yield* this.finishWake(w);
    return next;
  }

  /** wakeups.service handleWakeFailure (without the status columns). */
  *handleWakeFailure(w: Wake): Gen<void> {
    const failures = w.failures + 1;
    const fireAt = this.now + backoffMs(failures);
    yield* this.retryLater(w, fireAt, failures);
  }

  /** reconcile.service reconcile */
  *reconcile(p: Proc): Gen<void> {
    let damageSeen = 0;
    yield* this.io("markReconciled", () => {
      damageSeen = this.damage;
    });
    let after: string | null = null;
    for (;;) {
      const last: string | null = yield* this.transaction(p, (tx) => this.reconcilePage(tx, after));
      if (last === null) break;
      after = last;
    }
    for (const kind of KINDS) {
      const ids = yield* this.io(`scan ${kind} job ids`, () =>
        [...this.jobs.keys()]
          .filter((k) => k.startsWith(`${kind}:`))
          .map((k) => k.slice(kind.length + 1))
          .sort(),
      );
      const live = yield* this.io("liveAmong", () => ids.filter((id) => this.isLiveCommitted(id)));
      for (const id of ids.filter((i) => !live.includes(i))) {
        yield* this.transaction(p, (tx) => this.removeOrphanTx(tx, kind, id));
      }
    }
    this.healed = Math.max(this.healed, damageSeen);
  }

  private *reconcilePage(tx: Tx, after: string | null): Gen<string | null> {
    const locked: { id: string; row: Row }[] = [];
    while (locked.length < PAGE_SIZE) {
      const from = locked.at(-1)?.id ?? after;
      // The next live row in id order, as the scan would meet it; its liveness is checked
      // again once the lock is granted (Postgres re-evaluates the WHERE clause).
      const candidate = IDS.find(
        (id) => (from === null || id > from) && this.isLiveCommitted(id),
      );
      if (candidate === undefined) break;
      const row = yield* this.lockIdentity(tx, candidate, `lockLivePage(${candidate})`);
      if (row !== undefined && !row.deregistered) locked.push({ id: candidate, row });
    }
    if (locked.length === 0) return null;
    const ids = locked.map((l) => l.id);
    const deleteAts = yield* this.io(`nextDeleteAts([${ids}])`, () =>
      locked.map((l) => deletionDeadline(Sim.deleteAts(l.row))),
    );
    const rotationViews = yield* this.io(`view rotation([${ids}])`, () =>
      ids.map((id) => this.view("rotation", id)),
    );
    const deletionViews = yield* this.io(`view deletion([${ids}])`, () =>
      ids.map((id) => this.view("deletion", id)),
    );
    const now = this.now;
    for (const [i, { id, row }] of locked.entries()) {
      const plans: [Kind, number | null, JobView | undefined][] = [
        ["rotation", row.rotationDeadline, rotationViews[i]],
        ["deletion", deleteAts[i] ?? null, deletionViews[i]],
      ];
      for (const [kind, desired, view] of plans) {
        const action = planArm(desired, view ?? { state: "missing" }, now);
        yield* this.apply(kind, id, action);
      }
    }
    return ids.at(-1) ?? null;
  }

  private *removeOrphanTx(tx: Tx, kind: Kind, id: string): Gen<void> {
    const identity = yield* this.lockOrTombstone(tx, id);
    if (!identity.deregistered) return; // registered meanwhile: it armed itself
    yield* this.arm(kind, id, null, this.now);
  }

  // ---------------------------------------------------------------- reference model

  private refOf(id: string): RefIdentity {
    let r = this.ref.get(id);
    if (r === undefined) {
      r = { live: false, deadline: null, serial: 0, generation: 0, kps: new Map() };
      this.ref.set(id, r);
    }
    return r;
  }

  private refRegister(id: string, now: number): void {
    const r = this.refOf(id);
    if (r.live) this.violation(`reference: ${id} registered twice`);
    r.live = true;
    r.generation += 1;
    r.deadline = now + TIMING.rotationIntervalMs;
    r.serial = ++this.serialCounter;
    r.kps = new Map([[r.generation, null]]);
  }

  private refPullIn(
    id: string,
    now: number,
    delayMs: number,
    result: { deadline: number; changed: boolean },
  ): void {
    const r = this.refOf(id);
    if (!r.live || r.deadline === null) this.violation(`reference: pull-in of dead ${id}`);
    const candidate = now + delayMs;
    if (candidate < r.deadline) {
      if (!result.changed || result.deadline !== candidate) {
        this.violation(`reference: pull-in of ${id} should move the deadline to ${fmtT(candidate)}`);
      }
      r.deadline = candidate;
      r.serial = ++this.serialCounter;
    } else if (result.changed || result.deadline !== r.deadline) {
      this.violation(`reference: pull-in of ${id} moved a sooner deadline ${fmtT(r.deadline)}`);
    }
  }

  private refRotate(id: string, now: number, readSeq: number): void {
    const r = this.refOf(id);
    if (!r.live || r.deadline === null) this.violation(`reference: rotation of dead ${id}`);
    if (r.deadline > now) {
      this.violation(`rotation of ${id} at ${fmtT(now)} before its deadline ${fmtT(r.deadline)}`);
    }
    if (this.consumed.has(r.serial)) {
      this.violation(`(b) ${id} rotated twice for the deadline ${fmtT(r.deadline)}`);
    }
    this.consumed.add(r.serial);
    this.rotations.push({ id, deadline: r.deadline, at: now, readSeq });
    for (const [gen, at] of r.kps) {
      if (at === null) {
        r.kps.set(gen, now + TIMING.deletionGraceMs);
        this.superseded.push({ id, gen, deleteAt: now + TIMING.deletionGraceMs, seq: this.seq });
      }
    }
    r.generation += 1;
    r.kps.set(r.generation, null);
    r.deadline = now + TIMING.rotationIntervalMs;
    r.serial = ++this.serialCounter;
  }

  private refDelete(id: string, now: number, gens: number[]): void {
    const r = this.refOf(id);
    for (const gen of gens) {
      const at = r.kps.get(gen);
      if (at === undefined || at === null || at > now) {
        this.violation(
          `(c) key package ${id}/${gen} deleted at ${fmtT(now)} before its deleteAt ${
            at === null ? "(current)" : fmtT(at ?? 0)
          }`,
        );
      }
      r.kps.delete(gen);
      this.deletions.set(`${id}/${gen}`, now);
    }
  }

  private refDeregister(id: string): void {
    const r = this.refOf(id);
    r.live = false;
    r.deadline = null;
    r.kps.clear();
    this.deregistrations.push({ id, seq: this.seq });
  }

  // ---------------------------------------------------------------- invariants

  /** Is the arm invariant suspended for `id` right now? */
  private armExempt(id: string): boolean {
    if (this.locks.has(id)) return true;
    if (this.opts.armExemption === "lock") return false;
    return this.procs.some((p) => p.target === id || p.wake?.id === id);
  }

  /** Checked after every step. */
  check(): void {
    for (const id of IDS) {
      const row = this.rows.get(id);
      const r = this.refOf(id);
      // Reference comparison.
      const live = row !== undefined && !row.deregistered;
      const simKps = (row?.kps ?? [])
        .map((k) => `${k.gen}:${k.current ? "current" : k.deleteAt}`)
        .sort()
        .join(",");
      const refKps = [...r.kps]
        .map(([gen, at]) => `${gen}:${at === null ? "current" : at}`)
        .sort()
        .join(",");
      if (
        live !== r.live ||
        (row?.rotationDeadline ?? null) !== r.deadline ||
        (row?.generation ?? 0) !== r.generation ||
        simKps !== refKps
      ) {
        this.violation(`committed state of ${id} differs from the reference model`);
      }
      // (c) key packages.
      if (row !== undefined) {
        for (const k of row.kps) {
          if (k.current === (k.deleteAt !== null)) {
            this.violation(`(c) key package ${id}/${k.gen} is not current xor superseded`);
          }
        }
        const currents = row.kps.filter((k) => k.current).length;
        if (live && currents !== 1) this.violation(`(c) ${id} has ${currents} current packages`);
        if (!live && row.kps.length > 0) this.violation(`(c) tombstone ${id} keeps key packages`);
        if (new Set(row.kps.map((k) => k.gen)).size !== row.kps.length) {
          this.violation(`(c) ${id} has two key packages of one generation`);
        }
      }
      // (a) arm invariant.
      if (!live || row === undefined || this.damage > this.healed || this.armExempt(id)) continue;
      const deleteAts = Sim.deleteAts(row);
      const desired: Record<Kind, number | null> = {
        rotation: row.rotationDeadline,
        deletion: deleteAts.length === 0 ? null : Math.min(...deleteAts),
      };
      for (const kind of KINDS) {
        const want = desired[kind];
        if (want === null) continue;
        const j = this.jobs.get(this.jobKey(kind, id));
        const ok =
          j !== undefined &&
          (j.state === "waiting" ||
            j.state === "active" ||
            (j.state === "delayed" && j.fireAt <= Math.max(want, j.retryAt ?? -Infinity)));
        if (!ok) {
          this.violation(
            `(a) arm invariant: the ${kind} wake-up of ${id} is ${describeJob(j)}, deadline ${fmtT(want)}`,
          );
        }
      }
    }
  }

  // ---------------------------------------------------------------- final phase

  /** Runs every process until none can move; a process left blocked is a deadlock. */
  drain(): void {
    for (let guard = 0; ; guard++) {
      if (guard > 10_000) this.violation("processes do not terminate");
      let moved = false;
      for (const p of [...this.procs]) {
        if (this.stepProc(p, "none") === "stepped") moved = true;
      }
      if (!moved) break;
    }
    if (this.procs.length > 0) this.violation("deadlock: processes wait for each other");
  }

  /**
   * Workers at full strength from now on and no more failures: reconcile if Redis lost data or a
   * worker died since the last one (what a restarted worker or the watchdog does), then jump from
   * event to event, taking every job that falls due, until every deadline known now has passed
   * with margin and no deregistered identity keeps a wake-up.
   */
  finalPhase(): void {
    this.inFinalPhase = true;
    this.finalStart = this.now;
    this.log("--- final phase");
    if (this.damage > this.healed) {
      this.spawn("api", "reconcile", (p) => this.reconcile(p));
    }
    this.drain();
    const known = [
      this.now,
      ...this.obligations.map((o) => o.deadline),
      ...this.superseded.map((s) => s.deleteAt),
    ];
    const horizon = Math.max(...known) + this.livenessBound() + 1;
    const cap = horizon + 2 * 365 * DAY;
    for (;;) {
      this.drain();
      let took = false;
      for (const kind of KINDS) while (this.take(0, kind, 0)) took = true;
      if (took) continue;
      const strays = IDS.some(
        (id) => !this.isLiveCommitted(id) && KINDS.some((k) => this.jobs.has(`${k}:${id}`)),
      );
      if (this.now >= horizon && !strays) break;
      const next = this.nextEvent();
      if (next === undefined || next > cap) break;
      this.now = next;
      this.log(`clock -> ${fmtT(next)}`);
      this.recoverStalled();
      this.check();
    }
    this.checkFinal();
  }

  /** How late a deadline may be honoured after the final phase started. */
  livenessBound(): number {
    return this.faultsInjected || this.crashedWorker || this.flushed
      ? STALL_MS + BACKOFF.maxMs
      : 0;
  }

  private checkFinal(): void {
    const end = this.now;
    const bound = this.livenessBound();
    const deregisteredAfter = (id: string, seq: number) =>
      this.deregistrations.some((d) => d.id === id && d.seq > seq);
    // (e) deregistered identities end with no wake-ups.
    for (const id of IDS) {
      if (this.isLiveCommitted(id)) continue;
      for (const kind of KINDS) {
        const j = this.jobs.get(`${kind}:${id}`);
        if (j !== undefined) this.violation(`(e) ${id} is not live but keeps ${kind} ${describeJob(j)}`);
      }
    }
    // (d) every acknowledged pull-in led to a rotation after it, in time.
    for (const o of this.obligations) {
      const limit = Math.max(o.deadline, this.finalStart) + bound;
      if (limit > end || deregisteredAfter(o.id, o.commitSeq)) continue;
      const ok = this.rotations.some(
        (r) => r.id === o.id && r.readSeq > o.commitSeq && r.at <= limit,
      );
      if (!ok) {
        const after = this.rotations.filter((r) => r.id === o.id && r.readSeq > o.commitSeq);
        this.violation(
          `(d) ${o.what}(${o.id}) acknowledged deadline ${fmtT(o.deadline)} but the next rotation ${
            after[0] ? `came at ${fmtT(after[0].at)}` : "never came"
          } (limit ${fmtT(limit)})`,
        );
      }
    }
    // (d) no live identity is overdue, and superseded key packages went in time.
    for (const id of IDS) {
      const row = this.rows.get(id);
      if (row !== undefined && !row.deregistered && row.rotationDeadline !== null) {
        if (Math.max(row.rotationDeadline, this.finalStart) + bound < end) {
          this.violation(`(d) ${id} is overdue: deadline ${fmtT(row.rotationDeadline)}`);
        }
      }
    }
    for (const s of this.superseded) {
      const limit = Math.max(s.deleteAt, this.finalStart) + bound;
      if (limit > end || deregisteredAfter(s.id, s.seq)) continue;
      const at = this.deletions.get(`${s.id}/${s.gen}`);
      if (at === undefined || at > limit) {
        this.violation(
          `(d) key package ${s.id}/${s.gen} (deleteAt ${fmtT(s.deleteAt)}) ${
            at === undefined ? "never deleted" : `deleted late at ${fmtT(at)}`
          } (limit ${fmtT(limit)})`,
        );
      }
    }
  }
}

/** The BullMQ processor of src/queue/workers.ts around workers/rotation.ts. */
function* rotationProcessor(s: Sim, p: Proc, w: Wake): Gen<void> {
  try {
    try {
      yield* s.handleRotationWake(p, w);
    } catch (e) {
      if (!isIoError(e)) throw e;
      s.log(`${p.name}: failed (${e.message}); retry after backoff`);
      yield* s.handleWakeFailure(w);
    }
  } catch (e) {
    if (!isIoError(e)) throw e;
    s.log(`${p.name}: ${e.message}; the job stays where it is`);
  }
}

/** The BullMQ processor of src/queue/workers.ts around workers/deletion.ts. */
function* deletionProcessor(s: Sim, p: Proc, w: Wake): Gen<void> {
  try {
    try {
      yield* s.handleDeletionWake(p, w);
    } catch (e) {
      if (!isIoError(e)) throw e;
      s.log(`${p.name}: failed (${e.message}); retry after backoff`);
      yield* s.handleWakeFailure(w);
    }
  } catch (e) {
    if (!isIoError(e)) throw e;
    s.log(`${p.name}: ${e.message}; the job stays where it is`);
  }
}

/** An API request or CLI run: a failure is a 503 (nothing acknowledged). */
export function* clientOp(s: Sim, p: Proc, body: Gen<void>): Gen<void> {
  try {
    yield* body;
  } catch (e) {
    if (!isIoError(e)) throw e;
    s.log(`${p.name}: 503 (${e.message})`);
  }
}
