import { and, asc, eq, getTableColumns, gt, isNotNull, isNull, lte, sql } from "drizzle-orm";
import type { AnyPgColumn } from "drizzle-orm/pg-core";
import type { LiveDeadline, LockedDeadline, LockedIdentity, NewIdentity } from "../core/ports.js";
import type { Db, Tx } from "./client.js";
import { identities, type IdentityRow, keyPackages, wakeupCensus } from "./schema.js";

export type { LockedIdentity };

const toMs = (d: Date | null): number | null => (d === null ? null : d.getTime());

/** Postgres' clock as epoch ms, as a select column. */
const dbNow = sql<number>`floor(extract(epoch from clock_timestamp()) * 1000)::float8`.mapWith(
  Number,
);

function toLocked(row: IdentityRow & { now: number }, fence: number): LockedIdentity {
  return {
    id: row.id,
    generation: row.generation,
    rotationDeadline: toMs(row.rotationDeadline),
    deregistered: row.deregisteredAt !== null,
    credentialIdentity: row.credentialIdentity,
    signaturePublicKey: row.signaturePublicKey,
    signaturePrivateKey: row.signaturePrivateKey,
    custody: row.custody === "device" ? "device" : "service",
    notifyUrl: row.notifyUrl,
    awaitingDeviceSince: toMs(row.awaitingDeviceSince),
    verifyAt: toMs(row.verifyAt),
    publishing: row.publishingSince !== null,
    welcomeDeadline: toMs(row.welcomeDeadline),
    now: row.now,
    fence,
  };
}

/** Takes the identity's row lock (the per-identity mutex of DESIGN.md) and reads it. */
export async function lockIdentity(tx: Tx, id: string): Promise<LockedIdentity | undefined> {
  const [row] = await tx
    .select({ ...getTableColumns(identities), now: dbNow })
    .from(identities)
    .where(eq(identities.id, id))
    .for("update");
  return row === undefined ? undefined : toLocked(row, await nextArmFence(tx));
}

/**
 * A value of the arm fence (DESIGN.md, "Fenced arms"). Taken after the caller's row locks were
 * granted (a statement of its own, run after the locking one), so that of two holders of one
 * identity's lock, the later holder's value is the larger.
 */
export async function nextArmFence(db: Db | Tx): Promise<number> {
  const [row] = await db.execute<{ fence: number }>(
    sql`select nextval('arm_seq')::float8 as fence`,
  );
  return Number(row?.fence);
}

/**
 * Store.advanceArmFence, in a transaction of its own or the caller's. Advancers take turns (a
 * transaction-scoped advisory lock, taken after any row locks the caller holds, and held by no one
 * who then waits for a row), so one never sets the sequence back below another's jump; the jump
 * leaves room for the fences other sessions draw between the read and the setval (one statement),
 * so nextval never repeats a value.
 */
export async function advanceArmFence(tx: Tx, high: number): Promise<number | undefined> {
  await tx.execute(sql`select pg_advisory_xact_lock(hashtext('kp_rotor_arm_seq_advance'))`);
  const rows = await tx.execute<{ was: number }>(
    sql`select last_value::float8 as was, setval('arm_seq', ${high}::bigint + 1000000)
        from arm_seq where last_value < ${high}::bigint`,
  );
  const was = rows[0]?.was;
  return was === undefined ? undefined : Number(was);
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

/**
 * Locks many identities in id order and reads only their deadlines (welcome batches: no key
 * material fetched; one array parameter instead of one parameter per id).
 */
export async function lockDeadlines(tx: Tx, ids: readonly string[]): Promise<LockedDeadline[]> {
  if (ids.length === 0) return [];
  const rows = await tx
    .select({
      id: identities.id,
      rotationDeadline: identities.rotationDeadline,
      deregisteredAt: identities.deregisteredAt,
      publishingSince: identities.publishingSince,
      now: dbNow,
    })
    .from(identities)
    .where(sql`${identities.id} = any(${toTextArray(ids)})`)
    .orderBy(asc(identities.id))
    .for("update");
  const fence = rows.length === 0 ? 0 : await nextArmFence(tx);
  return rows.map((r) => ({
    id: r.id,
    rotationDeadline: toMs(r.rotationDeadline),
    deregistered: r.deregisteredAt !== null,
    publishing: r.publishingSince !== null,
    now: r.now,
    fence,
  }));
}

/** A text[] parameter (drizzle would otherwise expand an array into one parameter per item). */
const toTextArray = (ids: readonly string[]) =>
  sql`${`{${ids.map(quoteArrayItem).join(",")}}`}::text[]`;
const quoteArrayItem = (id: string) => `"${id.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`;

/** Live identities after `afterId` in id order (reconcile's walk, keyset-paginated). */
const liveAfter = (afterId: string | null) =>
  and(isNull(identities.deregisteredAt), afterId === null ? undefined : gt(identities.id, afterId));

/**
 * Locks the next page of live identities after `afterId` and reads only their rotation
 * deadlines (and a pending check), as epoch ms (reconcile's walk: no key material, no Date per row).
 */
export async function lockLiveDeadlines(
  tx: Tx,
  afterId: string | null,
  limit: number,
): Promise<LiveDeadline[]> {
  const rows = await tx
    .select({
      id: identities.id,
      rotationDeadline: epochMs(identities.rotationDeadline),
      verifyAt: epochMs(identities.verifyAt),
      now: dbNow,
    })
    .from(identities)
    .where(liveAfter(afterId))
    .orderBy(asc(identities.id))
    .limit(limit)
    .for("update");
  const fence = rows.length === 0 ? 0 : await nextArmFence(tx);
  return rows.map((r) => ({ ...r, fence }));
}

/**
 * The deletion deadline (earliest delete_at of the superseded key packages) of each of `ids`
 * that has one, as epoch ms; run under their row locks (reconcile's walk).
 */
export async function nextDeleteAtsOf(
  tx: Tx,
  ids: readonly string[],
): Promise<Map<string, number>> {
  if (ids.length === 0) return new Map();
  const rows = await tx
    .select({ id: keyPackages.identityId, at: sql<number>`min(${epochMs(keyPackages.deleteAt)})` })
    .from(keyPackages)
    .where(
      and(
        sql`${keyPackages.identityId} = any(${toTextArray(ids)})`,
        isNotNull(keyPackages.deleteAt),
      ),
    )
    .groupBy(keyPackages.identityId);
  return new Map(rows.map((r) => [r.id, Number(r.at)]));
}

/** A timestamptz column as epoch milliseconds (a float8 that holds them exactly). */
const epochMs = (column: AnyPgColumn) =>
  sql<number | null>`round(extract(epoch from ${column}) * 1000)::float8`.mapWith((v) =>
    v === null ? null : Number(v),
  );

/**
 * Creates (or revives a tombstoned) identity without a key package: its first rotation, due at
 * `rotationDeadline`, generates and publishes one.
 */
export async function insertIdentity(tx: Tx, input: NewIdentity): Promise<void> {
  const values = {
    rotationDeadline: new Date(input.rotationDeadline),
    lastRotatedAt: null,
    credentialIdentity: input.credentialIdentity,
    signaturePublicKey: input.signaturePublicKey,
    signaturePrivateKey: input.signaturePrivateKey,
    rotationFailures: 0,
    lastError: null,
    lastFailureAt: null,
    deregisteredAt: null,
    publishingSince: null,
    welcomeDeadline: null,
    custody: input.custody,
    notifyUrl: input.notifyUrl,
    awaitingDeviceSince: null,
  };
  await tx
    .insert(identities)
    .values({ id: input.id, createdAt: new Date(input.now), ...values })
    .onConflictDoUpdate({ target: identities.id, set: values });
}

/** Moves many rotation deadlines to one value in one statement (welcome batches). */
export async function setRotationDeadlines(
  tx: Tx,
  ids: readonly string[],
  deadline: number,
): Promise<void> {
  if (ids.length === 0) return;
  await tx
    .update(identities)
    .set({ rotationDeadline: new Date(deadline) })
    .where(sql`${identities.id} = any(${toTextArray(ids)})`);
}

/**
 * Welcomes acknowledged while a rotation's key package is being published: the promote keeps
 * the earliest of these deadlines instead of the full interval (DESIGN.md, "Welcome during
 * publish"). The caller holds the row locks.
 */
export async function recordWelcomesDuringPublish(
  tx: Tx,
  ids: readonly string[],
  deadline: number,
): Promise<void> {
  if (ids.length === 0) return;
  const at = new Date(deadline).toISOString();
  await tx
    .update(identities)
    .set({ welcomeDeadline: sql`least(${identities.welcomeDeadline}, ${at}::timestamptz)` })
    .where(sql`${identities.id} = any(${toTextArray(ids)})`);
}

/** Marks the identity as publishing a pending key package (the caller holds its lock). */
export async function markPublishing(tx: Tx, id: string, now: number): Promise<void> {
  await tx
    .update(identities)
    .set({
      publishingSince: sql`coalesce(${identities.publishingSince}, ${new Date(now).toISOString()}::timestamptz)`,
    })
    .where(eq(identities.id, id));
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
      // A NUL byte would make Postgres refuse the whole update (text cannot hold one).
      lastError: error.replaceAll("\u0000", " ").slice(0, 500),
      lastFailureAt: new Date(now),
    })
    .where(eq(identities.id, id));
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
      publishingSince: null,
      welcomeDeadline: null,
      notifyUrl: null,
      awaitingDeviceSince: null,
      // A later registration starts a new life: no read-back state carries over.
      verifyAt: null,
      lastVerifiedAt: null,
      verifyError: null,
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

/** Store.liveIdAfter: keyset, no OFFSET (the primary key's index, `count` entries read). */
export async function liveIdAfter(
  db: Db,
  afterId: string | null,
  count: number,
): Promise<string | undefined> {
  const page = db
    .select({ id: identities.id })
    .from(identities)
    .where(liveAfter(afterId))
    .orderBy(asc(identities.id))
    .limit(count)
    .as("page");
  const [row] = await db
    .select({ last: sql<string | null>`max(${page.id})`, n: sql<number>`count(*)::int` })
    .from(page);
  return row && row.n === count && row.last !== null ? row.last : undefined;
}

/** Which of `ids` are live identities. */
export async function liveAmong(db: Db, ids: readonly string[]): Promise<Set<string>> {
  if (ids.length === 0) return new Set();
  const rows = await db
    .select({ id: identities.id })
    .from(identities)
    .where(
      and(sql`${identities.id} = any(${toTextArray(ids)})`, isNull(identities.deregisteredAt)),
    );
  return new Set(rows.map((r) => r.id));
}

/**
 * Live identities whose deadline passed before `before`, most overdue first, after the
 * (deadline, id) cursor if given (watchdog, and reconcile's overdue-first pass).
 */
export async function overdueIdentities(
  db: Db,
  before: number,
  limit: number,
  after?: { deadline: number; id: string },
): Promise<{ id: string; deadline: number }[]> {
  const rows = await db
    .select({ id: identities.id, deadline: identities.rotationDeadline })
    .from(identities)
    .where(
      and(
        isNull(identities.deregisteredAt),
        lte(identities.rotationDeadline, new Date(before)),
        after === undefined
          ? undefined
          : sql`(${identities.rotationDeadline}, ${identities.id}) > (${new Date(after.deadline).toISOString()}::timestamptz, ${after.id})`,
      ),
    )
    .orderBy(asc(identities.rotationDeadline), asc(identities.id))
    .limit(limit);
  return rows.map((r) => ({ id: r.id, deadline: r.deadline?.getTime() ?? 0 }));
}

/**
 * Identities whose earliest superseded key package passed its delete_at before `before`, in
 * delete_at order, one page after the (deleteAt, package id) cursor: the watchdog's backstop for
 * lost deletion wake-ups. A range scan of key_packages_overdue_delete_idx.
 */
export async function overdueDeletions(
  db: Db,
  before: number,
  limit: number,
  after?: { deleteAt: number; packageId: number },
): Promise<{ identityId: string; deleteAt: number; packageId: number }[]> {
  const rows = await db
    .select({
      identityId: keyPackages.identityId,
      deleteAt: epochMs(keyPackages.deleteAt),
      packageId: keyPackages.id,
    })
    .from(keyPackages)
    .where(
      and(
        isNotNull(keyPackages.deleteAt),
        lte(keyPackages.deleteAt, new Date(before)),
        after === undefined
          ? undefined
          : sql`(${keyPackages.deleteAt}, ${keyPackages.id}) > (${new Date(after.deleteAt).toISOString()}::timestamptz, ${after.packageId})`,
      ),
    )
    .orderBy(asc(keyPackages.deleteAt), asc(keyPackages.id))
    .limit(limit);
  return rows.map((r) => ({ ...r, deleteAt: Number(r.deleteAt) }));
}

/**
 * The watchdog's one statement per run: the wakeup census, and whether any live identity's
 * rotation deadline or any superseded package's delete_at passed before `before` (two index
 * probes that read one entry each).
 */
export async function watchdogProbe(
  db: Db,
  before: number,
): Promise<{
  rotation: number;
  deletion: number;
  overdueRotation: boolean;
  overdueDeletion: boolean;
}> {
  const at = new Date(before).toISOString();
  const [row] = await db.execute<{
    rotation: number;
    deletion: number;
    overdue_rotation: boolean;
    overdue_deletion: boolean;
  }>(sql`
    select
      coalesce((select sum(expected) from ${wakeupCensus} where kind = 'rotation'), 0)::float8 as rotation,
      coalesce((select sum(expected) from ${wakeupCensus} where kind = 'deletion'), 0)::float8 as deletion,
      exists (select 1 from ${identities} where deregistered_at is null
        and rotation_deadline <= ${at}::timestamptz) as overdue_rotation,
      exists (select 1 from ${keyPackages} where delete_at is not null
        and delete_at <= ${at}::timestamptz) as overdue_deletion`);
  return {
    rotation: Number(row?.rotation ?? 0),
    deletion: Number(row?.deletion ?? 0),
    overdueRotation: row?.overdue_rotation === true,
    overdueDeletion: row?.overdue_deletion === true,
  };
}

/**
 * The wakeup census per queue shard: shard s of `shards` holds the census slots with
 * slot % shards = s (src/queue/layout.ts, shardOf).
 */
export async function censusPerShard(
  db: Db,
  shards: number,
): Promise<Record<"rotation" | "deletion", number[]>> {
  const rows = await db.execute<{ kind: string; shard: number; expected: number }>(sql`
    select kind, slot % ${shards}::integer as shard, sum(expected)::float8 as expected
    from ${wakeupCensus} group by 1, 2`);
  const out = {
    rotation: new Array<number>(shards).fill(0),
    deletion: new Array<number>(shards).fill(0),
  };
  for (const row of rows) {
    if (row.kind === "rotation" || row.kind === "deletion") {
      out[row.kind][Number(row.shard)] = Number(row.expected);
    }
  }
  return out;
}

/** The identity row for the status endpoint (no private key material). */
export async function getIdentity(db: Db, id: string) {
  const [identity] = await db
    .select({
      id: identities.id,
      generation: identities.generation,
      rotationDeadline: identities.rotationDeadline,
      lastRotatedAt: identities.lastRotatedAt,
      rotationFailures: identities.rotationFailures,
      lastError: identities.lastError,
      lastFailureAt: identities.lastFailureAt,
      createdAt: identities.createdAt,
      custody: identities.custody,
      awaitingDeviceSince: identities.awaitingDeviceSince,
      verifyError: identities.verifyError,
      lastVerifiedAt: identities.lastVerifiedAt,
    })
    .from(identities)
    .where(and(eq(identities.id, id), isNull(identities.deregisteredAt)));
  return identity === undefined
    ? undefined
    : {
        ...identity,
        custody: identity.custody === "device" ? ("device" as const) : ("service" as const),
      };
}
