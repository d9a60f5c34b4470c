/**
 * For receivers of kp-rotor's webhook (PUBLISHER=webhook): verify a request before acting on it.
 * Imports nothing from the service, only the `standardwebhooks` package, so it can be copied.
 *
 *   const message = verifyKeyPackageWebhook(secrets, rawBodyText, request.headers);
 *   // message.data: identityId, generation, ref, notAfter, keyPackage (base64 MLSMessage)
 *
 * The scheme is Standard Webhooks (https://www.standardwebhooks.com): `webhook-id`,
 * `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`.
 * A request is refused when its timestamp is more than 5 minutes from the receiver's clock
 * (either way) or no signature matches one of `secrets`. Act only on the signed body: every
 * field a receiver needs is in it. Deduplicate on `webhook-id` (`kp_<ref>`, the same on every
 * retry of one publish); the tolerance bounds how long a receiver must remember ids.
 *
 * Secrets: `whsec_<base64>` is decoded (the Standard Webhooks form); any other string is used
 * as its UTF-8 bytes. Pass the old and the new secret while rotating.
 */
import { Webhook, WebhookVerificationError } from "standardwebhooks";

export const WEBHOOK_HEADERS = {
  id: "webhook-id",
  timestamp: "webhook-timestamp",
  signature: "webhook-signature",
} as const;

/** How far a timestamp may be from the receiver's clock (the standardwebhooks package's 5 min). */
export const WEBHOOK_TOLERANCE_SECONDS = 5 * 60;

/** The JSON body of a publish. */
export interface KeyPackagePublished {
  type: "key_package.published";
  /** When this attempt was signed (ISO 8601); a retry carries a later one. */
  timestamp: string;
  data: {
    identityId: string;
    generation: number;
    /** KeyPackageRef (hex). */
    ref: string;
    notAfter: string;
    /** TLS-encoded MLSMessage (mls_key_package), base64. */
    keyPackage: string;
  };
}

/**
 * The JSON body of a notification to a device identity (custody "device"), signed with the
 * identity's own secret (the `notificationSecret` its registration returned). `device.rotate`:
 * build and upload a new key package by `deadline`. `device.delete`: the superseded package
 * `ref` is gone; delete its private keys. `webhook-id` is the same on every retry of one
 * notification: deduplicate on it.
 */
export type DeviceNotificationMessage =
  | {
      type: "device.rotate";
      timestamp: string;
      data: { identityId: string; deadline: string; currentRef: string | null };
    }
  | { type: "device.delete"; timestamp: string; data: { identityId: string; ref: string } };

export class WebhookSignatureError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WebhookSignatureError";
  }
}

/** The Standard Webhooks signer/verifier for one secret (see the secret rule above). */
export const webhookFor = (secret: string): Webhook =>
  secret.startsWith("whsec_")
    ? new Webhook(secret)
    : new Webhook(new TextEncoder().encode(secret) as unknown as string, { format: "raw" });

/**
 * Verifies a request against any of `secrets` and returns its parsed JSON body; throws
 * WebhookSignatureError otherwise. `body` is the raw body text, exactly as received.
 */
export function verifyWebhook(
  secrets: readonly string[],
  body: string,
  headers: Record<string, string | string[] | undefined>,
): unknown {
  const flat: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (typeof value === "string") flat[name.toLowerCase()] = value;
  }
  let reason = "no secret to verify with";
  for (const secret of secrets) {
    try {
      return webhookFor(secret).verify(body, flat);
    } catch (err) {
      if (!(err instanceof WebhookVerificationError)) throw err;
      reason = err.message;
    }
  }
  throw new WebhookSignatureError(`webhook refused: ${reason}`);
}

/** {@link verifyWebhook}, then checks that the body is a key-package publish. */
export function verifyKeyPackageWebhook(
  secrets: readonly string[],
  body: string,
  headers: Record<string, string | string[] | undefined>,
): KeyPackagePublished {
  const message = verifyWebhook(secrets, body, headers) as Partial<KeyPackagePublished> | null;
  const data = message?.data;
  if (
    message?.type !== "key_package.published" ||
    typeof data?.identityId !== "string" ||
    typeof data.generation !== "number" ||
    typeof data.ref !== "string" ||
    typeof data.keyPackage !== "string" ||
    typeof data.notAfter !== "string" ||
    flatHeader(headers, WEBHOOK_HEADERS.id) !== `kp_${data.ref}`
  ) {
    throw new WebhookSignatureError("webhook refused: not a key_package.published message");
  }
  return message as KeyPackagePublished;
}

function flatHeader(headers: Record<string, string | string[] | undefined>, name: string) {
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase() === name && typeof value === "string") return value;
  }
  return undefined;
}

/** {@link verifyWebhook} with the identity's notification secret, then checks the body's shape. */
export function verifyDeviceNotification(
  secrets: readonly string[],
  body: string,
  headers: Record<string, string | string[] | undefined>,
): DeviceNotificationMessage {
  const message = verifyWebhook(
    secrets,
    body,
    headers,
  ) as Partial<DeviceNotificationMessage> | null;
  const data = message?.data as Record<string, unknown> | undefined;
  const ok =
    typeof data?.identityId === "string" &&
    ((message?.type === "device.rotate" && typeof data.deadline === "string") ||
      (message?.type === "device.delete" && typeof data.ref === "string"));
  if (!ok) throw new WebhookSignatureError("webhook refused: not a device notification");
  return message as DeviceNotificationMessage;
}
