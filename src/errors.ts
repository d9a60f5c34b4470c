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
} as const;
/** The codes of refused uploads (src/keys/validate-upload.ts, UPLOAD_CHECKS): all 422. */
export type UploadRefusalCode = `KP_${string}`;
export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes] | UploadRefusalCode;
