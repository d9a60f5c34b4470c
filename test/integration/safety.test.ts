import { nextArmFence } from "../../src/db/identities.repo.js";
import { afterEach, describe, expect, it } from "vitest";
import { inspectKeyPackage } from "../../src/keys/key-package.js";
import * as identities from "../../src/services/identities.service.js";
import { reconcile } from "../../src/services/reconcile.service.js";
import { safetyReport } from "../../src/services/safety.service.js";
import { startWorkerRuntime } from "../../src/runtime/worker-process.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";
import { createTestEnv, nextEvent, type TestEnv } from "../helpers/env.js";

const DAY = 86_400_000;
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(vars: Record<string, string> = {}): Promise<TestEnv> {
  const env = await createTestEnv(vars);
  cleanups.push(() => env.cleanup());
  return env;
}

describe("lifetime safety", () => {
  it("shows stale, expiring and failing identities and the oldest key package", async () => {
    const { ctx } = await setup();
    const { rotor } = ctx;
    for (const id of ["fresh", "stale", "expiring", "failing"])
      await identities.register(rotor, id);
    const sql = ctx.database.sql;
    const now = Date.now();
    await sql`update key_packages set created_at = ${new Date(now - 40 * DAY).toISOString()}::timestamptz where identity_id = 'stale'`;
    await sql`update key_packages set not_after = ${new Date(now + 3 * DAY).toISOString()}::timestamptz where identity_id = 'expiring'`;
    await sql`update identities set rotation_failures = 4, last_error = 'webhook answered 503',
      last_failure_at = ${new Date(now).toISOString()}::timestamptz where id = 'failing'`;

    const report = await safetyReport(rotor);
    expect(report.stale.count).toBe(1);
    expect(report.stale.identities.map((i) => i.identityId)).toEqual(["stale"]);
    expect(report.expiringSoon.identities.map((i) => i.identityId)).toEqual(["expiring"]);
    expect(report.failing.identities).toEqual([
      expect.objectContaining({
        identityId: "failing",
        failures: 4,
        lastError: "webhook answered 503",
      }),
    ]);
    expect(report.oldestCurrentKeyPackage?.identityId).toBe("stale");
    expect(report.oldestCurrentKeyPackage?.ageSeconds).toBeGreaterThanOrEqual(40 * 86_400 - 5);

    await identities.deregister(rotor, "stale");
    const after = await safetyReport(rotor);
    expect(after.stale.count).toBe(0);
    expect(after.oldestCurrentKeyPackage?.identityId).not.toBe("stale");
  });

  it("reconcile arms overdue identities first, most overdue first", async () => {
    const { ctx } = await setup({ WORKER_CONCURRENCY: "1", ROTATION_INTERVAL: "30d" });
    const { rotor } = ctx;
    const overdueBy: Record<string, number> = { a: 1, b: 50, c: 10, d: 30 };
    for (const id of [...Object.keys(overdueBy), "later"]) await identities.register(rotor, id);
    const now = Date.now();
    for (const [id, days] of Object.entries(overdueBy)) {
      await ctx.database
        .sql`update identities set rotation_deadline = ${new Date(now - days * DAY).toISOString()}::timestamptz where id = ${id}`;
      await rotor.timers.apply("rotation", id, { kind: "remove" }, await nextArmFence(rotor.db));
    }
    const report = await reconcile(rotor);
    expect(report.overdue).toBe(4);
    expect(report.repairs.rotation.add).toBe(4);

    const order: string[] = [];
    rotor.events.on("rotation", (e) => {
      if (e.outcome === "rotated") order.push(e.identityId);
    });
    const last = nextEvent<{ identityId: string }>(
      rotor.events,
      "rotation",
      (e) => e.identityId === "a",
    );
    const runtime = startWorkerRuntime(ctx, ALL_HANDLERS);
    cleanups.push(() => runtime.close());
    await last;
    expect(order).toEqual(["b", "d", "c", "a"]);
  });
});

describe("ciphersuites and imported keys", () => {
  it("works with suite 3 (ChaCha20-Poly1305), as libxmtp uses", async () => {
    const suite = "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519";
    const { ctx } = await setup({ MLS_CIPHERSUITE: suite });
    await identities.register(ctx.rotor, "chacha");
    const current = await identities.currentKeyPackage(ctx.rotor, "chacha");
    expect(current.ciphersuite).toBe(suite);
    const info = await inspectKeyPackage(current.keyPackage, suite);
    expect(info.signatureValid).toBe(true);
    expect(info.lastResort).toBe(true);
  });

  it.each([
    [
      { signaturePrivateKey: new Uint8Array(31) },
      /32-byte Ed25519 private key \(seed\), got 31 bytes/,
    ],
    [{ credentialIdentity: new Uint8Array(0) }, /credentialIdentity must not be empty/],
  ])(
    "refuses a bad registration with a clear error and writes nothing (%#)",
    async (input, message) => {
      const { ctx } = await setup();
      await expect(identities.register(ctx.rotor, "bad", input)).rejects.toThrow(message);
      const rows = await ctx.database.sql`select 1 from identities where id = 'bad'`;
      expect(rows).toHaveLength(0);
    },
  );
});
