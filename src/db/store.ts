import type { Store, StoreTx } from "../core/ports.js";
import type { Db, Tx } from "./client.js";
import { withPostgresErrors } from "./errors.js";
import * as repo from "./identities.repo.js";
import * as device from "./device.repo.js";
import * as kps from "./key-packages.repo.js";
import { recentRotations } from "./rotation-cap.repo.js";

/**
 * The Store port on Postgres: every method is the repository function of the same name, bound
 * to the pool or to the transaction. Each call dispatches its statement when called, so
 * statements issued side by side reach the transaction's connection in call order.
 */
export function createPostgresStore(db: Db): Store & ShardedCensus {
  // Connection, timeout and lock failures leave as DEPENDENCY_UNAVAILABLE (db/errors.ts).
  return withPostgresErrors({
    transaction: (fn) => db.transaction((tx) => fn(bindTx(tx))),
    recordRotationFailure: (id, now, error) => repo.recordRotationFailure(db, id, now, error),
    countLive: () => repo.countLive(db),
    liveIdAfter: (afterId, count) => repo.liveIdAfter(db, afterId, count),
    advanceArmFence: (high) => db.transaction((tx) => repo.advanceArmFence(tx, high)),
    liveAmong: (ids) => repo.liveAmong(db, ids),
    overdueIdentities: (before, limit, after) => repo.overdueIdentities(db, before, limit, after),
    overdueDeletions: (before, limit, after) => repo.overdueDeletions(db, before, limit, after),
    watchdogProbe: (before) => repo.watchdogProbe(db, before),
    censusPerShard: (shards) => repo.censusPerShard(db, shards),
    getIdentity: (id) => repo.getIdentity(db, id),
    listPublic: (id) => kps.listPublic(db, id),
    getCurrent: (id) => kps.getCurrent(db, id),
  });
}

/** The wakeup census per queue shard, beside the port's per-kind sums (the watchdog uses it). */
export interface ShardedCensus {
  censusPerShard(shards: number): Promise<Record<"rotation" | "deletion", number[]>>;
}

function bindTx(tx: Tx): StoreTx {
  return {
    lockIdentity: (id) => repo.lockIdentity(tx, id),
    lockOrTombstone: (id) => repo.lockOrTombstone(tx, id),
    lockDeadlines: (ids) => repo.lockDeadlines(tx, ids),
    lockLiveDeadlines: (afterId, limit) => repo.lockLiveDeadlines(tx, afterId, limit),
    nextDeleteAtsOf: (ids) => repo.nextDeleteAtsOf(tx, ids),
    advanceArmFence: (high) => repo.advanceArmFence(tx, high),
    nextArmFence: () => repo.nextArmFence(tx),
    insertIdentity: (input) => repo.insertIdentity(tx, input),
    setRotationDeadlines: (ids, deadline) => repo.setRotationDeadlines(tx, ids, deadline),
    recordWelcomesDuringPublish: (ids, deadline) =>
      repo.recordWelcomesDuringPublish(tx, ids, deadline),
    markPublishing: (id, now) => repo.markPublishing(tx, id, now),
    tombstone: (id, now) => repo.tombstone(tx, id, now),
    findPending: (id) => kps.findPending(tx, id),
    insertPending: (id, generation, now, kp) => kps.insertPending(tx, id, generation, now, kp),
    deletePending: (packageId) => kps.deletePending(tx, packageId),
    supersedeCurrent: (input) => kps.supersedeCurrent(tx, input),
    markCurrent: (packageId, now) => kps.markCurrent(tx, packageId, now),
    insertCurrent: (id, generation, now, kp) => kps.insertCurrent(tx, id, generation, now, kp),
    promotePending: (input) => kps.promotePending(tx, input),
    deleteDueKeyPackages: (id, now) => kps.deleteDueKeyPackages(tx, id, now),
    nextDeleteAt: (id) => kps.nextDeleteAt(tx, id),
    hasCurrent: (id) => kps.hasCurrent(tx, id),
    recentRotations: (ids, since) => recentRotations(tx, ids, since),
    seenInitKeys: (id) => device.seenInitKeys(tx, id),
    recordInitKey: (id, digest, now) => device.recordInitKey(tx, id, digest, now),
    markAwaitingDevice: (id, now) => device.markAwaitingDevice(tx, id, now),
    dueDeletionRefs: (id, now) => device.dueDeletionRefs(tx, id, now),
    deleteDueKeyPackagesIn: (id, now, refs) => kps.deleteDueKeyPackages(tx, id, now, refs),
    currentRef: (id) => device.currentRef(tx, id),
    clearVerifyAt: (id) => device.clearVerifyAt(tx, id),
    recordVerify: (id, now, error) => device.recordVerify(tx, id, now, error),
  };
}
