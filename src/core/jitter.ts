/**
 * ROTATION_JITTER: spreads interval deadlines so that identities rotated together (a mass
 * registration, or the backlog after an outage) do not all come due in the same second an
 * interval later, and again every interval after that. Pure and deterministic: an identity always
 * gets the same offset, in every process and in the simulation (bench/sim), so a retried promote
 * and a replayed one agree.
 *
 * The bound: the jittered interval lies in (interval x (1 - jitter), interval], never above the
 * configured interval. Jitter only ever brings a rotation earlier, so the key package's safety
 * window (its lifetime minus the interval: 84 - 30 = 54 days by default) only grows; the price
 * is up to `jitter` more rotations for an identity (jitter / 2 on average over the fleet).
 *
 * The offset depends on the identity alone, not on the generation: then each rotation's interval
 * deadline is later than the previous one's (rotation times only move forward), as without
 * jitter, so a wake-up left behind by a lost Redis write (an AOF tail loss) is never later than
 * the deadline it should serve (DESIGN.md, guarantee 2). An offset drawn afresh per generation
 * broke that: the model test found a stale job 180 s past its deadline after a tail loss.
 */

/** The largest ROTATION_JITTER accepted: at most half an interval earlier. */
export const MAX_ROTATION_JITTER = 0.5;

/**
 * A stable number in [0, 1) for one identity: FNV-1a (32 bit) over the id's UTF-16 code units,
 * then murmur3's finaliser to spread the low bits. Not cryptographic; it only needs to be
 * uniform and the same everywhere.
 */
export function jitterUnit(identityId: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < identityId.length; i++) {
    h = Math.imul(h ^ identityId.charCodeAt(i), 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) / 2 ** 32;
}

/**
 * The interval (ms) after which `identityId` is due again after a rotation: `intervalMs` minus
 * up to `jitter` of it, whole milliseconds. With jitter 0 (the default) it is `intervalMs`
 * exactly. Always > intervalMs x (1 - jitter) and <= intervalMs.
 */
export function jitteredIntervalMs(intervalMs: number, jitter: number, identityId: string): number {
  if (!(jitter > 0)) return intervalMs;
  const bounded = Math.min(jitter, MAX_ROTATION_JITTER);
  return intervalMs - Math.floor(intervalMs * bounded * jitterUnit(identityId));
}
