import { causes, classifyingErrors, KpRotorError, NETWORK_ERRNOS, unavailable } from "../errors.js";

/** ioredis' errors for a command that never got an answer (it gives them no code, only these). */
const IOREDIS_NAMES = new Set(["MaxRetriesPerRequestError", "ClusterAllFailedError"]);
const IOREDIS_MESSAGES = new Set([
  "Connection is closed.",
  "Command timed out",
  "Stream isn't writeable and enableOfflineQueue options is false",
]);
/**
 * ioredis Cluster's errors when no node could take a command (no code either; the cause is only
 * text in the message): matched by the start of the message.
 */
const CLUSTER_PREFIXES = [
  "Too many Cluster redirections",
  "None of startup nodes is available",
  "Cluster isn't ready",
];
/** Redis' error replies (their first word is the code) that mean "not now". */
const NOT_NOW_REPLIES = new Set([
  "LOADING",
  "BUSY",
  "MASTERDOWN",
  "CLUSTERDOWN",
  "TRYAGAIN",
  "READONLY",
]);

/** A Redis failure as the service's own error (DEPENDENCY_UNAVAILABLE), or `err` unchanged. */
export function classifyRedisError(err: unknown): unknown {
  if (err instanceof KpRotorError) return err;
  for (const e of causes(err)) {
    const code = (e as { code?: unknown }).code;
    if (
      IOREDIS_NAMES.has(e.name) ||
      IOREDIS_MESSAGES.has(e.message) ||
      CLUSTER_PREFIXES.some((prefix) => e.message.startsWith(prefix)) ||
      (e.name === "ReplyError" && NOT_NOW_REPLIES.has(e.message.split(" ", 1)[0] ?? "")) ||
      (typeof code === "string" && NETWORK_ERRNOS.has(code))
    ) {
      return unavailable("Redis", err);
    }
  }
  return err;
}

/** `target` with every method's Redis failures classified (see classifyRedisError). */
export const withRedisErrors = <T extends object>(target: T): T =>
  classifyingErrors(target, classifyRedisError);
