import { and, count, eq, isNotNull, isNull, lte, min } from "drizzle-orm";
import type { Db, Tx } from "./client.js";
import { deviceInitKeys, identities, keyPackages } from "./schema.js";

/**
 * The statements of device custody (docs/device-custody.md): init keys remembered per identity,
 * the awaiting-device mark, and deletions that name what they delete (a device is told each ref).
 * Every function that takes `tx` runs under the identity's row lock.
 */

export async function seenInitKeys(tx: Tx, identityId: string): Promise<Set<string>> {
  const rows = await tx
    .select({ digest: deviceInitKeys.digest })
    .from(deviceInitKeys)
    .where(eq(deviceInitKeys.identityId, identityId));
  return new Set(rows.map((r) => r.digest));
}

export async function recordInitKey(
  tx: Tx,
  identityId: string,
  digest: string,
  now: number,
): Promise<void> {
  await tx
    .insert(deviceInitKeys)
    .values({ identityId, digest, seenAt: new Date(now) })
    .onConflictDoNothing();
}

/** Keeps the earliest time: the identity has been awaiting its device since then. */
export async function markAwaitingDevice(tx: Tx, identityId: string, now: number): Promise<void> {
  await tx
    .update(identities)
    .set({ awaitingDeviceSince: new Date(now) })
    .where(and(eq(identities.id, identityId), isNull(identities.awaitingDeviceSince)));
}

export async function dueDeletionRefs(tx: Tx, identityId: string, now: number): Promise<string[]> {
  const rows = await tx
    .select({ ref: keyPackages.ref })
    .from(keyPackages)
    .where(
      and(
        eq(keyPackages.identityId, identityId),
        isNotNull(keyPackages.deleteAt),
        lte(keyPackages.deleteAt, new Date(now)),
      ),
    );
  return rows.map((r) => r.ref);
}

export async function currentRef(tx: Tx, identityId: string): Promise<string | null> {
  const [row] = await tx
    .select({ ref: keyPackages.ref })
    .from(keyPackages)
    .where(and(eq(keyPackages.identityId, identityId), eq(keyPackages.isCurrent, true)));
  return row?.ref ?? null;
}

/** Live device identities awaiting an upload, and since when the oldest has waited. */
export async function awaitingDevices(
  db: Db,
): Promise<{ count: number; oldestSince: Date | null }> {
  const [row] = await db
    .select({ n: count(), oldest: min(identities.awaitingDeviceSince) })
    .from(identities)
    .where(and(isNotNull(identities.awaitingDeviceSince), isNull(identities.deregisteredAt)));
  return { count: Number(row?.n ?? 0), oldestSince: row?.oldest ?? null };
}

export async function clearVerifyAt(tx: Tx, identityId: string): Promise<void> {
  await tx.update(identities).set({ verifyAt: null }).where(eq(identities.id, identityId));
}

/** A check of the published package: the error is kept until a check passes. */
export async function recordVerify(
  tx: Tx,
  identityId: string,
  now: number,
  error: string | null,
): Promise<void> {
  await tx
    .update(identities)
    .set({ lastVerifiedAt: new Date(now), verifyError: error?.slice(0, 500) ?? null })
    .where(eq(identities.id, identityId));
}
