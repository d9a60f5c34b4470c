import type { ApiErrorCode, UploadCheckCode } from "./contract/api.js";
import { identityIdProblem } from "./core/identity-id.js";

/**
 * One base error with a machine-readable code. The API maps codes to HTTP statuses in one place
 * (api/plugins/errors.ts); anything that is not a KpRotorError is an internal error whose details
 * never reach a client.
 */
export class KpRotorError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "KpRotorError";
  }
}

export const ErrorCodes = {
  invalidConfig: "INVALID_CONFIG",
  invalidIdentityId: "INVALID_IDENTITY_ID",
  invalidRequest: "INVALID_REQUEST",
  notFound: "IDENTITY_NOT_FOUND",
  unavailable: "DEPENDENCY_UNAVAILABLE",
  keyMaterial: "KEY_MATERIAL_UNREADABLE",
  publishFailed: "PUBLISH_FAILED",
  /** The request is for a device identity, or for a service one (custody), and cannot apply. */
  custodyMismatch: "CUSTODY_MISMATCH",
  /** Another upload for the identity became current first (409). */
  uploadSuperseded: "UPLOAD_SUPERSEDED",
  /** A notification to a device's endpoint failed (recorded, retried with backoff). */
  deviceNotifyFailed: "DEVICE_NOTIFY_FAILED",
} as const satisfies Record<
  string,
  ApiErrorCode | "INVALID_CONFIG" | "KEY_MATERIAL_UNREADABLE" | "DEVICE_NOTIFY_FAILED"
>;
/** A refused upload's code names the check (src/contract/api.ts, UPLOAD_CHECKS): all 422. */
export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes] | UploadCheckCode;

/** Throws INVALID_IDENTITY_ID (400) saying what is wrong with `id`. */
export function assertIdentityId(id: unknown): asserts id is string {
  const problem = identityIdProblem(id);
  if (problem) throw new KpRotorError(ErrorCodes.invalidIdentityId, problem);
}

/** The error for an identity id that names no registered identity (404). */
export const notFound = (id: string) =>
  new KpRotorError(ErrorCodes.notFound, `identity ${JSON.stringify(id)} is not registered`);

/** Postgres or Redis did not answer, or answered "not now": 503, nothing acknowledged. */
export const unavailable = (what: "Postgres" | "Redis", cause: unknown) =>
  new KpRotorError(ErrorCodes.unavailable, `${what} is unavailable`, { cause });

/** The error and its causes, outermost first (at most `depth`). */
export function* causes(err: unknown, depth = 5): Generator<Error> {
  for (let e = err, n = 0; e instanceof Error && n < depth; n++, e = e.cause) yield e;
}

/** Errors of the operating system's network calls: the peer is not reachable. */
export const NETWORK_ERRNOS: ReadonlySet<string> = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

/**
 * The same object, its methods' failures passed through `classify` (an adapter turns its driver's
 * errors into the service's own there). Async generator methods are left as they are.
 */
export function classifyingErrors<T extends object>(
  target: T,
  classify: (err: unknown) => unknown,
): T {
  const out = { ...target } as Record<string, unknown>;
  for (const [name, value] of Object.entries(target)) {
    if (typeof value !== "function" || value.constructor.name === "AsyncGeneratorFunction")
      continue;
    out[name] = (...args: unknown[]) => {
      try {
        const result = (value as (...a: unknown[]) => unknown).apply(target, args);
        return result instanceof Promise
          ? result.catch((err: unknown) => Promise.reject(classify(err)))
          : result;
      } catch (err) {
        throw classify(err);
      }
    };
  }
  return out as T;
}
