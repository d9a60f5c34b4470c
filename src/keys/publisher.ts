import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import type { Publisher } from "../core/ports.js";
import { ErrorCodes, KpRotorError } from "../errors.js";
import type { KeyPackagePublished } from "../client/webhooks.js";
import { signWebhook } from "../webhooks/signature.js";

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
  /** Signing secrets; every one signs (Standard Webhooks), so receivers can move between them. */
  secrets: readonly string[];
  /** The whole request, from connecting to the end of the answer. */
  timeoutMs: number;
  now?: () => number;
}

/** The most of a receiver's answer that is read; the rest is discarded with the connection. */
export const MAX_RESPONSE_BYTES = 64 * 1024;
/** Connecting (TCP) may take at most this long, within the whole request's timeout. */
const CONNECT_TIMEOUT_MS = 3_000;

/**
 * POSTs the key package to a URL as a signed Standard Webhooks message (src/webhooks). Any 2xx
 * is success. Anything else is a PublishError whose message says which (never the secret, the
 * body, or what the receiver answered): a 3xx (redirects are never followed: they would carry
 * the signed message to another origin), another status, a timeout, a network error. At most
 * MAX_RESPONSE_BYTES of the answer are read.
 */
export function createWebhookPublisher(options: WebhookOptions): Publisher {
  const now = options.now ?? Date.now;
  const url = new URL(options.url);
  return {
    kind: "webhook",
    async publish(request) {
      const at = now();
      const message: KeyPackagePublished = {
        type: "key_package.published",
        timestamp: new Date(at).toISOString(),
        data: {
          identityId: request.identityId,
          generation: request.generation,
          ref: request.ref,
          notAfter: request.notAfter.toISOString(),
          keyPackage: Buffer.from(request.keyPackage).toString("base64"),
        },
      };
      const body = JSON.stringify(message);
      const headers = signWebhook(options.secrets, {
        id: `kp_${request.ref}`,
        timestampSeconds: Math.floor(at / 1000),
        body,
      });
      const status = await post(url, headers, body, options.timeoutMs);
      if (status >= 300 && status < 400) {
        throw new PublishError(
          `webhook answered ${status}, a redirect (redirects are never followed)`,
        );
      }
      if (status < 200 || status >= 300) throw new PublishError(`webhook answered ${status}`);
    },
  };
}

/**
 * One POST with node:http(s), which never follows a redirect; resolves with the status. Shared
 * with the device notifier (src/keys/device-notifier.ts).
 */
export function post(
  url: URL,
  headers: Record<string, string>,
  body: string,
  timeoutMs: number,
): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const bytes = Buffer.from(body, "utf8");
    const send = url.protocol === "https:" ? httpsRequest : httpRequest;
    const req = send(url, {
      method: "POST",
      headers: {
        ...headers,
        "content-type": "application/json",
        "content-length": String(bytes.length),
      },
    });
    const fail = (message: string) => {
      clearTimeout(total);
      req.destroy();
      reject(new PublishError(message));
    };
    const total = setTimeout(
      () => fail(`webhook did not answer within ${timeoutMs} ms`),
      timeoutMs,
    );
    req.once("socket", (socket) => {
      if (!socket.connecting) return;
      const connect = setTimeout(
        () => fail(`webhook: no connection within ${Math.min(CONNECT_TIMEOUT_MS, timeoutMs)} ms`),
        Math.min(CONNECT_TIMEOUT_MS, timeoutMs),
      );
      socket.once("connect", () => clearTimeout(connect));
      socket.once("close", () => clearTimeout(connect));
    });
    req.once("error", (err: NodeJS.ErrnoException) => {
      clearTimeout(total);
      reject(new PublishError(`webhook unreachable: ${err.code ?? err.message}`));
    });
    req.once("response", (res) => {
      const status = res.statusCode ?? 0;
      let read = 0;
      const done = () => {
        clearTimeout(total);
        resolve(status);
      };
      // Read and drop the answer (its content is not ours to log) up to the cap, so the
      // connection can be reused; beyond it the connection is closed instead.
      res.on("data", (chunk: Buffer) => {
        read += chunk.length;
        if (read > MAX_RESPONSE_BYTES) {
          res.destroy();
          done();
        }
      });
      res.once("end", done);
      res.once("error", done);
    });
    req.end(bytes);
  });
}
