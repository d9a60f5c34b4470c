import { once } from "node:events";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import {
  verifyKeyPackageWebhook,
  WEBHOOK_HEADERS,
  WebhookSignatureError,
} from "../../src/client/webhooks.js";
import { createKeyPackageFactory } from "../../src/keys/key-package.js";
import { createWebhookPublisher, type PublishRequest } from "../../src/keys/publisher.js";

const SECRET = "receiver-secret-0123456789";
const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

type Handler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void;
interface Seen {
  headers: IncomingMessage["headers"];
  body: string;
  method?: string;
}

/** A receiver on a port of its own: records every request, answers with `handler`. */
async function receiver(handler: Handler) {
  const seen: Seen[] = [];
  const server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    seen.push({ headers: req.headers, body: body.toString("utf8"), method: req.method });
    handler(req, res, body);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  closers.push(
    () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/kp`, seen };
}

let sample: PublishRequest | undefined;
/** A real key package to publish. */
async function request(): Promise<PublishRequest> {
  if (sample) return sample;
  const factory = await createKeyPackageFactory();
  const kp = await factory.generate({
    identity: new TextEncoder().encode("alice"),
    signatureKeys: await factory.generateSignatureKeyPair(),
    now: Date.now(),
  });
  sample = {
    identityId: "alice",
    generation: 3,
    ref: kp.ref,
    keyPackage: kp.publicBytes,
    notAfter: kp.notAfter,
  };
  return sample;
}

const publisher = (url: string, extra: { secrets?: string[]; now?: () => number } = {}) =>
  createWebhookPublisher({ url, secrets: extra.secrets ?? [SECRET], timeoutMs: 2_000, ...extra });

describe("webhook publisher against a hostile receiver", () => {
  it.each([301, 302, 303, 307, 308])(
    "a %i is a failed publish; the redirect is not followed",
    async (status) => {
      const elsewhere = await receiver((_req, res) => res.end("ok"));
      const hostile = await receiver((_req, res) => {
        res.writeHead(status, { location: elsewhere.url }).end();
      });
      await expect(publisher(hostile.url).publish(await request())).rejects.toThrow(
        `webhook answered ${status}, a redirect (redirects are never followed)`,
      );
      expect(hostile.seen).toHaveLength(1);
      expect(elsewhere.seen).toHaveLength(0);
    },
  );

  it("reads at most 64 KiB of an answer and drops the connection", async () => {
    let written = 0;
    let clientGone = false;
    const hostile = await receiver((_req, res) => {
      res.writeHead(200, { "content-type": "application/octet-stream" });
      const chunk = Buffer.alloc(64 * 1024, 1);
      const pump = () => {
        // An endless answer (the attack sent 300 MB): stop only when the client goes away.
        while (!clientGone && written < 300 * 1024 * 1024) {
          written += chunk.length;
          if (!res.write(chunk)) return void res.once("drain", pump);
        }
        res.end();
      };
      res.once("close", () => {
        clientGone = true;
      });
      pump();
    });
    await publisher(hostile.url).publish(await request());
    await new Promise((resolve) => setImmediate(resolve));
    // Socket buffers on both sides hold some megabytes at most, never the whole answer.
    expect(written).toBeLessThan(32 * 1024 * 1024);
  });

  it("gives up on a receiver that never answers within the timeout", async () => {
    const hostile = await receiver(() => {});
    const slow = createWebhookPublisher({ url: hostile.url, secrets: [SECRET], timeoutMs: 300 });
    await expect(slow.publish(await request())).rejects.toThrow(
      "webhook did not answer within 300 ms",
    );
  });
});

describe("webhook signatures (Standard Webhooks)", () => {
  it("the receivers' verifier accepts what the publisher sends, with everything in the body", async () => {
    const target = await receiver((_req, res) => res.end());
    const sent = await request();
    await publisher(target.url).publish(sent);
    const [got] = target.seen;
    if (!got) throw new Error("nothing received");
    const message = verifyKeyPackageWebhook([SECRET], got.body, got.headers);
    expect(message.type).toBe("key_package.published");
    expect(message.data).toEqual({
      identityId: "alice",
      generation: 3,
      ref: sent.ref,
      notAfter: sent.notAfter.toISOString(),
      keyPackage: Buffer.from(sent.keyPackage).toString("base64"),
    });
    expect(got.headers[WEBHOOK_HEADERS.id]).toBe(`kp_${sent.ref}`);
    expect(got.headers[WEBHOOK_HEADERS.signature]).toMatch(/^v1,[A-Za-z0-9+/]+=*$/);
    // No unsigned header carries anything a receiver acts on.
    expect(Object.keys(got.headers).filter((h) => h.startsWith("kp-rotor"))).toEqual([]);
  });

  it("refuses a replay with another identity, generation or id, and a stale timestamp", async () => {
    const target = await receiver((_req, res) => res.end());
    await publisher(target.url).publish(await request());
    const [got] = target.seen;
    if (!got) throw new Error("nothing received");
    const tampered = [
      got.body.replace('"identityId":"alice"', '"identityId":"mallory"'),
      got.body.replace('"generation":3', '"generation":4'),
    ];
    for (const body of tampered) {
      expect(body).not.toBe(got.body);
      expect(() => verifyKeyPackageWebhook([SECRET], body, got.headers)).toThrow(
        WebhookSignatureError,
      );
    }
    const otherId = { ...got.headers, [WEBHOOK_HEADERS.id]: "kp_other" };
    expect(() => verifyKeyPackageWebhook([SECRET], got.body, otherId)).toThrow(
      WebhookSignatureError,
    );

    const old = await receiver((_req, res) => res.end());
    const sixMinutesAgo = () => Date.now() - 6 * 60_000;
    await publisher(old.url, { now: sixMinutesAgo }).publish(await request());
    const [stale] = old.seen;
    if (!stale) throw new Error("nothing received");
    expect(() => verifyKeyPackageWebhook([SECRET], stale.body, stale.headers)).toThrow(
      /timestamp too old/,
    );
  });

  it("signs with every configured secret, so receivers can rotate theirs", async () => {
    const target = await receiver((_req, res) => res.end());
    const next = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    await publisher(target.url, { secrets: [SECRET, next] }).publish(await request());
    const [got] = target.seen;
    if (!got) throw new Error("nothing received");
    expect(String(got.headers[WEBHOOK_HEADERS.signature]).split(" ")).toHaveLength(2);
    expect(verifyKeyPackageWebhook([SECRET], got.body, got.headers).data.identityId).toBe("alice");
    expect(verifyKeyPackageWebhook([next], got.body, got.headers).data.identityId).toBe("alice");
    expect(() => verifyKeyPackageWebhook(["some-other-secret-000"], got.body, got.headers)).toThrow(
      /no matching signature/i,
    );
  });
});
