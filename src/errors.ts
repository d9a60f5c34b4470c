import type { ApiErrorCode } from "./contract/api.js";
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
} as const satisfies Record<string, ApiErrorCode | "INVALID_CONFIG" | "KEY_MATERIAL_UNREADABLE">;
export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

/** Throws INVALID_IDENTITY_ID (400) saying what is wrong with `id`. */
export function assertIdentityId(id: unknown): asserts id is string {
  const problem = identityIdProblem(id);
  if (problem) throw new KpRotorError(ErrorCodes.invalidIdentityId, problem);
}

/** The error for an identity id that names no registered identity (404). */
export const notFound = (id: string) =>
  new KpRotorError(ErrorCodes.notFound, `identity ${JSON.stringify(id)} is not registered`);
