/**
 * Durations as configured by operators: a bare number of milliseconds or a number with a unit.
 * Kept tiny and strict on purpose: "5 s", "1.5d" or "10m " are rejected rather than guessed at.
 */
const UNIT_MS = {
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
} as const;

const DURATION = /^(\d+)(ms|s|m|h|d)?$/;

/** Parses `500`, `500ms`, `5s`, `10m`, `2h` or `30d` into milliseconds; returns undefined when malformed. */
export function parseDuration(text: string): number | undefined {
  const match = DURATION.exec(text.trim() === text ? text : "");
  if (!match) return undefined;
  const amount = Number(match[1]);
  const unit = (match[2] ?? "ms") as keyof typeof UNIT_MS;
  const ms = amount * UNIT_MS[unit];
  return Number.isSafeInteger(ms) ? ms : undefined;
}

/** Formats milliseconds in the largest unit that divides them exactly (for logs and errors). */
export function formatDuration(ms: number): string {
  for (const unit of ["d", "h", "m", "s"] as const) {
    if (ms !== 0 && ms % UNIT_MS[unit] === 0) return `${ms / UNIT_MS[unit]}${unit}`;
  }
  return `${ms}ms`;
}
