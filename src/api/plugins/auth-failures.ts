/**
 * Failed authentications per client address in fixed windows, in this process's memory. Bounded:
 * beyond MAX_ADDRESSES tracked addresses the oldest window is dropped first, so a flood from many
 * addresses costs memory in proportion to the bound, not to the flood.
 */
const MAX_ADDRESSES = 100_000;

export interface FailureLimiter {
  /** Seconds until `address` may try again, or undefined when it may try now. */
  blockedFor(address: string): number | undefined;
  /** Notes a failed attempt from `address`. */
  fail(address: string): void;
}

export function createFailureLimiter(
  max: number,
  windowMs: number,
  now: () => number = Date.now,
): FailureLimiter {
  // Insertion order is window-start order: a window is re-inserted when it restarts.
  const windows = new Map<string, { count: number; resetAt: number }>();
  const current = (address: string) => {
    const entry = windows.get(address);
    if (entry === undefined || entry.resetAt <= now()) return undefined;
    return entry;
  };
  return {
    blockedFor(address) {
      const entry = current(address);
      if (entry === undefined || entry.count < max) return undefined;
      return Math.max(1, Math.ceil((entry.resetAt - now()) / 1000));
    },
    fail(address) {
      const entry = current(address);
      if (entry !== undefined) {
        entry.count++;
        return;
      }
      windows.delete(address);
      windows.set(address, { count: 1, resetAt: now() + windowMs });
      while (windows.size > MAX_ADDRESSES) {
        const oldest = windows.keys().next().value as string;
        windows.delete(oldest);
      }
    },
  };
}
