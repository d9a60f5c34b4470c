/**
 * ROTATION_JITTER: spreads interval deadlines so that identities registered together (a mass
 * registration) do not all come due in the same second 30 days later, and again every interval
 * after that. Pure and deterministic: the same identity and generation always get the same
 * deadline, in every process and in the simulation (bench/sim), so a retried promote and a
 * replayed one agree.
 *
 * The bound: the jittered interval lies in (interval x (1 - jitter), interval], never above the
 * configured interval. Jitter only ever brings a rotation earlier, so the key package's safety
 * window (its lifetime minus the interval: 84 - 30 = 54 days by default) only grows; the price
 * is up to `jitter` more rotations per identity in the long run.
 */

/** The largest ROTATION_JITTER accepted: at most half an interval earlier. */
export const MAX_ROTATION_JITTER = 0.5;

/**
 * A stable number in [0, 1) for one identity's generation: FNV-1a (32 bit) over the id's UTF-16
 * code units and the generation's four bytes, then murmur3's finaliser to spread the low bits.
 * Not cryptographic; it only needs to be uniform and the same everywhere.
 */
export function jitterUnit(identityId: string, generation: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < identityId.length; i++) {
    h = Math.imul(h ^ identityId.charCodeAt(i), 0x01000193);
  }
  for (let shift = 0; shift < 32; shift += 8) {
    h = Math.imul(h ^ ((generation >>> shift) & 0xff), 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) / 2 ** 32;
}

/**
 * The interval (ms) after which the rotation to `generation` of `identityId` is due again:
 * `intervalMs` minus up to `jitter` of it, whole milliseconds. With jitter 0 (the default) it is
 * `intervalMs` exactly. Always > intervalMs x (1 - jitter) and <= intervalMs.
 */
export function jitteredIntervalMs(
  intervalMs: number,
  jitter: number,
  identityId: string,
  generation: number,
): number {
  if (!(jitter > 0)) return intervalMs;
  const bounded = Math.min(jitter, MAX_ROTATION_JITTER);
  return intervalMs - Math.floor(intervalMs * bounded * jitterUnit(identityId, generation));
}
