import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildKeyPackage,
  generateSignatureKeys,
  verifyNotification,
} from "../../src/client/device.js";
import { createClient, type KpRotorClient, KpRotorClientError } from "../../src/client/index.js";
import { type RunningApi, startApi } from "../../src/runtime/api-process.js";
import { signWebhook } from "../../src/webhooks/signature.js";
import { createTestEnv, freePort, type TestEnv } from "../helpers/env.js";

/** The typed client against the API listening for real. */

const TOKEN = "test-token-0123456789abcdef";
let env: TestEnv;
let api: RunningApi;
let client: KpRotorClient;

beforeAll(async () => {
  env = await createTestEnv({
    PORT: "0",
    HOST: "127.0.0.1",
    API_TOKEN: TOKEN,
    WELCOME_ROTATION_DELAY: "5s",
    ROTATION_INTERVAL: "30d",
  });
  api = await startApi(env.ctx);
  client = createClient({ baseUrl: api.address, token: TOKEN });
});

afterAll(async () => {
  await api?.close();
  await env?.cleanup();
});

/** The error a call rejected with, checked to be a KpRotorClientError. */
async function failure(call: Promise<unknown>): Promise<KpRotorClientError> {
  const error = await call.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(error).toBeInstanceOf(KpRotorClientError);
  return error as KpRotorClientError;
}

describe("typed client", () => {
  it("device helper: register with custody device, build with ts-mls, upload, refusals", async () => {
    const registered = await client.register("phone", {
      custody: "device",
      notifyUrl: "https://phone.example/kp",
    });
    expect(registered).toMatchObject({ custody: "device", generation: 0, created: true });
    const signatureKeys = await generateSignatureKeys();
    const identity = new TextEncoder().encode("phone");
    const built = await buildKeyPackage({ identity, signatureKeys });
    const uploaded = await client.uploadKeyPackage("phone", built.keyPackage);
    expect(uploaded).toMatchObject({ ref: built.ref, generation: 1, changed: true });
    // Too short a life for a 30-day interval plus the 7-day margin: refused, the check named.
    const short = await buildKeyPackage({ identity, signatureKeys, lifetimeMs: 10 * 86_400_000 });
    const refused = await failure(client.uploadKeyPackage("phone", short.keyPackage));
    expect(refused).toMatchObject({
      status: 422,
      error: "KP_LIFETIME_TOO_SHORT",
      retryable: false,
    });

    // verifyNotification accepts what is signed with the identity's secret, and nothing else.
    const secret = registered.notificationSecret as string;
    const body = JSON.stringify({
      type: "device.delete",
      timestamp: new Date().toISOString(),
      data: { identityId: "phone", ref: built.ref },
    });
    const headers = signWebhook([secret], {
      id: "del_x",
      timestampSeconds: Math.floor(Date.now() / 1000),
      body,
    });
    expect(verifyNotification(secret, body, headers)).toMatchObject({ type: "device.delete" });
    expect(() => verifyNotification("whsec_AAAAAAAAAAAAAAAAAAAAAAAA", body, headers)).toThrow(
      /refused/,
    );
  });

  it("register, welcome, rotate, status and deregister", async () => {
    const first = await client.register("alice");
    expect(first).toMatchObject({ identityId: "alice", created: true, generation: 1 });
    const again = await client.register("alice");
    expect(again).toEqual({ ...first, created: false });

    const before = Date.now();
    const welcomed = await client.welcome("alice");
    expect(welcomed).toMatchObject({ identityId: "alice", pulledIn: true });
    expect(Date.parse(welcomed.nextRotationAt)).toBeGreaterThanOrEqual(before + 5_000);

    const status = await client.status("alice");
    expect(status.identityId).toBe("alice");
    expect(status.nextRotationAt).toBe(welcomed.nextRotationAt);
    expect(status.wakeups.rotation).toEqual({
      state: "delayed",
      fireAt: Date.parse(welcomed.nextRotationAt),
    });
    expect(status.keyPackages).toHaveLength(1);
    expect(status.keyPackages[0]).toMatchObject({ generation: 1, current: true, deleteAt: null });

    const rotating = await client.rotate("alice");
    expect(rotating.pulledIn).toBe(true);
    expect(Date.parse(rotating.nextRotationAt)).toBeLessThanOrEqual(Date.now());

    await expect(client.deregister("alice")).resolves.toBeUndefined();
    const gone = await failure(client.status("alice"));
    expect(gone).toMatchObject({
      status: 404,
      error: "IDENTITY_NOT_FOUND",
      message: 'identity "alice" is not registered',
      retryable: false,
    });
  });

  it("welcomeBatch returns accepted and unknown identities apart", async () => {
    await client.register("bob");
    await client.register("carol");
    const result = await client.welcomeBatch(["bob", "carol", "bob", "nobody"]);
    expect(result.accepted.map((a) => a.identityId).sort()).toEqual(["bob", "carol"]);
    expect(result.accepted.every((a) => a.pulledIn)).toBe(true);
    expect(result.notFound).toEqual(["nobody"]);
  });

  it("throws typed errors carrying the status and the server's error and message", async () => {
    const badId = await failure(client.register("has space"));
    expect(badId).toMatchObject({ status: 400, error: "INVALID_IDENTITY_ID" });
    expect(badId.message).toMatch(/may contain only/);

    const badBatch = await failure(client.welcomeBatch([]));
    expect(badBatch).toMatchObject({ status: 400, error: "INVALID_REQUEST" });
    expect(badBatch.message).toMatch(/must NOT have fewer than 1 items/);

    const unknown = await failure(client.welcome("ghost"));
    expect(unknown).toMatchObject({ status: 404, error: "IDENTITY_NOT_FOUND" });

    const wrongToken = createClient({ baseUrl: api.address, token: "wrong-token-0123456789" });
    const unauthorized = await failure(wrongToken.status("bob"));
    expect(unauthorized).toMatchObject({
      status: 401,
      error: "UNAUTHORIZED",
      message: "missing or wrong bearer token",
    });
    expect(unauthorized.name).toBe("KpRotorClientError");
  });

  it("reports no answer as status 0, retryable", async () => {
    // Nothing listens on a free port: the connection is refused.
    const nowhere = createClient({ baseUrl: `http://127.0.0.1:${await freePort()}`, token: TOKEN });
    const error = await failure(nowhere.status("bob"));
    expect(error).toMatchObject({ status: 0, error: "NETWORK", retryable: true });
  });

  it("tolerates a trailing slash in the base URL and encodes identity ids", async () => {
    const prefixed = createClient({ baseUrl: `${api.address}/`, token: TOKEN });
    expect((await prefixed.register("dave.d_1-x")).identityId).toBe("dave.d_1-x");
    // A '/' in an id is one path segment, refused as an id rather than routed elsewhere.
    const slash = await failure(client.status("a/b"));
    expect(slash).toMatchObject({ status: 400, error: "INVALID_IDENTITY_ID" });
  });
});
