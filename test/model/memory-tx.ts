import type { LockedIdentity, NewKeyPackage, StoreTx } from "../../src/core/ports.js";
import {
  asPending,
  checkConstraints,
  clone,
  cmp,
  earliest,
  type IdentityRow,
  liveRows,
  type PackageRow,
  type Slice,
  tombstoneRow,
} from "./memory-rows.js";
import type { Proc, World } from "./world.js";

/** A transaction: its own copies of the identities it wrote, applied at commit. */
export class MemoryTx {
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
      custody: row.custody,
      notifyUrl: row.notifyUrl,
      awaitingDeviceSince: row.awaitingDeviceSince,
      verifyAt: row.verifyAt,
      publishing: row.publishingSince !== null,
      welcomeDeadline: row.welcomeDeadline,
      now: this.world.now(),
      fence: this.world.nextFence(),
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
          awaitingDeviceSince: null,
          verifyAt: input.verifyAt ?? null,
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
                    fence: l.fence,
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
              ? [
                  {
                    id,
                    rotationDeadline: l.rotationDeadline,
                    verifyAt: l.verifyAt,
                    now: l.now,
                    fence: l.fence,
                  },
                ]
              : [];
          });
        }),
      advanceArmFence: (high) => this.step("advanceArmFence", () => this.world.advanceFence(high)),
      nextArmFence: () => this.step("nextArmFence", () => this.world.nextFence()),
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
            signed: input.signaturePrivateKey !== null,
            custody: input.custody,
            notifyUrl: input.notifyUrl,
            initKeys: slice.row?.initKeys ?? [],
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
            notifyUrl: null,
            awaitingDeviceSince: null,
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
      recentRotations: (ids, since) =>
        this.step("recentRotations", () => {
          const byId = new Map<string, number[]>();
          for (const id of ids) {
            const times = pkgs(id)
              .filter((p) => p.createdAt > since)
              .map((p) => p.createdAt);
            if (times.length > 0) byId.set(id, times);
          }
          return byId;
        }),
      seenInitKeys: (id) =>
        this.step("seenInitKeys", () => new Set(this.view(id).row?.initKeys ?? [])),
      recordInitKey: (id, digest) =>
        this.step("recordInitKey", () => {
          const keys = this.view(id).row?.initKeys ?? [];
          if (!keys.includes(digest)) setRow(id, { initKeys: [...keys, digest] });
        }),
      markAwaitingDevice: (id, now) =>
        this.step("markAwaitingDevice", () => {
          setRow(id, { awaitingDeviceSince: this.view(id).row?.awaitingDeviceSince ?? now });
        }),
      dueDeletionRefs: (id, now) =>
        this.step("dueDeletionRefs", () =>
          pkgs(id)
            .filter((p) => p.deleteAt !== null && p.deleteAt <= now)
            .map((p) => p.ref),
        ),
      deleteDueKeyPackagesIn: (id, now, refs) =>
        this.step("deleteDueKeyPackagesIn", () => {
          const slice = this.write(id);
          const due = slice.packages.filter(
            (p) => p.deleteAt !== null && p.deleteAt <= now && refs.includes(p.ref),
          );
          slice.packages = slice.packages.filter((p) => !due.includes(p));
          return due.length;
        }),
      clearVerifyAt: (id) => this.step("clearVerifyAt", () => setRow(id, { verifyAt: null })),
      recordVerify: () => this.step("recordVerify", () => {}),
      currentRef: (id) =>
        this.step("currentRef", () => pkgs(id).find((p) => p.isCurrent)?.ref ?? null),
    };
  }
}
