import { randomUUID } from "node:crypto";
import {
  type ArmItem,
  type LockedDeadline,
  type StoreTx,
  WAKEUP_KINDS as TIMER_KINDS,
  type WakeupKind as TimerKind,
} from "../core/ports.js";
import { type ArmAction, mostlyMissing } from "../core/deadlines.js";
import { plannedRotationWake } from "../core/transitions.js";
import { settleAll } from "../settle.js";
import { armUnrefused, catchUpArmFence } from "./arm-fence.service.js";
import type { Rotor } from "./rotor.js";

/**
 * Rebuilds every wake-up from Postgres: missing ones added, ones later (or earlier) than their
 * deadline moved, finished ones replaced, orphans (no live identity) removed. Each page of
 * identities is handled under their row locks, exactly like any other arm, so reconcile is safe
 * to run while the service is live and idempotent: a second run repairs nothing.
 */

import type { ReconcileReport, RepairCounts } from "./events.js";

export type { ReconcileReport, RepairCounts };

export interface ReconcileOptions {
  /** Identities per transaction (row locks held while both queues are armed). */
  pageSize?: number;
  /**
   * Pages in flight: the next page's lock query starts as soon as the previous page has
   * locked its rows (its cursor is known), while that page is still arming in Redis. Pages
   * lock disjoint id ranges in id order, so they never wait on each other.
   */
  pagesInFlight?: number;
  /** Called after each page with identities done so far and the total at the start. */
  onProgress?: (done: number, total: number) => void;
  /** Stops the run between pages (shutdown): it then throws and writes no mark. */
  signal?: AbortSignal;
  /**
   * Only these queue shards (the ones whose mark or census says they lost wake-ups): every live
   * identity is still read and locked, but only those of these shards are armed, only these
   * shards' orphans removed and only their marks written. Every shard when omitted.
   */
  shards?: readonly number[];
  /**
   * false: every page views its jobs before arming them. By default a page whose predecessor
   * found most of its jobs missing arms without viewing first (Wakeups.armMany's
   * expectMissing): after a loss of Redis data that is about 30 % fewer Redis commands and
   * 15 % less of Redis' CPU (bench/reconcile-loss.ts).
   */
  skipViewAfterLoss?: boolean;
}

/** A reconcile that did not complete; the mark was not written, so it will run again. */
export class ReconcileIncomplete extends Error {
  override name = "ReconcileIncomplete";
}

export const RECONCILE_PAGE_SIZE = 5_000;
/** Failed pages in a row that stop a walk: the store or Redis is down, not one identity. */
const MAX_FAILED_PAGES_IN_A_ROW = 3;

const emptyCounts = (): RepairCounts => ({
  rotation: { add: 0, reschedule: 0, replace: 0, remove: 0 },
  deletion: { add: 0, reschedule: 0, replace: 0, remove: 0 },
});

export async function reconcile(
  rotor: Rotor,
  options: ReconcileOptions = {},
): Promise<ReconcileReport> {
  const started = Date.now();
  const pageSize = options.pageSize ?? RECONCILE_PAGE_SIZE;
  const inFlight = Math.max(1, options.pagesInFlight ?? 2);
  const signal = options.signal;
  // The mark is written only after a complete walk, and only if this run's record survived it:
  // a failure, a shutdown or a loss of Redis data during the run leaves no mark behind.
  const runId = randomUUID();
  const shards = options.shards;
  const shardOf = rotor.timers.shardOf?.bind(rotor.timers);
  const inScope =
    shards === undefined || shardOf === undefined
      ? () => true
      : (id: string) => shards.includes(shardOf(id));
  await catchUpArmFence(rotor);
  await rotor.timers.beginReconcile(runId, shards);
  const total = await rotor.store.countLive();
  const repairs = emptyCounts();
  const count = (kind: TimerKind, actions: readonly ArmAction[]) => {
    for (const action of actions) if (action.kind !== "none") repairs[kind][action.kind]++;
  };
  // Learned per queue from the page armed last; pages in flight may read it a page late.
  const adaptive = options.skipViewAfterLoss !== false;
  const expectMissing: Record<TimerKind, boolean> = { rotation: false, deletion: false };
  const pagesWithoutView: Record<TimerKind, number> = { rotation: 0, deletion: 0 };
  const armPage = async (kind: TimerKind, items: ArmItem[], now: number, fence: number) => {
    const blind = expectMissing[kind];
    if (blind) pagesWithoutView[kind]++;
    const actions = await rotor.timers.armMany(kind, items, now, fence, { expectMissing: blind });
    const wanted = items.filter((i) => i.desired !== null).length;
    expectMissing[kind] = adaptive && mostlyMissing(actions, wanted);
    count(kind, actions);
  };
  // A page that fails is remembered and the walk goes on past it, so that one identity whose row
  // stays locked or whose job cannot be armed holds back no other; the run then throws at the
  // end and writes no mark, and is retried. Several failures in a row (Postgres or Redis down)
  // stop the walk at once.
  let failure: unknown;
  let failedPages = 0;
  let failedInARow = 0;
  const failed = (err: unknown) => {
    failure ??= err;
    failedPages++;
    failedInARow++;
  };
  const overdue = await armOverdue(rotor, rotor.clock(), pageSize).catch((err: unknown) => {
    failed(err);
    return [];
  });
  count(
    "rotation",
    overdue.map((o) => o.action),
  );

  /** One page under its row locks; hands the next page its cursor once the rows are locked. */
  const runPage = (after: string | null, handOff: (next: string | undefined) => void) =>
    rotor.store.transaction(async (tx) => {
      const page = await tx.lockLiveDeadlines(after, pageSize);
      handOff(page.length === pageSize ? page[page.length - 1]?.id : undefined);
      const locked = page.filter((i) => inScope(i.id));
      if (locked.length === 0) return page.length;
      const ids = locked.map((i) => i.id);
      const now = locked[0]?.now ?? rotor.clock();
      const fence = locked[0]?.fence ?? 0;
      // Both queues at once; the deletion deadlines are read (under the same locks) while the
      // rotation wake-ups are being armed. Everything settles before the transaction ends.
      const rotationItems = locked.map((i) => ({
        identityId: i.id,
        desired: plannedRotationWake(i.rotationDeadline, i.verifyAt),
      }));
      const deleteAts = tx.nextDeleteAtsOf(ids);
      await armUnrefused(rotor, tx, fence, (f) =>
        settleAll([
          armPage("rotation", rotationItems, now, f),
          deleteAts.then((at) =>
            armPage(
              "deletion",
              ids.map((id) => ({ identityId: id, desired: at.get(id) ?? null })),
              now,
              f,
            ),
          ),
        ]),
      );
      return page.length;
    });

  let done = 0;
  const running = new Set<Promise<void>>();
  let stopped: ReconcileIncomplete | undefined;
  let next: Promise<string | null | undefined> = Promise.resolve(null);
  for (;;) {
    const after = await next;
    if (after === undefined || failedInARow >= MAX_FAILED_PAGES_IN_A_ROW) break;
    if (signal?.aborted) {
      stopped = new ReconcileIncomplete("reconcile stopped: the process is shutting down");
      break;
    }
    let handOff!: (next: string | undefined) => void;
    let handedOff = false;
    next = new Promise((resolve) => {
      handOff = (cursor) => {
        handedOff = true;
        resolve(cursor);
      };
    });
    const page: Promise<void> = runPage(after, handOff)
      .then((n) => {
        failedInARow = 0;
        done += n;
        if (n > 0) options.onProgress?.(done, Math.max(total, done));
      })
      .catch(async (err: unknown) => {
        failed(err);
        if (handedOff) return;
        // Its rows were never locked, so its cursor is unknown: read past them without locks.
        handOff(await rotor.store.liveIdAfter(after, pageSize).catch(() => undefined));
      })
      .finally(() => running.delete(page));
    running.add(page);
    if (running.size >= inFlight) await Promise.race(running);
  }
  await Promise.all(running);
  if (stopped !== undefined) throw stopped;
  if (failedPages > 0) {
    rotor.log.warn(
      { component: "reconcile", failedPages, identities: done },
      "reconcile walked on past pages that failed; it wrote no mark and will run again",
    );
    throw failure ?? new Error("a reconcile page failed");
  }
  const orphansRemoved = await removeOrphans(rotor, pageSize, shards);
  if (!(await rotor.timers.completeReconcile(runId, shards))) {
    throw new ReconcileIncomplete(
      "Redis lost data while reconcile ran (its run record vanished); it must run again",
    );
  }
  const report = {
    identities: done,
    overdue: overdue.length,
    repairs,
    orphansRemoved,
    durationMs: Date.now() - started,
    pagesWithoutView,
    ...(shards === undefined ? {} : { shards: [...shards] }),
  };
  rotor.log.info({ component: "reconcile", ...report }, "reconcile finished");
  rotor.events.emit("reconcile", report);
  return report;
}

/**
 * Arms live identities whose deadline passed before `before`, most overdue first, each page
 * under its row locks, until `limit` of them needed a repair. Identities whose wake-up is fine
 * (retrying within the backoff, waiting, running) cost a look and nothing else, and the scan
 * pages past them, so any number of legitimately retrying identities cannot hide one whose
 * wake-up was lost. Each page is armed by one arm-script call that adds in deadline order, and
 * their delayed scores are their deadlines, so BullMQ promotes and runs them most overdue first.
 * Reconcile runs it before its walk; the watchdog runs it for identities overdue beyond any
 * normal delay.
 */
export function armOverdue(
  rotor: Rotor,
  before: number,
  pageSize: number,
  limit = Number.POSITIVE_INFINITY,
): Promise<{ id: string; action: ArmAction }[]> {
  return repairPages<{ id: string; deadline: number }>(rotor, "rotation", pageSize, limit, {
    page: (after) => rotor.store.overdueIdentities(before, pageSize, after),
    ids: (page) => page.map((p) => p.id),
    // In deadline order (the page's order), restricted to identities still live.
    desired: async (_tx, ids, locked) =>
      ids.flatMap((id) => {
        const identity = locked.get(id);
        return identity === undefined || identity.deregistered
          ? []
          : [{ identityId: id, desired: identity.rotationDeadline }];
      }),
  });
}

/**
 * The deletion backstop: identities with a superseded key package whose delete_at passed before
 * `before` get their deletion wake-up armed to their earliest delete_at, under their row locks,
 * paging past those whose wake-up is fine, until `limit` needed a repair.
 */
export function armOverdueDeletions(
  rotor: Rotor,
  before: number,
  pageSize: number,
  limit = Number.POSITIVE_INFINITY,
): Promise<{ id: string; action: ArmAction }[]> {
  type Row = { identityId: string; deleteAt: number; packageId: number };
  return repairPages<Row>(rotor, "deletion", pageSize, limit, {
    page: (after) => rotor.store.overdueDeletions(before, pageSize, after),
    ids: (page) => [...new Set(page.map((p) => p.identityId))],
    desired: async (tx, ids, locked) => {
      const live = ids.filter((id) => locked.get(id)?.deregistered === false);
      const deleteAts = await tx.nextDeleteAtsOf(live);
      return live.map((id) => ({ identityId: id, desired: deleteAts.get(id) ?? null }));
    },
  });
}

/**
 * The overdue scans' loop: a page of candidates (keyset-paginated, the page's last row is the
 * next cursor), locked in one transaction, armed in one armMany; pages continue past identities
 * whose wake-up needed nothing until `limit` needed a repair or the candidates run out.
 */
async function repairPages<Row>(
  rotor: Rotor,
  kind: TimerKind,
  pageSize: number,
  limit: number,
  scan: {
    page(after: Row | undefined): Promise<Row[]>;
    ids(page: readonly Row[]): string[];
    desired(
      tx: StoreTx,
      ids: readonly string[],
      locked: ReadonlyMap<string, LockedDeadline>,
    ): Promise<ArmItem[]>;
  },
): Promise<{ id: string; action: ArmAction }[]> {
  const armed: { id: string; action: ArmAction }[] = [];
  let repaired = 0;
  let after: Row | undefined;
  while (repaired < limit) {
    const page = await scan.page(after);
    if (page.length === 0) break;
    const ids = scan.ids(page);
    await rotor.store.transaction(async (tx) => {
      const rows = await tx.lockDeadlines(ids);
      const now = rows[0]?.now ?? rotor.clock();
      const items = await scan.desired(tx, ids, new Map(rows.map((r) => [r.id, r])));
      // What each item came to over the attempts (a repeat after a refusal plans "none" for the
      // items the first attempt armed).
      const actions: ArmAction[] = items.map(() => ({ kind: "none" }));
      await armUnrefused(rotor, tx, rows[0]?.fence ?? 0, async (fence) => {
        const done = await rotor.timers.armMany(kind, items, now, fence);
        done.forEach((action, i) => {
          if (action.kind !== "none") actions[i] = action;
        });
      });
      items.forEach((item, i) => {
        const action = actions[i] ?? { kind: "none" };
        if (action.kind !== "none") repaired++;
        armed.push({ id: item.identityId, action });
      });
    });
    if (page.length < pageSize) break;
    after = page[page.length - 1];
  }
  return armed;
}

/**
 * Removes wake-ups whose identity is not live, each under that identity's lock. One SCAN pass
 * covers both queues; the next page is fetched from Redis while Postgres checks this one.
 */
async function removeOrphans(
  rotor: Rotor,
  pageSize: number,
  shards: readonly number[] | undefined,
): Promise<number> {
  let removed = 0;
  const pages = rotor.timers.scanAllIdentityIds(pageSize, shards);
  let pending = pages.next();
  for (;;) {
    const result = await pending;
    if (result.done) break;
    pending = pages.next();
    pending.catch(() => {}); // surfaces at the next await
    const page = result.value;
    const live = await rotor.store.liveAmong([...new Set([...page.rotation, ...page.deletion])]);
    for (const kind of TIMER_KINDS) {
      for (const id of page[kind].filter((i) => !live.has(i))) {
        await rotor.store.transaction(async (tx) => {
          const identity = await tx.lockOrTombstone(id);
          if (!identity.deregistered) return; // registered meanwhile: it armed itself
          const action = await rotor.timers.arm(kind, id, null, identity.now, identity.fence);
          if (action.kind !== "none") removed++;
        });
      }
    }
  }
  return removed;
}
