/**
 * Signing webhooks as Standard Webhooks defines them, with its reference package; the verifier
 * receivers use, and the secret rule both sides share, are in src/client/webhooks.ts. Reused by
 * every webhook the service sends.
 *
 * One signature per configured secret, separated by spaces, so a secret can be rotated: sign
 * with old and new, move the receivers to the new one, then drop the old. Bodies are JSON text:
 * the package decodes a body as UTF-8 before signing, which would let two binary bodies share a
 * signature.
 */
import { WEBHOOK_HEADERS, webhookFor } from "../client/webhooks.js";

/** The three headers for one message; `body` is the exact JSON text that is sent. */
export function signWebhook(
  secrets: readonly string[],
  message: { id: string; timestampSeconds: number; body: string },
): Record<string, string> {
  if (secrets.length === 0) throw new Error("signWebhook: no secret");
  const at = new Date(message.timestampSeconds * 1000);
  return {
    [WEBHOOK_HEADERS.id]: message.id,
    [WEBHOOK_HEADERS.timestamp]: String(message.timestampSeconds),
    [WEBHOOK_HEADERS.signature]: secrets
      .map((secret) => webhookFor(secret).sign(message.id, at, message.body))
      .join(" "),
  };
}
