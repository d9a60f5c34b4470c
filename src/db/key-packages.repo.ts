import { and, asc, eq, inArray, isNotNull, isNull, lte, min, sql } from "drizzle-orm";
import type { NewKeyPackage, PendingKeyPackage, RotationWrite } from "../core/ports.js";
import type { Db, Tx } from "./client.js";
import { identities, keyPackages } from "./schema.js";

export type { NewKeyPackage, PendingKeyPackage, RotationWrite };

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
    .returning({ id: keyPackages.id });
  if (row === undefined) throw new Error("insert returned no row");
  return { ...kp, id: row.id, generation };
}

/** Drops a pending key package that no longer fits (its generation is stale). */
export async function deletePending(tx: Tx, id: number): Promise<void> {
  await tx.delete(keyPackages).where(eq(keyPackages.id, id));
}

/**
 * The fenced half of a promote, in one statement: moves the identity to `generation` (only if it
 * is still at generation - 1 and live), rolls its deadline forward, supersedes its current key
 * package, and returns the identity's deletion deadline as it will be committed (the earliest
 * delete_at, the one just set included). `fenced` means nothing was written. The caller holds
 * the identity's row lock, then makes the new package current in a second statement (a current
 * package and its successor cannot both be current within one statement: the unique index is
 * checked row by row).
 */
export async function supersedeCurrent(
  tx: Tx,
  input: RotationWrite,
): Promise<{ fenced: boolean; nextDeleteAt: number | null }> {
  const [row] = await tx.execute<{ fenced: boolean; next_delete_at: number | null }>(sql`
    with fence as (
      update ${identities} set
        generation = ${input.generation},
        rotation_deadline = ${new Date(input.rotationDeadline).toISOString()}::timestamptz,
        last_rotated_at = ${new Date(input.now).toISOString()}::timestamptz,
        rotation_failures = 0,
        last_error = null,
        publishing_since = null,
        welcome_deadline = null,
        awaiting_device_since = null,
        verify_at = ${input.verifyAt == null ? null : new Date(input.verifyAt).toISOString()}::timestamptz
      where id = ${input.identityId}
        and generation = ${input.generation - 1}
        and deregistered_at is null
      returning id
    ), superseded as (
      update ${keyPackages} set
        is_current = false,
        delete_at = ${new Date(input.supersededDeleteAt).toISOString()}::timestamptz
      where identity_id in (select id from fence) and is_current
      returning delete_at
    )
    select
      not exists (select 1 from fence) as fenced,
      round(extract(epoch from least(
        (select min(delete_at) from superseded),
        (select min(delete_at) from ${keyPackages}
          where identity_id = ${input.identityId} and delete_at is not null)
      )) * 1000)::float8 as next_delete_at`);
  if (row === undefined) throw new Error("supersede returned no row");
  return { fenced: row.fenced, nextDeleteAt: row.next_delete_at };
}

/** Makes a pending key package current (after supersedeCurrent passed its fence). */
export async function markCurrent(tx: Tx, id: number, now: number): Promise<void> {
  const promoted = await tx
    .update(keyPackages)
    .set({ isCurrent: true, publishedAt: new Date(now) })
    .where(
      and(eq(keyPackages.id, id), eq(keyPackages.isCurrent, false), isNull(keyPackages.deleteAt)),
    )
    .returning({ id: keyPackages.id });
  if (promoted.length !== 1)
    throw new Error("pending key package vanished under the identity lock");
}

/**
 * Stores a generated key package directly as current: a rotation whose publishing is making it
 * current (the directory publisher), in the transaction that generated it and after
 * supersedeCurrent passed its fence.
 */
export async function insertCurrent(
  tx: Tx,
  identityId: string,
  generation: number,
  now: number,
  kp: NewKeyPackage,
): Promise<number> {
  const at = new Date(now);
  const [row] = await tx
    .insert(keyPackages)
    .values({ identityId, generation, ...kp, createdAt: at, publishedAt: at, isCurrent: true })
    .returning({ id: keyPackages.id });
  if (row === undefined) throw new Error("insert returned no row");
  return row.id;
}

/**
 * Makes a published pending key package current, in the same transaction as the identity's new
 * deadline. Fenced: the identity's generation must still be the one before the pending package's,
 * and the pending package must still exist. Returns null, writing nothing, when fenced; otherwise
 * the identity's deletion deadline as committed.
 */
export async function promotePending(
  tx: Tx,
  input: {
    identityId: string;
    pending: PendingKeyPackage;
    now: number;
    rotationDeadline: number;
    supersededDeleteAt: number;
    verifyAt?: number | null;
  },
): Promise<{ nextDeleteAt: number | null } | null> {
  const superseded = await supersedeCurrent(tx, {
    identityId: input.identityId,
    generation: input.pending.generation,
    now: input.now,
    rotationDeadline: input.rotationDeadline,
    supersededDeleteAt: input.supersededDeleteAt,
    verifyAt: input.verifyAt ?? null,
  });
  if (superseded.fenced) return null;
  await markCurrent(tx, input.pending.id, input.now);
  return { nextDeleteAt: superseded.nextDeleteAt };
}

/**
 * Deletes the superseded key packages whose delete_at has passed, or only those among `refs`
 * (a device identity's, whose deletion was announced); returns how many.
 */
export async function deleteDueKeyPackages(
  tx: Tx,
  identityId: string,
  now: number,
  refs?: readonly string[],
): Promise<number> {
  if (refs !== undefined && refs.length === 0) return 0;
  const deleted = await tx
    .delete(keyPackages)
    .where(
      and(
        eq(keyPackages.identityId, identityId),
        isNotNull(keyPackages.deleteAt),
        lte(keyPackages.deleteAt, new Date(now)),
        refs === undefined ? undefined : inArray(keyPackages.ref, [...refs]),
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
