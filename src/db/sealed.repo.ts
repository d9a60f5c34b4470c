import { and, asc, count, eq, gt, isNotNull, sql } from "drizzle-orm";
import type { Db, Tx } from "./client.js";
import { identities, keyPackages } from "./schema.js";

/** A sealed blob and the row it belongs to (src/keys/encryption.ts names what it binds). */
export interface SealedBlob {
  table: "identities" | "key_packages";
  /** The key_packages row id; the identity id for a signature key. */
  rowId: string | number;
  identityId: string;
  /** The key package a blob belongs to; absent for a signature key. */
  binding?: { generation: number; ref: string };
  sealed: Uint8Array;
}

/** The key id a sealed column names (bytes 3 to 2 + byte 2), as text, in SQL. */
const keyIdOf = (column: typeof identities.signaturePrivateKey | typeof keyPackages.privateKey) =>
  sql<string>`convert_from(substring(${column} from 3 for get_byte(${column}, 1)), 'SQL_ASCII')`;

/** How many sealed blobs name each key id (a full scan of both tables: run it rarely). */
export async function countByKeyId(db: Db): Promise<Map<string, number>> {
  const [signatures, packages] = await Promise.all([
    db
      .select({ keyId: keyIdOf(identities.signaturePrivateKey), n: count() })
      .from(identities)
      .where(isNotNull(identities.signaturePrivateKey))
      .groupBy(sql`1`),
    db
      .select({ keyId: keyIdOf(keyPackages.privateKey), n: count() })
      .from(keyPackages)
      // A device identity's uploaded package has no private half here: nothing sealed to count.
      .where(isNotNull(keyPackages.privateKey))
      .groupBy(sql`1`),
  ]);
  const counts = new Map<string, number>();
  for (const { keyId, n } of [...signatures, ...packages]) {
    counts.set(keyId, (counts.get(keyId) ?? 0) + n);
  }
  return counts;
}

/** Identities that hold a sealed signature key. */
export async function countSealedIdentities(db: Db): Promise<number> {
  const [row] = await db
    .select({ n: count() })
    .from(identities)
    .where(isNotNull(identities.signaturePrivateKey));
  return row?.n ?? 0;
}

/**
 * Locks the next `limit` identities after `after` (in id order, like every batch) that hold
 * sealed material, and returns their sealed blobs: signature keys and key packages.
 */
export async function lockSealedPage(
  tx: Tx,
  after: string,
  limit: number,
): Promise<{ ids: string[]; blobs: SealedBlob[] }> {
  const rows = await tx
    .select({ id: identities.id, sealed: identities.signaturePrivateKey })
    .from(identities)
    .where(and(gt(identities.id, after), isNotNull(identities.signaturePrivateKey)))
    .orderBy(asc(identities.id))
    .limit(limit)
    .for("update");
  const ids = rows.map((r) => r.id);
  if (ids.length === 0) return { ids, blobs: [] };
  const packages = await tx
    .select({
      id: keyPackages.id,
      identityId: keyPackages.identityId,
      generation: keyPackages.generation,
      ref: keyPackages.ref,
      sealed: keyPackages.privateKey,
    })
    .from(keyPackages)
    .where(
      sql`${keyPackages.identityId} = any(${`{${ids.map((id) => `"${id}"`).join(",")}}`}::text[])`,
    )
    .orderBy(asc(keyPackages.id))
    .for("update");
  const blobs: SealedBlob[] = rows.map((r) => ({
    table: "identities",
    rowId: r.id,
    identityId: r.id,
    sealed: r.sealed as Uint8Array,
  }));
  for (const p of packages) {
    // A device identity's uploaded package has no private half here.
    if (p.sealed === null) continue;
    blobs.push({
      table: "key_packages",
      rowId: p.id,
      identityId: p.identityId,
      binding: { generation: p.generation, ref: p.ref },
      sealed: p.sealed,
    });
  }
  return { ids, blobs };
}

/** Replaces one sealed blob (its row is locked by lockSealedPage). */
export async function replaceSealed(tx: Tx, blob: SealedBlob, sealed: Uint8Array): Promise<void> {
  if (blob.table === "identities") {
    await tx
      .update(identities)
      .set({ signaturePrivateKey: sealed })
      .where(eq(identities.id, blob.rowId as string));
  } else {
    await tx
      .update(keyPackages)
      .set({ privateKey: sealed })
      .where(eq(keyPackages.id, blob.rowId as number));
  }
}
