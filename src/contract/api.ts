import Type, { type Static, type TSchema } from "typebox";

/**
 * The HTTP API's contract, written once. Fastify validates requests and serialises answers with
 * these schemas (through @fastify/type-provider-typebox, which also types the handlers),
 * @fastify/swagger turns them into the OpenAPI document at /docs/json, the error handler takes
 * its statuses from API_ERRORS, and the typed client (src/client) takes its types from here.
 * Nothing here does I/O; the client imports only types from it.
 */

/**
 * The checks an uploaded key package must pass (RFC 9420 §10.1 and policy; src/keys/
 * validate-upload.ts), in the order they run. A refused upload answers 422 with the code of the
 * first check it failed.
 */
export const UPLOAD_CHECKS = {
  malformed: "KP_MALFORMED",
  protocolVersion: "KP_PROTOCOL_VERSION",
  ciphersuite: "KP_CIPHERSUITE_NOT_ALLOWED",
  leafNodeSource: "KP_LEAF_NODE_SOURCE",
  signature: "KP_SIGNATURE_INVALID",
  leafSignature: "KP_LEAF_SIGNATURE_INVALID",
  initKeyEqualsEncryptionKey: "KP_INIT_KEY_EQUALS_ENCRYPTION_KEY",
  initKeyReused: "KP_INIT_KEY_REUSED",
  credential: "KP_CREDENTIAL_MISMATCH",
  signatureKey: "KP_SIGNATURE_KEY_MISMATCH",
  notYetValid: "KP_NOT_YET_VALID",
  expired: "KP_EXPIRED",
  lifetimeTooShort: "KP_LIFETIME_TOO_SHORT",
  lifetimeTooLong: "KP_LIFETIME_TOO_LONG",
  capabilities: "KP_CAPABILITIES",
  extensionNotInCapabilities: "KP_EXTENSION_NOT_IN_CAPABILITIES",
  lastResort: "KP_NOT_LAST_RESORT",
} as const;
export type UploadCheckCode = (typeof UPLOAD_CHECKS)[keyof typeof UPLOAD_CHECKS];
const uploadRefusals = Object.fromEntries(
  Object.entries(UPLOAD_CHECKS).map(([check, code]) => [
    code,
    { status: 422, description: `the uploaded key package failed the ${check} check` },
  ]),
) as Record<UploadCheckCode, { status: 422; description: string }>;

/**
 * Every error code the API answers with, its HTTP status and what it means. A handler or plugin
 * can only send a code listed here (errorBody is typed by it), and the hostile-input fuzzer fails
 * on any other code it sees.
 */
export const API_ERRORS = {
  INVALID_IDENTITY_ID: { status: 400, description: "the identity id is malformed" },
  INVALID_REQUEST: { status: 400, description: "a field of the request is missing or wrong" },
  UNAUTHORIZED: { status: 401, description: "missing or wrong credentials" },
  FORBIDDEN: { status: 403, description: "the credentials do not allow this route" },
  IDENTITY_NOT_FOUND: { status: 404, description: "the identity is not registered" },
  ROUTE_NOT_FOUND: { status: 404, description: "no such route" },
  CUSTODY_MISMATCH: {
    status: 409,
    description: "the identity is registered with the other custody (service or device)",
  },
  UPLOAD_SUPERSEDED: { status: 409, description: "another upload became current first" },
  PAYLOAD_TOO_LARGE: { status: 413, description: "the body is larger than allowed" },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, description: "the body is not of an accepted type" },
  RATE_LIMITED: { status: 429, description: "too many requests; retry after Retry-After" },
  INTERNAL: { status: 500, description: "an unexpected error; the details are in the log" },
  PUBLISH_FAILED: { status: 502, description: "the publisher refused or did not answer" },
  OVERLOADED: { status: 503, description: "too many requests in progress; retry later" },
  DEPENDENCY_UNAVAILABLE: {
    status: 503,
    description: "Postgres or Redis is unavailable; nothing was acknowledged",
  },
  ...uploadRefusals,
} as const satisfies Record<string, { status: number; description: string }>;

export type ApiErrorCode = keyof typeof API_ERRORS;
export const API_ERROR_CODES = Object.keys(API_ERRORS) as ApiErrorCode[];

/** The body of every error answer; shared as components.schemas.ErrorResponse. */
export const ErrorResponse = Type.Object(
  {
    error: Type.String({
      description: API_ERROR_CODES.join(", "),
      enum: API_ERROR_CODES,
      examples: ["IDENTITY_NOT_FOUND"],
    }),
    message: Type.String({ examples: ['identity "alice" is not registered'] }),
  },
  { $id: "ErrorResponse", description: "What went wrong: a code and a sentence for people" },
);
export type ErrorBody = { error: ApiErrorCode; message: string };

const error = (description: string) =>
  Type.Unsafe<ErrorBody>({ description, $ref: "ErrorResponse#" });

/** The error answers every identity route can give besides its own. */
export const commonErrors = {
  400: error("Bad input: the message says which field and why"),
  401: error("Missing or wrong bearer token"),
  503: error(
    "Postgres or Redis is unavailable; nothing was acknowledged, retry after Retry-After seconds",
  ),
};
export const notFoundError = { 404: error("The identity is not registered") };

/** A schema with a description of its own use (OpenAPI shows it on the answer). */
export const described = <T extends TSchema>(schema: T, description: string): T =>
  ({ ...schema, description }) as T;

const instant = (description?: string) =>
  Type.String({ format: "date-time", ...(description ? { description } : {}) });
const nullableInstant = (description?: string) =>
  Type.Union([instant(), Type.Null()], description ? { description } : {});
const base64 = (description: string) =>
  Type.String({ contentEncoding: "base64", pattern: "^[A-Za-z0-9+/]*={0,2}$", description });

export const IdentityParams = Type.Object({
  identityId: Type.String({
    description: "1 to 128 characters of A-Z a-z 0-9 . _ -",
    examples: ["alice"],
  }),
});

/** Optional body of a registration: the identity's own credential and signature key. */
export const RegisterBody = Type.Union([
  Type.Object(
    {
      credentialIdentity: Type.Optional(
        base64(
          "identity bytes of the basic credential (default: the identity id in UTF-8), at most 1 KiB",
        ),
      ),
      signaturePrivateKey: Type.Optional(
        base64(
          "the identity's own Ed25519 private key (32-byte seed); sealed at rest. Generated when absent. Custody service only.",
        ),
      ),
      custody: Type.Optional(
        Type.Union([Type.Literal("service"), Type.Literal("device")], {
          description:
            'who holds the private keys: "service" (default: generated and sealed here) or "device" (the device uploads its key packages; the service never sees a private key)',
        }),
      ),
      notifyUrl: Type.Optional(
        Type.String({
          maxLength: 2048,
          description:
            "custody device (required): the device's endpoint for signed `device.rotate` and `device.delete` notifications (https://, or http:// to loopback)",
        }),
      ),
      signaturePublicKey: Type.Optional(
        base64("custody device (optional): the signature public key every upload must carry"),
      ),
    },
    { additionalProperties: false },
  ),
  Type.Null(),
]);

const Custody = Type.Union([Type.Literal("service"), Type.Literal("device")]);

export const Registered = Type.Object({
  identityId: Type.String(),
  created: Type.Boolean({ description: "false when the identity was already registered" }),
  generation: Type.Integer({
    description: "generation of the current key package (0: none published yet)",
  }),
  nextRotationAt: instant(),
  published: Type.Boolean({ description: "whether a current key package is published" }),
  publishError: Type.Optional(
    Type.String({
      description: "why the first publish failed; the rotation worker keeps retrying",
    }),
  ),
  custody: Type.Optional(Custody),
  notificationSecret: Type.Optional(
    Type.String({
      description:
        "custody device: the Standard Webhooks secret (whsec_…) the device verifies its notifications with; the same on every registration",
    }),
  ),
});

/** A device's upload was made current. */
export const Uploaded = Type.Object({
  identityId: Type.String(),
  ref: Type.String({ description: "KeyPackageRef (hex) of the now current package" }),
  generation: Type.Integer(),
  nextRotationAt: Type.Optional(nullableInstant()),
  changed: Type.Boolean({
    description: "false: this package was already current (a retried upload); nothing changed",
  }),
});

/** The error answers of an upload besides the common ones. */
export const uploadRefused = {
  422: error(
    `The key package was refused; \`error\` names the check (${Object.values(UPLOAD_CHECKS).join(", ")})`,
  ),
  409: error(
    "CUSTODY_MISMATCH: the identity's custody is not device; UPLOAD_SUPERSEDED: another upload became current first",
  ),
  413: error("PAYLOAD_TOO_LARGE: more than 64 KiB"),
  415: error("UNSUPPORTED_MEDIA_TYPE: the body must be Content-Type: message/mls"),
  502: error(
    "PUBLISH_FAILED: the publisher refused it or did not answer; uploading the same bytes again publishes it again",
  ),
};

export const custodyConflict = {
  409: error("CUSTODY_MISMATCH: the identity is registered with the other custody"),
};

export const PulledIn = Type.Object({
  identityId: Type.String(),
  nextRotationAt: instant("the rotation deadline now committed"),
  pulledIn: Type.Boolean({
    description: "false when the deadline was already as early (earliest wins)",
  }),
});

export const WelcomeBatchBody = (maxItems: number) =>
  Type.Object(
    {
      identityIds: Type.Array(Type.String(), {
        minItems: 1,
        maxItems,
        description: "identities whose key package a welcome consumed; duplicates count once",
      }),
    },
    { additionalProperties: false },
  );

export const WelcomeBatchResult = Type.Object({
  accepted: Type.Array(PulledIn),
  notFound: Type.Array(Type.String(), {
    description: "ids that are not registered; nothing was written for them",
  }),
});

/** The current key package as JSON (Accept: application/json). */
export const KeyPackageJson = Type.Object({
  identityId: Type.String(),
  generation: Type.Integer(),
  ref: Type.String({ description: "KeyPackageRef (hex)" }),
  ciphersuite: Type.String(),
  keyPackage: base64("TLS-encoded MLSMessage (mls_key_package)"),
  notBefore: instant(),
  notAfter: instant(),
  publishedAt: nullableInstant(),
});

export const KeyPackageQuery = Type.Object(
  { format: Type.Optional(Type.Union([Type.Literal("json"), Type.Literal("binary")])) },
  { additionalProperties: false },
);

export const WakeupView = Type.Object(
  {
    state: Type.Union([
      Type.Literal("missing"),
      Type.Literal("delayed"),
      Type.Literal("waiting"),
      Type.Literal("active"),
      Type.Literal("finished"),
    ]),
    fireAt: Type.Optional(Type.Integer({ description: "when a delayed wake-up fires (epoch ms)" })),
  },
  { description: "the identity's wake-up job in Redis as it stands" },
);

export const KeyPackageStatus = Type.Object(
  {
    generation: Type.Integer(),
    ref: Type.String({ description: "KeyPackageRef (hex)" }),
    ciphersuite: Type.String(),
    current: Type.Boolean(),
    createdAt: instant(),
    notBefore: instant(),
    notAfter: instant(),
    deleteAt: nullableInstant("set once superseded"),
    state: Type.Optional(
      Type.Union([Type.Literal("pending"), Type.Literal("current"), Type.Literal("superseded")], {
        description: "pending: generated, not yet published",
      }),
    ),
    publishedAt: Type.Optional(nullableInstant("when it was published")),
  },
  { additionalProperties: true },
);

export const IdentityStatus = Type.Object(
  {
    identityId: Type.String(),
    generation: Type.Integer(),
    nextRotationAt: nullableInstant(),
    lastRotatedAt: nullableInstant(),
    nextDeletionAt: nullableInstant("earliest delete_at of superseded keys"),
    rotationFailures: Type.Integer({ description: "consecutive failed rotation attempts" }),
    lastError: Type.Union([Type.String(), Type.Null()]),
    lastFailureAt: nullableInstant(),
    createdAt: instant(),
    custody: Type.Optional(Custody),
    awaitingDeviceSince: Type.Optional(
      nullableInstant(
        "custody device: since when the rotation has been due without an upload (null: not waiting)",
      ),
    ),
    awaitingDeviceSeconds: Type.Optional(Type.Union([Type.Integer(), Type.Null()])),
    publishedCheck: Type.Optional(
      Type.Object(
        {
          lastCheckedAt: Type.Optional(nullableInstant()),
          error: Type.Optional(Type.Union([Type.String(), Type.Null()])),
        },
        {
          description:
            "the last read-back of the published package: when, and why it failed (null: passed or none ran)",
        },
      ),
    ),
    wakeups: Type.Object({
      rotation: Type.Optional(WakeupView),
      deletion: Type.Optional(WakeupView),
    }),
    keyPackages: Type.Array(KeyPackageStatus, {
      description: "current and superseded key packages, oldest first (no private keys)",
    }),
  },
  { additionalProperties: true },
);

const CurrentPackage = Type.Object({
  identityId: Type.Optional(Type.String()),
  generation: Type.Optional(Type.Integer()),
  createdAt: Type.Optional(instant()),
  notAfter: Type.Optional(instant()),
});
const listed = <T extends TSchema>(items: T, description: string) =>
  Type.Object({ count: Type.Integer(), identities: Type.Array(items) }, { description });

/** The fleet's lifetime-safety view. */
export const SafetyReport = Type.Object({
  at: instant(),
  thresholds: Type.Object({
    staleBefore: Type.Optional(instant()),
    expiringBefore: Type.Optional(instant()),
  }),
  stale: listed(
    CurrentPackage,
    "current key packages older than ROTATION_INTERVAL + 1 day (oldest first)",
  ),
  expiringSoon: listed(CurrentPackage, "current key packages within 7 days of not_after"),
  failing: listed(
    Type.Object({
      identityId: Type.Optional(Type.String()),
      failures: Type.Optional(Type.Integer()),
      lastError: Type.Optional(Type.Union([Type.String(), Type.Null()])),
      lastFailureAt: Type.Optional(nullableInstant()),
      rotationDeadline: Type.Optional(nullableInstant()),
    }),
    "identities whose last rotation attempts failed",
  ),
  publishedCheckFailed: Type.Optional(
    listed(
      Type.Object({
        identityId: Type.Optional(Type.String()),
        checkedAt: Type.Optional(nullableInstant()),
        error: Type.Optional(Type.Union([Type.String(), Type.Null()])),
      }),
      "identities whose published key package, read back from where it was published, failed its last check (wrong ref, bad signature, too short a life, unreadable); a failure rotates at once",
    ),
  ),
  awaitingDevice: Type.Optional(
    listed(
      Type.Object({
        identityId: Type.Optional(Type.String()),
        awaitingSince: Type.Optional(nullableInstant()),
        awaitingSeconds: Type.Optional(Type.Integer()),
        rotationDeadline: Type.Optional(nullableInstant()),
      }),
      "device identities whose rotation is due and whose upload has not come (longest waiting first); each is notified again with backoff",
    ),
  ),
  sealedKeys: Type.Optional(
    Type.Union(
      [
        Type.Null(),
        Type.Object({
          checkedAt: Type.Optional(instant()),
          byKeyId: Type.Optional(Type.Record(Type.String(), Type.Integer())),
          unreadable: Type.Optional(Type.Integer()),
          unknownKeyIds: Type.Optional(Type.Array(Type.String())),
        }),
      ],
      {
        description:
          "sealed private keys by the KEY_ENCRYPTION_KEY they name, as checked at this process's start; unreadable ones name a key the process does not have (null: not checked)",
      },
    ),
  ),
  oldestCurrentKeyPackage: Type.Union([
    Type.Null(),
    Type.Object({
      identityId: Type.Optional(Type.String()),
      generation: Type.Optional(Type.Integer()),
      createdAt: Type.Optional(instant()),
      notAfter: Type.Optional(instant()),
      ageSeconds: Type.Optional(Type.Integer()),
    }),
  ]),
});

export const Health = Type.Object({ status: Type.Literal("ok") });

export const Readiness = Type.Object({
  ready: Type.Boolean(),
  accepting: Type.Boolean({ description: "false once shutdown has begun" }),
  overloaded: Type.Boolean({
    description: "true while new requests are refused (503 OVERLOADED): too many in progress",
  }),
  postgres: Type.Boolean(),
  redis: Type.Boolean(),
});

/** The answers, as the typed client sees them (instants are ISO 8601 strings, as on the wire). */
export type Registered = Static<typeof Registered>;
export type Uploaded = Static<typeof Uploaded>;
export type PulledIn = Static<typeof PulledIn>;
export type WelcomeBatchResult = Static<typeof WelcomeBatchResult>;
export type KeyPackageJson = Static<typeof KeyPackageJson>;
export type WakeupView = Static<typeof WakeupView>;
export type KeyPackageStatus = Static<typeof KeyPackageStatus>;
export type IdentityStatus = Static<typeof IdentityStatus>;
export type SafetyReport = Static<typeof SafetyReport>;

/** An error answer's body; typed, so only a code of API_ERRORS can be sent. */
export const errorBody = (error: ApiErrorCode, message: string): ErrorBody => ({ error, message });
