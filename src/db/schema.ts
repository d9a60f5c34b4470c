import { sql } from "drizzle-orm";
import {
  bigserial,
  boolean,
  check,
  customType,
  index,
  integer,
  pgTable,
  text,
  timestamp,
  uniqueIndex,
} from "drizzle-orm/pg-core";

const bytea = customType<{ data: Uint8Array; driverData: Buffer }>({
  dataType: () => "bytea",
  toDriver: (value) => Buffer.from(value.buffer, value.byteOffset, value.byteLength),
  fromDriver: (value) => new Uint8Array(value),
});

const instant = (name: string) =>
  timestamp(name, { withTimezone: true, precision: 3, mode: "date" });

/**
 * One row per identity (MLS installation). The row is the source of truth for the rotation
 * deadline and the lock that serialises everything done to the identity, including the Redis
 * wake-ups (see DESIGN.md). Deregistration keeps a tombstone row (deregistered_at set, keys
 * gone) so that there is always a row to lock.
 */
export const identities = pgTable(
  "identities",
  {
    id: text("id").primaryKey(),
    /** Fencing number: bumped by every rotation, so one deadline yields at most one rotation. */
    generation: integer("generation").notNull().default(0),
    /** When the next rotation is due; null only on a tombstone. */
    rotationDeadline: instant("rotation_deadline"),
    lastRotatedAt: instant("last_rotated_at"),
    signaturePublicKey: bytea("signature_public_key"),
    signaturePrivateKey: bytea("signature_private_key"),
    rotationFailures: integer("rotation_failures").notNull().default(0),
    lastError: text("last_error"),
    lastFailureAt: instant("last_failure_at"),
    createdAt: instant("created_at").notNull().defaultNow(),
    deregisteredAt: instant("deregistered_at"),
  },
  (t) => [
    index("identities_live_deadline_idx")
      .on(t.rotationDeadline)
      .where(sql`${t.deregisteredAt} is null`),
    check(
      "identities_live_has_deadline",
      sql`${t.deregisteredAt} is not null or ${t.rotationDeadline} is not null`,
    ),
  ],
);

/**
 * Key packages of an identity: exactly one current, the superseded ones waiting for delete_at.
 * The check constraint makes "neither current nor scheduled for deletion" unrepresentable.
 */
export const keyPackages = pgTable(
  "key_packages",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    identityId: text("identity_id")
      .notNull()
      .references(() => identities.id, { onDelete: "cascade" }),
    generation: integer("generation").notNull(),
    ref: text("ref").notNull(),
    ciphersuite: text("ciphersuite").notNull(),
    keyPackage: bytea("key_package").notNull(),
    privateKey: bytea("private_key").notNull(),
    notBefore: instant("not_before").notNull(),
    notAfter: instant("not_after").notNull(),
    createdAt: instant("created_at").notNull(),
    isCurrent: boolean("is_current").notNull(),
    deleteAt: instant("delete_at"),
  },
  (t) => [
    uniqueIndex("key_packages_generation_uq").on(t.identityId, t.generation),
    uniqueIndex("key_packages_current_uq").on(t.identityId).where(sql`${t.isCurrent}`),
    index("key_packages_delete_at_idx")
      .on(t.identityId, t.deleteAt)
      .where(sql`${t.deleteAt} is not null`),
    check(
      "key_packages_current_xor_delete_at",
      sql`(${t.isCurrent} and ${t.deleteAt} is null) or (not ${t.isCurrent} and ${t.deleteAt} is not null)`,
    ),
  ],
);

export type IdentityRow = typeof identities.$inferSelect;
export type KeyPackageRow = typeof keyPackages.$inferSelect;
