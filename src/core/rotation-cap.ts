/** The window of MAX_ROTATIONS_PER_HOUR. */
export const CAP_WINDOW_MS = 3_600_000;

/**
 * The earliest time a new rotation may happen under a cap of `cap` rotations per identity per
 * hour, given the identity's recent rotations (their times, epoch ms, any order): when `cap` of
 * them fall within the hour before `now`, the cap-th most recent one plus an hour; otherwise
 * no constraint (-Infinity). A welcome over the cap is not dropped: its rotation is deferred to
 * this time.
 */
export function earliestAllowedRotation(
  recent: readonly number[],
  now: number,
  cap: number,
): number {
  const inWindow = recent.filter((at) => at > now - CAP_WINDOW_MS).sort((a, b) => b - a);
  const limiting = inWindow[cap - 1];
  return limiting === undefined ? Number.NEGATIVE_INFINITY : limiting + CAP_WINDOW_MS;
}
