import type fc from "fast-check";
import type { WakeupKind } from "../../src/core/ports.js";
import type { IdentityRow, PackageRow } from "./memory-store.js";

/**
 * The model's world: the committed Postgres rows, Redis' queues, one clock (the store's, which
 * is also Redis' TIME and vitest's faked Date), the processes, and the scheduler that releases
 * every port call. Faults come from a fault schedule indexed by the global step number.
 */

export interface Proc {
  name: string;
  /** This process's clock offset from the store's clock (skew). */
  skew: number;
  dead: boolean;
}

export type FaultKind = "fail" | "fail-after" | "late" | "crash";
/**
 * A fault on the `at`-th port call overall, or, with `on`, on the `at`-th call whose label
 * starts with `on` (say the second page of a reconcile: "lockLiveDeadlines").
 */
export interface Fault {
  at: number;
  kind: FaultKind;
  on?: string;
}

export class Crashed extends Error {
  override name = "Crashed";
}
export class InjectedFault extends Error {
  override name = "InjectedFault";
}

export interface Job {
  state: "delayed" | "waiting" | "active" | "finished";
  fireAt: number;
  failures: number;
  token: number;
  /** The arm fence of the last script write (kseq): older writes are refused. */
  kseq?: number;
  owner?: Proc;
  /** When a stall check puts an active job whose lock lapsed back to wait. */
  stallAt?: number;
}

export interface RedisState {
  queues: Record<WakeupKind, Map<string, Job>>;
  mark: boolean;
  /** The reconcile runs in progress (each removed by its own completeReconcile). */
  runIds: Set<string>;
  leases: Map<string, { owner: string; until: number }>;
  /** The highest arm fence any arm script carried (the fence high-water key). */
  fenceHigh: number;
}

export const emptyRedis = (): RedisState => ({
  queues: { rotation: new Map(), deletion: new Map() },
  mark: false,
  runIds: new Set(),
  leases: new Map(),
  fenceHigh: 0,
});

export const copyRedis = (r: RedisState): RedisState => ({
  queues: {
    rotation: new Map([...r.queues.rotation].map(([k, j]) => [k, { ...j }])),
    deletion: new Map([...r.queues.deletion].map(([k, j]) => [k, { ...j }])),
  },
  mark: r.mark,
  runIds: new Set(r.runIds),
  leases: new Map(r.leases),
  fenceHigh: r.fenceHigh,
});

export interface RotationRecord {
  id: string;
  /** The deadline it served (the committed one, read under the lock), null for a first publish. */
  deadline: number | null;
  /** Which setting of the identity's deadline it served (see World.applyCommit). */
  deadlineInstance: number;
  generation: number;
  at: number;
  /** When the promoted package was generated (World.seq). */
  createdSeq: number;
}

interface LockTable {
  holder: object;
  waiters: { tx: object; proc: Proc; grant: () => void; fail: (e: Error) => void }[];
}

export class World {
  readonly db = { identities: new Map<string, IdentityRow>(), packages: [] as PackageRow[] };
  redis = emptyRedis();
  /** Step counter: fault schedule index and the order of events (welcomes vs packages). */
  seq = 0;
  steps = 0;
  readonly openTxs = new Set<object>();
  /** Tokens of the jobs a live processor is running (its lock is being renewed). */
  readonly handling = new Set<number>();
  readonly rotations: RotationRecord[] = [];
  /** Notifications the device endpoints received (device custody). */
  readonly notifications: {
    type: "rotate" | "delete";
    identityId: string;
    ref?: string;
    at: number;
    seq: number;
  }[] = [];
  readonly violations: string[] = [];
  /** Writes whose client timed out; they land when the driver says so. */
  readonly late: (() => void)[] = [];
  private readonly locks = new Map<string, LockTable>();
  private readonly txProc = new Map<object, Proc>();
  private packageIds = 0;
  private token = 0;
  private readonly faults: Map<string, FaultKind>;
  private readonly targets: string[];
  private readonly counts = new Map<string, number>();
  /** Set for the quiet phase: no more injected faults. */
  faultsOff = false;
  readonly t0 = Date.now();
  /** Every armMany arms blind (Scenario.blindArms). */
  blindArms = false;
  onFault: (kind: string) => void = () => {};
  onCrash: (proc: Proc) => void = () => {};
  private readonly deaths = new Map<string, number>();
  /** How many times each identity's rotation deadline was set to a new one. */
  private readonly deadlineInstances = new Map<string, number>();
  private deadlineInstance = (id: string) => this.deadlineInstances.get(id) ?? 0;
  /** How many times the identity was deregistered (a welcome before that needs nothing). */
  lives = (id: string) => this.deaths.get(id) ?? 0;

  constructor(
    readonly s: fc.Scheduler,
    faults: readonly Fault[],
    readonly trace: string[] = [],
  ) {
    this.faults = new Map(faults.map((f) => [`${f.on ?? ""}#${f.at}`, f.kind]));
    this.targets = [...new Set(faults.flatMap((f) => (f.on ? [f.on] : [])))];
  }

  /** The store's clock (vitest fakes Date). */
  now(): number {
    return Date.now();
  }

  nextPackageId = () => ++this.packageIds;
  private fences = 0;
  /** Postgres' arm_seq: a fresh value for a lock holder, after its locks were granted. */
  nextFence = () => ++this.fences;
  /** Store.advanceArmFence: arm_seq moved past `high` when behind it. */
  advanceFence = (high: number): number | undefined => {
    if (this.fences >= high) return undefined;
    const was = this.fences;
    this.fences = high + 1_000_000;
    return was;
  };
  nextToken = () => ++this.token;

  /**
   * One port call: released by the scheduler, then run, unless the process died. A fault
   * scheduled for this step fails it before its effect, loses its answer after the effect
   * ("fail-after"), lets a write land later while the caller sees a timeout ("late", writes
   * only), or crashes the process.
   */
  step<T>(proc: Proc, label: string, effect: () => T | Promise<T>, late?: boolean): Promise<T> {
    if (proc.dead) return Promise.reject(new Crashed(proc.name));
    return this.s.schedule(Promise.resolve(), `${proc.name}:${label}`).then(async () => {
      if (proc.dead) throw new Crashed(proc.name);
      const n = ++this.steps;
      this.seq++;
      if (TRACE_STEPS) this.trace.push(`    #${n} ${proc.name}:${label}`);
      const fault = this.faultsOff ? undefined : this.faultAt(n, label);
      if (fault) {
        this.trace.push(`  fault #${n} ${proc.name}:${label}: ${fault}`);
        this.onFault(fault);
      }
      if (fault === "crash") {
        this.crash(proc);
        throw new Crashed(proc.name);
      }
      if (fault === "fail" || (fault === "late" && !late)) throw new InjectedFault(label);
      if (fault === "late") {
        this.late.push(() => {
          // A write refused when it lands (BullMQ's lock check, say) changes nothing.
          try {
            void Promise.resolve(effect()).catch(() => {});
          } catch {}
        });
        throw new InjectedFault(`${label} timed out (lands later)`);
      }
      const result = await effect();
      if (fault === "fail-after") throw new InjectedFault(`${label} (answer lost)`);
      return result;
    });
  }

  /** A fault on the k-th next call whose label starts with `on`, counted from now. */
  faultNext(on: string, k: number, kind: FaultKind): void {
    if (!this.targets.includes(on)) this.targets.push(on);
    this.faults.set(`${on}#${(this.counts.get(on) ?? 0) + k}`, kind);
  }

  private faultAt(n: number, label: string): FaultKind | undefined {
    let fault = this.faults.get(`#${n}`);
    for (const on of this.targets) {
      if (!label.startsWith(on)) continue;
      const k = (this.counts.get(on) ?? 0) + 1;
      this.counts.set(on, k);
      fault ??= this.faults.get(`${on}#${k}`);
    }
    return fault;
  }

  /** A process dies: its transactions roll back (connection closed), its jobs stall. */
  crash(proc: Proc): void {
    if (proc.dead) return;
    proc.dead = true;
    this.onCrash(proc);
    for (const [tx, p] of this.txProc) if (p === proc) this.releaseLocks(tx);
    for (const table of this.locks.values()) {
      for (const w of table.waiters.filter((x) => x.proc === proc)) w.fail(new Crashed(proc.name));
      table.waiters = table.waiters.filter((x) => x.proc !== proc);
    }
    const at = this.now() + STALL_MS;
    for (const q of Object.values(this.redis.queues)) {
      for (const job of q.values())
        if (job.state === "active" && job.owner === proc) job.stallAt = at;
    }
  }

  async lock(tx: object, id: string, proc?: Proc): Promise<void> {
    if (proc) this.txProc.set(tx, proc);
    const table = this.locks.get(id);
    if (table === undefined) {
      this.locks.set(id, { holder: tx, waiters: [] });
      return;
    }
    if (table.holder === tx) return;
    await new Promise<void>((grant, fail) => {
      table.waiters.push({ tx, proc: proc ?? (this.txProc.get(tx) as Proc), grant, fail });
    });
  }

  holds(tx: object, id: string): boolean {
    return this.locks.get(id)?.holder === tx;
  }

  releaseLocks(tx: object): void {
    this.txProc.delete(tx);
    for (const [id, table] of this.locks) {
      if (table.holder !== tx) continue;
      const next = table.waiters.shift();
      if (next === undefined) this.locks.delete(id);
      else {
        table.holder = next.tx;
        next.grant();
      }
    }
  }

  /**
   * Commits one identity's rows, checking the safety invariants on the way: a rotation (the
   * generation moved) never comes before the deadline it serves nor twice for one deadline; a
   * superseded package is never deleted before its delete_at (deregistration aside).
   */
  applyCommit(id: string, row: IdentityRow | undefined, packages: PackageRow[]): void {
    const old = this.db.identities.get(id);
    const oldPackages = this.db.packages.filter((p) => p.identityId === id);
    const at = this.now();
    if (row && old && row.generation > old.generation && row.deregisteredAt === null) {
      const first = !oldPackages.some((p) => p.isCurrent);
      const deadline = first ? null : old.rotationDeadline;
      const current = packages.find((p) => p.isCurrent);
      // A device may upload whenever it likes: that is a rotation, early or not.
      const device = row.custody === "device";
      if (!device && deadline !== null && deadline > at) {
        this.violations.push(`${id} rotated at ${at}, before its deadline ${deadline}`);
      }
      const instance = this.deadlineInstance(id);
      if (
        !device &&
        deadline !== null &&
        this.rotations.some((r) => r.id === id && r.deadlineInstance === instance)
      ) {
        this.violations.push(`${id} rotated twice for its deadline ${deadline}`);
      }
      this.rotations.push({
        id,
        deadline,
        deadlineInstance: instance,
        generation: row.generation,
        at,
        createdSeq: current?.createdSeq ?? -1,
      });
    }
    // A deadline is a new one when its value changes, or when a promote installs the deadline a
    // welcome (or rotate-now) acknowledged during its publish recorded: that one may equal the
    // deadline just served in value (no time passed), yet it is a request of its own.
    if (
      row !== undefined &&
      (old === undefined ||
        row.rotationDeadline !== old.rotationDeadline ||
        (row.generation > old.generation && old.welcomeDeadline !== null))
    ) {
      this.deadlineInstances.set(id, this.deadlineInstance(id) + 1);
    }
    if (row?.deregisteredAt === null) {
      for (const p of oldPackages) {
        if (p.deleteAt === null || packages.some((k) => k.id === p.id)) continue;
        if (p.deleteAt > at) {
          this.violations.push(
            `${id}#${p.generation} deleted at ${at}, before its delete_at ${p.deleteAt}`,
          );
        }
        const told = this.notifications.some(
          (n) => n.type === "delete" && n.identityId === id && n.ref === p.ref,
        );
        if (row.custody === "device" && !told) {
          this.violations.push(
            `${id}#${p.generation} deleted before its device was told (${p.ref})`,
          );
        }
      }
    }
    if (old?.deregisteredAt === null && row && row.deregisteredAt !== null) {
      this.deaths.set(id, this.lives(id) + 1);
    }
    if (row) this.db.identities.set(id, row);
    this.db.packages = this.db.packages.filter((p) => p.identityId !== id).concat(packages);
  }

  /** The wakeup census, as the triggers keep it: live identities, and those with superseded packages. */
  census(): Record<WakeupKind, number> {
    let rotation = 0;
    let deletion = 0;
    for (const row of this.db.identities.values()) {
      if (row.deregisteredAt !== null) continue;
      rotation++;
      if (this.db.packages.some((p) => p.identityId === row.id && p.deleteAt !== null)) deletion++;
    }
    return { rotation, deletion };
  }

  /** Whether any live identity's deadline, or any superseded package's delete_at, is <= before. */
  overdue(before: number): { overdueRotation: boolean; overdueDeletion: boolean } {
    let overdueRotation = false;
    for (const row of this.db.identities.values()) {
      if (row.deregisteredAt === null && row.rotationDeadline !== null) {
        overdueRotation ||= row.rotationDeadline <= before;
      }
    }
    const overdueDeletion = this.db.packages.some(
      (p) => p.deleteAt !== null && p.deleteAt <= before,
    );
    return { overdueRotation, overdueDeletion };
  }
}

const TRACE_STEPS = process.env.MODEL_TRACE_STEPS === "1";

/** Lock duration + stalled interval: how long an active job of a dead worker stays active. */
export const STALL_MS = 60_000;
