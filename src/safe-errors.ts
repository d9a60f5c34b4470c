/**
 * What an error may say outside the process. Clients and the `last_error` column get a code and
 * a message written by this service (a KpRotorError's), never a driver's text: a failed query's
 * message carries the SQL and its parameters, key material included. The server log gets the
 * details, redacted the same way (see {@link redactError}).
 */
import { KpRotorError } from "./errors.js";

export interface SafeError {
  code: string;
  message: string;
}

/** Control characters (NUL among them, which a Postgres text column refuses) become spaces. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: they are what this removes
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f]/g;
export const cleanText = (text: string, max = 500): string =>
  text.replace(CONTROL, " ").slice(0, max);

/** The code and message an error may show to a client or store in `last_error`. */
export function safeError(err: unknown): SafeError {
  if (err instanceof KpRotorError) return { code: err.code, message: cleanText(err.message) };
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
