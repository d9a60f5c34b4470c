import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import { getCiphersuiteFromName, getCiphersuiteImpl } from "ts-mls";
import { afterEach, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.js";
import { type Context, createContext } from "../../src/context.js";
import {
  DEFAULT_CIPHERSUITE,
  inspectKeyPackage,
  KEY_PACKAGE_LIFETIME_MS,
  NOT_BEFORE_SKEW_MS,
} from "../../src/keys/key-package.js";
import { decodePrivateKeyPackage } from "../helpers/private-key-package.js";
import {
  verifyKeyPackageWebhook,
  WEBHOOK_HEADERS,
  WebhookSignatureError,
} from "../../src/client/webhooks.js";
import { ed25519PublicKey } from "../../src/keys/signature.js";
import { createLogger } from "../../src/logger.js";
import * as identities from "../../src/services/identities.service.js";
import { startWorkerRuntime } from "../../src/runtime/worker-process.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";
import { createTestEnv, nextEvent, type TestEnv } from "../helpers/env.js";

type RotationEvent = { identityId: string; outcome: string; at: number; deadline?: number };

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(vars: Record<string, string> = {}): Promise<TestEnv> {
  const env = await createTestEnv({
    WORKER_LOCK_DURATION: "2s",
    WORKER_STALLED_INTERVAL: "1s",
    ...vars,
  });
  cleanups.push(() => env.cleanup());
  return env;
}

function startWorkers(ctx: Context) {
  const runtime = startWorkerRuntime(ctx, ALL_HANDLERS);
  cleanups.push(() => runtime.close());
  return runtime;
}

async function sealOpen(publicKey: Uint8Array, privateKey: Uint8Array): Promise<Uint8Array> {
  const impl = await getCiphersuiteImpl(getCiphersuiteFromName(DEFAULT_CIPHERSUITE));
  const info = new TextEncoder().encode("kp-rotor test");
  const { ct, enc } = await impl.hpke.seal(
    await impl.hpke.importPublicKey(publicKey),
    new TextEncoder().encode("hello"),
    info,
  );
  return impl.hpke.open(await impl.hpke.importPrivateKey(privateKey), enc, ct, info);
}

async function storedPrivateKey(ctx: Context, ref: string): Promise<Uint8Array | undefined> {
  const rows = await ctx.database.sql<{ private_key: Buffer }[]>`
    select private_key from key_packages where ref = ${ref}`;
  return rows[0] ? new Uint8Array(rows[0].private_key) : undefined;
}

/** Rotates `id` now and waits for the rotation and for the deletion of the superseded package. */
async function rotateUntilDeleted(ctx: Context, id: string): Promise<void> {
  const rotated = nextEvent<RotationEvent>(
    ctx.rotor.events,
    "rotation",
    (e) => e.outcome === "rotated",
  );
  const deleted = nextEvent<{ deleted: number }>(
    ctx.rotor.events,
    "deletion",
    (e) => e.deleted > 0,
  );
  await identities.rotateSoon(ctx.rotor, id);
  await rotated;
  await deleted;
}

describe("key packages", () => {
  it("publishes a real MLS KeyPackage whose sealed private half matches it", async () => {
    const { ctx } = await setup();
    const credential = new TextEncoder().encode("installation 7f3a of user@example");
    const seed = new Uint8Array(randomBytes(32));
    const before = Date.now();
    const registered = await identities.register(ctx.rotor, "alice", {
      credentialIdentity: credential,
      signaturePrivateKey: seed,
    });
    expect(registered).toMatchObject({ created: true, generation: 1 });

    const current = await identities.currentKeyPackage(ctx.rotor, "alice");
    const info = await inspectKeyPackage(current.keyPackage);
    expect(info.signatureValid).toBe(true);
    expect(info.lastResort).toBe(true);
    expect(info.identity).toEqual(credential);
    expect(info.signaturePublicKey).toEqual(ed25519PublicKey(seed));
    expect(info.notBefore.getTime()).toBeGreaterThanOrEqual(
      Math.floor((before - NOT_BEFORE_SKEW_MS) / 1000) * 1000,
    );
    expect(info.notAfter.getTime() - info.notBefore.getTime()).toBe(
      KEY_PACKAGE_LIFETIME_MS + NOT_BEFORE_SKEW_MS,
    );
    expect(current.notAfter).toEqual(info.notAfter);

    const sealed = await storedPrivateKey(ctx, current.ref);
    if (!sealed) throw new Error("no stored private key");
    const binding = { generation: current.generation, ref: current.ref };
    const opened = decodePrivateKeyPackage(
      ctx.rotor.keyring.open(sealed, "alice", "key-package-private", binding),
    );
    expect(Buffer.from(sealed).includes(Buffer.from(opened.initPrivateKey))).toBe(false);
    expect(opened.signaturePrivateKey).toEqual(seed);
    expect(await sealOpen(info.initKey, opened.initPrivateKey)).toEqual(
      new TextEncoder().encode("hello"),
    );
    expect(await sealOpen(info.encryptionKey, opened.encryptionPrivateKey)).toEqual(
      new TextEncoder().encode("hello"),
    );
    // The sealed material is bound to its identity and key package: copied to another identity
    // or another key-package row (generation, ref), it does not open.
    for (const [id, other] of [
      ["bob", binding],
      ["alice", { ...binding, generation: binding.generation + 1 }],
      ["alice", { ...binding, ref: "00".repeat(32) }],
    ] as const) {
      expect(() => ctx.rotor.keyring.open(sealed, id, "key-package-private", other)).toThrow(
        /failed authentication/,
      );
    }
  });

  it("deletion really deletes the superseded package and its sealed private half", async () => {
    const { ctx } = await setup({ ROTATION_INTERVAL: "30d", DELETION_GRACE: "300ms" });
    startWorkers(ctx);
    await identities.register(ctx.rotor, "bob");
    const old = await identities.currentKeyPackage(ctx.rotor, "bob");
    const sealed = await storedPrivateKey(ctx, old.ref);
    await rotateUntilDeleted(ctx, "bob");
    expect(await storedPrivateKey(ctx, old.ref)).toBeUndefined();
    const anywhere = await ctx.database.sql`
      select 1 from key_packages where private_key = ${Buffer.from(sealed as Uint8Array)}
         or key_package = ${Buffer.from(old.keyPackage)}`;
    expect(anywhere).toHaveLength(0);
  });

  it("no key material, token or secret reaches a log line during a full rotation", async () => {
    const env = await setup();
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk, _encoding, done) {
        lines.push(String(chunk));
        done();
      },
    });
    const token = "api-token-that-must-not-leak-0001";
    const config = loadConfig({
      ...env.env,
      LOG_LEVEL: "trace",
      API_TOKEN: token,
      DELETION_GRACE: "200ms",
    });
    const ctx = await createContext(config, createLogger("trace", sink));
    cleanups.push(() => ctx.close());
    startWorkers(ctx);
    await identities.register(ctx.rotor, "carol");
    const first = await identities.currentKeyPackage(ctx.rotor, "carol");
    await rotateUntilDeleted(ctx, "carol");
    const second = await identities.currentKeyPackage(ctx.rotor, "carol");
    const sealed = await storedPrivateKey(ctx, second.ref);
    const opened = decodePrivateKeyPackage(
      ctx.rotor.keyring.open(sealed as Uint8Array, "carol", "key-package-private", {
        generation: second.generation,
        ref: second.ref,
      }),
    );

    const log = lines.join("");
    expect(log).toContain("rotation wake-up"); // the logs are really captured
    const secrets = [
      opened.initPrivateKey,
      opened.encryptionPrivateKey,
      opened.signaturePrivateKey,
      sealed as Uint8Array,
      Buffer.from(env.env.KEY_ENCRYPTION_KEY as string, "base64"),
    ];
    for (const secret of secrets) {
      for (const encoding of ["hex", "base64", "base64url"] as const) {
        expect(log).not.toContain(Buffer.from(secret).toString(encoding));
      }
      expect(log).not.toContain(Array.from(secret).join(","));
    }
    expect(log).not.toContain(token);
    expect(log).not.toContain(env.env.KEY_ENCRYPTION_KEY);
    expect(first.ref).not.toBe(second.ref);
  });
});

interface Received {
  headers: IncomingMessage["headers"];
  body: Buffer;
}

/** A local webhook receiver answering each request with the next scripted behaviour. */
async function startReceiver(script: ("ok" | "500" | "hang")[]) {
  const received: Received[] = [];
  const server = createServer(async (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    received.push({ headers: req.headers, body: Buffer.concat(chunks) });
    const step = script[received.length - 1] ?? "ok";
    if (step === "hang") return; // never answers; the publisher's timeout must fire
    res.statusCode = step === "500" ? 500 : 204;
    res.end();
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/key-packages`,
    received,
  };
}

describe("webhook publisher", () => {
  const secret = "webhook-secret-0123456789";

  it("retries after 500s and timeouts with the same package and idempotency key, and supersedes once", async () => {
    const receiver = await startReceiver(["500", "hang", "ok", "ok"]);
    const { ctx } = await setup({
      PUBLISHER: "webhook",
      PUBLISH_WEBHOOK_URL: receiver.url,
      PUBLISH_WEBHOOK_SECRET: secret,
      PUBLISH_WEBHOOK_TIMEOUT: "300ms",
      WELCOME_ROTATION_DELAY: "100ms",
    });
    const registered = await identities.register(ctx.rotor, "dave");
    expect(registered).toMatchObject({
      created: true,
      generation: 0,
      publishError: "PUBLISH_FAILED: webhook answered 500",
    });
    const failing = await identities.status(ctx.rotor, "dave");
    expect(failing).toMatchObject({
      generation: 0,
      rotationFailures: 1,
      lastError: "PUBLISH_FAILED: webhook answered 500",
    });
    expect(failing.keyPackages.map((k) => k.state)).toEqual(["pending"]);

    const failures: string[] = [];
    ctx.rotor.events.on("wake-failed", (e) => failures.push(e.error));
    const published = nextEvent<RotationEvent>(
      ctx.rotor.events,
      "rotation",
      (e) => e.outcome === "rotated",
    );
    startWorkers(ctx);
    await published;
    expect(failures).toEqual(["PUBLISH_FAILED: webhook did not answer within 300 ms"]);

    expect(receiver.received).toHaveLength(3);
    const [first] = receiver.received;
    const verified = receiver.received.map((request) => {
      expect(request.headers["content-type"]).toBe("application/json");
      expect(request.headers[WEBHOOK_HEADERS.id]).toBe(first?.headers[WEBHOOK_HEADERS.id]);
      const body = request.body.toString("utf8");
      expect(() =>
        verifyKeyPackageWebhook(["another-secret-0000000"], body, request.headers),
      ).toThrow(WebhookSignatureError);
      return verifyKeyPackageWebhook([secret], body, request.headers);
    });
    for (const message of verified) {
      expect(message.data).toMatchObject({ identityId: "dave", generation: 1 });
      expect(message.data.keyPackage).toBe(verified[0]?.data.keyPackage);
    }
    const sent = verified[2]?.data;
    const info = await inspectKeyPackage(Buffer.from(sent?.keyPackage ?? "", "base64"));
    expect(info.signatureValid).toBe(true);

    const status = await identities.status(ctx.rotor, "dave");
    expect(status).toMatchObject({ generation: 1, rotationFailures: 0, lastError: null });
    expect(status.keyPackages.map((k) => [k.generation, k.state])).toEqual([[1, "current"]]);
    expect(status.keyPackages[0]?.ref).toBe(sent?.ref);
    expect(first?.headers[WEBHOOK_HEADERS.id]).toBe(`kp_${sent?.ref}`);

    // The next rotation publishes a new package and supersedes the first exactly once.
    const next = nextEvent<RotationEvent>(
      ctx.rotor.events,
      "rotation",
      (e) => e.outcome === "rotated",
    );
    await identities.rotateSoon(ctx.rotor, "dave");
    await next;
    const after = await identities.status(ctx.rotor, "dave");
    expect(after.keyPackages.map((k) => [k.generation, k.state])).toEqual([
      [1, "superseded"],
      [2, "current"],
    ]);
    expect(receiver.received).toHaveLength(4);
  });
});
