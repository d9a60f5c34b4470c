import { createServer, type IncomingMessage, type Server } from "node:http";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.js";
import {
  type DeviceNotificationMessage,
  verifyDeviceNotification,
} from "../../src/client/webhooks.js";
import { metricsFor } from "../../src/metrics/metrics.js";
import { startWorkerRuntime } from "../../src/runtime/worker-process.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";
import { buildPackage, deviceKeys } from "../helpers/device-packages.js";
import { createTestEnv, nextEvent, type TestEnv } from "../helpers/env.js";

/**
 * The device loop end to end on the real services (Postgres, Redis, the worker runtime, the API
 * by inject) with a real HTTP endpoint standing in for the device: register with custody
 * device, a rotate notification (signed, verified with the identity's secret), upload,
 * welcome, second upload superseding the first, and the delete notification naming the old ref.
 */

const TOKEN = "test-token-0123456789abcdef";
const DAY = 86_400_000;
let env: TestEnv;
let app: FastifyInstance;
let server: Server;
let endpoint: string;
let runtime: { close(): Promise<void> };
/** What the device endpoint received, verified; and how it answers next (a queue of statuses). */
const received: { message: DeviceNotificationMessage; id: string }[] = [];
const answers: number[] = [];
const secrets = new Map<string, string>();
const waiters: (() => void)[] = [];

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve) => {
    let body = "";
    req.on("data", (c) => {
      body += c;
    });
    req.on("end", () => resolve(body));
  });
}

beforeAll(async () => {
  env = await createTestEnv({
    ROTATION_INTERVAL: "30d",
    WELCOME_ROTATION_DELAY: "500ms",
    DELETION_GRACE: "2s",
  });
  app = await buildApp({
    rotor: env.ctx.rotor,
    apiToken: TOKEN,
    checkReady: () => env.ctx.checkReady(),
  });
  server = createServer(async (req, res) => {
    const body = await readBody(req);
    const identityId = new URL(req.url ?? "/", "http://x").searchParams.get("id") ?? "";
    const secret = secrets.get(identityId);
    const status = answers.shift() ?? 204;
    if (secret !== undefined && status < 300) {
      // A notification that does not verify with the identity's own secret throws here (500).
      const message = verifyDeviceNotification([secret], body, req.headers);
      received.push({ message, id: String(req.headers["webhook-id"]) });
      for (const w of waiters.splice(0)) w();
    }
    res.statusCode = status;
    res.end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  endpoint = `http://127.0.0.1:${typeof address === "object" && address ? address.port : 0}/notify`;
  runtime = startWorkerRuntime(env.ctx, ALL_HANDLERS);
});

afterAll(async () => {
  await runtime?.close();
  await app?.close();
  await new Promise((resolve) => server?.close(resolve));
  await env?.cleanup();
});

async function notification(
  predicate: (m: DeviceNotificationMessage) => boolean,
): Promise<DeviceNotificationMessage> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const found = received.find((r) => predicate(r.message));
    if (found) return found.message;
    if (Date.now() > deadline) throw new Error("no matching notification within 20 s");
    await new Promise<void>((resolve) => {
      waiters.push(resolve);
      setTimeout(resolve, 1_000);
    });
  }
}

const auth = { authorization: `Bearer ${TOKEN}` };
const upload = (id: string, bytes: Uint8Array) =>
  app.inject({
    method: "PUT",
    url: `/v1/identities/${id}/key-package`,
    headers: { ...auth, "content-type": "message/mls" },
    payload: Buffer.from(bytes),
  });
const statusOf = async (id: string) =>
  (await app.inject({ method: "GET", url: `/v1/identities/${id}`, headers: auth })).json();

async function registerDevice(id: string) {
  const res = await app.inject({
    method: "PUT",
    url: `/v1/identities/${id}`,
    headers: auth,
    payload: { custody: "device", notifyUrl: `${endpoint}?id=${id}` },
  });
  expect(res.statusCode).toBe(201);
  const body = res.json();
  secrets.set(id, body.notificationSecret);
  return body;
}

describe("custody device", () => {
  it("runs the whole loop: notify, upload, welcome, supersede, delete", async () => {
    const id = "phone-1";
    const keys = await deviceKeys();
    const identity = new TextEncoder().encode(id);
    // The first rotate notification fails (500): it must be sent again after the backoff.
    answers.push(500);
    const registered = await registerDevice(id);
    expect(registered).toMatchObject({ custody: "device", generation: 0, published: false });
    expect(registered.notificationSecret).toMatch(/^whsec_/);
    // Nothing private is stored for a device identity.
    const [row] = await env.ctx.database.sql`
      select signature_private_key, custody from identities where id = ${id}`;
    expect(row).toMatchObject({ signature_private_key: null, custody: "device" });

    const first = await notification((m) => m.type === "device.rotate" && m.data.identityId === id);
    expect(first.type === "device.rotate" && first.data.currentRef).toBeNull();
    const waiting = await statusOf(id);
    expect(waiting.custody).toBe("device");
    expect(waiting.awaitingDeviceSince).not.toBeNull();
    expect(waiting.lastError).toMatch(/500/);
    const safety = (await app.inject({ method: "GET", url: "/v1/safety", headers: auth })).json();
    expect(
      safety.awaitingDevice.identities.map((i: { identityId: string }) => i.identityId),
    ).toContain(id);

    // The gauge counts the identities awaiting their device (read from Postgres at the scrape).
    const scraped = await metricsFor(env.ctx.rotor).scrape();
    expect(scraped.body).toMatch(/^kp_rotor_devices_overdue 1$/m);

    const kp1 = await buildPackage(keys, { identity, now: Date.now() });
    const up1 = await upload(id, kp1);
    expect(up1.statusCode).toBe(200);
    expect(up1.json()).toMatchObject({ generation: 1, changed: true });
    const ref1 = up1.json().ref as string;
    const after1 = await statusOf(id);
    expect(after1.awaitingDeviceSince).toBeNull();
    expect(new Date(after1.nextRotationAt).getTime() - Date.now()).toBeGreaterThan(29 * DAY);
    const served = await app.inject({
      method: "GET",
      url: `/v1/identities/${id}/key-package`,
      headers: auth,
    });
    expect(Buffer.from(served.rawPayload).equals(Buffer.from(kp1))).toBe(true);
    // A retried upload of the same package changes nothing.
    expect((await upload(id, kp1)).json()).toMatchObject({
      changed: false,
      generation: 1,
      ref: ref1,
    });

    // A welcome pulls the deadline in; the device is asked again, naming the current ref.
    const welcome = await app.inject({
      method: "POST",
      url: `/v1/identities/${id}/welcome`,
      headers: auth,
    });
    expect(welcome.statusCode).toBe(202);
    await notification(
      (m) => m.type === "device.rotate" && m.data.identityId === id && m.data.currentRef === ref1,
    );

    const deleted = nextEvent<{ identityId: string; deleted: number }>(
      env.ctx.rotor.events,
      "deletion",
      (e) => e.identityId === id && e.deleted > 0,
    );
    const kp2 = await buildPackage(keys, { identity, now: Date.now() });
    const up2 = await upload(id, kp2);
    expect(up2.json()).toMatchObject({ generation: 2, changed: true });
    const after2 = await statusOf(id);
    expect(after2.keyPackages.map((k: { ref: string; state: string }) => [k.ref, k.state])).toEqual(
      [
        [ref1, "superseded"],
        [up2.json().ref, "current"],
      ],
    );
    // After the grace: the device is told the old ref, then the old package is gone.
    const del = await notification((m) => m.type === "device.delete" && m.data.identityId === id);
    expect(del.type === "device.delete" && del.data.ref).toBe(ref1);
    expect((await deleted).deleted).toBe(1);
    const after3 = await statusOf(id);
    expect(after3.keyPackages.map((k: { state: string }) => k.state)).toEqual(["current"]);
    // Nothing sealed is stored for it: the sealed-keys check counts no blob under no key.
    const { checkSealedKeys } = await import("../../src/services/rewrap.service.js");
    const report = await checkSealedKeys(env.ctx.rotor);
    expect(report.unreadable).toBe(0);
    expect(report.unknownKeyIds).toEqual([]);
    const safetyAfter = await app.inject({ method: "GET", url: "/v1/safety", headers: auth });
    expect(safetyAfter.statusCode).toBe(200);
  });

  it("refuses bad uploads with a 422 naming the check, and uploads for the wrong custody", async () => {
    const id = "phone-2";
    const keys = await deviceKeys();
    const identity = new TextEncoder().encode(id);
    await registerDevice(id);
    const now = Date.now();
    const expired = await buildPackage(keys, {
      identity,
      now,
      notBeforeMs: now - 50 * DAY,
      notAfterMs: now - DAY,
    });
    const res = await upload(id, expired);
    expect(res.statusCode).toBe(422);
    expect(res.json().error).toBe("KP_EXPIRED");
    const other = await buildPackage(keys, { identity: new TextEncoder().encode("phone-3"), now });
    expect((await upload(id, other)).json().error).toBe("KP_CREDENTIAL_MISMATCH");
    // An init key is never accepted twice for one identity.
    const init = await keys.impl.hpke.exportPublicKey(
      (await keys.impl.hpke.generateKeyPair()).publicKey,
    );
    expect(
      (await upload(id, await buildPackage(keys, { identity, now, initKey: init }))).statusCode,
    ).toBe(200);
    const reused = await upload(id, await buildPackage(keys, { identity, now, initKey: init }));
    expect(reused.statusCode).toBe(422);
    expect(reused.json().error).toBe("KP_INIT_KEY_REUSED");
    const wrongType = await app.inject({
      method: "PUT",
      url: `/v1/identities/${id}/key-package`,
      headers: { ...auth, "content-type": "application/json" },
      payload: { keyPackage: "x" },
    });
    expect(wrongType.statusCode).toBe(415);

    const service = await app.inject({
      method: "PUT",
      url: "/v1/identities/server-1",
      headers: auth,
    });
    expect(service.statusCode).toBe(201);
    const refused = await upload("server-1", await buildPackage(keys, { identity, now }));
    expect(refused.statusCode).toBe(409);
    expect(refused.json().error).toBe("CUSTODY_MISMATCH");
    const switching = await app.inject({
      method: "PUT",
      url: "/v1/identities/server-1",
      headers: auth,
      payload: { custody: "device", notifyUrl: endpoint },
    });
    expect(switching.statusCode).toBe(409);
    const noEndpoint = await app.inject({
      method: "PUT",
      url: "/v1/identities/phone-9",
      headers: auth,
      payload: { custody: "device" },
    });
    expect(noEndpoint.statusCode).toBe(400);
    expect(noEndpoint.json().message).toMatch(/notifyUrl/);
    // Notifications carry signed data: plain http only to loopback (DEVICE_NOTIFY_ALLOW_HTTP).
    const plain = await app.inject({
      method: "PUT",
      url: "/v1/identities/phone-9",
      headers: auth,
      payload: { custody: "device", notifyUrl: "http://phone.example/kp" },
    });
    expect(plain.statusCode).toBe(400);
    expect(plain.json().message).toMatch(
      /notifyUrl: expected an https:\/\/ URL.*DEVICE_NOTIFY_ALLOW_HTTP/,
    );
    const withKey = await app.inject({
      method: "PUT",
      url: "/v1/identities/phone-9",
      headers: auth,
      payload: {
        custody: "device",
        notifyUrl: endpoint,
        signaturePrivateKey: Buffer.alloc(32, 1).toString("base64"),
      },
    });
    expect(withKey.statusCode).toBe(400);
    expect(withKey.json().message).toMatch(/never leave/);
  });
});
