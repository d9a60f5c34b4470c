import { causes, classifyingErrors, KpRotorError, NETWORK_ERRNOS, unavailable } from "../errors.js";

/**
 * Postgres' answers that mean "not now" rather than "wrong": shutting down or starting up
 * (57P01-57P03), too many connections (53300), a lock or statement timeout (55P03, 57014), an
 * idle transaction cut off (25P03), and every connection exception (class 08).
 */
const NOT_NOW_SQLSTATES = new Set(["57P01", "57P02", "57P03", "53300", "55P03", "57014", "25P03"]);
/** The postgres driver's own codes for a connection that went away or never came. */
const DRIVER_CODES = new Set([
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT",
]);

/** A Postgres failure as the service's own error (DEPENDENCY_UNAVAILABLE), or `err` unchanged. */
export function classifyPostgresError(err: unknown): unknown {
  if (err instanceof KpRotorError) return err;
  for (const e of causes(err)) {
    const code = (e as { code?: unknown }).code;
    if (typeof code !== "string") continue;
    if (
      NOT_NOW_SQLSTATES.has(code) ||
      (code.length === 5 && code.startsWith("08")) ||
      DRIVER_CODES.has(code) ||
      NETWORK_ERRNOS.has(code)
    ) {
      return unavailable("Postgres", err);
    }
  }
  return err;
}

/** `target` with every method's Postgres failures classified (see classifyPostgresError). */
export const withPostgresErrors = <T extends object>(target: T): T =>
  classifyingErrors(target, classifyPostgresError);
