import { and, asc, eq, gt, inArray, isNotNull, isNull, lte, min, sql } from "drizzle-orm";
import type { RotationState } from "../core/timers.js";
import type { Db, Tx } from "./client.js";
import { identities, type IdentityRow, keyPackages, type KeyPackageRow } from "./schema.js";

/** A new key package as the rotation hands it to the store. */
export interface NewKeyPackage {
  ref: string;
  ciphersuite: string;
  keyPackage: Uint8Array;
  privateKey: Uint8Array;
  notBefore: Date;
  notAfter: Date;
}

export interface LockedIdentity extends RotationState {
  id: string;
  generation: number;
  signaturePublicKey: Uint8Array | null;
  signaturePrivateKey: Uint8Array | null;
}

const toMs = (d: Date | null): number | null => (d === null ? null : d.getTime());

function toLocked(row: IdentityRow): LockedIdentity {
  return {
    id: row.id,
    generation: row.generation,
    rotationDeadline: toMs(row.rotationDeadline),
    deregistered: row.deregisteredAt !== null,
    signaturePublicKey: row.signaturePublicKey,
    signaturePrivateKey: row.signaturePrivateKey,
  };
}

/** Takes the identity's row lock (the per-identity mutex of DESIGN.md) and reads it. */
export async function lockIdentity(tx: Tx, id: string): Promise<LockedIdentity | undefined> {
  const [row] = await tx.select().from(identities).where(eq(identities.id, id)).for("update");
  return row === undefined ? undefined : toLocked(row);
}

/**
 * Like lockIdentity, but first leaves a tombstone where there is no row, so that a wake-up of an
 * unknown identity has a lock to decide under (a concurrent registration then waits for it).
 */
export async function lockOrTombstone(tx: Tx, id: string): Promise<LockedIdentity> {
  await tx
    .insert(identities)
    .values({ id, deregisteredAt: new Date() })
    .onConflictDoNothing({ target: identities.id });
  const locked = await lockIdentity(tx, id);
  if (locked === undefined) throw new Error(`identity row ${id} vanished under lock`);
  return locked;
}

/** Locks many identities in id order (one order for everyone, so batches never deadlock). */
export async function lockIdentities(tx: Tx, ids: readonly string[]): Promise<LockedIdentity[]> {
  if (ids.length === 0) return [];
  const rows = await tx
    .select()
    .from(identities)
    .where(inArray(identities.id, [...ids]))
    .orderBy(asc(identities.id))
    .for("update");
  return rows.map(toLocked);
}

/** Locks the next page of live identities after `afterId`, for reconcile. */
export async function lockLivePage(
  tx: Tx,
  afterId: string | null,
  limit: number,
): Promise<LockedIdentity[]> {
  const rows = await tx
    .select()
    .from(identities)
    .where(
      and(
        isNull(identities.deregisteredAt),
        afterId === null ? undefined : gt(identities.id, afterId),
      ),
    )
    .orderBy(asc(identities.id))
    .limit(limit)
    .for("update");
  return rows.map(toLocked);
}

/** Creates (or revives a tombstoned) identity with its first key package. */
export async function insertIdentity(
  tx: Tx,
  input: {
    id: string;
    generation: number;
    rotationDeadline: number;
    now: number;
    signaturePublicKey: Uint8Array;
    signaturePrivateKey: Uint8Array;
    keyPackage: NewKeyPackage;
  },
): Promise<void> {
  const values = {
    generation: input.generation,
    rotationDeadline: new Date(input.rotationDeadline),
    lastRotatedAt: new Date(input.now),
    signaturePublicKey: input.signaturePublicKey,
    signaturePrivateKey: input.signaturePrivateKey,
    rotationFailures: 0,
    lastError: null,
    lastFailureAt: null,
    deregisteredAt: null,
  };
  await tx
    .insert(identities)
    .values({ id: input.id, createdAt: new Date(input.now), ...values })
    .onConflictDoUpdate({ target: identities.id, set: values });
  await insertKeyPackage(tx, input.id, input.generation, input.now, input.keyPackage);
}

async function insertKeyPackage(
  tx: Tx,
  identityId: string,
  generation: number,
  now: number,
  kp: NewKeyPackage,
): Promise<void> {
  await tx.insert(keyPackages).values({
    identityId,
    generation,
    ...kp,
    createdAt: new Date(now),
    isCurrent: true,
    deleteAt: null,
  });
}

/** Moves the rotation deadline (the caller holds the lock and decided the value). */
export async function setRotationDeadline(tx: Tx, id: string, deadline: number): Promise<void> {
  await tx
    .update(identities)
    .set({ rotationDeadline: new Date(deadline) })
    .where(eq(identities.id, id));
}

/** Moves many rotation deadlines in one statement (welcome batches). */
export async function setRotationDeadlines(
  tx: Tx,
  changes: readonly { identityId: string; rotationDeadline: number }[],
): Promise<void> {
  if (changes.length === 0) return;
  const rows = JSON.stringify(
    changes.map((c) => ({
      id: c.identityId,
      deadline: new Date(c.rotationDeadline).toISOString(),
    })),
  );
  await tx.execute(sql`
    update ${identities} set rotation_deadline = v.deadline
    from jsonb_to_recordset(${rows}::jsonb) as v(id text, deadline timestamptz)
    where ${identities.id} = v.id`);
}

/**
 * Records a rotation: the generation must still be the one the caller read (fencing), the
 * current key package is superseded with its delete_at, the new one becomes current.
 * Returns false, writing nothing, when the generation moved on.
 */
export async function recordRotation(
  tx: Tx,
  input: {
    id: string;
    expectedGeneration: number;
    now: number;
    rotationDeadline: number;
    supersededDeleteAt: number;
    keyPackage: NewKeyPackage;
  },
): Promise<boolean> {
  const generation = input.expectedGeneration + 1;
  const updated = await tx
    .update(identities)
    .set({
      generation,
      rotationDeadline: new Date(input.rotationDeadline),
      lastRotatedAt: new Date(input.now),
      rotationFailures: 0,
      lastError: null,
    })
    .where(and(eq(identities.id, input.id), eq(identities.generation, input.expectedGeneration)))
    .returning({ id: identities.id });
  if (updated.length !== 1) return false;
  await tx
    .update(keyPackages)
    .set({ isCurrent: false, deleteAt: new Date(input.supersededDeleteAt) })
    .where(and(eq(keyPackages.identityId, input.id), eq(keyPackages.isCurrent, true)));
  await insertKeyPackage(tx, input.id, generation, input.now, input.keyPackage);
  return true;
}

/** Notes a failed rotation attempt for the status endpoint; the deadline stays due. */
export async function recordRotationFailure(
  db: Db,
  id: string,
  now: number,
  error: string,
): Promise<void> {
  await db
    .update(identities)
    .set({
      rotationFailures: sql`${identities.rotationFailures} + 1`,
      lastError: error.slice(0, 500),
      lastFailureAt: new Date(now),
    })
    .where(eq(identities.id, id));
}

/** Deletes the superseded key packages whose delete_at has passed; returns how many. */
export async function deleteDueKeyPackages(tx: Tx, id: string, now: number): Promise<number> {
  const deleted = await tx
    .delete(keyPackages)
    .where(
      and(
        eq(keyPackages.identityId, id),
        isNotNull(keyPackages.deleteAt),
        lte(keyPackages.deleteAt, new Date(now)),
      ),
    )
    .returning({ id: keyPackages.id });
  return deleted.length;
}

/** The identity's deletion deadline: the earliest delete_at of its superseded packages. */
export async function nextDeleteAt(tx: Tx | Db, id: string): Promise<number | null> {
  const [row] = await tx
    .select({ at: min(keyPackages.deleteAt) })
    .from(keyPackages)
    .where(and(eq(keyPackages.identityId, id), isNotNull(keyPackages.deleteAt)));
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

/** Turns the identity into a tombstone: key material gone, no deadline. */
export async function tombstone(tx: Tx, id: string, now: number): Promise<void> {
  await tx.delete(keyPackages).where(eq(keyPackages.identityId, id));
  await tx
    .update(identities)
    .set({
      deregisteredAt: new Date(now),
      rotationDeadline: null,
      signaturePublicKey: null,
      signaturePrivateKey: null,
    })
    .where(eq(identities.id, id));
}

/** How many identities are live (reconcile's progress total). */
export async function countLive(db: Db): Promise<number> {
  const [row] = await db
    .select({ n: sql<number>`count(*)::int` })
    .from(identities)
    .where(isNull(identities.deregisteredAt));
  return row?.n ?? 0;
}

/** Which of `ids` are live identities. */
export async function liveAmong(db: Db, ids: readonly string[]): Promise<Set<string>> {
  if (ids.length === 0) return new Set();
  const rows = await db
    .select({ id: identities.id })
    .from(identities)
    .where(and(inArray(identities.id, [...ids]), isNull(identities.deregisteredAt)));
  return new Set(rows.map((r) => r.id));
}

/** Live identities whose deadline passed before `before`, most overdue first (watchdog). */
export async function overdueIdentities(db: Db, before: number, limit: number): Promise<string[]> {
  const rows = await db
    .select({ id: identities.id })
    .from(identities)
    .where(
      and(isNull(identities.deregisteredAt), lte(identities.rotationDeadline, new Date(before))),
    )
    .orderBy(asc(identities.rotationDeadline))
    .limit(limit);
  return rows.map((r) => r.id);
}

export interface IdentityStatus {
  identity: IdentityRow;
  keyPackages: Omit<KeyPackageRow, "privateKey">[];
}

/** Everything the status endpoint shows; private key material is never selected. */
export async function getStatus(db: Db, id: string): Promise<IdentityStatus | undefined> {
  const [identity] = await db
    .select()
    .from(identities)
    .where(and(eq(identities.id, id), isNull(identities.deregisteredAt)));
  if (identity === undefined) return undefined;
  const packages = await db
    .select({
      id: keyPackages.id,
      identityId: keyPackages.identityId,
      generation: keyPackages.generation,
      ref: keyPackages.ref,
      ciphersuite: keyPackages.ciphersuite,
      keyPackage: keyPackages.keyPackage,
      notBefore: keyPackages.notBefore,
      notAfter: keyPackages.notAfter,
      createdAt: keyPackages.createdAt,
      isCurrent: keyPackages.isCurrent,
      deleteAt: keyPackages.deleteAt,
    })
    .from(keyPackages)
    .where(eq(keyPackages.identityId, id))
    .orderBy(asc(keyPackages.generation));
  return { identity, keyPackages: packages };
}
