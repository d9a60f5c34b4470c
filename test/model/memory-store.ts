import type {
  LockedIdentity,
  NewKeyPackage,
  PendingKeyPackage,
  Store,
  StoreTx,
} from "../../src/core/ports.js";
import type { Proc, World } from "./world.js";

/**
 * The Store port in memory, with what the services rely on from Postgres: a row lock per
 * identity held until the transaction ends (waiters queue in order), READ COMMITTED (a
 * transaction sees its own writes; everyone else sees only committed rows), rollback on throw
 * or crash, the unique and check constraints of the schema, and the wakeup census (computed
 * from the committed rows, as the triggers keep it). "now" is the store's clock (World.now).
 * Every statement is one scheduled step (World.step), so the scheduler may interleave any two.
 */

export interface IdentityRow {
  id: string;
  generation: number;
  rotationDeadline: number | null;
  deregisteredAt: number | null;
  signed: boolean;
  publishingSince: number | null;
  welcomeDeadline: number | null;
  rotationFailures: number;
}

export interface PackageRow {
  id: number;
  identityId: string;
  generation: number;
  ref: string;
  isCurrent: boolean;
  publishedAt: number | null;
  deleteAt: number | null;
  createdAt: number;
  /** World.seq when the package was generated (a welcome honoured by it came before). */
  createdSeq: number;
  kp: NewKeyPackage;
}

/** One identity's rows as a transaction sees them. */
interface Slice {
  row: IdentityRow | undefined;
  packages: PackageRow[];
}

export class ConstraintError extends Error {
  override name = "ConstraintError";
}

const clone = (s: Slice): Slice => ({
  row: s.row && { ...s.row },
  packages: s.packages.map((p) => ({ ...p })),
});

export function createMemoryStore(world: World, proc: Proc): Store {
  const db = world.db;
  const read = (id: string): Slice => ({
    row: db.identities.get(id),
    packages: db.packages.filter((p) => p.identityId === id),
  });

  return {
    async transaction(fn) {
      const tx = new MemoryTx(world, proc);
      try {
        const result = await fn(tx.port);
        await tx.step("commit", () => tx.commit());
        return result;
      } catch (err) {
        tx.rollback();
        throw err;
      }
    },
    // Only the status endpoint reads the failure count; nothing to model but the step.
    recordRotationFailure: () => world.step(proc, "recordRotationFailure", () => {}),
    countLive: () => world.step(proc, "countLive", () => liveRows(world).length),
    liveAmong: (ids) =>
      world.step(proc, "liveAmong", () => new Set(ids.filter((id) => isLive(read(id).row)))),
    overdueIdentities: (before, limit, after) =>
      world.step(proc, "overdueIdentities", () =>
        liveRows(world)
          .map((r) => ({ id: r.id, deadline: r.rotationDeadline as number }))
          .filter((r) => r.deadline <= before)
          .sort((a, b) => a.deadline - b.deadline || cmp(a.id, b.id))
          .filter(
            (r) =>
              after === undefined ||
              r.deadline > after.deadline ||
              (r.deadline === after.deadline && cmp(r.id, after.id) > 0),
          )
          .slice(0, limit),
      ),
    overdueDeletions: (before, limit, after) =>
      world.step(proc, "overdueDeletions", () =>
        db.packages
          .filter((p) => p.deleteAt !== null && p.deleteAt <= before)
          .map((p) => ({
            identityId: p.identityId,
            deleteAt: p.deleteAt as number,
            packageId: p.id,
          }))
          .sort((a, b) => a.deleteAt - b.deleteAt || a.packageId - b.packageId)
          .filter(
            (p) =>
              after === undefined ||
              p.deleteAt > after.deleteAt ||
              (p.deleteAt === after.deleteAt && p.packageId > after.packageId),
          )
          .slice(0, limit),
      ),
    expectedWakeups: () => world.step(proc, "expectedWakeups", () => world.census()),
    getIdentity: (id) =>
      world.step(proc, "getIdentity", () => {
        const row = db.identities.get(id);
        if (row === undefined || row.deregisteredAt !== null) return undefined;
        const date = (ms: number | null) => (ms === null ? null : new Date(ms));
        return {
          id,
          generation: row.generation,
          rotationDeadline: date(row.rotationDeadline),
          lastRotatedAt: null,
          rotationFailures: row.rotationFailures,
          lastError: null,
          lastFailureAt: null,
          createdAt: new Date(world.t0),
        };
      }),
    listPublic: async () => [],
    getCurrent: async () => undefined,
  };
}

const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
const isLive = (row: IdentityRow | undefined) => row !== undefined && row.deregisteredAt === null;
const liveRows = (world: World) => [...world.db.identities.values()].filter(isLive);

/** A transaction: its own copies of the identities it wrote, applied at commit. */
class MemoryTx {
  private readonly writes = new Map<string, Slice>();
  private done = false;
  readonly port: StoreTx;

  constructor(
    private readonly world: World,
    private readonly proc: Proc,
  ) {
    this.port = this.bind();
    world.openTxs.add(this);
  }

  /** The identity as this transaction sees it. */
  private view(id: string): Slice {
    return (
      this.writes.get(id) ?? {
        row: this.world.db.identities.get(id),
        packages: this.world.db.packages.filter((p) => p.identityId === id),
      }
    );
  }

  /** A writable copy; the caller must hold the row lock. */
  private write(id: string): Slice {
    if (!this.world.holds(this, id)) throw new Error(`model: write to ${id} without its row lock`);
    let slice = this.writes.get(id);
    if (!slice) {
      slice = clone(this.view(id));
      this.writes.set(id, slice);
    }
    return slice;
  }

  commit(): void {
    if (this.done) throw new Error("transaction already ended");
    for (const [id, slice] of this.writes) {
      checkConstraints(id, slice);
      this.world.applyCommit(id, slice.row, slice.packages);
    }
    this.end();
  }

  rollback(): void {
    if (!this.done) this.end();
  }

  private end(): void {
    this.done = true;
    this.world.openTxs.delete(this);
    this.world.releaseLocks(this);
  }

  /** Statements of one transaction run in the order issued (one connection). */
  private chain: Promise<unknown> = Promise.resolve();
  step<T>(label: string, effect: () => T | Promise<T>): Promise<T> {
    const run = this.chain.then(() =>
      this.world.step(this.proc, label, () => {
        if (this.done) throw new Error("transaction already ended");
        return effect();
      }),
    );
    this.chain = run.catch(() => {});
    return run;
  }

  private locked(id: string): LockedIdentity | undefined {
    const row = this.view(id).row;
    if (row === undefined) return undefined;
    return {
      id,
      generation: row.generation,
      rotationDeadline: row.rotationDeadline,
      deregistered: row.deregisteredAt !== null,
      credentialIdentity: row.signed ? new Uint8Array([1]) : null,
      signaturePublicKey: row.signed ? new Uint8Array([2]) : null,
      signaturePrivateKey: row.signed ? new Uint8Array([3]) : null,
      publishing: row.publishingSince !== null,
      welcomeDeadline: row.welcomeDeadline,
      now: this.world.now(),
    };
  }

  private async lock(ids: readonly string[]): Promise<void> {
    for (const id of [...ids].sort(cmp)) await this.world.lock(this, id, this.proc);
  }

  private bind(): StoreTx {
    const w = this.world;
    const pkgs = (id: string) => this.view(id).packages;
    const setRow = (id: string, patch: Partial<IdentityRow>) => {
      const slice = this.write(id);
      if (slice.row === undefined) throw new Error(`model: no row ${id}`);
      Object.assign(slice.row, patch);
    };
    const addPackage = (
      id: string,
      generation: number,
      now: number,
      kp: NewKeyPackage,
      current: boolean,
    ) => {
      const slice = this.write(id);
      const row: PackageRow = {
        id: w.nextPackageId(),
        identityId: id,
        generation,
        ref: kp.ref,
        isCurrent: current,
        publishedAt: current ? now : null,
        deleteAt: null,
        createdAt: now,
        createdSeq: w.seq,
        kp,
      };
      slice.packages.push(row);
      checkConstraints(id, slice);
      return row;
    };
    const supersede: StoreTx["supersedeCurrent"] = async (input) =>
      this.step("supersedeCurrent", () => {
        const slice = this.write(input.identityId);
        const row = slice.row;
        if (!row || row.generation !== input.generation - 1 || row.deregisteredAt !== null) {
          return { fenced: true, nextDeleteAt: earliest(slice.packages) };
        }
        Object.assign(row, {
          generation: input.generation,
          rotationDeadline: input.rotationDeadline,
          rotationFailures: 0,
          publishingSince: null,
          welcomeDeadline: null,
        });
        for (const p of slice.packages) {
          if (p.isCurrent)
            Object.assign(p, { isCurrent: false, deleteAt: input.supersededDeleteAt });
        }
        return { fenced: false, nextDeleteAt: earliest(slice.packages) };
      });
    const markCurrent = (packageId: number, now: number) => {
      const p = [...this.writes.values()]
        .flatMap((s) => s.packages)
        .find((k) => k.id === packageId);
      if (!p || p.isCurrent || p.deleteAt !== null) {
        throw new Error("pending key package vanished under the identity lock");
      }
      Object.assign(p, { isCurrent: true, publishedAt: now });
      checkConstraints(p.identityId, this.write(p.identityId));
    };
    return {
      lockIdentity: (id) =>
        this.step("lockIdentity", async () => {
          await this.lock([id]);
          return this.locked(id);
        }),
      lockOrTombstone: (id) =>
        this.step("lockOrTombstone", async () => {
          await this.lock([id]);
          if (this.view(id).row === undefined) {
            this.write(id).row = tombstoneRow(id, w.now());
          }
          return this.locked(id) as LockedIdentity;
        }),
      lockDeadlines: (ids) =>
        this.step("lockDeadlines", async () => {
          const present = [...new Set(ids)].filter((id) => this.view(id).row !== undefined);
          await this.lock(present);
          return present.sort(cmp).flatMap((id) => {
            const l = this.locked(id);
            return l
              ? [
                  {
                    id,
                    rotationDeadline: l.rotationDeadline,
                    deregistered: l.deregistered,
                    publishing: l.publishing,
                    now: l.now,
                  },
                ]
              : [];
          });
        }),
      lockLiveDeadlines: (afterId, limit) =>
        this.step("lockLiveDeadlines", async () => {
          const ids = liveRows(w)
            .map((r) => r.id)
            .filter((id) => afterId === null || cmp(id, afterId) > 0)
            .sort(cmp)
            .slice(0, limit);
          await this.lock(ids);
          return ids.flatMap((id) => {
            const l = this.locked(id);
            return l && !l.deregistered
              ? [{ id, rotationDeadline: l.rotationDeadline, now: l.now }]
              : [];
          });
        }),
      nextDeleteAtsOf: (ids) =>
        this.step("nextDeleteAtsOf", () => {
          const out = new Map<string, number>();
          for (const id of ids) {
            const at = earliest(pkgs(id));
            if (at !== null) out.set(id, at);
          }
          return out;
        }),
      insertIdentity: (input) =>
        this.step("insertIdentity", () => {
          const slice = this.write(input.id);
          const generation = slice.row?.generation ?? 0;
          slice.row = {
            ...tombstoneRow(input.id, null),
            generation,
            rotationDeadline: input.rotationDeadline,
            signed: true,
          };
        }),
      setRotationDeadlines: (ids, deadline) =>
        this.step("setRotationDeadlines", () => {
          for (const id of ids) setRow(id, { rotationDeadline: deadline });
        }),
      recordWelcomesDuringPublish: (ids, deadline) =>
        this.step("recordWelcomesDuringPublish", () => {
          for (const id of ids) {
            const current = this.view(id).row?.welcomeDeadline ?? null;
            setRow(id, {
              welcomeDeadline: current === null ? deadline : Math.min(current, deadline),
            });
          }
        }),
      markPublishing: (id, now) =>
        this.step("markPublishing", () => {
          setRow(id, { publishingSince: this.view(id).row?.publishingSince ?? now });
        }),
      tombstone: (id, now) =>
        this.step("tombstone", () => {
          const slice = this.write(id);
          slice.packages = [];
          setRow(id, {
            deregisteredAt: now,
            rotationDeadline: null,
            signed: false,
            publishingSince: null,
            welcomeDeadline: null,
          });
        }),
      findPending: (id) =>
        this.step("findPending", () => {
          const p = pkgs(id).find((k) => !k.isCurrent && k.deleteAt === null);
          return p && asPending(p);
        }),
      insertPending: (id, generation, now, kp) =>
        this.step("insertPending", () => asPending(addPackage(id, generation, now, kp, false))),
      deletePending: (packageId) =>
        this.step("deletePending", () => {
          for (const slice of this.writes.values())
            slice.packages = slice.packages.filter((p) => p.id !== packageId);
          for (const p of w.db.packages.filter((k) => k.id === packageId)) {
            const slice = this.write(p.identityId);
            slice.packages = slice.packages.filter((k) => k.id !== packageId);
          }
        }),
      supersedeCurrent: supersede,
      markCurrent: (packageId, now) => this.step("markCurrent", () => markCurrent(packageId, now)),
      insertCurrent: (id, generation, now, kp) =>
        this.step("insertCurrent", () => addPackage(id, generation, now, kp, true).id),
      promotePending: async (input) => {
        const superseded = await supersede({ ...input, generation: input.pending.generation });
        if (superseded.fenced) return null;
        await this.step("markCurrent", () => markCurrent(input.pending.id, input.now));
        return { nextDeleteAt: superseded.nextDeleteAt };
      },
      deleteDueKeyPackages: (id, now) =>
        this.step("deleteDueKeyPackages", () => {
          const slice = this.write(id);
          const due = slice.packages.filter((p) => p.deleteAt !== null && p.deleteAt <= now);
          slice.packages = slice.packages.filter((p) => !due.includes(p));
          return due.length;
        }),
      nextDeleteAt: (id) => this.step("nextDeleteAt", () => earliest(pkgs(id))),
      hasCurrent: (id) => this.step("hasCurrent", () => pkgs(id).some((p) => p.isCurrent)),
    };
  }
}

function tombstoneRow(id: string, deregisteredAt: number | null): IdentityRow {
  return {
    id,
    generation: 0,
    rotationDeadline: null,
    deregisteredAt,
    signed: false,
    publishingSince: null,
    welcomeDeadline: null,
    rotationFailures: 0,
  };
}

const earliest = (packages: readonly PackageRow[]): number | null =>
  packages.reduce<number | null>(
    (min, p) => (p.deleteAt !== null && (min === null || p.deleteAt < min) ? p.deleteAt : min),
    null,
  );

const asPending = (p: PackageRow): PendingKeyPackage => ({
  ...p.kp,
  id: p.id,
  generation: p.generation,
});

/** The schema's constraints on one identity's rows (raised at the statement, as Postgres does). */
function checkConstraints(id: string, slice: Slice): void {
  const row = slice.row;
  if (row && row.deregisteredAt === null && row.rotationDeadline === null) {
    throw new ConstraintError(`identities_live_has_deadline (${id})`);
  }
  const gens = new Set<number>();
  let current = 0;
  let pending = 0;
  for (const p of slice.packages) {
    if (gens.has(p.generation)) throw new ConstraintError(`key_packages_generation_uq (${id})`);
    gens.add(p.generation);
    if (p.isCurrent) current++;
    if (!p.isCurrent && p.deleteAt === null) pending++;
    const ok =
      (p.isCurrent && p.deleteAt === null && p.publishedAt !== null) ||
      (!p.isCurrent && p.deleteAt !== null) ||
      (!p.isCurrent && p.deleteAt === null && p.publishedAt === null);
    if (!ok) throw new ConstraintError(`key_packages_state (${id})`);
  }
  if (current > 1) throw new ConstraintError(`key_packages_current_uq (${id})`);
  if (pending > 1) throw new ConstraintError(`key_packages_pending_uq (${id})`);
  if (slice.packages.length > 0 && row === undefined) throw new ConstraintError("key_packages fk");
}
