import type { Store } from "../../src/core/ports.js";
import { cmp, isLive, liveRows, type Slice } from "./memory-rows.js";
import { MemoryTx } from "./memory-tx.js";
import type { Proc, World } from "./world.js";

export type { IdentityRow, PackageRow } from "./memory-rows.js";

/**
 * The Store port in memory, with what the services rely on from Postgres: a row lock per
 * identity held until the transaction ends (waiters queue in order), READ COMMITTED (a
 * transaction sees its own writes; everyone else sees only committed rows), rollback on throw
 * or crash, the unique and check constraints of the schema, and the wakeup census (computed
 * from the committed rows, as the triggers keep it). "now" is the store's clock (World.now).
 * Every statement is one scheduled step (World.step), so the scheduler may interleave any two.
 */

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
    advanceArmFence: (high) => world.step(proc, "advanceArmFence", () => world.advanceFence(high)),
    liveIdAfter: (afterId, count) =>
      world.step(proc, "liveIdAfter", () => {
        const ids = liveRows(world)
          .map((r) => r.id)
          .filter((id) => afterId === null || cmp(id, afterId) > 0)
          .sort(cmp)
          .slice(0, count);
        return ids.length === count ? ids[ids.length - 1] : undefined;
      }),
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
    watchdogProbe: (before) =>
      world.step(proc, "watchdogProbe", () => ({ ...world.census(), ...world.overdue(before) })),
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
          custody: row.custody,
          awaitingDeviceSince: date(row.awaitingDeviceSince),
          verifyError: null,
          lastVerifiedAt: null,
        };
      }),
    listPublic: async () => [],
    getCurrent: async () => undefined,
  };
}
