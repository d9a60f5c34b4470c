/**
 * A device's upload whose publish failed (webhook publisher): the device retries the same bytes
 * and the service publishes that pending package again, instead of refusing it as an init key
 * seen before (which would tell the device not to retry).
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KpRotorError } from "../../src/errors.js";
import { uploadKeyPackage } from "../../src/services/device.service.js";
import * as identities from "../../src/services/identities.service.js";
import { buildPackage, deviceKeys } from "../helpers/device-packages.js";
import { createTestEnv, type TestEnv } from "../helpers/env.js";

let env: TestEnv;
let receiver: Server;
/** How the webhook receiver answers the next publishes (then 200). */
const answers: number[] = [];
let published = 0;

beforeAll(async () => {
  receiver = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      const status = answers.shift() ?? 200;
      if (status < 300) published++;
      res.statusCode = status;
      res.end();
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  const { port } = receiver.address() as AddressInfo;
  env = await createTestEnv({
    ROTATION_INTERVAL: "30d",
    PUBLISHER: "webhook",
    PUBLISH_WEBHOOK_URL: `http://127.0.0.1:${port}/key-packages`,
    PUBLISH_WEBHOOK_SECRET: "webhook-secret-0123456789",
    PUBLISH_WEBHOOK_TIMEOUT: "2s",
  });
});

afterAll(async () => {
  await env?.cleanup();
  await new Promise((resolve) => receiver?.close(resolve));
});

describe("a device upload whose publish failed", () => {
  it("is published again when the device retries the same bytes", async () => {
    const { rotor } = env.ctx;
    const id = "tablet-1";
    await identities.register(rotor, id, {
      custody: "device",
      notifyUrl: "http://127.0.0.1:9/notify",
    });
    const keys = await deviceKeys();
    const kp = await buildPackage(keys, {
      identity: new TextEncoder().encode(id),
      now: Date.now(),
    });

    answers.push(500);
    const failed = await uploadKeyPackage(rotor, id, kp).catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(KpRotorError);
    expect((failed as KpRotorError).code).toBe("PUBLISH_FAILED");
    expect((await identities.status(rotor, id)).generation).toBe(0);

    // The retry publishes the pending package and makes it current.
    const retried = await uploadKeyPackage(rotor, id, kp);
    expect(retried).toMatchObject({ generation: 1, changed: true });
    expect(published).toBe(1);
    const status = await identities.status(rotor, id);
    expect(status.generation).toBe(1);
    expect(status.keyPackages.filter((p) => p.current).map((p) => p.ref)).toEqual([retried.ref]);

    // Once more: it is current now, so nothing changes.
    const again = await uploadKeyPackage(rotor, id, kp);
    expect(again).toMatchObject({ generation: 1, changed: false, ref: retried.ref });
  });
});
