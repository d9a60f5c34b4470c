import { and, asc, count, eq, gt, isNull, lt, min, type SQL, sql } from "drizzle-orm";
import type { Db } from "./client.js";
import { withPostgresErrors } from "./errors.js";
import { identities, keyPackages } from "./schema.js";

/**
 * The safety view's reads. Every query is served by a partial index and returns at most `limit`
 * rows, whatever the number of identities.
 */
export function createSafetyRepo(db: Db) {
  const current = and(eq(keyPackages.isCurrent, true), isNull(identities.deregisteredAt));
  const currentColumns = {
    identityId: keyPackages.identityId,
    generation: keyPackages.generation,
    createdAt: keyPackages.createdAt,
    notAfter: keyPackages.notAfter,
  };
  const join = eq(identities.id, keyPackages.identityId);
  const failingWhere = and(gt(identities.rotationFailures, 0), isNull(identities.deregisteredAt));

  // Current key packages matching `where`: the first `limit` in `order`, and how many in all.
  const currentPackages = async (where: SQL, order: Parameters<typeof asc>[0], limit: number) => {
    const [rows, counted] = await Promise.all([
      db
        .select(currentColumns)
        .from(keyPackages)
        .innerJoin(identities, join)
        .where(and(current, where))
        .orderBy(asc(order))
        .limit(limit),
      db
        .select({ n: count() })
        .from(keyPackages)
        .innerJoin(identities, join)
        .where(and(current, where)),
    ]);
    return { count: counted[0]?.n ?? 0, identities: rows };
  };

  return withPostgresErrors({
    /** Current key packages created before `before`, oldest first. */
    staleCurrent: (before: Date, limit: number) =>
      currentPackages(lt(keyPackages.createdAt, before), keyPackages.createdAt, limit),
    /** Current key packages whose not_after is before `before`, soonest first. */
    expiringCurrent: (before: Date, limit: number) =>
      currentPackages(lt(keyPackages.notAfter, before), keyPackages.notAfter, limit),
    /** Live identities whose last rotation attempts failed, longest failing first. */
    async failing(limit: number) {
      const [rows, counted] = await Promise.all([
        db
          .select({
            identityId: identities.id,
            failures: identities.rotationFailures,
            lastError: identities.lastError,
            lastFailureAt: identities.lastFailureAt,
            rotationDeadline: identities.rotationDeadline,
          })
          .from(identities)
          .where(failingWhere)
          .orderBy(asc(identities.lastFailureAt))
          .limit(limit),
        db.select({ n: count() }).from(identities).where(failingWhere),
      ]);
      return { count: counted[0]?.n ?? 0, identities: rows };
    },
    /** Device identities whose rotation is due and whose upload has not come, longest first. */
    async awaitingDevice(limit: number) {
      const awaitingWhere = and(
        sql`${identities.awaitingDeviceSince} is not null`,
        isNull(identities.deregisteredAt),
      );
      const [rows, counted] = await Promise.all([
        db
          .select({
            identityId: identities.id,
            awaitingSince: identities.awaitingDeviceSince,
            rotationDeadline: identities.rotationDeadline,
          })
          .from(identities)
          .where(awaitingWhere)
          .orderBy(asc(identities.awaitingDeviceSince))
          .limit(limit),
        db.select({ n: count() }).from(identities).where(awaitingWhere),
      ]);
      return { count: counted[0]?.n ?? 0, identities: rows };
    },
    /** Identities whose published package failed its last check (a failure rotates at once). */
    async publishedCheckFailed(limit: number) {
      const verifyWhere = and(
        sql`${identities.verifyError} is not null`,
        isNull(identities.deregisteredAt),
      );
      const [rows, counted] = await Promise.all([
        db
          .select({
            identityId: identities.id,
            checkedAt: identities.lastVerifiedAt,
            error: identities.verifyError,
          })
          .from(identities)
          .where(verifyWhere)
          .orderBy(asc(identities.lastVerifiedAt))
          .limit(limit),
        db.select({ n: count() }).from(identities).where(verifyWhere),
      ]);
      return { count: counted[0]?.n ?? 0, identities: rows };
    },
    /** The oldest current key package of a live identity. */
    async oldestCurrent() {
      const [row] = await db
        .select(currentColumns)
        .from(keyPackages)
        .innerJoin(identities, join)
        .where(current)
        .orderBy(asc(keyPackages.createdAt))
        .limit(1);
      return row;
    },
    /** When the oldest current key package was created (one indexed query; for metrics). */
    async oldestCurrentCreatedAt() {
      const [row] = await db
        .select({ at: min(keyPackages.createdAt) })
        .from(keyPackages)
        .where(sql`${keyPackages.isCurrent}`);
      return row?.at ?? null;
    },
  });
}
