/**
 * A step-by-step simulator of kp-rotor's timer protocol, for the model test
 * (test/unit/model.test.ts). No I/O, one simulated clock.
 *
 * What is simulated:
 *  - "Postgres": per identity a row (rotation deadline, generation, deregistered flag) and its key
 *    packages (pending, current, or superseded with a delete_at); transactions with private
 *    staged copies (commit publishes them, rollback drops them); per-identity row locks
 *    (`SELECT ... FOR UPDATE`, which does not see a row another transaction is inserting, and the
 *    `INSERT ... ON CONFLICT DO NOTHING` of lockOrTombstone, which waits for it).
 *  - "BullMQ": per queue and identity one job: missing | delayed(fireAt) | waiting |
 *    active(token) | finished, with the semantics the code relies on: add is a no-op when the id
 *    exists (finished included), changeDelay only on a delayed job, remove refuses a job whose
 *    lock is held, moveToDelayed and updateData need the job (moveToDelayed also the owner's
 *    token), a worker's fetch promotes due delayed jobs, a dead worker's active job goes back to
 *    waiting lock duration + stalled interval later; FLUSHALL drops everything.
 *  - Every service function as src runs it, one atomic step per Postgres statement, Redis call
 *    or publish, so that any other request, worker fetch, failure, crash or clock jump can come in
 *    between: register (store + arm, then the first rotation inline), welcome / rotate-now
 *    (pullInMany), deregister (two transactions), the rotation wake-up and registration's inline
 *    first rotation with either publisher (PublisherMode: the webhook's four steps prepare,
 *    publish, promote, re-arm; or the directory publisher's one transaction that prepares,
 *    publishes, promotes and arms the deletion wake-up under one row lock, then the re-arm step
 *    under the lock again, which arms the deletion wake-up only when the promote was fenced),
 *    the deletion wake-up (delete, re-arm or finish), the failure path (backoff), and
 *    reconcile (mark, overdue first, pages, orphans). Every decision is made by the REAL pure
 *    functions of src/core/timers.ts.
 *  - A reference model of what must be committed (deadlines, generations, key packages), fed by
 *    commits, compared after every step, and the invariants of the test.
 *
 * What is abstracted away: SQL and drizzle, key generation, sealing and publishing (one fallible
 * step each, the publish records what went out), `view`'s pipelines (one atomic read), the
 * read-back loop of reschedule (the simulated clock is shared, so changeDelay lands exactly),
 * status columns (rotation_failures, last_error), logs, events and metrics, the watchdog (the
 * final phase reconciles when Redis lost data or a worker died, as a restarted worker or the
 * watchdog would), welcome batches (one identity per request), lock renewal (a live worker keeps
 * its locks), the order of lock waiters (any waiter may get a freed lock), ciphersuite changes,
 * concurrency inside one process (settleAll: the re-arm step's two arms, and the wake-up's lock
 * and findPending, run one after the other here; supersedeCurrent and the new current row are one
 * step), and reconcile's pipelining (src keeps two pages of 5 000 in flight; here one page of
 * PAGE_SIZE at a time, so a page's lock query never overlaps the previous page's arming).
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
  type Timing,
} from "../../src/core/timers.js";

export const SEC = 1_000;
export const MIN = 60 * SEC;
export const DAY = 86_400_000;
/** Production values (libxmtp): 30 d, 5 s, 1 d. */
export const PRODUCTION_TIMING: Timing = {
  rotationIntervalMs: 30 * DAY,
  welcomeRotationDelayMs: 5 * SEC,
  deletionGraceMs: DAY,
};
/**
 * The same protocol on a compressed clock: a rotation every minute and each superseded package deleted a minute later, i.e. when the next rotation is due,
 * so that rotations, deletions, stall recovery (60 s) and backoff fall due together far more often.
 */
export const COMPRESSED_TIMING: Timing = {
  rotationIntervalMs: MIN,
  welcomeRotationDelayMs: 5 * SEC,
  deletionGraceMs: MIN,
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
  /**
   * BROKEN: the directory publisher's one-transaction rotation does not arm the deletion wake-up
   * before its commit; completeRotation's re-arm step (after the commit) arms it instead.
   */
  directoryArmsDeletionAfterCommit?: boolean;
}

/**
 * Which publisher each process runs with (src/keys/publisher.ts, publishesByPromoting):
 *  - "webhook": every rotation runs the four steps (prepare; publish, no lock; promote; re-arm);
 *  - "directory": prepare, publish and promote are one transaction (the deletion wake-up armed
 *    before its commit), then the re-arm step;
 *  - "mixed": a rolling deploy: worker w0 runs the directory publisher, w1 and the API the
 *    webhook one, so a pending package a webhook attempt left (its publish failed, say) can be
 *    made current in place by w0's one transaction (markCurrent), racing w1's promote.
 */
export type PublisherMode = "webhook" | "directory" | "mixed";

export interface SimOptions {
  variant: Variant;
  /** PRODUCTION_TIMING unless given. */
  timing?: Timing;
  /**
   * Which identities the arm invariant skips at a given moment:
   *  - "lock": those whose row lock is held, or with a wake-up handler between its
   *    transactions (a rotation arms the deletion wake-up only in its last one). Outside of that,
   *    the wake-ups must already be right: an API operation that committed must have armed.
   *  - "in-flight": also those with any unfinished API operation.
   */
  armExemption: "lock" | "in-flight";
  /** Known issues of src whose proposed fix the simulator applies (see KnownIssue). */
  patches?: readonly KnownIssue[];
  /** "webhook" unless given. */
  publisher?: PublisherMode;
  trace?: string[];
}

/**
 * Real issues the model found in src, all three since fixed there. "Patched" is the src of
 * today; without a patch the simulator plays the src of before the fix, so the regression tests
 * can show the old behaviour failing on its minimal sequence:
 *  - "deregister-unarms-revived": deregister's second transaction removes the wake-ups without
 *    looking at the row it re-read; a registration that revived the identity in between loses its
 *    rotation wake-up. Fix: return when the re-read identity is live again.
 *  - "rotate-now-waits-for-later-wakeup": rotate-now sets deadline = now, which planArm counts
 *    as overdue, so a wake-up already delayed up to BACKOFF.maxMs ahead is kept: the rotation
 *    comes up to 60 s late. Fix: desired == now moves a later delayed job to now.
 *  - "deletion-armed-only-after-rotation": the deletion wake-up for the package a rotation
 *    superseded is armed only in completeRotation's re-arm step, after the rotation job was moved 30 days
 *    on. If that step fails after the move (the retry cannot move a job it no longer holds), or
 *    before it (the retry finds the deadline not due and re-arms only the rotation job), or the
 *    promote's commit answer is lost, nothing arms the deletion until the next rotation: the old
 *    private key lives up to 30 days too long. Fix: arm the deletion wake-up inside the promote
 *    transaction, before its commit (it only makes a wake-up earlier, so a failed commit costs an
 *    early wake-up that finds nothing due).
 */
export type KnownIssue =
  | "deregister-unarms-revived"
  | "rotate-now-waits-for-later-wakeup"
  | "deletion-armed-only-after-rotation";

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

/** An error the service code itself throws (e.g. "pending key package vanished"). */
export class ProtocolError extends Error {}

/** What the code's own try/catch blocks catch; anything else is a bug of the simulator. */
const isCaught = (e: unknown): e is IoFailure | BullError | ProtocolError =>
  e instanceof IoFailure || e instanceof BullError || e instanceof ProtocolError;

/** A key package: pending (stored, not yet published), current, or superseded (delete_at). */
interface Kp {
  /** The row's serial id. */
  uid: number;
  gen: number;
  isCurrent: boolean;
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
const isPending = (k: Kp) => !k.isCurrent && k.deleteAt === null;
const kpState = (k: Kp) =>
  k.isCurrent ? "current" : k.deleteAt === null ? "pending" : fmtT(k.deleteAt);

/** What prepareRotation (src/services/rotation.service.ts) returns. */
type Prepared =
  | { kind: "gone" }
  | { kind: "not-due"; deadline: number }
  | { kind: "publish"; pending: PreparedKp; dueDeadline: number };
/** A prepared key package; `promotedAt` is set when prepare already made it current. */
interface PreparedKp {
  uid: number;
  gen: number;
  promotedAt?: number;
}

interface Tx {
  n: number;
  /** Makes an identity live that no committed row showed live (a registration). */
  revives: boolean;
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

interface RefKp {
  gen: number;
  isCurrent: boolean;
  deleteAt: number | null;
}
interface RefIdentity {
  live: boolean;
  /** Registrations so far (a deregistered identity may come back). */
  incarnation: number;
  deadline: number | null;
  /** Which committed deadline this is; a rotation consumes one. */
  serial: number;
  generation: number;
  /** uid -> key package */
  kps: Map<number, RefKp>;
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
  readonly timing: Timing;
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
  readonly rotations: {
    id: string;
    deadline: number;
    at: number;
    readSeq: number;
    seq: number;
  }[] = [];
  readonly obligations: Obligation[] = [];
  readonly deregistrations: { id: string; seq: number }[] = [];
  readonly superseded: { id: string; uid: number; deleteAt: number; seq: number }[] = [];
  /** kp uid -> when the deletion wake-up deleted it */
  readonly deletions = new Map<number, number>();
  private nextUid = 1;
  private readonly openTxs = new Set<Tx>();
  private readonly openAtFlush = new Set<Tx>();
  private readonly kpIncarnation = new Map<number, number>();
  private readonly published = new Set<number>();
  private readonly publishedFor = new Map<string, number>();

  constructor(opts: SimOptions) {
    this.opts = opts;
    this.variant = opts.variant;
    this.timing = opts.timing ?? PRODUCTION_TIMING;
  }

  /**
   * A copy of this simulator at rest (nothing in flight), with other options: every scenario
   * starts from one run of the prelude instead of replaying it.
   */
  fork(opts: SimOptions): Sim {
    if (this.procs.length > 0 || this.locks.size > 0 || this.openTxs.size > 0) {
      throw new Error("model bug: fork while something is in flight");
    }
    const copy = new Sim(opts);
    const state: Record<string, unknown> = { ...(this as unknown as Record<string, unknown>) };
    for (const key of ["opts", "variant", "timing"]) delete state[key];
    Object.assign(copy, structuredClone(state));
    return copy;
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
            } kps=[${r.kps.map((k) => `${k.gen}:${kpState(k)}`).join(" ")}]`;
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
    const tx: Tx = {
      n: this.nextTx++,
      revives: false,
      staged: new Map(),
      onCommit: [],
      done: false,
    };
    this.openTxs.add(tx);
    p.txs.add(tx);
    return tx;
  }

  private commit(p: Proc, tx: Tx): void {
    if (tx.done) return;
    for (const [id, row] of tx.staged) this.rows.set(id, cloneRow(row));
    tx.done = true;
    this.openTxs.delete(tx);
    if (tx.revives && this.openAtFlush.has(tx)) {
      // Its wake-up was armed before a FLUSHALL; a reconcile that walked before this commit
      // could not see the row. Only a later reconcile (the watchdog's backstop) repairs it.
      this.log(`${p.name}: registration armed before FLUSHALL commits after it`);
      this.damage++;
    }
    p.txs.delete(tx);
    this.release(tx);
    for (const f of tx.onCommit) f();
  }

  private rollback(p: Proc, tx: Tx): void {
    if (tx.done) return;
    tx.done = true;
    this.openTxs.delete(tx);
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
    const committed = this.rows.get(id);
    // SELECT ... FOR UPDATE does not see (nor wait for) a row another transaction is inserting.
    if (committed === undefined && !orTombstone && !tx.staged.has(id)) return undefined;
    if (this.lockedByOther(tx, id)) throw new Error(`model bug: ${id} is locked`);
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

  private static earliestDeleteAt(row: Row): number | null {
    let earliest: number | null = null;
    for (const k of row.kps) {
      if (k.deleteAt !== null && (earliest === null || k.deleteAt < earliest))
        earliest = k.deleteAt;
    }
    return earliest;
  }

  private static deleteAts(row: Row | undefined): number[] {
    return (row?.kps ?? []).flatMap((k) => (k.deleteAt === null ? [] : [k.deleteAt]));
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

  /**
   * A worker's fetch: promote due delayed jobs, take one waiting job (of either queue; the pick
   * chooses), run its processor.
   */
  take(worker: number, pick: number, only?: (id: string) => boolean): boolean {
    for (const kind of KINDS) this.promote(kind);
    const waiting = KINDS.flatMap((kind) =>
      this.waitingJobs(kind)
        .filter((id) => only?.(id) ?? true)
        .map((id) => ({ kind, id })),
    );
    if (waiting.length === 0) return false;
    const { kind, id } = waiting[pick % waiting.length] as { kind: Kind; id: string };
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
      (p) => wakeProcessor(this, p, wake),
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
  nextEvent(only?: (id: string) => boolean): number | undefined {
    let next: number | undefined;
    for (const [key, j] of this.jobs) {
      if (only !== undefined && !only(key.slice(key.indexOf(":") + 1))) continue;
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
    for (const tx of this.openTxs) this.openAtFlush.add(tx);
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
        const exists = yield* this.io(`getJob ${tag}`, () => this.jobs.has(this.jobKey(kind, id)));
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
          const still = yield* this.io(`getJob ${tag}`, () => this.jobs.has(this.jobKey(kind, id)));
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

  /** src planArm; without the patch, the rule src had before the fix (deadline == now kept a later job). */
  private planArm(desired: number | null, job: JobView, now: number): ArmAction {
    if (
      !this.patched("rotate-now-waits-for-later-wakeup") &&
      desired === now &&
      job.state === "delayed" &&
      job.fireAt > desired &&
      job.fireAt <= now + BACKOFF.maxMs
    ) {
      return { kind: "none" };
    }
    return planArm(desired, job, now);
  }

  patched(issue: KnownIssue): boolean {
    return this.opts.patches?.includes(issue) ?? false;
  }

  /** publishesByPromoting(rotor.publisher) for the process's rotor. */
  private direct(p: Proc): boolean {
    const mode = this.opts.publisher ?? "webhook";
    return mode === "directory" || (mode === "mixed" && p.owner === "w0");
  }

  /** Timers.arm: view, planArm (the real one), apply. The caller holds the row lock. */
  *arm(kind: Kind, id: string, desired: number | null, now: number): Gen<ArmAction> {
    const view = yield* this.io(`view ${kind}(${id})`, () => this.view(kind, id));
    const action = this.planArm(desired, view, now);
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

  /** identities.service register: store + arm in one tx, then the first rotation inline. */
  *register(p: Proc, id: string): Gen<void> {
    let commitSeq = -1;
    const registered = yield* this.transaction(p, (tx) =>
      this.registerTx(tx, id, () => {
        commitSeq = this.seq;
      }),
    );
    if (registered === undefined) {
      this.log(`${p.name}: 2xx (already registered)`);
      return;
    }
    try {
      yield* this.rotateInline(p, id);
    } catch (e) {
      if (!isCaught(e)) throw e;
      this.log(`${p.name}: first key package not published yet (${e.message})`);
    }
    // The 2xx answer: the identity is registered and its first rotation armed.
    this.obligations.push({ what: "register", id, deadline: registered, commitSeq });
    this.log(`${p.name}: 2xx`);
  }

  /** Returns the first deadline of a new registration, undefined when it already existed. */
  private *registerTx(tx: Tx, id: string, committed: () => void): Gen<number | undefined> {
    const existing = yield* this.lockOrTombstone(tx, id);
    const now = this.now;
    if (!existing.deregistered && existing.rotationDeadline !== null) {
      // Re-registering repairs the wake-up, so a client retry also heals a lost one.
      yield* this.arm("rotation", id, existing.rotationDeadline, now);
      return undefined;
    }
    const firstDeadline = now + this.timing.welcomeRotationDelayMs;
    yield* this.io(`insertIdentity(${id})`, () => {
      const row = this.staged(tx, id);
      row.rotationDeadline = firstDeadline;
      row.deregistered = false;
      tx.revives = true;
      tx.onCommit.push(() => {
        this.refRegister(id, now);
        committed();
      });
    });
    // Arming before commit is safe: if the commit fails, the wake-up finds no live identity.
    yield* this.arm("rotation", id, firstDeadline, now);
    return firstDeadline;
  }

  /** identities.service rotateInline: prepare (first publish allowed early), then completeRotation. */
  private *rotateInline(p: Proc, id: string): Gen<void> {
    const direct = this.direct(p);
    const prepared = yield* this.transaction(p, (tx) => this.prepareTx(tx, id, true, direct));
    if (prepared.kind === "publish") {
      yield* this.completeRotation(p, id, prepared.pending, (deadline) =>
        this.arm("rotation", id, deadline, this.now),
      );
    }
  }

  private *prepareTx(
    tx: Tx,
    id: string,
    firstPublish: boolean,
    direct: boolean,
    w?: Wake,
  ): Gen<Prepared> {
    const identity = yield* this.lockOrTombstone(tx, id);
    return yield* this.prepareRotation(tx, id, identity, this.now, firstPublish, direct, w);
  }

  /** rotation.service prepareRotation: step 1, inside the caller's locked transaction. */
  private *prepareRotation(
    tx: Tx,
    id: string,
    identity: Row,
    now: number,
    firstPublish: boolean,
    direct: boolean,
    w: Wake | undefined,
  ): Gen<Prepared> {
    const decision = decideRotation(identity, now);
    const first =
      firstPublish &&
      !(yield* this.io(`hasCurrent(${id})`, () => identity.kps.some((k) => k.isCurrent)));
    if (decision.kind === "gone" || (decision.kind === "not-due" && !first)) return decision;
    const dueDeadline = identity.rotationDeadline as number;
    const generation = identity.generation + 1;
    const existing = yield* this.io(`findPending(${id})`, () => {
      const k = this.staged(tx, id).kps.find(isPending);
      return k === undefined ? undefined : { uid: k.uid, gen: k.gen };
    });
    const reuse = existing?.gen === generation;
    if (existing !== undefined && !reuse) {
      yield* this.io(`deletePending(${id}/${existing.gen})`, () => {
        const row = this.staged(tx, id);
        row.kps = row.kps.filter((k) => k.uid !== existing.uid);
        tx.onCommit.push(() => this.refDeletePending(id, existing.uid));
      });
    }
    if (existing !== undefined && reuse) {
      if (!direct) return { kind: "publish", pending: existing, dueDeadline };
      // A pending package an earlier (webhook) attempt left: published by becoming current, here.
      const at = yield* this.promoteInPrepare(tx, id, generation, existing.uid, false, w);
      return { kind: "publish", pending: { ...existing, promotedAt: at }, dueDeadline };
    }
    yield* this.io("keys.generate", () => undefined);
    if (direct) {
      const uid = this.nextUid++;
      const at = yield* this.promoteInPrepare(tx, id, generation, uid, true, w);
      return { kind: "publish", pending: { uid, gen: generation, promotedAt: at }, dueDeadline };
    }
    const pending = yield* this.io(`insertPending(${id}/${generation})`, () => {
      const uid = this.nextUid++;
      this.staged(tx, id).kps.push({ uid, gen: generation, isCurrent: false, deleteAt: null });
      tx.onCommit.push(() => this.refInsertPending(id, uid, generation));
      return { uid, gen: generation };
    });
    return { kind: "publish", pending, dueDeadline };
  }

  /**
   * rotation.service promoteInPrepare (directory publisher): supersedeCurrent (the fence) and
   * insertCurrent / markCurrent in one round trip, then the deletion wake-up armed before the
   * commit, all in prepare's transaction under its row lock. Returns the promote time.
   */
  private *promoteInPrepare(
    tx: Tx,
    id: string,
    generation: number,
    uid: number,
    insert: boolean,
    w: Wake | undefined,
  ): Gen<number> {
    const now = this.now;
    const readSeq = this.seq;
    const next = afterRotation(now, this.timing);
    const what = insert ? "insertCurrent" : "markCurrent";
    const superseded = yield* this.io(`supersedeCurrent + ${what}(${id}/${generation})`, () => {
      const row = this.staged(tx, id);
      if (row.generation !== generation - 1 || row.deregistered) return { fenced: true };
      if (insert) {
        row.kps.push({ uid, gen: generation, isCurrent: false, deleteAt: null });
      }
      const kp = row.kps.find((k) => k.uid === uid && isPending(k));
      if (kp === undefined) throw new ProtocolError("pending key package vanished under the lock");
      row.generation = generation;
      row.rotationDeadline = next.rotationDeadline;
      for (const k of row.kps) {
        if (k.isCurrent) {
          k.isCurrent = false;
          k.deleteAt = next.supersededDeleteAt;
        }
      }
      kp.isCurrent = true;
      tx.onCommit.push(() => {
        if (insert) this.refInsertPending(id, uid, generation);
        // Publishing is making it current: it goes out with the commit.
        this.recordPublish(id, { uid, gen: generation });
        this.refPromote(id, uid, now, readSeq);
      });
      return { fenced: false, nextDeleteAt: deletionDeadline(Sim.deleteAts(row)) };
    });
    if (superseded.fenced) {
      throw new ProtocolError(`identity ${id} changed generation under lock`);
    }
    if (!this.variant.directoryArmsDeletionAfterCommit) {
      yield* this.arm("deletion", id, superseded.nextDeleteAt ?? null, now);
    }
    if (this.variant.rotationRearmsBeforeCommit && w !== undefined) {
      yield* this.rearm(w, next.rotationDeadline);
    }
    return now;
  }

  /**
   * rotation.service completeRotation: publish and promote (unless prepare did both), then the
   * re-arm step; the deletion wake-up is armed there only when this attempt did not promote
   * (it was armed before the promote's commit otherwise).
   */
  private *completeRotation(
    p: Proc,
    id: string,
    pending: PreparedKp,
    rearmRotation: (deadline: number | null) => Gen<unknown>,
    w?: Wake,
  ): Gen<"rotated" | "fenced"> {
    let outcome: "rotated" | "fenced";
    if (pending.promotedAt !== undefined) {
      outcome = "rotated";
    } else {
      yield* this.publish(id, pending);
      outcome = yield* this.promoteRotation(p, id, pending, w);
    }
    // Without the patch (the src of before), the re-arm step always armed the deletion wake-up.
    const armDeletion =
      outcome !== "rotated" ||
      !this.patched("deletion-armed-only-after-rotation") ||
      (this.variant.directoryArmsDeletionAfterCommit === true && pending.promotedAt !== undefined);
    yield* this.rearmAfterRotation(p, id, rearmRotation, armDeletion);
    return outcome;
  }

  /** rotation.service publishPending: step 2, no lock (a network call). */
  private *publish(id: string, pending: { uid: number; gen: number }): Gen<void> {
    yield* this.io(`publish(${id}/${pending.gen}, kp#${pending.uid})`, () =>
      this.recordPublish(id, pending),
    );
  }

  /** rotation.service promoteRotation: step 3, fenced on the generation. */
  private *promoteRotation(
    p: Proc,
    id: string,
    pending: { uid: number; gen: number },
    w?: Wake,
  ): Gen<"rotated" | "fenced"> {
    return yield* this.transaction(p, (tx) => this.promoteTx(tx, id, pending, w));
  }

  private *promoteTx(
    tx: Tx,
    id: string,
    pending: { uid: number; gen: number },
    w: Wake | undefined,
  ): Gen<"rotated" | "fenced"> {
    yield* this.lockIdentity(tx, id);
    const now = this.now;
    const readSeq = this.seq;
    const next = afterRotation(now, this.timing);
    const promoted = yield* this.io(`promotePending(${id}/${pending.gen})`, () => {
      const row = tx.staged.get(id);
      if (row === undefined || row.generation !== pending.gen - 1 || row.deregistered) {
        return false;
      }
      const kp = row.kps.find((k) => k.uid === pending.uid && isPending(k));
      // Postgres rolls back the updates before this point with the transaction.
      if (kp === undefined) throw new ProtocolError("pending key package vanished under the lock");
      row.generation = pending.gen;
      row.rotationDeadline = next.rotationDeadline;
      for (const k of row.kps) {
        if (k.isCurrent) {
          k.isCurrent = false;
          k.deleteAt = next.supersededDeleteAt;
        }
      }
      kp.isCurrent = true;
      tx.onCommit.push(() => this.refPromote(id, pending.uid, now, readSeq));
      return true;
    });
    if (promoted && this.patched("deletion-armed-only-after-rotation")) {
      // An earlier wake-up may be armed before the commit (DESIGN.md, "Commit, then re-arm").
      const deleteAt = yield* this.io(`nextDeleteAt(${id})`, () =>
        deletionDeadline(Sim.deleteAts(tx.staged.get(id))),
      );
      yield* this.arm("deletion", id, deleteAt, now);
    }
    if (this.variant.rotationRearmsBeforeCommit && promoted && w !== undefined) {
      yield* this.rearm(w, next.rotationDeadline);
    }
    return promoted ? "rotated" : "fenced";
  }

  /** rotation.service completeRotation's re-arm: step 4, under the lock again. */
  private *rearmAfterRotation(
    p: Proc,
    id: string,
    rearmRotation: (deadline: number | null) => Gen<unknown>,
    armDeletion: boolean,
  ): Gen<void> {
    yield* this.transaction(p, (tx) =>
      this.rearmAfterRotationTx(tx, id, rearmRotation, armDeletion),
    );
  }

  private *rearmAfterRotationTx(
    tx: Tx,
    id: string,
    rearmRotation: (deadline: number | null) => Gen<unknown>,
    armDeletion: boolean,
  ): Gen<void> {
    const identity = yield* this.lockIdentity(tx, id);
    const now = this.now;
    const decision = decideRotation(identity, now);
    // Due again already (a zero interval in tests): fire at once rather than lose it.
    yield* rearmRotation(
      decision.kind === "gone" ? null : decision.kind === "not-due" ? decision.deadline : now,
    );
    if (!armDeletion) return;
    const next = yield* this.io(`nextDeleteAt(${id})`, () =>
      deletionDeadline(Sim.deleteAts(tx.staged.get(id))),
    );
    yield* this.arm("deletion", id, next, now);
  }

  /** identities.service welcome (delay 5 s) and rotateSoon (delay 0), via pullInMany. */
  *pullInOne(p: Proc, id: string, delayMs: number, what: string): Gen<void> {
    let commitSeq = -1;
    const result = yield* this.transaction(p, (tx) =>
      this.pullInTx(tx, id, delayMs, () => {
        commitSeq = this.seq;
      }),
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
    const identity = yield* this.lockIdentity(tx, id);
    // Known issue, see KnownIssue: src does not look at what it re-read.
    if (this.patched("deregister-unarms-revived") && identity?.deregistered === false) return;
    const now = this.now;
    yield* this.arm("rotation", id, null, now);
    yield* this.arm("deletion", id, null, now);
  }

  /** wakeups.service handleRotationWake */
  *handleRotationWake(p: Proc, w: Wake): Gen<void> {
    const direct = this.direct(p);
    const prepared = yield* this.transaction(p, (tx) => this.rotationWakeTx(tx, w, direct));
    if (prepared.kind !== "publish") {
      this.log(`${p.name}: ${prepared.kind}`);
      return;
    }
    const outcome = yield* this.completeRotation(
      p,
      w.id,
      prepared.pending,
      (deadline) =>
        this.variant.rotationRearmsBeforeCommit
          ? this.io("(rotation wake-up already moved)", () => undefined)
          : deadline === null
            ? this.finishWake(w)
            : this.rearm(w, deadline),
      w,
    );
    this.log(`${p.name}: ${outcome}`);
  }

  private *rotationWakeTx(tx: Tx, w: Wake, direct: boolean): Gen<Prepared> {
    const step = yield* this.prepareTx(tx, w.id, false, direct, w);
    // Nothing was written for these two: re-arm or finish in the same transaction.
    if (step.kind === "gone") yield* this.finishWake(w);
    if (step.kind === "not-due") yield* this.rearm(w, step.deadline);
    return step;
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
      const uids = due.map((k) => k.uid);
      tx.onCommit.push(() => this.refDelete(w.id, now, uids));
      return due.length;
    });
  }

  private *deletionT2(tx: Tx, w: Wake): Gen<number | null> {
    const identity = yield* this.lockIdentity(tx, w.id);
    const next =
      identity?.deregistered === false
        ? yield* this.io(`nextDeleteAt(${w.id})`, () =>
            deletionDeadline(Sim.deleteAts(tx.staged.get(w.id))),
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

  /** reconcile.service reconcile: overdue first, then every live identity, then orphans. */
  *reconcile(p: Proc): Gen<void> {
    let damageSeen = 0;
    yield* this.io("markReconciled", () => {
      damageSeen = this.damage;
    });
    yield* this.armOverdueFirst(p);
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

  private *armOverdueFirst(p: Proc): Gen<void> {
    let after: { deadline: number; id: string } | undefined;
    for (;;) {
      const from = after;
      const page = yield* this.io("overdueIdentities", () =>
        [...this.rows]
          .flatMap(([id, r]) =>
            !r.deregistered && r.rotationDeadline !== null && r.rotationDeadline <= this.now
              ? [{ id, deadline: r.rotationDeadline }]
              : [],
          )
          .filter(
            (o) =>
              from === undefined ||
              o.deadline > from.deadline ||
              (o.deadline === from.deadline && o.id > from.id),
          )
          .sort((x, y) => x.deadline - y.deadline || (x.id < y.id ? -1 : 1))
          .slice(0, PAGE_SIZE),
      );
      if (page.length === 0) return;
      yield* this.transaction(p, (tx) => this.overduePageTx(tx, page));
      if (page.length < PAGE_SIZE) return;
      after = page.at(-1);
    }
  }

  private *overduePageTx(tx: Tx, page: { id: string; deadline: number }[]): Gen<void> {
    const locked = new Map<string, Row>();
    for (const id of page.map((o) => o.id).sort()) {
      const row = yield* this.lockIdentity(tx, id, `lockIdentities(${id})`);
      if (row !== undefined) locked.set(id, row);
    }
    const views = yield* this.io(`view rotation([${page.map((o) => o.id)}])`, () =>
      page.map((o) => this.view("rotation", o.id)),
    );
    const now = this.now;
    // One at a time, in deadline order, so the wake-ups queue in that order.
    for (const [i, { id }] of page.entries()) {
      const identity = locked.get(id);
      if (identity === undefined || identity.deregistered) continue;
      const action = this.planArm(identity.rotationDeadline, views[i] ?? { state: "missing" }, now);
      yield* this.apply("rotation", id, action);
    }
  }

  private *reconcilePage(tx: Tx, after: string | null): Gen<string | null> {
    const locked: { id: string; row: Row }[] = [];
    while (locked.length < PAGE_SIZE) {
      const from = locked.at(-1)?.id ?? after;
      // The next live row in id order, as the scan would meet it; its liveness is checked
      // again once the lock is granted (Postgres re-evaluates the WHERE clause).
      const candidate = IDS.find((id) => (from === null || id > from) && this.isLiveCommitted(id));
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
        const action = this.planArm(desired, view ?? { state: "missing" }, now);
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
      r = { live: false, incarnation: 0, deadline: null, serial: 0, generation: 0, kps: new Map() };
      this.ref.set(id, r);
    }
    return r;
  }

  private refRegister(id: string, now: number): void {
    const r = this.refOf(id);
    if (r.live) this.violation(`reference: ${id} registered twice`);
    if (r.kps.size > 0) this.violation(`reference: ${id} revived with old key packages`);
    r.live = true;
    r.incarnation += 1;
    r.deadline = now + this.timing.welcomeRotationDelayMs;
    r.serial = ++this.serialCounter;
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
        this.violation(
          `reference: pull-in of ${id} should move the deadline to ${fmtT(candidate)}`,
        );
      }
      r.deadline = candidate;
      r.serial = ++this.serialCounter;
    } else if (result.changed || result.deadline !== r.deadline) {
      this.violation(`reference: pull-in of ${id} moved a sooner deadline ${fmtT(r.deadline)}`);
    }
  }

  private refInsertPending(id: string, uid: number, gen: number): void {
    const r = this.refOf(id);
    if (!r.live) this.violation(`reference: pending key package for dead ${id}`);
    if (gen !== r.generation + 1) this.violation(`reference: pending ${id}/${gen} out of order`);
    if ([...r.kps.values()].some((k) => !k.isCurrent && k.deleteAt === null)) {
      this.violation(`(c) ${id} would have two pending key packages`);
    }
    r.kps.set(uid, { gen, isCurrent: false, deleteAt: null });
    this.kpIncarnation.set(uid, r.incarnation);
  }

  private refDeletePending(id: string, uid: number): void {
    const k = this.refOf(id).kps.get(uid);
    if (k === undefined || k.isCurrent || k.deleteAt !== null) {
      this.violation(`(c) ${id}: deleted a key package that was not pending`);
    }
    this.refOf(id).kps.delete(uid);
  }

  private recordPublish(id: string, pending: { uid: number; gen: number }): void {
    // A retried publish must send the same package: one package per generation and incarnation.
    const key = `${id}/${this.kpIncarnation.get(pending.uid) ?? "?"}/${pending.gen}`;
    const before = this.publishedFor.get(key);
    if (before !== undefined && before !== pending.uid) {
      this.violation(`two different key packages published for ${id} generation ${pending.gen}`);
    }
    this.publishedFor.set(key, pending.uid);
    this.published.add(pending.uid);
  }

  private refPromote(id: string, uid: number, now: number, readSeq: number): void {
    const r = this.refOf(id);
    if (!r.live || r.deadline === null) this.violation(`reference: rotation of dead ${id}`);
    const kp = r.kps.get(uid);
    if (kp === undefined || kp.isCurrent || kp.deleteAt !== null || kp.gen !== r.generation + 1) {
      this.violation(`reference: promoted ${id} kp#${uid} is not the next pending package`);
    }
    if (!this.published.has(uid)) {
      this.violation(`publish before supersede: ${id}/${kp.gen} became current unpublished`);
    }
    const hadCurrent = [...r.kps.values()].some((k) => k.isCurrent);
    // Only an identity's first key package may go out before its deadline.
    if (hadCurrent && r.deadline > now) {
      this.violation(`rotation of ${id} at ${fmtT(now)} before its deadline ${fmtT(r.deadline)}`);
    }
    if (this.consumed.has(r.serial)) {
      this.violation(`(b) ${id} rotated twice for the deadline ${fmtT(r.deadline)}`);
    }
    this.consumed.add(r.serial);
    this.rotations.push({ id, deadline: r.deadline, at: now, readSeq, seq: this.seq });
    for (const [oldUid, k] of r.kps) {
      if (k.isCurrent) {
        k.isCurrent = false;
        k.deleteAt = now + this.timing.deletionGraceMs;
        this.superseded.push({ id, uid: oldUid, deleteAt: k.deleteAt, seq: this.seq });
      }
    }
    kp.isCurrent = true;
    r.generation = kp.gen;
    r.deadline = now + this.timing.rotationIntervalMs;
    r.serial = ++this.serialCounter;
  }

  private refDelete(id: string, now: number, uids: number[]): void {
    const r = this.refOf(id);
    for (const uid of uids) {
      const k = r.kps.get(uid);
      if (k === undefined || k.deleteAt === null || k.deleteAt > now) {
        this.violation(
          `(c) key package ${id} kp#${uid} deleted at ${fmtT(now)} before its deleteAt ${
            k?.deleteAt === null || k === undefined ? "(not superseded)" : fmtT(k.deleteAt)
          }`,
        );
      }
      r.kps.delete(uid);
      this.deletions.set(uid, now);
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
    if (this.procs.some((p) => p.wake?.id === id)) return true;
    return this.opts.armExemption === "in-flight" && this.procs.some((p) => p.target === id);
  }

  /** Checked after every step. */
  check(): void {
    for (const id of IDS) {
      const row = this.rows.get(id);
      const r = this.refOf(id);
      // The committed state is what the reference model says.
      const live = row !== undefined && !row.deregistered;
      const kps = row?.kps ?? [];
      const sameKps =
        kps.length === r.kps.size &&
        kps.every((k) => {
          const ref = r.kps.get(k.uid);
          return (
            ref !== undefined &&
            ref.gen === k.gen &&
            ref.isCurrent === k.isCurrent &&
            ref.deleteAt === k.deleteAt
          );
        });
      if (
        !sameKps ||
        live !== r.live ||
        (row?.rotationDeadline ?? null) !== r.deadline ||
        (row?.generation ?? 0) !== r.generation
      ) {
        const refKps = [...r.kps].map(([uid, k]) => `${k.gen}:${kpState({ uid, ...k })}`).join(" ");
        this.violation(
          `committed state of ${id} differs from the reference model (reference: live=${r.live} gen=${r.generation} deadline=${
            r.deadline === null ? "-" : fmtT(r.deadline)
          } kps=[${refKps}])`,
        );
      }
      // (c) key packages: pending, current or superseded; at most one current and one pending;
      // exactly one current once the identity's first package is out; none on a tombstone.
      if (row !== undefined) {
        for (const k of row.kps) {
          if (k.isCurrent && k.deleteAt !== null) {
            this.violation(`(c) key package ${id}/${k.gen} is both current and superseded`);
          }
        }
        const currents = row.kps.filter((k) => k.isCurrent).length;
        const pendings = row.kps.filter(isPending).length;
        if (currents > 1 || pendings > 1) {
          this.violation(`(c) ${id} has ${currents} current and ${pendings} pending packages`);
        }
        if (live && currents === 0 && row.kps.some((k) => k.deleteAt !== null)) {
          this.violation(`(c) ${id} lost its current key package`);
        }
        if (!live && row.kps.length > 0) this.violation(`(c) tombstone ${id} keeps key packages`);
        if (new Set(row.kps.map((k) => k.gen)).size !== row.kps.length) {
          this.violation(`(c) ${id} has two key packages of one generation`);
        }
      }
      // (a) arm invariant.
      if (!live || row === undefined || this.damage > this.healed || this.armExempt(id)) continue;
      const desired: Record<Kind, number | null> = {
        rotation: row.rotationDeadline,
        deletion: Sim.earliestDeleteAt(row),
      };
      // A rotation wake-up that failed (parked for its backoff, or left active to stall) runs
      // again and re-arms both wake-ups then: the deletion one may wait for it.
      const rot = this.jobs.get(this.jobKey("rotation", id));
      const retrying =
        rot !== undefined &&
        ((rot.state === "delayed" && rot.retryAt !== null) ||
          (rot.state === "active" && !rot.lockHeld));
      for (const kind of KINDS) {
        const want = desired[kind];
        if (want === null || (kind === "deletion" && retrying)) continue;
        const j = this.jobs.get(this.jobKey(kind, id));
        const ok =
          j !== undefined &&
          (j.state === "waiting" ||
            j.state === "active" ||
            // Due already (the next fetch promotes it), or not later than the deadline, or
            // parked for the backoff of a failed attempt.
            (j.state === "delayed" &&
              j.fireAt <= Math.max(want, this.now, j.retryAt ?? -Infinity)));
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
    // Until every deadline known now is past with margin: everything runs.
    this.runUntil(horizon);
    this.checkLiveness();
    // Then only the wake-ups of identities that are not live, which may be parked a year ahead
    // (finish() parks before it removes): they must find the tombstone and go away.
    const stray = (id: string) => !this.isLiveCommitted(id);
    this.runUntil(this.now + 2 * 365 * DAY, stray);
    this.checkStrays();
  }

  /** Jumps from event to event, taking every job that falls due, until `until` or nothing left. */
  private runUntil(until: number, only?: (id: string) => boolean): void {
    for (;;) {
      this.drain();
      let took = false;
      while (this.take(0, 0, only)) took = true;
      if (took) continue;
      const next = this.nextEvent(only);
      if (only === undefined && this.now >= until) break;
      if (next === undefined || next > until) {
        // Nothing happens before `until`.
        if (only === undefined) this.now = until;
        break;
      }
      this.now = next;
      this.log(`clock -> ${fmtT(next)}`);
      this.recoverStalled();
      this.check();
    }
  }

  /** How late a deadline may be honoured after the final phase started. */
  livenessBound(): number {
    return this.faultsInjected || this.crashedWorker || this.flushed ? STALL_MS + BACKOFF.maxMs : 0;
  }

  /** (e) identities that are not live end with no wake-ups. */
  private checkStrays(): void {
    for (const id of IDS) {
      if (this.isLiveCommitted(id)) continue;
      for (const kind of KINDS) {
        const j = this.jobs.get(`${kind}:${id}`);
        if (j !== undefined)
          this.violation(`(e) ${id} is not live but keeps ${kind} ${describeJob(j)}`);
      }
    }
  }

  /** (d) liveness, at the end of the first part of the final phase. */
  private checkLiveness(): void {
    const end = this.now;
    const bound = this.livenessBound();
    const deregisteredAfter = (id: string, seq: number) =>
      this.deregistrations.some((d) => d.id === id && d.seq > seq);
    // (d) every acknowledged pull-in led to a rotation after it, in time.
    for (const o of this.obligations) {
      const limit = Math.max(o.deadline, this.finalStart) + bound;
      if (limit > end || deregisteredAfter(o.id, o.commitSeq)) continue;
      const ok = this.rotations.some((r) => r.id === o.id && r.seq > o.commitSeq && r.at <= limit);
      if (!ok) {
        const after = this.rotations.filter((r) => r.id === o.id && r.seq > o.commitSeq);
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
      const at = this.deletions.get(s.uid);
      if (at === undefined || at > limit) {
        this.violation(
          `(d) key package ${s.id} kp#${s.uid} (deleteAt ${fmtT(s.deleteAt)}) ${
            at === undefined ? "never deleted" : `deleted late at ${fmtT(at)}`
          } (limit ${fmtT(limit)})`,
        );
      }
    }
  }
}

/**
 * The BullMQ processor of src/queue/workers.ts around workers/rotation.ts and
 * workers/deletion.ts: a failed wake-up retries after the backoff; if even that fails, the job
 * stays where it is.
 */
function* wakeProcessor(s: Sim, p: Proc, w: Wake): Gen<void> {
  try {
    try {
      if (w.kind === "rotation") yield* s.handleRotationWake(p, w);
      else yield* s.handleDeletionWake(p, w);
    } catch (e) {
      if (!isCaught(e)) throw e;
      s.log(`${p.name}: failed (${e.message}); retry after backoff`);
      yield* s.handleWakeFailure(w);
    }
  } catch (e) {
    if (!isCaught(e)) throw e;
    s.log(`${p.name}: ${e.message}; the job stays where it is`);
  }
}

/** An API request or CLI run: a failure is a 503 (nothing acknowledged). */
export function* clientOp(s: Sim, p: Proc, body: Gen<void>): Gen<void> {
  try {
    yield* body;
  } catch (e) {
    if (!isCaught(e)) throw e;
    s.log(`${p.name}: 503 (${e.message})`);
  }
}
