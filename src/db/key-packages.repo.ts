import { and, asc, eq, inArray, isNotNull, isNull, lte, min } from "drizzle-orm";
import type { Db, Tx } from "./client.js";
import { identities, keyPackages } from "./schema.js";

/** A new key package as a rotation hands it to the store; privateKey is already sealed. */
export interface NewKeyPackage {
  ref: string;
  ciphersuite: string;
  keyPackage: Uint8Array;
  privateKey: Uint8Array;
  notBefore: Date;
  notAfter: Date;
}

export interface PendingKeyPackage extends NewKeyPackage {
  id: number;
  generation: number;
}

const toMs = (d: Date | null): number | null => (d === null ? null : d.getTime());

/** The identity's pending (stored, unpublished) key package, if any. */
export async function findPending(
  tx: Tx,
  identityId: string,
): Promise<PendingKeyPackage | undefined> {
  const [row] = await tx
    .select()
    .from(keyPackages)
    .where(
      and(
        eq(keyPackages.identityId, identityId),
        eq(keyPackages.isCurrent, false),
        isNull(keyPackages.deleteAt),
      ),
    );
  return row;
}

/** Stores a generated key package as pending; the caller holds the identity's lock. */
export async function insertPending(
  tx: Tx,
  identityId: string,
  generation: number,
  now: number,
  kp: NewKeyPackage,
): Promise<PendingKeyPackage> {
  const [row] = await tx
    .insert(keyPackages)
    .values({ identityId, generation, ...kp, createdAt: new Date(now), isCurrent: false })
    .returning();
  if (row === undefined) throw new Error("insert returned no row");
  return row;
}

/** Drops a pending key package that no longer fits (its generation is stale). */
export async function deletePending(tx: Tx, id: number): Promise<void> {
  await tx.delete(keyPackages).where(eq(keyPackages.id, id));
}

/**
 * Makes a published pending key package current, in the same transaction as the identity's new
 * deadline. Fenced: the identity's generation must still be the one before the pending package's,
 * and the pending package must still exist. Returns false, writing nothing, otherwise.
 */
export async function promotePending(
  tx: Tx,
  input: {
    identityId: string;
    pending: PendingKeyPackage;
    now: number;
    rotationDeadline: number;
    supersededDeleteAt: number;
  },
): Promise<boolean> {
  const updated = await tx
    .update(identities)
    .set({
      generation: input.pending.generation,
      rotationDeadline: new Date(input.rotationDeadline),
      lastRotatedAt: new Date(input.now),
      rotationFailures: 0,
      lastError: null,
    })
    .where(
      and(
        eq(identities.id, input.identityId),
        eq(identities.generation, input.pending.generation - 1),
        isNull(identities.deregisteredAt),
      ),
    )
    .returning({ id: identities.id });
  if (updated.length !== 1) return false;
  await tx
    .update(keyPackages)
    .set({ isCurrent: false, deleteAt: new Date(input.supersededDeleteAt) })
    .where(and(eq(keyPackages.identityId, input.identityId), eq(keyPackages.isCurrent, true)));
  const promoted = await tx
    .update(keyPackages)
    .set({ isCurrent: true, publishedAt: new Date(input.now) })
    .where(
      and(
        eq(keyPackages.id, input.pending.id),
        eq(keyPackages.isCurrent, false),
        isNull(keyPackages.deleteAt),
      ),
    )
    .returning({ id: keyPackages.id });
  if (promoted.length !== 1)
    throw new Error("pending key package vanished under the identity lock");
  return true;
}

/** Deletes the superseded key packages whose delete_at has passed; returns how many. */
export async function deleteDueKeyPackages(
  tx: Tx,
  identityId: string,
  now: number,
): Promise<number> {
  const deleted = await tx
    .delete(keyPackages)
    .where(
      and(
        eq(keyPackages.identityId, identityId),
        isNotNull(keyPackages.deleteAt),
        lte(keyPackages.deleteAt, new Date(now)),
      ),
    )
    .returning({ id: keyPackages.id });
  return deleted.length;
}

/** The identity's deletion deadline: the earliest delete_at of its superseded packages. */
export async function nextDeleteAt(tx: Tx | Db, identityId: string): Promise<number | null> {
  const [row] = await tx
    .select({ at: min(keyPackages.deleteAt) })
    .from(keyPackages)
    .where(and(eq(keyPackages.identityId, identityId), isNotNull(keyPackages.deleteAt)));
  return toMs(row?.at ?? null);
}

/** Deletion deadlines of many identities at once (reconcile). */
export async function nextDeleteAts(tx: Tx, ids: readonly string[]): Promise<Map<string, number>> {
  if (ids.length === 0) return new Map();
  const rows = await tx
    .select({ id: keyPackages.identityId, at: min(keyPackages.deleteAt) })
    .from(keyPackages)
    .where(and(inArray(keyPackages.identityId, [...ids]), isNotNull(keyPackages.deleteAt)))
    .groupBy(keyPackages.identityId);
  const result = new Map<string, number>();
  for (const row of rows) if (row.at !== null) result.set(row.id, row.at.getTime());
  return result;
}

/** The public columns of an identity's key packages, oldest generation first. */
export async function listPublic(db: Db, identityId: string) {
  return db
    .select({
      generation: keyPackages.generation,
      ref: keyPackages.ref,
      ciphersuite: keyPackages.ciphersuite,
      isCurrent: keyPackages.isCurrent,
      createdAt: keyPackages.createdAt,
      publishedAt: keyPackages.publishedAt,
      notBefore: keyPackages.notBefore,
      notAfter: keyPackages.notAfter,
      deleteAt: keyPackages.deleteAt,
    })
    .from(keyPackages)
    .where(eq(keyPackages.identityId, identityId))
    .orderBy(asc(keyPackages.generation));
}

/** Whether the identity has a current (published) key package. */
export async function hasCurrent(tx: Tx, identityId: string): Promise<boolean> {
  const rows = await tx
    .select({ id: keyPackages.id })
    .from(keyPackages)
    .where(and(eq(keyPackages.identityId, identityId), eq(keyPackages.isCurrent, true)));
  return rows.length > 0;
}

/** The identity's current (published) key package, public half only. */
export async function getCurrent(db: Db, identityId: string) {
  const [row] = await db
    .select({
      generation: keyPackages.generation,
      ref: keyPackages.ref,
      ciphersuite: keyPackages.ciphersuite,
      keyPackage: keyPackages.keyPackage,
      notBefore: keyPackages.notBefore,
      notAfter: keyPackages.notAfter,
      publishedAt: keyPackages.publishedAt,
    })
    .from(keyPackages)
    .innerJoin(identities, eq(identities.id, keyPackages.identityId))
    .where(
      and(
        eq(keyPackages.identityId, identityId),
        eq(keyPackages.isCurrent, true),
        isNull(identities.deregisteredAt),
      ),
    );
  return row;
}
