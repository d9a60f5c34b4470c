import type { NewKeyPackage, PendingKeyPackage } from "../../src/core/ports.js";
import type { World } from "./world.js";

/** The rows of the in-memory store and the schema's constraints on them. */

export interface IdentityRow {
  id: string;
  generation: number;
  rotationDeadline: number | null;
  deregisteredAt: number | null;
  signed: boolean;
  publishingSince: number | null;
  welcomeDeadline: number | null;
  rotationFailures: number;
  custody: "service" | "device";
  notifyUrl: string | null;
  awaitingDeviceSince: number | null;
  verifyAt: number | null;
  /** Init-key digests of the identity's uploads (replaced, never mutated: rows are cloned shallowly). */
  initKeys: readonly string[];
}

export interface PackageRow {
  id: number;
  identityId: string;
  generation: number;
  ref: string;
  isCurrent: boolean;
  publishedAt: number | null;
  deleteAt: number | null;
  createdAt: number;
  /** World.seq when the package was generated (a welcome honoured by it came before). */
  createdSeq: number;
  kp: NewKeyPackage;
}

/** One identity's rows as a transaction sees them. */
export interface Slice {
  row: IdentityRow | undefined;
  packages: PackageRow[];
}

export class ConstraintError extends Error {
  override name = "ConstraintError";
}

export const clone = (s: Slice): Slice => ({
  row: s.row && { ...s.row },
  packages: s.packages.map((p) => ({ ...p })),
});

export const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
export const isLive = (row: IdentityRow | undefined) =>
  row !== undefined && row.deregisteredAt === null;
export const liveRows = (world: World) => [...world.db.identities.values()].filter(isLive);

export function tombstoneRow(id: string, deregisteredAt: number | null): IdentityRow {
  return {
    id,
    generation: 0,
    rotationDeadline: null,
    deregisteredAt,
    signed: false,
    publishingSince: null,
    welcomeDeadline: null,
    rotationFailures: 0,
    custody: "service",
    notifyUrl: null,
    awaitingDeviceSince: null,
    verifyAt: null,
    initKeys: [],
  };
}

export const earliest = (packages: readonly PackageRow[]): number | null =>
  packages.reduce<number | null>(
    (min, p) => (p.deleteAt !== null && (min === null || p.deleteAt < min) ? p.deleteAt : min),
    null,
  );

export const asPending = (p: PackageRow): PendingKeyPackage => ({
  ...p.kp,
  id: p.id,
  generation: p.generation,
});

/** The schema's constraints on one identity's rows (raised at the statement, as Postgres does). */
export function checkConstraints(id: string, slice: Slice): void {
  const row = slice.row;
  if (row && row.deregisteredAt === null && row.rotationDeadline === null) {
    throw new ConstraintError(`identities_live_has_deadline (${id})`);
  }
  const gens = new Set<number>();
  let current = 0;
  let pending = 0;
  for (const p of slice.packages) {
    if (gens.has(p.generation)) throw new ConstraintError(`key_packages_generation_uq (${id})`);
    gens.add(p.generation);
    if (p.isCurrent) current++;
    if (!p.isCurrent && p.deleteAt === null) pending++;
    const ok =
      (p.isCurrent && p.deleteAt === null && p.publishedAt !== null) ||
      (!p.isCurrent && p.deleteAt !== null) ||
      (!p.isCurrent && p.deleteAt === null && p.publishedAt === null);
    if (!ok) throw new ConstraintError(`key_packages_state (${id})`);
  }
  if (current > 1) throw new ConstraintError(`key_packages_current_uq (${id})`);
  if (pending > 1) throw new ConstraintError(`key_packages_pending_uq (${id})`);
  if (slice.packages.length > 0 && row === undefined) throw new ConstraintError("key_packages fk");
}
