import { WAKEUP_KINDS as TIMER_KINDS } from "../core/ports.js";
import { backoffMs, censusMismatch, type CensusReading } from "../core/deadlines.js";
import type { ShardedCensus } from "../db/store.js";
import { catchUpArmFence } from "./arm-fence.service.js";
import { armOverdue, armOverdueDeletions, reconcile } from "./reconcile.service.js";
import type { Rotor } from "./rotor.js";

/**
 * The healing path (DESIGN.md, "Healing"). Three checks, each at a cost that does not grow with
 * the number of identities:
 *  - full loss (FLUSHALL, a restart without persistence): the reconcile mark is gone. Checked on
 *    every reconnect and every RECONCILE_CHECK_INTERVAL (one EXISTS); a reconcile runs, and is
 *    retried with backoff until one completes;
 *  - partial loss with the mark intact (AOF tail loss, a lagging replica promoted, a job removed
 *    by hand): the wakeup census in Postgres against the queues' job counts, every
 *    WATCHDOG_INTERVAL; a lasting difference runs a reconcile, which repairs only what differs;
 *  - an identity overdue although every path arms it: the overdue scans (rotation and deletion),
 *    every WATCHDOG_INTERVAL, paging past identities that are retrying as they should.
 */

export interface WatchdogOptions {
  /** How late a deadline may be before the watchdog steps in (stall recovery + max backoff). */
  overdueGraceMs: number;
  /** Identifies this process for the reconcile lease. */
  owner: string;
  /** Most identities repaired per scan and kind in one run (the rest wait for the next run). */
  limit?: number;
  /** Between the two census readings that must both differ before a reconcile runs. */
  censusRecheckMs?: number;
  signal?: AbortSignal;
}

export interface WatchdogReport {
  /** A reconcile ran to completion in this run (mark missing, or the census differed). */
  reconciled: boolean;
  /** Why a reconcile was needed, when one was. */
  reason?: string;
  rearmed: number;
  rearmedDeletions: number;
  census: Record<(typeof TIMER_KINDS)[number], CensusReading>;
  /** With several queue shards, the census per shard (index = shard number). */
  shards?: Record<(typeof TIMER_KINDS)[number], CensusReading[]>;
}

/**
 * One watchdog run. Throws when a needed reconcile failed or another process holds its lease:
 * a heal that did not happen must never look done.
 */
export async function runWatchdog(rotor: Rotor, options: WatchdogOptions): Promise<WatchdogReport> {
  await catchUpArmFence(rotor);
  const marks = await missingMark(rotor);
  const before = rotor.clock() - options.overdueGraceMs;
  let probe = await readCensus(rotor, before);
  if (marks === undefined && censusMismatch(readings(probe))) {
    // In-flight arms differ for a moment; a loss (or lasting orphans) is still there later.
    await sleep(options.censusRecheckMs ?? 2_000, options.signal);
    probe = await readCensus(rotor, before);
  }
  const censusNeed: HealNeed | undefined = censusMismatch(readings(probe))
    ? {
        reason: `wakeup census differs: ${describe(probe.census, probe.shards)}`,
        shards: differingShards(probe.shards),
      }
    : undefined;
  let need = marks ?? censusNeed;
  if (marks?.shards !== undefined && censusNeed !== undefined) {
    // Marks gone in some shards, and counts off: the reconcile covers the shards of both.
    need = {
      reason: `${marks.reason}; ${censusNeed.reason}`,
      shards:
        censusNeed.shards === undefined
          ? undefined
          : [...new Set([...marks.shards, ...censusNeed.shards])].sort((a, b) => a - b),
    };
  }
  const reason = need?.reason;
  let reconciled = false;
  if (need !== undefined) {
    const ran = await reconcileOnce(rotor, options.owner, need.reason, options.signal, need.shards);
    if (!ran) throw new ReconcileBusy();
    reconciled = true;
    probe = await readCensus(rotor, before);
  }
  const { census, shards } = probe;
  const limit = options.limit ?? 100;
  // The scans run only when the probe saw an overdue entry: normally a run is one statement.
  const rotations = probe.overdueRotation ? await armOverdue(rotor, before, limit, limit) : [];
  const deletions = probe.overdueDeletion
    ? await armOverdueDeletions(rotor, before, limit, limit)
    : [];
  const rearmed = logRepairs(rotor, "rotation", rotations);
  const rearmedDeletions = logRepairs(rotor, "deletion", deletions);
  return {
    reconciled,
    reason,
    rearmed,
    rearmedDeletions,
    census,
    ...(shards === undefined ? {} : { shards }),
  };
}

/** Why a reconcile is needed, and the queue shards it must cover (every shard: undefined). */
interface HealNeed {
  reason: string;
  shards?: number[] | undefined;
}

/**
 * What needs a reconcile when the reconcile mark is missing, or undefined when it is there.
 * With several queue shards it names the shards whose mark is gone (on a cluster: the shards of
 * the primary that lost its data), and the reconcile covers only those.
 */
async function missingMark(rotor: Rotor): Promise<HealNeed | undefined> {
  const timers = rotor.timers as Partial<{
    layout: { shards: number };
    unreconciledShards(): Promise<number[]>;
  }>;
  const shards = timers.layout?.shards ?? 1;
  if (shards > 1 && typeof timers.unreconciledShards === "function") {
    const missing = await timers.unreconciledShards();
    if (missing.length === 0) return undefined;
    return {
      reason: `Redis has no reconcile mark (shards ${missing.join(", ")} of ${shards})`,
      shards: missing.length < shards ? missing : undefined,
    };
  }
  return (await rotor.timers.isReconciled())
    ? undefined
    : { reason: "Redis has no reconcile mark" };
}

/** The shards whose census differs, when only some do (undefined: every shard, or unsharded). */
function differingShards(shards: WatchdogReport["shards"] | undefined): number[] | undefined {
  if (shards === undefined) return undefined;
  const differ = shards.rotation
    .map((_, i) => i)
    .filter((i) => TIMER_KINDS.some((k) => shards[k][i]?.counted !== shards[k][i]?.expected));
  return differ.length > 0 && differ.length < shards.rotation.length ? differ : undefined;
}

/** Another process holds the reconcile lease; this process's heal did not run. */
export class ReconcileBusy extends Error {
  override name = "ReconcileBusy";
  constructor() {
    super("another process is reconciling (it holds the lease)");
  }
}

/** What the census needs beyond the ports when the queues are sharded (Postgres and BullMQ). */
interface ShardedParts {
  timers: {
    readonly layout: { shards: number };
    countWakeupsPerShard(kind: Kind): Promise<number[]>;
  };
  store: ShardedCensus;
}

type Kind = (typeof TIMER_KINDS)[number];

/** The sharded census readers, when both adapters have them and there is more than one shard. */
function shardedParts(rotor: Rotor): ShardedParts | undefined {
  const timers = rotor.timers as Partial<ShardedParts["timers"]>;
  const store = rotor.store as Partial<ShardedCensus>;
  if (typeof timers.countWakeupsPerShard !== "function") return undefined;
  if (typeof store.censusPerShard !== "function") return undefined;
  if ((timers.layout?.shards ?? 1) <= 1) return undefined;
  return { timers, store } as ShardedParts;
}

async function readCensus(rotor: Rotor, before: number) {
  const sharded = shardedParts(rotor);
  const countsOf = (kind: Kind): Promise<number[]> =>
    sharded
      ? sharded.timers.countWakeupsPerShard(kind)
      : rotor.timers.countWakeups(kind).then((n) => [n]);
  const [probe, rotation, deletion, expectedPerShard] = await Promise.all([
    rotor.store.watchdogProbe(before),
    countsOf("rotation"),
    countsOf("deletion"),
    sharded?.store.censusPerShard(sharded.timers.layout.shards),
  ]);
  const sum = (ns: number[]) => ns.reduce((a, b) => a + b, 0);
  const census: WatchdogReport["census"] = {
    rotation: { expected: probe.rotation, counted: sum(rotation) },
    deletion: { expected: probe.deletion, counted: sum(deletion) },
  };
  const shards =
    expectedPerShard === undefined
      ? undefined
      : {
          rotation: rotation.map((counted, i) => ({
            expected: expectedPerShard.rotation[i] ?? 0,
            counted,
          })),
          deletion: deletion.map((counted, i) => ({
            expected: expectedPerShard.deletion[i] ?? 0,
            counted,
          })),
        };
  return {
    census,
    shards,
    overdueRotation: probe.overdueRotation,
    overdueDeletion: probe.overdueDeletion,
  };
}

/** Every reading the census compares: per queue kind, and per shard when sharded. */
const readings = (probe: {
  census: WatchdogReport["census"];
  shards?: WatchdogReport["shards"] | undefined;
}): CensusReading[] => [
  ...Object.values(probe.census),
  ...(probe.shards ? [...probe.shards.rotation, ...probe.shards.deletion] : []),
];

const describe = (census: WatchdogReport["census"], shards?: WatchdogReport["shards"]) =>
  [
    ...TIMER_KINDS.map((k) => `${k} ${census[k].counted} in Redis, ${census[k].expected} expected`),
    ...(shards
      ? TIMER_KINDS.flatMap((k) =>
          shards[k].flatMap((r, i) =>
            r.counted === r.expected
              ? []
              : [`${k} shard ${i} ${r.counted} in Redis, ${r.expected} expected`],
          ),
        )
      : []),
  ].join("; ");

function logRepairs(
  rotor: Rotor,
  kind: string,
  armed: readonly { id: string; action: { kind: string } }[],
): number {
  let n = 0;
  for (const { id, action } of armed) {
    if (action.kind === "none") continue;
    n++;
    rotor.log.warn(
      { component: "watchdog", kind, identityId: id, action },
      "re-armed an overdue identity",
    );
  }
  return n;
}

/** How long a reconcile lease lasts without renewal; renewed every third of it while running. */
const LEASE_TTL_MS = 60_000;

/**
 * Runs a reconcile unless another process holds the lease; returns whether it ran. A failed or
 * stopped run throws, writes no mark, and releases the lease at once, so the next check (here or
 * in another process) starts again.
 */
export async function reconcileOnce(
  rotor: Rotor,
  owner: string,
  reason: string,
  signal?: AbortSignal,
  shards?: readonly number[],
): Promise<boolean> {
  const lease = "reconcile";
  if (!(await rotor.timers.tryLease(lease, owner, LEASE_TTL_MS))) return false;
  const renew = setInterval(() => {
    rotor.timers.tryLease(lease, owner, LEASE_TTL_MS).catch(() => {});
  }, LEASE_TTL_MS / 3);
  try {
    rotor.log.info({ component: "reconcile", reason, shards }, "reconcile starting");
    await reconcile(rotor, { signal, ...(shards === undefined ? {} : { shards }) });
    return true;
  } catch (err) {
    const error = err instanceof Error ? err.message : String(err);
    // Every caller retries (the healer with backoff, the watchdog through the healer), so the
    // one line for every failed run, whichever path ran it, says so.
    rotor.log.error({ component: "reconcile", reason, err: error }, "reconcile failed; retrying");
    rotor.events.emit("reconcile-failed", { reason, error });
    throw err;
  } finally {
    clearInterval(renew);
    await rotor.timers.releaseLease(lease, owner).catch(() => {});
  }
}

export interface HealerOptions extends WatchdogOptions {
  /** How often the reconcile mark is checked (one EXISTS); 0 disables the periodic check. */
  markCheckIntervalMs: number;
  /** How often the census and the overdue scans run; 0 disables them. */
  watchdogIntervalMs: number;
}

export interface Healer {
  /** Checks the mark now (wired to the Redis connection's `ready`, after every reconnect). */
  checkMark(): void;
  /** Resolves when the first heal attempt (the start-up reconcile) has ended, either way. */
  readonly started: Promise<void>;
  close(): Promise<void>;
}

/**
 * Starts the worker process's healing loop: a reconcile at start, the mark check, and the
 * watchdog. A reconcile that fails is retried with the wake-ups' backoff (2 s, x1.5, at most
 * 60 s) until one completes; one left to another process's lease is checked again by the mark
 * check, so if that process fails, this one takes over.
 */
export function startHealer(rotor: Rotor, options: HealerOptions): Healer {
  const log = rotor.log.child({ component: "healer" });
  const abort = new AbortController();
  const signal = abort.signal;
  let healing: Promise<void> | undefined;
  let retry: NodeJS.Timeout | undefined;
  let retryPending = false;
  let failures = 0;
  /** A mark check that found a heal in progress, or a scoped heal that just ended: look again. */
  let lookAgain = false;

  const heal = (reason: string, shards?: readonly number[]): Promise<void> => {
    if (signal.aborted) return Promise.resolve();
    healing ??= (async () => {
      try {
        const ran = await reconcileOnce(rotor, options.owner, reason, signal, shards);
        failures = 0;
        if (!ran) log.info({ reason }, "another process holds the reconcile lease");
        // A shard outside the scope that lost its data meanwhile left no trace in this run.
        if (shards !== undefined) lookAgain = true;
      } catch {
        if (signal.aborted) return;
        failures++;
        const delay = backoffMs(failures);
        log.warn({ reason, failures, retryInMs: delay }, "next reconcile attempt after backoff");
        clearTimeout(retry);
        retryPending = true;
        // The retry covers every shard: whatever else was lost during the backoff is in it.
        retry = setTimeout(() => {
          retryPending = false;
          void heal(reason);
        }, delay);
      } finally {
        healing = undefined;
        if (lookAgain && !retryPending) {
          lookAgain = false;
          checkMark();
        }
      }
    })();
    return healing;
  };

  const checkMark = () => {
    if (signal.aborted) return;
    if (healing !== undefined || retryPending) {
      lookAgain = true;
      return;
    }
    missingMark(rotor)
      .then((missing) => (missing === undefined ? undefined : heal(missing.reason, missing.shards)))
      .catch((err) => log.warn({ err }, "reconcile mark check failed"));
  };

  const started = heal("worker start");
  const markTimer =
    options.markCheckIntervalMs > 0
      ? setInterval(checkMark, options.markCheckIntervalMs)
      : undefined;

  let watching: Promise<void> | undefined;
  let soon: NodeJS.Timeout | undefined;
  const watch = () => {
    if (signal.aborted || watching !== undefined || healing !== undefined) return;
    watching = runWatchdog(rotor, { ...options, signal })
      .then((report) => {
        if (report.reconciled || report.rearmed > 0 || report.rearmedDeletions > 0) {
          log.warn(report, "watchdog repaired wake-ups");
        }
      })
      .catch((err) => {
        if (signal.aborted) return;
        if (err instanceof ReconcileBusy) {
          // Another process runs the reconcile. If it dies, its lease lapses (60 s) with the
          // mark still there: look again then, not a whole WATCHDOG_INTERVAL later.
          log.info("another process holds the reconcile lease; the watchdog looks again soon");
          clearTimeout(soon);
          soon = setTimeout(watch, LEASE_TTL_MS + 5_000);
          return;
        }
        log.error({ err }, "watchdog could not heal; retrying with backoff");
        void heal("watchdog retry");
      })
      .finally(() => {
        watching = undefined;
      });
  };
  const watchdogTimer =
    options.watchdogIntervalMs > 0 ? setInterval(watch, options.watchdogIntervalMs) : undefined;

  return {
    checkMark,
    started,
    async close() {
      abort.abort();
      clearInterval(markTimer);
      clearInterval(watchdogTimer);
      clearTimeout(retry);
      clearTimeout(soon);
      await Promise.allSettled([healing, watching]);
    },
  };
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
