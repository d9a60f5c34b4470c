import { afterEach, describe, expect, it } from "vitest";
import { nextArmFence } from "../../src/db/identities.repo.js";
import { createKeyPackageFactory, KEY_PACKAGE_LIFETIME_MS } from "../../src/keys/key-package.js";
import { metricsFor } from "../../src/metrics/metrics.js";
import { reconcile } from "../../src/services/reconcile.service.js";
import * as identities from "../../src/services/identities.service.js";
import { safetyReport } from "../../src/services/safety.service.js";
import { startWorkerRuntime } from "../../src/runtime/worker-process.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";
import { createTestEnv, nextEvent, type TestEnv } from "../helpers/env.js";

/**
 * Verify what is published (issue 15, item 4) on the real services: the directory's package is
 * read back after each publish and at the mid-interval early wake; a wrong package is caught,
 * counted, shown in the safety view, and rotated at once, and only once per failure streak.
 */

type Checked = { identityId: string; when: string; ok: boolean; reason?: string };
const DAY = 86_400_000;
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(vars: Record<string, string>): Promise<TestEnv> {
  const env = await createTestEnv(vars);
  cleanups.push(() => env.cleanup());
  const runtime = startWorkerRuntime(env.ctx, ALL_HANDLERS);
  cleanups.push(() => runtime.close());
  return env;
}

describe("checks of the published key package", () => {
  it("catches a directory serving another package at the mid-interval wake, and rotates at once", async () => {
    const env = await setup({ ROTATION_INTERVAL: "30d", PUBLISH_CHECK_MIDWAY: "true" });
    const { rotor } = env.ctx;
    const events = rotor.events;
    const metrics = metricsFor(rotor);
    const afterPublish = nextEvent<Checked>(
      events,
      "published-checked",
      (e) => e.identityId === "ada",
    );
    await identities.register(rotor, "ada");
    expect(await afterPublish).toMatchObject({ when: "publish", ok: true });
    const registered = await identities.status(rotor, "ada");
    // The early wake for the check is planned at half the interval, before the deadline.
    const [row] = await env.ctx.database.sql`select verify_at from identities where id = 'ada'`;
    const verifyAt = new Date(row?.verify_at as string).getTime();
    expect(verifyAt).toBeLessThan(registered.nextRotationAt?.getTime() ?? 0);
    expect(verifyAt - Date.now()).toBeGreaterThan(14 * DAY);
    expect(registered.wakeups.rotation).toEqual({ state: "delayed", fireAt: verifyAt });

    // The directory now serves another (valid, signed) package under ada's row.
    const factory = await createKeyPackageFactory();
    const stranger = await factory.generate({
      identity: new TextEncoder().encode("ada"),
      signatureKeys: await factory.generateSignatureKeyPair(),
      now: Date.now(),
    });
    await env.ctx.database.sql`
      update key_packages set key_package = ${Buffer.from(stranger.publicBytes)}
      where identity_id = 'ada' and is_current`;
    // Bring the mid-interval check forward: its wake-up fires now.
    await env.ctx.database.sql`update identities set verify_at = now() where id = 'ada'`;
    const caught = nextEvent<Checked>(
      events,
      "published-checked",
      (e) => e.when === "mid-interval",
    );
    const rotated = nextEvent<{ identityId: string; outcome: string }>(
      events,
      "rotation",
      (e) => e.outcome === "rotated",
    );
    await rotor.timers.arm("rotation", "ada", Date.now(), Date.now(), await nextArmFence(rotor.db));
    expect(await caught).toMatchObject({ ok: false, reason: "ref-mismatch" });
    const safety = await safetyReport(rotor);
    expect(safety.publishedCheckFailed.identities.map((i) => i.identityId)).toContain("ada");
    await rotated;
    const after = await identities.status(rotor, "ada");
    expect(after.generation).toBe(2);
    // The new package is checked after its publish, passes, and clears the record.
    const cleared = await identities.status(rotor, "ada");
    expect(cleared.publishedCheck.error).toBeNull();
    expect((await metrics.scrape()).body).toMatch(
      /kp_rotor_published_checks_total\{when="mid-interval",result="ref-mismatch"\} 1/,
    );
  });

  it("a reconcile and a re-registration keep the wake-up at the mid-interval check", async () => {
    // No worker: its start-up heal would re-arm the wake-up this test takes away.
    const env = await createTestEnv({ ROTATION_INTERVAL: "30d", PUBLISH_CHECK_MIDWAY: "true" });
    cleanups.push(() => env.cleanup());
    const { rotor } = env.ctx;
    await identities.register(rotor, "cy");
    const verifyAt = async () => {
      const [row] = await env.ctx.database.sql`select verify_at from identities where id = 'cy'`;
      return new Date(row?.verify_at as string).getTime();
    };
    const planned = await verifyAt();
    const deadline = (await identities.status(rotor, "cy")).nextRotationAt?.getTime() ?? 0;
    expect(deadline - planned).toBeGreaterThan(14 * DAY);
    const atCheck = { state: "delayed", fireAt: planned };
    expect((await identities.status(rotor, "cy")).wakeups.rotation).toEqual(atCheck);

    // A full reconcile over a wake-up that is right repairs nothing and moves nothing.
    const run = await reconcile(rotor);
    expect(run.repairs.rotation).toEqual({ add: 0, reschedule: 0, replace: 0, remove: 0 });
    expect((await identities.status(rotor, "cy")).wakeups.rotation).toEqual(atCheck);

    // After the wake-up is lost, reconcile puts it back at the check, not at the deadline.
    await rotor.timers.arm("rotation", "cy", null, Date.now(), await nextArmFence(rotor.db));
    expect((await reconcile(rotor)).repairs.rotation).toMatchObject({ add: 1 });
    expect((await identities.status(rotor, "cy")).wakeups.rotation).toEqual(atCheck);

    // A re-registration (a client's retry) repairs to the same place.
    await rotor.timers.arm("rotation", "cy", null, Date.now(), await nextArmFence(rotor.db));
    await identities.register(rotor, "cy");
    expect((await identities.status(rotor, "cy")).wakeups.rotation).toEqual(atCheck);
    expect(await verifyAt()).toBe(planned);
  });

  it("a package too short-lived for the interval rotates once, then is only recorded", async () => {
    // 84-day packages cannot outlive an 80-day interval plus the 7-day margin. (The service
    // generates packages long enough for its interval; this factory keeps OpenMLS' 84 days.)
    const env = await setup({ ROTATION_INTERVAL: "80d" });
    const { rotor } = env.ctx;
    rotor.keys = await createKeyPackageFactory(undefined, KEY_PACKAGE_LIFETIME_MS);
    const checks: Checked[] = [];
    rotor.events.on("published-checked", (e) => checks.push(e));
    const second = nextEvent<Checked>(
      rotor.events,
      "published-checked",
      () => checks.filter((c) => !c.ok).length === 2,
    );
    await identities.register(rotor, "bob");
    await second;
    expect(checks.map((c) => [c.when, c.ok, c.reason])).toEqual([
      ["publish", false, "too-short"],
      ["publish", false, "too-short"],
    ]);
    const status = await identities.status(rotor, "bob");
    expect(status.generation).toBe(2);
    // The second failure pulled nothing in: the deadline is the full interval on.
    expect((status.nextRotationAt?.getTime() ?? 0) - Date.now()).toBeGreaterThan(79 * DAY);
    expect(status.publishedCheck.error).toMatch(/too-short/);
  });
});
