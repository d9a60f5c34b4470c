/**
 * JSON schemas of the routes: Fastify validates requests and serialises responses with them,
 * and @fastify/swagger turns them into the OpenAPI document at /docs/json. Response schemas
 * list exactly what the handlers return; the status objects allow additional properties so a
 * field added in a service is passed through rather than silently dropped (the OpenAPI test
 * fails until it is documented here).
 */

/** The body of every error answer; shared as components.schemas.ErrorResponse. */
export const errorResponse = {
  $id: "ErrorResponse",
  type: "object",
  description: "What went wrong: a machine-readable code and a sentence for people",
  required: ["error", "message"],
  properties: {
    error: {
      type: "string",
      description:
        "INVALID_IDENTITY_ID, INVALID_REQUEST, UNAUTHORIZED, FORBIDDEN, IDENTITY_NOT_FOUND, ROUTE_NOT_FOUND, UNSUPPORTED_MEDIA_TYPE, RATE_LIMITED, OVERLOADED, DEPENDENCY_UNAVAILABLE, PUBLISH_FAILED, INTERNAL",
      examples: ["IDENTITY_NOT_FOUND"],
    },
    message: { type: "string", examples: ['identity "alice" is not registered'] },
  },
} as const;

const error = (description: string) => ({ description, $ref: "ErrorResponse#" }) as const;

/** The error answers every identity route can give besides its own. */
export const commonErrors = {
  400: error("Bad input: the message says which field and why"),
  401: error("Missing or wrong bearer token (only when API_TOKEN is set)"),
  503: error(
    "Postgres or Redis is unavailable; nothing was acknowledged, retry after Retry-After seconds",
  ),
} as const;
export const notFoundError = { 404: error("The identity is not registered") } as const;

const instant = { type: "string", format: "date-time" } as const;
const nullableInstant = { type: ["string", "null"], format: "date-time" } as const;

export const identityParams = {
  type: "object",
  required: ["identityId"],
  properties: {
    identityId: {
      type: "string",
      description: "1 to 128 characters of A-Z a-z 0-9 . _ -",
      examples: ["alice"],
    },
  },
} as const;

const base64 = (description: string) =>
  ({
    type: "string",
    contentEncoding: "base64",
    pattern: "^[A-Za-z0-9+/]*={0,2}$",
    description,
  }) as const;

/** Optional body of a registration: the identity's own credential and signature key. */
export const registerBody = {
  type: ["object", "null"],
  additionalProperties: false,
  properties: {
    credentialIdentity: base64(
      "identity bytes of the basic credential (default: the identity id in UTF-8), at most 1 KiB",
    ),
    signaturePrivateKey: base64(
      "the identity's own Ed25519 private key (32-byte seed); sealed at rest. Generated when absent. Custody service only.",
    ),
    custody: {
      type: "string",
      enum: ["service", "device"],
      description:
        'who holds the private keys: "service" (default: generated and sealed here) or "device" (the device uploads its key packages; the service never sees a private key)',
    },
    notifyUrl: {
      type: "string",
      maxLength: 2048,
      description:
        "custody device (required): the device's endpoint for signed `device.rotate` and `device.delete` notifications (https://, or http:// to loopback)",
    },
    signaturePublicKey: base64(
      "custody device (optional): the signature public key every upload must carry",
    ),
  },
} as const;

/** A device's upload was made current. */
export const uploadResponse = {
  type: "object",
  required: ["identityId", "ref", "generation", "changed"],
  properties: {
    identityId: { type: "string" },
    ref: { type: "string", description: "KeyPackageRef (hex) of the now current package" },
    generation: { type: "integer" },
    nextRotationAt: nullableInstant,
    changed: {
      type: "boolean",
      description: "false: this package was already current (a retried upload); nothing changed",
    },
  },
} as const;

export const uploadRefused = {
  422: error(
    "The key package was refused; `error` names the check (KP_PROTOCOL_VERSION, KP_CIPHERSUITE_NOT_ALLOWED, KP_LEAF_NODE_SOURCE, KP_SIGNATURE_INVALID, KP_LEAF_SIGNATURE_INVALID, KP_INIT_KEY_EQUALS_ENCRYPTION_KEY, KP_INIT_KEY_REUSED, KP_CREDENTIAL_MISMATCH, KP_SIGNATURE_KEY_MISMATCH, KP_NOT_YET_VALID, KP_EXPIRED, KP_LIFETIME_TOO_SHORT, KP_LIFETIME_TOO_LONG, KP_CAPABILITIES, KP_EXTENSION_NOT_IN_CAPABILITIES, KP_NOT_LAST_RESORT, KP_MALFORMED)",
  ),
  409: error(
    "CUSTODY_MISMATCH: the identity's custody is not device; UPLOAD_SUPERSEDED: another upload became current first",
  ),
  415: error("UNSUPPORTED_MEDIA_TYPE: the body must be Content-Type: message/mls"),
} as const;

export const custodyConflict = {
  409: error("CUSTODY_MISMATCH: the identity is registered with the other custody"),
} as const;

export const registered = {
  type: "object",
  required: ["identityId", "created", "generation", "nextRotationAt", "published"],
  properties: {
    identityId: { type: "string" },
    created: { type: "boolean", description: "false when the identity was already registered" },
    generation: {
      type: "integer",
      description: "generation of the current key package (0: none published yet)",
    },
    nextRotationAt: instant,
    published: { type: "boolean", description: "whether a current key package is published" },
    publishError: {
      type: "string",
      description: "why the first publish failed; the rotation worker keeps retrying",
    },
    custody: { type: "string", enum: ["service", "device"] },
    notificationSecret: {
      type: "string",
      description:
        "custody device: the Standard Webhooks secret (whsec_…) the device verifies its notifications with; the same on every registration",
    },
  },
} as const;

/** The current key package as JSON (Accept: application/json). */
export const keyPackageJson = {
  type: "object",
  required: [
    "identityId",
    "generation",
    "ref",
    "ciphersuite",
    "keyPackage",
    "notBefore",
    "notAfter",
  ],
  properties: {
    identityId: { type: "string" },
    generation: { type: "integer" },
    ref: { type: "string", description: "KeyPackageRef (hex)" },
    ciphersuite: { type: "string" },
    keyPackage: base64("TLS-encoded MLSMessage (mls_key_package)"),
    notBefore: instant,
    notAfter: instant,
    publishedAt: nullableInstant,
  },
} as const;

const listed = (items: object) =>
  ({
    type: "object",
    required: ["count", "identities"],
    properties: { count: { type: "integer" }, identities: { type: "array", items } },
  }) as const;
const currentPackage = {
  type: "object",
  properties: {
    identityId: { type: "string" },
    generation: { type: "integer" },
    createdAt: instant,
    notAfter: instant,
  },
} as const;

/** The fleet's lifetime-safety view. */
export const safetyResponse = {
  type: "object",
  required: ["at", "thresholds", "stale", "expiringSoon", "failing", "oldestCurrentKeyPackage"],
  properties: {
    at: instant,
    thresholds: {
      type: "object",
      properties: { staleBefore: instant, expiringBefore: instant },
    },
    stale: {
      ...listed(currentPackage),
      description: "current key packages older than ROTATION_INTERVAL + 1 day (oldest first)",
    },
    expiringSoon: {
      ...listed(currentPackage),
      description: "current key packages within 7 days of not_after",
    },
    failing: {
      ...listed({
        type: "object",
        properties: {
          identityId: { type: "string" },
          failures: { type: "integer" },
          lastError: { type: ["string", "null"] },
          lastFailureAt: nullableInstant,
          rotationDeadline: nullableInstant,
        },
      }),
      description: "identities whose last rotation attempts failed",
    },
    publishedCheckFailed: {
      ...listed({
        type: "object",
        properties: {
          identityId: { type: "string" },
          checkedAt: nullableInstant,
          error: { type: ["string", "null"] },
        },
      }),
      description:
        "identities whose published key package, read back from where it was published, failed its last check (wrong ref, bad signature, too short a life, unreadable); a failure rotates at once",
    },
    awaitingDevice: {
      ...listed({
        type: "object",
        properties: {
          identityId: { type: "string" },
          awaitingSince: nullableInstant,
          awaitingSeconds: { type: "integer" },
          rotationDeadline: nullableInstant,
        },
      }),
      description:
        "device identities whose rotation is due and whose upload has not come (longest waiting first); each is notified again with backoff",
    },
    sealedKeys: {
      description:
        "sealed private keys by the KEY_ENCRYPTION_KEY they name, as checked at this process's start; unreadable ones name a key the process does not have (null: not checked)",
      anyOf: [
        { type: "null" },
        {
          type: "object",
          properties: {
            checkedAt: instant,
            byKeyId: { type: "object", additionalProperties: { type: "integer" } },
            unreadable: { type: "integer" },
            unknownKeyIds: { type: "array", items: { type: "string" } },
          },
        },
      ],
    },
    oldestCurrentKeyPackage: {
      anyOf: [
        { type: "null" },
        {
          ...currentPackage,
          properties: { ...currentPackage.properties, ageSeconds: { type: "integer" } },
        },
      ],
    },
  },
} as const;

const pulledIn = {
  type: "object",
  required: ["identityId", "nextRotationAt", "pulledIn"],
  properties: {
    identityId: { type: "string" },
    nextRotationAt: { ...instant, description: "the rotation deadline now committed" },
    pulledIn: {
      type: "boolean",
      description: "false when the deadline was already as early (earliest wins)",
    },
  },
} as const;
export const pulledInResponse = pulledIn;

export const welcomeBatchBody = (maxItems: number) =>
  ({
    type: "object",
    required: ["identityIds"],
    additionalProperties: false,
    properties: {
      identityIds: {
        type: "array",
        minItems: 1,
        maxItems,
        items: { type: "string" },
        description: "identities whose key package a welcome consumed; duplicates count once",
      },
    },
  }) as const;

export const welcomeBatchResponse = {
  type: "object",
  required: ["accepted", "notFound"],
  properties: {
    accepted: { type: "array", items: pulledIn },
    notFound: {
      type: "array",
      items: { type: "string" },
      description: "ids that are not registered; nothing was written for them",
    },
  },
} as const;

const wakeup = {
  type: "object",
  description: "the identity's wake-up job in Redis as it stands",
  required: ["state"],
  properties: {
    state: { type: "string", enum: ["missing", "delayed", "waiting", "active", "finished"] },
    fireAt: { type: "integer", description: "when a delayed wake-up fires (epoch ms)" },
  },
} as const;

export const identityStatus = {
  type: "object",
  additionalProperties: true,
  required: [
    "identityId",
    "generation",
    "nextRotationAt",
    "lastRotatedAt",
    "nextDeletionAt",
    "rotationFailures",
    "lastError",
    "lastFailureAt",
    "createdAt",
    "wakeups",
    "keyPackages",
  ],
  properties: {
    identityId: { type: "string" },
    generation: { type: "integer" },
    nextRotationAt: nullableInstant,
    lastRotatedAt: nullableInstant,
    nextDeletionAt: { ...nullableInstant, description: "earliest delete_at of superseded keys" },
    rotationFailures: { type: "integer", description: "consecutive failed rotation attempts" },
    lastError: { type: ["string", "null"] },
    lastFailureAt: nullableInstant,
    createdAt: instant,
    custody: {
      type: "string",
      enum: ["service", "device"],
      description: "who holds the private keys",
    },
    awaitingDeviceSince: {
      ...nullableInstant,
      description:
        "custody device: since when the rotation has been due without an upload (null: not waiting)",
    },
    awaitingDeviceSeconds: { type: ["integer", "null"] },
    publishedCheck: {
      type: "object",
      description:
        "the last read-back of the published package: when, and why it failed (null: passed or none ran)",
      properties: { lastCheckedAt: nullableInstant, error: { type: ["string", "null"] } },
    },
    wakeups: {
      type: "object",
      properties: { rotation: wakeup, deletion: wakeup },
    },
    keyPackages: {
      type: "array",
      description: "current and superseded key packages, oldest first (no private keys)",
      items: {
        type: "object",
        additionalProperties: true,
        required: [
          "generation",
          "ref",
          "ciphersuite",
          "current",
          "createdAt",
          "notBefore",
          "notAfter",
          "deleteAt",
        ],
        properties: {
          generation: { type: "integer" },
          ref: { type: "string", description: "KeyPackageRef (hex)" },
          ciphersuite: { type: "string" },
          current: { type: "boolean" },
          createdAt: instant,
          notBefore: instant,
          notAfter: instant,
          deleteAt: { ...nullableInstant, description: "set once superseded" },
          state: {
            type: "string",
            enum: ["pending", "current", "superseded"],
            description: "pending: generated, not yet published",
          },
          publishedAt: { ...nullableInstant, description: "when it was published" },
        },
      },
    },
  },
} as const;

export const health = {
  type: "object",
  required: ["status"],
  properties: { status: { type: "string", enum: ["ok"] } },
} as const;

export const readiness = {
  type: "object",
  required: ["ready", "accepting", "overloaded", "postgres", "redis"],
  properties: {
    ready: { type: "boolean" },
    accepting: { type: "boolean", description: "false once shutdown has begun" },
    overloaded: {
      type: "boolean",
      description: "true while new requests are refused (503 OVERLOADED): too many in progress",
    },
    postgres: { type: "boolean" },
    redis: { type: "boolean" },
  },
} as const;
