import { sql } from "drizzle-orm";
import {
  bigint,
  bigserial,
  boolean,
  check,
  customType,
  index,
  integer,
  pgSequence,
  pgTable,
  primaryKey,
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
    /** The basic credential's identity bytes (defaults to the id in UTF-8). */
    credentialIdentity: bytea("credential_identity"),
    signaturePublicKey: bytea("signature_public_key"),
    /** Sealed with the key-encryption key (src/keys/encryption.ts). */
    signaturePrivateKey: bytea("signature_private_key"),
    rotationFailures: integer("rotation_failures").notNull().default(0),
    lastError: text("last_error"),
    lastFailureAt: instant("last_failure_at"),
    createdAt: instant("created_at").notNull().defaultNow(),
    deregisteredAt: instant("deregistered_at"),
    /**
     * Set while a rotation's key package is pending (stored, being published) under a publisher
     * that makes it visible before the promote; cleared by the promote.
     */
    publishingSince: instant("publishing_since"),
    /**
     * The earliest deadline asked for by welcomes acknowledged while `publishing_since` was set:
     * the promote keeps it instead of the full interval (DESIGN.md, "Welcome during publish").
     */
    welcomeDeadline: instant("welcome_deadline"),
    /** How many superseded key packages wait for deletion; kept by a trigger (wakeup census). */
    supersededPackages: integer("superseded_packages").notNull().default(0),
    /**
     * Who holds the private keys: "service" (generated and sealed here) or "device" (generated on
     * the device, which uploads its key packages; nothing private is stored). See
     * docs/device-custody.md.
     */
    custody: text("custody").notNull().default("service"),
    /** A device identity's notification endpoint (signed `rotate` and `delete` notifications). */
    notifyUrl: text("notify_url"),
    /** Since when a device identity's rotation is due and its upload has not come (null: not waiting). */
    awaitingDeviceSince: instant("awaiting_device_since"),
    /**
     * When the rotation wake-up should wake early, at about half the interval, to re-read the
     * published package and check it (null: done for this generation, or none planned).
     */
    verifyAt: instant("verify_at"),
    lastVerifiedAt: instant("last_verified_at"),
    /** Why the last check of the published package failed (null: it passed, or none ran). */
    verifyError: text("verify_error"),
  },
  (t) => [
    index("identities_failing_idx").on(t.lastFailureAt).where(sql`${t.rotationFailures} > 0`),
    index("identities_live_deadline_idx")
      .on(t.rotationDeadline)
      .where(sql`${t.deregisteredAt} is null`),
    check(
      "identities_live_has_deadline",
      sql`${t.deregisteredAt} is not null or ${t.rotationDeadline} is not null`,
    ),
    check("identities_custody", sql`${t.custody} in ('service', 'device')`),
    check(
      "identities_device_has_endpoint",
      sql`${t.custody} <> 'device' or ${t.deregisteredAt} is not null or ${t.notifyUrl} is not null`,
    ),
    index("identities_verify_error_idx")
      .on(t.lastVerifiedAt)
      .where(sql`${t.verifyError} is not null and ${t.deregisteredAt} is null`),
    index("identities_awaiting_device_idx")
      .on(t.awaitingDeviceSince)
      .where(sql`${t.awaitingDeviceSince} is not null and ${t.deregisteredAt} is null`),
  ],
);

/**
 * Key packages of an identity, in one of three states, which the check constraint makes the
 * only representable ones:
 *  - pending: generated and stored, not yet published (not current, no delete_at, no
 *    published_at); at most one per identity, reused by every retry of the publish;
 *  - current: published; exactly one per live identity once its first publish succeeded;
 *  - superseded: waiting for delete_at.
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
    /**
     * Sealed with the key-encryption key (src/keys/encryption.ts); null for a device identity's
     * uploaded package (its private half never leaves the device).
     */
    privateKey: bytea("private_key"),
    notBefore: instant("not_before").notNull(),
    notAfter: instant("not_after").notNull(),
    createdAt: instant("created_at").notNull(),
    isCurrent: boolean("is_current").notNull(),
    publishedAt: instant("published_at"),
    deleteAt: instant("delete_at"),
  },
  (t) => [
    uniqueIndex("key_packages_generation_uq").on(t.identityId, t.generation),
    uniqueIndex("key_packages_current_uq").on(t.identityId).where(sql`${t.isCurrent}`),
    uniqueIndex("key_packages_pending_uq")
      .on(t.identityId)
      .where(sql`not ${t.isCurrent} and ${t.deleteAt} is null`),
    index("key_packages_current_created_idx").on(t.createdAt).where(sql`${t.isCurrent}`),
    index("key_packages_current_not_after_idx").on(t.notAfter).where(sql`${t.isCurrent}`),
    index("key_packages_delete_at_idx")
      .on(t.identityId, t.deleteAt)
      .where(sql`${t.deleteAt} is not null`),
    // The watchdog's overdue-deletion scan: a range scan that returns only overdue packages.
    index("key_packages_overdue_delete_idx").on(t.deleteAt).where(sql`${t.deleteAt} is not null`),
    check(
      "key_packages_state",
      sql`(${t.isCurrent} and ${t.deleteAt} is null and ${t.publishedAt} is not null)
        or (not ${t.isCurrent} and ${t.deleteAt} is not null)
        or (not ${t.isCurrent} and ${t.deleteAt} is null and ${t.publishedAt} is null)`,
    ),
  ],
);

/**
 * Init keys a device identity has used (SHA-256 digests, never the keys): an upload reusing one is
 * refused (KP_INIT_KEY_REUSED). Kept after the key package itself is deleted.
 */
export const deviceInitKeys = pgTable(
  "device_init_keys",
  {
    identityId: text("identity_id")
      .notNull()
      .references(() => identities.id, { onDelete: "cascade" }),
    digest: text("digest").notNull(),
    seenAt: instant("seen_at").notNull(),
  },
  (t) => [primaryKey({ columns: [t.identityId, t.digest] })],
);

/**
 * The wakeup census: how many wake-up jobs Redis should hold per queue, maintained by triggers in
 * the same transactions that change it (drizzle/0003_wakeup_census.sql; slots by md5 since 0005, so
 * that a queue shard is a class of slots, src/queue/layout.ts), spread over slots so
 * that concurrent commits rarely meet on one row. The watchdog compares its sums with the
 * queues' job counts to find lost wake-ups at a cost that does not grow with the identities.
 */
export const wakeupCensus = pgTable(
  "wakeup_census",
  {
    kind: text("kind").notNull(),
    slot: integer("slot").notNull(),
    expected: bigint("expected", { mode: "number" }).notNull().default(0),
  },
  (t) => [primaryKey({ columns: [t.kind, t.slot] })],
);

/**
 * The arm fence (DESIGN.md, "Fenced arms"): every change to wake-ups made under identities' row
 * locks carries a value taken from this sequence after the locks were granted; the arm script
 * refuses a change older than the last one applied to that job. A Redis write that timed out on
 * the client, or was resent after a reconnect, and lands after a newer one changes nothing.
 */
export const armSeq = pgSequence("arm_seq");

export type IdentityRow = typeof identities.$inferSelect;
export type KeyPackageRow = typeof keyPackages.$inferSelect;
