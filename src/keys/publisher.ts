import { createHmac } from "node:crypto";
import type { Publisher } from "../core/ports.js";
import { ErrorCodes, KpRotorError } from "../errors.js";

/**
 * Where a new key package goes before it supersedes the old one. A rotation publishes between
 * storing the new package and making it current (libxmtp's order): only a successful publish
 * rolls the deadline forward, a failed one leaves it due and the wake-up retries with backoff.
 */
export type { Publisher, PublishRequest } from "../core/ports.js";

export class PublishError extends KpRotorError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCodes.publishFailed, message, options);
    this.name = "PublishError";
  }
}

/**
 * The service's own directory: the key package is served by
 * `GET /v1/identities/:id/key-package` as soon as the rotation makes it current, so there is
 * nothing to send anywhere.
 */
export function createDirectoryPublisher(): Publisher {
  return { kind: "directory", publish: publishInDirectory };
}

/** The directory publisher's publish: there is nothing to send. */
const publishInDirectory = async (): Promise<void> => {};

/**
 * True when publishing is only making the key package current: the directory publisher, with its
 * own publish (not one wrapped or replaced, by a test or anything else, which may do something
 * and must then run between the store and the promote). A rotation can then store, publish and
 * promote in one transaction.
 */
export function publishesByPromoting(publisher: Publisher): boolean {
  return publisher.kind === "directory" && publisher.publish === publishInDirectory;
}

export interface WebhookOptions {
  url: string;
  /** HMAC-SHA256 key for the signature header. */
  secret: string;
  timeoutMs: number;
  /** Injected for tests; the service uses the global fetch. */
  fetch?: typeof fetch;
  now?: () => number;
}

/** Header names, for receivers. */
export const WEBHOOK_HEADERS = {
  signature: "kp-rotor-signature",
  idempotencyKey: "idempotency-key",
  identity: "kp-rotor-identity",
  generation: "kp-rotor-generation",
  notAfter: "kp-rotor-not-after",
} as const;

/**
 * The signature a receiver checks: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
 * The timestamp lets the receiver refuse replays outside its tolerance.
 */
export function signWebhook(secret: string, timestampSeconds: number, body: Uint8Array): string {
  const mac = createHmac("sha256", secret)
    .update(`${timestampSeconds}.`)
    .update(body)
    .digest("hex");
  return `t=${timestampSeconds},v1=${mac}`;
}

/**
 * POSTs the key package as `message/mls` (RFC 9420's media type) to a URL. Any 2xx is success;
 * anything else, a timeout or a network error is a
 * PublishError whose message says which (never the secret or the body).
 */
export function createWebhookPublisher(options: WebhookOptions): Publisher {
  const doFetch = options.fetch ?? fetch;
  const now = options.now ?? Date.now;
  return {
    kind: "webhook",
    async publish(request) {
      const t = Math.floor(now() / 1000);
      let response: Response;
      try {
        response = await doFetch(options.url, {
          method: "POST",
          headers: {
            "content-type": "message/mls",
            [WEBHOOK_HEADERS.signature]: signWebhook(options.secret, t, request.keyPackage),
            [WEBHOOK_HEADERS.idempotencyKey]: request.ref,
            [WEBHOOK_HEADERS.identity]: request.identityId,
            [WEBHOOK_HEADERS.generation]: String(request.generation),
            [WEBHOOK_HEADERS.notAfter]: request.notAfter.toISOString(),
          },
          body: Buffer.from(request.keyPackage),
          signal: AbortSignal.timeout(options.timeoutMs),
        });
      } catch (err) {
        const timedOut = err instanceof Error && err.name === "TimeoutError";
        throw new PublishError(
          timedOut
            ? `webhook did not answer within ${options.timeoutMs} ms`
            : `webhook unreachable: ${err instanceof Error ? ((err.cause as Error)?.message ?? err.message) : String(err)}`,
        );
      }
      // Drain the body so the connection can be reused; its content is not ours to log.
      await response.arrayBuffer().catch(() => {});
      if (!response.ok) throw new PublishError(`webhook answered ${response.status}`);
    },
  };
}
