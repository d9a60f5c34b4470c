import { armOverdue, reconcile } from "./reconcile.service.js";
import type { Rotor } from "./rotor.js";

/**
 * The backstop, run by each worker at a low fixed rate (WATCHDOG_INTERVAL, default 10 min).
 * Its cost does not grow with the number of identities: one Redis EXISTS, and one index range
 * scan that returns only identities overdue by more than `overdueGraceMs` (normally none).
 *  - Redis lost its data (no reconcile mark): run a full reconcile, one process at a time.
 *  - An identity is overdue although every path arms its wake-up: re-arm it under its lock.
 */
export interface WatchdogOptions {
  /** How late a deadline may be before the watchdog steps in (stall recovery + max backoff). */
  overdueGraceMs: number;
  /** Identifies this process for the reconcile lease. */
  owner: string;
  limit?: number;
}

export interface WatchdogReport {
  reconciled: boolean;
  rearmed: number;
}

export async function runWatchdog(rotor: Rotor, options: WatchdogOptions): Promise<WatchdogReport> {
  let reconciled = false;
  if (!(await rotor.timers.isReconciled())) {
    reconciled = await reconcileOnce(rotor, options.owner, "Redis has no reconcile mark");
  }
  const limit = options.limit ?? 100;
  const armed = await armOverdue(rotor, rotor.clock() - options.overdueGraceMs, limit, limit);
  let rearmed = 0;
  for (const { id, action } of armed) {
    if (action.kind === "none") continue;
    rearmed++;
    rotor.log.warn(
      { component: "watchdog", identityId: id, action },
      "re-armed an overdue identity",
    );
  }
  return { reconciled, rearmed };
}

/** Runs a reconcile unless another process holds the lease; returns whether it ran. */
export async function reconcileOnce(rotor: Rotor, owner: string, reason: string): Promise<boolean> {
  const lease = "reconcile";
  const ttlMs = 60_000;
  if (!(await rotor.timers.tryLease(lease, owner, ttlMs))) return false;
  rotor.log.info({ component: "reconcile", reason }, "reconcile starting");
  await reconcile(rotor, {
    onProgress: () => {
      void rotor.timers.tryLease(lease, owner, ttlMs);
    },
  });
  await rotor.timers.releaseLease(lease, owner);
  return true;
}
