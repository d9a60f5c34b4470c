import { and, asc, count, eq, gt, isNull, lt, min, type SQL, sql } from "drizzle-orm";
import { identities, keyPackages } from "../db/schema.js";
import { lastSealedKeysReport } from "./rewrap.service.js";
import type { LiveRotor as Rotor } from "./rotor.js";

/**
 * Lifetime safety: a key package that stops rotating expires on the network after 84 days and
 * the identity can no longer be added to groups. This view shows drift long before that:
 * current key packages older than the rotation interval plus a margin, ones within a week of
 * their not_after, identities whose rotation keeps failing (including a first publish that has
 * not succeeded yet) and the oldest current key package of the fleet. Every query is served by a partial index and
 * returns at most `limit` rows, whatever the number of identities.
 */

export const SAFETY_DEFAULTS = {
  /** How much older than ROTATION_INTERVAL a current key package may be before it is "stale". */
  staleMarginMs: 86_400_000,
  /** Warn this long before a current key package's not_after. */
  expiryWarningMs: 7 * 86_400_000,
  limit: 100,
} as const;

export async function safetyReport(rotor: Rotor, options: Partial<typeof SAFETY_DEFAULTS> = {}) {
  const { staleMarginMs, expiryWarningMs, limit } = { ...SAFETY_DEFAULTS, ...options };
  const now = rotor.clock();
  const staleBefore = new Date(now - rotor.timing.rotationIntervalMs - staleMarginMs);
  const expiringBefore = new Date(now + expiryWarningMs);
  const db = rotor.db;
  const current = and(eq(keyPackages.isCurrent, true), isNull(identities.deregisteredAt));
  const currentColumns = {
    identityId: keyPackages.identityId,
    generation: keyPackages.generation,
    createdAt: keyPackages.createdAt,
    notAfter: keyPackages.notAfter,
  };
  const join = eq(identities.id, keyPackages.identityId);

  // Current key packages matching `where`: the first `limit` in `order`, and how many in all.
  const currentPackages = async (where: SQL, order: Parameters<typeof asc>[0]) => {
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
  const failingWhere = and(gt(identities.rotationFailures, 0), isNull(identities.deregisteredAt));

  const awaitingWhere = and(
    sql`${identities.awaitingDeviceSince} is not null`,
    isNull(identities.deregisteredAt),
  );
  const verifyWhere = and(
    sql`${identities.verifyError} is not null`,
    isNull(identities.deregisteredAt),
  );
  const [
    stale,
    expiringSoon,
    failing,
    failingCount,
    oldest,
    awaiting,
    awaitingCount,
    verifyFailed,
    verifyFailedCount,
  ] = await Promise.all([
    currentPackages(lt(keyPackages.createdAt, staleBefore), keyPackages.createdAt),
    currentPackages(lt(keyPackages.notAfter, expiringBefore), keyPackages.notAfter),
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
    db
      .select(currentColumns)
      .from(keyPackages)
      .innerJoin(identities, join)
      .where(current)
      .orderBy(asc(keyPackages.createdAt))
      .limit(1),
    // Device identities whose rotation is due and whose upload has not come (longest first).
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
    // The last check of the published package failed (a failure rotates at once).
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
  const oldestRow = oldest[0];
  return {
    at: new Date(now),
    thresholds: { staleBefore, expiringBefore },
    stale,
    expiringSoon,
    failing: { count: failingCount[0]?.n ?? 0, identities: failing },
    publishedCheckFailed: { count: verifyFailedCount[0]?.n ?? 0, identities: verifyFailed },
    awaitingDevice: {
      count: awaitingCount[0]?.n ?? 0,
      identities: awaiting.map((a) => ({
        ...a,
        awaitingSeconds:
          a.awaitingSince === null ? 0 : Math.round((now - a.awaitingSince.getTime()) / 1000),
      })),
    },
    oldestCurrentKeyPackage: oldestRow
      ? { ...oldestRow, ageSeconds: Math.round((now - oldestRow.createdAt.getTime()) / 1000) }
      : null,
    // From this process's start-up check (a full scan, so not repeated per request).
    sealedKeys: lastSealedKeysReport(rotor) ?? null,
  };
}

export type SafetyReport = Awaited<ReturnType<typeof safetyReport>>;
// Kept for callers that only need the oldest age (metrics): one indexed query.
export async function oldestCurrentKeyPackageAge(rotor: Rotor): Promise<number | null> {
  const [row] = await rotor.db
    .select({ at: min(keyPackages.createdAt) })
    .from(keyPackages)
    .where(sql`${keyPackages.isCurrent}`);
  return row?.at ? (rotor.clock() - row.at.getTime()) / 1000 : null;
}
