import type { ArmAction, JobView, RotationState } from "./deadlines.js";

/**
 * The ports the services work through (STYLE.md, "Ports in core"): Store (Postgres, the truth),
 * Wakeups (the Redis queues), Publisher and Clock. The services see nothing else of the world,
 * so the same code runs on the production adapters (src/db/store.ts, src/queue/wakeup-queues.ts,
 * src/keys/publisher.ts) and on the in-memory ones of the model test (test/model/). Nothing here
 * does I/O. Times are epoch milliseconds.
 */

/** The two wake-up queues. */
export const WAKEUP_KINDS = ["rotation", "deletion"] as const;
export type WakeupKind = (typeof WAKEUP_KINDS)[number];

/** The process's clock (epoch ms). The store's clock (LockedIdentity.now) decides what is due. */
export type Clock = () => number;

/**
 * Who holds an identity's private keys: the service (it generates and seals them) or the device
 * (it uploads its key packages; nothing private reaches the service). docs/device-custody.md.
 */
export const CUSTODIES = ["service", "device"] as const;
export type Custody = (typeof CUSTODIES)[number];

/** The identity as read under its row lock. */
export interface LockedIdentity extends RotationState {
  id: string;
  generation: number;
  custody: Custody;
  /** A device identity's notification endpoint. */
  notifyUrl: string | null;
  /** Since when a device identity's rotation is due without an upload; null when not waiting. */
  awaitingDeviceSince: number | null;
  /** When the rotation wake-up wakes early to check the published package (null: none). */
  verifyAt: number | null;
  credentialIdentity: Uint8Array | null;
  signaturePublicKey: Uint8Array | null;
  /** Sealed; open with the keyring. */
  signaturePrivateKey: Uint8Array | null;
  /** A rotation's key package is being published (pending, visible before its promote). */
  publishing: boolean;
  /** The earliest deadline asked for by welcomes acknowledged while publishing. */
  welcomeDeadline: number | null;
  /**
   * The arm fence, taken after the lock was granted (DESIGN.md, "Fenced arms"): pass it to every
   * arm made under this lock. Of two holders of one identity's lock, the later one's is larger.
   */
  fence: number;
  /**
   * The store's clock when the row was read: the one clock that decides what is due and stamps
   * deadlines (DESIGN.md, "Time"). Never later than the moment the lock was granted.
   */
  now: number;
}

/** An identity's deadline as a batch lock reads it (welcomes, overdue pages). */
export interface LockedDeadline extends RotationState {
  id: string;
  publishing: boolean;
  now: number;
  /** The arm fence of the whole batch, taken after all its locks were granted. */
  fence: number;
}

/** A live identity's deadlines as reconcile's walk locks them. */
export interface LiveDeadline {
  id: string;
  rotationDeadline: number | null;
  /** A pending mid-interval check of the published package (the rotation wake-up wakes early). */
  verifyAt: number | null;
  now: number;
  fence: number;
}

/** A new key package as a rotation hands it to the store; privateKey is already sealed. */
export interface NewKeyPackage {
  ref: string;
  ciphersuite: string;
  keyPackage: Uint8Array;
  /** Sealed private half; null for a device's upload (its private keys never leave it). */
  privateKey: Uint8Array | null;
  notBefore: Date;
  notAfter: Date;
}

export interface PendingKeyPackage extends NewKeyPackage {
  id: number;
  generation: number;
}

/** The fenced write of a promote (supersedeCurrent). */
export interface RotationWrite {
  identityId: string;
  /** The generation the rotation installs; the identity must still be at generation - 1. */
  generation: number;
  now: number;
  rotationDeadline: number;
  supersededDeleteAt: number;
  /** The mid-interval check of the published package (null: none). */
  verifyAt?: number | null;
}

export interface NewIdentity {
  id: string;
  rotationDeadline: number;
  now: number;
  credentialIdentity: Uint8Array;
  /** For a device identity: the signature key it registered, if any (uploads must use it). */
  signaturePublicKey: Uint8Array | null;
  /** Sealed; null for a device identity. */
  signaturePrivateKey: Uint8Array | null;
  custody: Custody;
  notifyUrl: string | null;
}

/**
 * The statements of one transaction. Every method that reads or writes an identity needs that
 * identity's row lock, taken by one of the lock methods of the same transaction (DESIGN.md, "One
 * lock per identity"). Statements may be issued side by side; the store runs them in call order.
 */
export interface StoreTx {
  lockIdentity(id: string): Promise<LockedIdentity | undefined>;
  /** Like lockIdentity, leaving a tombstone first where there is no row. */
  lockOrTombstone(id: string): Promise<LockedIdentity>;
  /** Locks many identities in id order; unknown ids are left out. */
  lockDeadlines(ids: readonly string[]): Promise<LockedDeadline[]>;
  /** Locks the next page of live identities after `afterId`, in id order. */
  lockLiveDeadlines(afterId: string | null, limit: number): Promise<LiveDeadline[]>;
  /** Earliest delete_at of each of `ids` that has a superseded package. */
  nextDeleteAtsOf(ids: readonly string[]): Promise<Map<string, number>>;
  /** Store.advanceArmFence on this transaction's connection (the caller holds row locks). */
  advanceArmFence(high: number): Promise<number | undefined>;
  /** A fresh arm fence, drawn now (after this transaction's locks). */
  nextArmFence(): Promise<number>;
  /** Creates or revives an identity (no key package yet). */
  insertIdentity(input: NewIdentity): Promise<void>;
  setRotationDeadlines(ids: readonly string[], deadline: number): Promise<void>;
  /** Keeps the earliest of `deadline` and the recorded welcome deadline (publish window). */
  recordWelcomesDuringPublish(ids: readonly string[], deadline: number): Promise<void>;
  markPublishing(id: string, now: number): Promise<void>;
  /** Key material deleted, deadline cleared, deregistered. */
  tombstone(id: string, now: number): Promise<void>;
  findPending(identityId: string): Promise<PendingKeyPackage | undefined>;
  insertPending(
    identityId: string,
    generation: number,
    now: number,
    kp: NewKeyPackage,
  ): Promise<PendingKeyPackage>;
  deletePending(packageId: number): Promise<void>;
  /** Fenced on the generation; returns the deletion deadline as it will be committed. */
  supersedeCurrent(input: RotationWrite): Promise<{ fenced: boolean; nextDeleteAt: number | null }>;
  markCurrent(packageId: number, now: number): Promise<void>;
  insertCurrent(
    identityId: string,
    generation: number,
    now: number,
    kp: NewKeyPackage,
  ): Promise<number>;
  /** supersedeCurrent, then markCurrent; null when fenced (nothing written). */
  promotePending(input: {
    identityId: string;
    pending: PendingKeyPackage;
    now: number;
    rotationDeadline: number;
    supersededDeleteAt: number;
    verifyAt?: number | null;
  }): Promise<{ nextDeleteAt: number | null } | null>;
  /** Deletes superseded packages whose delete_at <= now; returns how many. */
  deleteDueKeyPackages(identityId: string, now: number): Promise<number>;
  nextDeleteAt(identityId: string): Promise<number | null>;
  hasCurrent(identityId: string): Promise<boolean>;
  /** When each of `ids`' key packages created after `since` were created (its rotations). */
  recentRotations(ids: readonly string[], since: number): Promise<Map<string, number[]>>;
  /** Digests of every init key the identity's uploads used (device custody). */
  seenInitKeys(identityId: string): Promise<Set<string>>;
  recordInitKey(identityId: string, digest: string, now: number): Promise<void>;
  /** Sets awaiting_device_since to `now` unless already set; a promote clears it. */
  markAwaitingDevice(identityId: string, now: number): Promise<void>;
  /** Refs of the superseded packages whose delete_at <= now (what a deletion will delete). */
  dueDeletionRefs(identityId: string, now: number): Promise<string[]>;
  /** Deletes the superseded packages among `refs` whose delete_at <= now; returns how many. */
  deleteDueKeyPackagesIn(identityId: string, now: number, refs: readonly string[]): Promise<number>;
  /** The current package's ref, if any. */
  currentRef(identityId: string): Promise<string | null>;
  /** Clears verify_at (the mid-interval check of this generation is taken). */
  clearVerifyAt(identityId: string): Promise<void>;
  /** Records a check of the published package: error null when it passed. */
  recordVerify(identityId: string, now: number, error: string | null): Promise<void>;
}

/** The identity as the status endpoint shows it (no key material). */
export interface IdentitySummary {
  id: string;
  generation: number;
  rotationDeadline: Date | null;
  lastRotatedAt: Date | null;
  rotationFailures: number;
  lastError: string | null;
  lastFailureAt: Date | null;
  createdAt: Date;
  custody: Custody;
  awaitingDeviceSince: Date | null;
  /** Why the last check of the published package failed (null: passed, or none ran). */
  verifyError: string | null;
  lastVerifiedAt: Date | null;
}

/** A key package's public columns. */
export interface PublicKeyPackage {
  generation: number;
  ref: string;
  ciphersuite: string;
  isCurrent: boolean;
  createdAt: Date;
  publishedAt: Date | null;
  notBefore: Date;
  notAfter: Date;
  deleteAt: Date | null;
}

export interface CurrentKeyPackage {
  generation: number;
  ref: string;
  ciphersuite: string;
  keyPackage: Uint8Array;
  notBefore: Date;
  notAfter: Date;
  publishedAt: Date | null;
}

/** The truth: identities, deadlines and key packages, with per-identity row locks. */
export interface Store {
  /** Runs `fn` in one transaction: committed if it resolves, rolled back if it throws. */
  transaction<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T>;
  recordRotationFailure(id: string, now: number, error: string): Promise<void>;
  countLive(): Promise<number>;
  /**
   * The last of the next `count` live identities after `afterId`, in id order, read without
   * locks (undefined when fewer follow): where reconcile's walk goes on past a page it could
   * not lock.
   */
  liveIdAfter(afterId: string | null, count: number): Promise<string | undefined>;
  /**
   * Moves arm_seq past `high` when it is behind it (Postgres restored from a backup while Redis
   * kept its jobs); returns the value it was at when it moved, undefined when it did not.
   */
  advanceArmFence(high: number): Promise<number | undefined>;
  liveAmong(ids: readonly string[]): Promise<Set<string>>;
  /** Live identities with a deadline <= before, by (deadline, id), after the cursor. */
  overdueIdentities(
    before: number,
    limit: number,
    after?: { deadline: number; id: string },
  ): Promise<{ id: string; deadline: number }[]>;
  /** Superseded packages with delete_at <= before, by (deleteAt, packageId), after the cursor. */
  overdueDeletions(
    before: number,
    limit: number,
    after?: { deleteAt: number; packageId: number },
  ): Promise<{ identityId: string; deleteAt: number; packageId: number }[]>;
  /**
   * The watchdog's one read: the wakeup census (how many wake-ups each queue should hold), and
   * whether any live identity's deadline or any superseded package's delete_at is <= before.
   */
  watchdogProbe(
    before: number,
  ): Promise<Record<WakeupKind, number> & { overdueRotation: boolean; overdueDeletion: boolean }>;
  getIdentity(id: string): Promise<IdentitySummary | undefined>;
  listPublic(identityId: string): Promise<PublicKeyPackage[]>;
  getCurrent(identityId: string): Promise<CurrentKeyPackage | undefined>;
}

/** One identity's wanted fire time (null: no wake-up), for `armMany`. */
export interface ArmItem {
  identityId: string;
  desired: number | null;
}

export interface ArmManyOptions {
  /**
   * Most of these jobs are probably missing (Redis lost them): skip the view for items with a
   * wanted time and try each as an add, which is what planArm decides for a missing job; the
   * arm script refuses an add whose job exists, and only those are viewed and planned. The
   * result is the same as without it; after a loss it saves the view's reads.
   */
  expectMissing?: boolean;
}

/**
 * The wake-up queues. Every arm is made while the caller holds the identity's row lock
 * (DESIGN.md, "One lock per identity") and passes the arm fence taken after that lock was
 * granted; a write older than the job's last one is refused and reported as "none" (DESIGN.md,
 * "Fenced arms"). The production adapter is src/queue/wakeup-queues.ts (BullMQ, one Lua script).
 */
export interface Wakeups {
  /** Reads the state and fire time of identities' wake-up jobs (one script call per 1,000). */
  view(kind: WakeupKind, identityIds: readonly string[]): Promise<JobView[]>;
  /** Makes the identity's wake-up fire at `desired` (null: no wake-up); returns what was done. */
  arm(
    kind: WakeupKind,
    identityId: string,
    desired: number | null,
    now: number,
    fence: number,
  ): Promise<ArmAction>;
  /**
   * `arm` for many identities at once (the caller holds all their row locks): one view, planArm
   * per identity, then every add and every move of a delayed job in one arm-script call per
   * chunk of 1,000, applied in the order given, with exact fire times. Returns the action per
   * item, in order.
   */
  armMany(
    kind: WakeupKind,
    items: readonly ArmItem[],
    now: number,
    fence: number,
    options?: ArmManyOptions,
  ): Promise<ArmAction[]>;
  /**
   * Makes wake-ups fire no later than `fireAt` when their deadlines were just pulled in to it:
   * moves every delayed job firing later to exactly `fireAt` and leaves one firing sooner (it
   * re-arms itself); only jobs in another state go through armMany's view and planArm.
   */
  armEarlier(
    kind: WakeupKind,
    items: readonly { identityId: string; fireAt: number }[],
    now: number,
    fence: number,
  ): Promise<ArmAction[]>;
  /**
   * Starts a reconcile run: records `runId` among the runs in progress; only completeReconcile
   * writes the mark. With `shards`, only those queue shards' records (a run scoped to them).
   */
  beginReconcile(runId: string, shards?: readonly number[]): Promise<void>;
  /**
   * Removes the run's record and writes the reconcile mark if the record was still there,
   * atomically; false (no mark) when Redis lost its data during the run, which took the record.
   * With `shards`, only those shards' records and marks.
   */
  completeReconcile(runId: string, shards?: readonly number[]): Promise<boolean>;
  /** Whether Redis holds the mark of a completed reconcile (it vanishes if Redis loses data). */
  isReconciled(): Promise<boolean>;
  /** The highest arm fence any arm carried into Redis (0 when none is recorded). */
  fenceHighWater(): Promise<number>;
  /**
   * Arms this process sent that the fence refused, so far. An arm made under its row lock with
   * a fence drawn after the lock is never refused unless arm_seq went backwards (Postgres restored
   * from a backup) or an older write of this process landed late; callers that must not count a
   * refused arm as done compare it before and after.
   */
  refusedArms(): number;
  /** Wake-up jobs in a state that will fire (delayed, waiting, active): O(1) in the jobs. */
  countWakeups(kind: WakeupKind): Promise<number>;
  /** Takes (or renews) a lease so that one process at a time reconciles. */
  tryLease(name: string, owner: string, ttlMs: number): Promise<boolean>;
  releaseLease(name: string, owner: string): Promise<void>;
  /**
   * The identity ids of all wake-up jobs of both queues (of `shards` only, when given), in pages,
   * in one SCAN pass.
   */
  scanAllIdentityIds(
    pageSize: number,
    shards?: readonly number[],
  ): AsyncGenerator<Record<WakeupKind, string[]>>;
  /** The queue shard an identity's wake-ups live in (0 with one shard). */
  shardOf?(identityId: string): number;
}

/**
 * The wake-up job a processor is running: it can be re-armed to a new fire time or finished
 * (removed), both while the caller holds the identity's row lock.
 */
export interface ActiveWakeup {
  readonly identityId: string;
  readonly jobId: string;
  /** Consecutive failed attempts before this one. */
  readonly failures: number;
  rearm(fireAt: number): Promise<void>;
  finish(): Promise<void>;
  /** Re-arms after a failure; `failures` is stored with the job for the next backoff. */
  retryLater(fireAt: number, failures: number): Promise<void>;
}

/** What a rotation publishes before its package becomes current. */
export interface PublishRequest {
  identityId: string;
  generation: number;
  /** KeyPackageRef (hex); also the idempotency key: a retried publish sends the same one. */
  ref: string;
  /** TLS-encoded MLSMessage (mls_key_package). */
  keyPackage: Uint8Array;
  notAfter: Date;
}

export interface Publisher {
  readonly kind: "directory" | "webhook";
  publish(request: PublishRequest): Promise<void>;
}

/**
 * A signed notification to a device identity's endpoint: `rotate` (its rotation is due: build
 * and upload a new key package) or `delete` (the superseded package `ref` is gone from the
 * directory: delete its private keys). Delivery is at least once; `id` is the same on every
 * retry of one notification, for the device to deduplicate on.
 */
export type DeviceNotification =
  | {
      type: "rotate";
      id: string;
      identityId: string;
      endpoint: string;
      /** The rotation deadline being served (epoch ms). */
      deadline: number;
      currentRef: string | null;
    }
  | { type: "delete"; id: string; identityId: string; endpoint: string; ref: string };

/**
 * Reads an identity's key package back from where it was published (the directory: the row its
 * endpoint serves; a webhook: PUBLISH_VERIFY_URL). null: nothing is published there.
 */
export interface PublishedReader {
  read(identityId: string): Promise<Uint8Array | null>;
}

export interface DeviceNotifier {
  /** Resolves when the device's endpoint answered 2xx; rejects otherwise. */
  notify(notification: DeviceNotification): Promise<void>;
}
