/**
 * What an error may say outside the process. Clients and the `last_error` column get a code and
 * a message written by this service (a KpRotorError's), never a driver's text: a failed query's
 * message carries the SQL and its parameters, key material included. The server log gets the
 * details, redacted the same way (see {@link redactError}).
 */
import { ErrorCodes, KpRotorError } from "./errors.js";

export interface SafeError {
  code: string;
  message: string;
}

/** Errors from the drivers that mean "Postgres or Redis is not answering", not "we are broken". */
const UNAVAILABLE =
  /ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|CONNECTION_CLOSED|CONNECTION_ENDED|CONNECTION_DESTROYED|CONNECT_TIMEOUT|Connection is closed|MaxRetriesPerRequest|Command timed out|Stream isn't writeable|the database system is (starting up|shutting down)|terminating connection/;

/** Postgres shutting down or not accepting connections, or too slow (lock_timeout, statement_timeout, idle-in-transaction timeout). */
const UNAVAILABLE_SQLSTATES = new Set(["57P01", "57P03", "55P03", "57014", "25P03"]);

/** True when the error (or one of its causes) says Postgres or Redis is unavailable. */
export function isUnavailable(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; depth++) {
    const code = (e as { code?: unknown }).code;
    // ioredis names the error of a command that ran out of retries (MaxRetriesPerRequestError)
    // without saying so in its message: test the name too.
    if (
      UNAVAILABLE.test(e.message) ||
      UNAVAILABLE.test(e.name) ||
      (typeof code === "string" && (UNAVAILABLE.test(code) || UNAVAILABLE_SQLSTATES.has(code)))
    ) {
      return true;
    }
    e = e.cause;
  }
  return false;
}

/** Control characters (NUL among them, which a Postgres text column refuses) become spaces. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: they are what this removes
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f]/g;
export const cleanText = (text: string, max = 500): string =>
  text.replace(CONTROL, " ").slice(0, max);

/** The code and message an error may show to a client or store in `last_error`. */
export function safeError(err: unknown): SafeError {
  if (err instanceof KpRotorError) return { code: err.code, message: cleanText(err.message) };
  if (isUnavailable(err)) {
    return { code: ErrorCodes.unavailable, message: "Postgres or Redis is unavailable" };
  }
  return { code: "INTERNAL", message: "internal error; the details are in the server log" };
}

/** `CODE: message`, the form of `publishError` and `last_error`. */
export const formatSafeError = (err: unknown): string => {
  const { code, message } = safeError(err);
  return `${code}: ${message}`;
};

/**
 * An error for the server log: name, code and message of it and its causes, with the parameters
 * of a failed query cut off (drizzle puts them in the message after "params:") and nothing else
 * (a driver's error objects hold the parameters in properties too).
 */
export function redactError(err: unknown, depth = 0): Record<string, unknown> | string {
  if (!(err instanceof Error)) return cleanText(String(err), 200);
  const code = (err as { code?: unknown }).code;
  const message = err.message.replace(/\nparams: [\s\S]*$/, "\nparams: [redacted]");
  return {
    type: err.name,
    ...(typeof code === "string" ? { code } : {}),
    message: cleanText(message, 2_000),
    ...(err.cause !== undefined && depth < 4 ? { cause: redactError(err.cause, depth + 1) } : {}),
  };
}
