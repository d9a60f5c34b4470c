import { and, gt, sql } from "drizzle-orm";
import type { Tx } from "./client.js";
import { keyPackages } from "./schema.js";

/**
 * When each identity's key packages created after `since` were created: its rotations in that
 * window (superseded packages are kept DELETION_GRACE, which the cap requires to be an hour or
 * more). Served by key_packages_generation_uq (identity_id first).
 */
export async function recentRotations(
  tx: Tx,
  ids: readonly string[],
  since: number,
): Promise<Map<string, number[]>> {
  const byId = new Map<string, number[]>();
  if (ids.length === 0) return byId;
  const rows = await tx
    .select({ identityId: keyPackages.identityId, createdAt: keyPackages.createdAt })
    .from(keyPackages)
    .where(
      and(
        sql`${keyPackages.identityId} = any(${`{${ids.map((id) => `"${id}"`).join(",")}}`}::text[])`,
        gt(keyPackages.createdAt, new Date(since)),
      ),
    );
  for (const row of rows) {
    const list = byId.get(row.identityId) ?? [];
    list.push(row.createdAt.getTime());
    byId.set(row.identityId, list);
  }
  return byId;
}
