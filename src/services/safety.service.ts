import { createSafetyRepo } from "../db/safety.repo.js";
import { lastSealedKeysReport } from "./rewrap.service.js";
import type { LiveRotor as Rotor } from "./rotor.js";

/**
 * Lifetime safety: a key package that stops rotating expires on the network after 84 days and
 * the identity can no longer be added to groups. This view shows drift long before that:
 * current key packages older than the rotation interval plus a margin, ones within a week of
 * their not_after, identities whose rotation keeps failing (including a first publish that has
 * not succeeded yet), published packages that failed their read-back, device identities
 * awaiting an upload, and the oldest current key package of the fleet. Each list is bounded by
 * `limit`; its count is complete (db/safety.repo.ts).
 */

export const SAFETY_DEFAULTS = {
  /** How much older than ROTATION_INTERVAL a current key package may be before it is "stale". */
  staleMarginMs: 86_400_000,
  /** Warn this long before a current key package's not_after. */
  expiryWarningMs: 7 * 86_400_000,
  limit: 100,
} as const;

export async function safetyReport(rotor: Rotor, options: Partial<typeof SAFETY_DEFAULTS> = {}) {
  const { staleMarginMs, expiryWarningMs, limit } = { ...SAFETY_DEFAULTS, ...options };
  const now = rotor.clock();
  const staleBefore = new Date(now - rotor.timing.rotationIntervalMs - staleMarginMs);
  const expiringBefore = new Date(now + expiryWarningMs);
  const repo = createSafetyRepo(rotor.db);
  const [stale, expiringSoon, failing, oldest, awaiting, publishedCheckFailed] = await Promise.all([
    repo.staleCurrent(staleBefore, limit),
    repo.expiringCurrent(expiringBefore, limit),
    repo.failing(limit),
    repo.oldestCurrent(),
    repo.awaitingDevice(limit),
    repo.publishedCheckFailed(limit),
  ]);
  return {
    at: new Date(now),
    thresholds: { staleBefore, expiringBefore },
    stale,
    expiringSoon,
    failing,
    publishedCheckFailed,
    awaitingDevice: {
      count: awaiting.count,
      identities: awaiting.identities.map((a) => ({
        ...a,
        awaitingSeconds:
          a.awaitingSince === null ? 0 : Math.round((now - a.awaitingSince.getTime()) / 1000),
      })),
    },
    oldestCurrentKeyPackage: oldest
      ? { ...oldest, ageSeconds: Math.round((now - oldest.createdAt.getTime()) / 1000) }
      : null,
    // From this process's start-up check (a full scan, so not repeated per request).
    sealedKeys: lastSealedKeysReport(rotor) ?? null,
  };
}

export type SafetyReport = Awaited<ReturnType<typeof safetyReport>>;
