import { type ArmAction, type JobView, planArm } from "../core/timers.js";
import * as repo from "../db/identities.repo.js";
import * as kps from "../db/key-packages.repo.js";
import { TIMER_KINDS, type TimerKind } from "../queue/timers.js";
import type { Rotor } from "./rotor.js";

/**
 * Rebuilds every wake-up from Postgres: missing ones added, ones later (or earlier) than their
 * deadline moved, finished ones replaced, orphans (no live identity) removed. Each page of
 * identities is handled under their row locks, exactly like any other arm, so reconcile is safe
 * to run while the service is live and idempotent: a second run repairs nothing.
 */

export type RepairCounts = Record<TimerKind, Record<Exclude<ArmAction["kind"], "none">, number>>;

export interface ReconcileReport {
  identities: number;
  /** Identities already past their deadline, armed first (most overdue first). */
  overdue: number;
  repairs: RepairCounts;
  orphansRemoved: number;
  durationMs: number;
}

export interface ReconcileOptions {
  pageSize?: number;
  /** Called after each page with identities done so far and the total at the start. */
  onProgress?: (done: number, total: number) => void;
}

const emptyCounts = (): RepairCounts => ({
  rotation: { add: 0, reschedule: 0, replace: 0, remove: 0 },
  deletion: { add: 0, reschedule: 0, replace: 0, remove: 0 },
});

export async function reconcile(
  rotor: Rotor,
  options: ReconcileOptions = {},
): Promise<ReconcileReport> {
  const started = Date.now();
  const pageSize = options.pageSize ?? 500;
  // Marked first: if Redis loses its data while we run, the mark goes too and the next check
  // starts another run.
  await rotor.timers.markReconciled();
  const total = await repo.countLive(rotor.db);
  const repairs = emptyCounts();
  const overdue = await armOverdue(rotor, rotor.clock(), pageSize);
  for (const { action } of overdue) if (action.kind !== "none") repairs.rotation[action.kind]++;
  let done = 0;
  let after: string | null = null;
  for (;;) {
    const page: number = await rotor.db.transaction(async (tx) => {
      const locked = await repo.lockLivePage(tx, after, pageSize);
      if (locked.length === 0) return 0;
      const ids = locked.map((i) => i.id);
      const deleteAts = await kps.nextDeleteAts(tx, ids);
      const [rotationViews, deletionViews] = await Promise.all([
        rotor.timers.view("rotation", ids),
        rotor.timers.view("deletion", ids),
      ]);
      const now = rotor.clock();
      const work: Promise<void>[] = [];
      locked.forEach((identity, i) => {
        const plans: [TimerKind, number | null, JobView | undefined][] = [
          ["rotation", identity.rotationDeadline, rotationViews[i]],
          ["deletion", deleteAts.get(identity.id) ?? null, deletionViews[i]],
        ];
        for (const [kind, desired, view] of plans) {
          const action = planArm(desired, view ?? { state: "missing" }, now);
          if (action.kind === "none") continue;
          repairs[kind][action.kind]++;
          work.push(rotor.timers.apply(kind, identity.id, action));
        }
      });
      await Promise.all(work);
      after = ids[ids.length - 1] ?? null;
      return locked.length;
    });
    if (page === 0) break;
    done += page;
    options.onProgress?.(done, Math.max(total, done));
  }
  const orphansRemoved = await removeOrphans(rotor, pageSize);
  const report = {
    identities: done,
    overdue: overdue.length,
    repairs,
    orphansRemoved,
    durationMs: Date.now() - started,
  };
  rotor.log.info({ component: "reconcile", ...report }, "reconcile finished");
  rotor.events.emit("reconcile", report);
  return report;
}

/**
 * Arms live identities whose deadline passed before `before`, most overdue first, each page
 * under its row locks, at most `limit` identities. Their wake-ups are added due now one at a
 * time in deadline order, so BullMQ runs them in that order. Reconcile runs it before its walk;
 * the watchdog runs it for identities overdue beyond any normal delay.
 */
export async function armOverdue(
  rotor: Rotor,
  before: number,
  pageSize: number,
  limit = Number.POSITIVE_INFINITY,
): Promise<{ id: string; action: ArmAction }[]> {
  const armed: { id: string; action: ArmAction }[] = [];
  let after: { deadline: number; id: string } | undefined;
  while (armed.length < limit) {
    const size = Math.min(pageSize, limit - armed.length);
    const page = await repo.overdueIdentities(rotor.db, before, size, after);
    if (page.length === 0) break;
    const ids = page.map((p) => p.id);
    await rotor.db.transaction(async (tx) => {
      const locked = new Map((await repo.lockIdentities(tx, ids)).map((i) => [i.id, i]));
      const views = await rotor.timers.view("rotation", ids);
      const now = rotor.clock();
      for (const [i, id] of ids.entries()) {
        const identity = locked.get(id);
        if (identity === undefined || identity.deregistered) continue;
        const action = planArm(identity.rotationDeadline, views[i] ?? { state: "missing" }, now);
        await rotor.timers.apply("rotation", id, action);
        armed.push({ id, action });
      }
    });
    if (page.length < size) break;
    after = page[page.length - 1];
  }
  return armed;
}

/** Removes wake-ups whose identity is not live, each under that identity's lock. */
async function removeOrphans(rotor: Rotor, pageSize: number): Promise<number> {
  let removed = 0;
  for (const kind of TIMER_KINDS) {
    for await (const ids of rotor.timers.scanIdentityIds(kind, pageSize)) {
      const live = await repo.liveAmong(rotor.db, ids);
      for (const id of ids.filter((i) => !live.has(i))) {
        await rotor.db.transaction(async (tx) => {
          const identity = await repo.lockOrTombstone(tx, id);
          if (!identity.deregistered) return; // registered meanwhile: it armed itself
          const action = await rotor.timers.arm(kind, id, null, rotor.clock());
          if (action.kind !== "none") removed++;
        });
      }
    }
  }
  return removed;
}
