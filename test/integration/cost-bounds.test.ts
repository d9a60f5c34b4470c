import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.js";
import { CAP_WINDOW_MS } from "../../src/core/rotation-cap.js";
import { metricsFor } from "../../src/metrics/metrics.js";
import * as identities from "../../src/services/identities.service.js";
import { startWorkerRuntime, type WorkerRuntime } from "../../src/runtime/worker-process.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";
import { createTestEnv, nextEvent, type TestEnv } from "../helpers/env.js";

const TOKEN = "admin-token-0123456789abcdef";
const INGEST = "ingest-token-0123456789abcdef";
let env: TestEnv;
let app: FastifyInstance;
let runtime: WorkerRuntime;

beforeAll(async () => {
  env = await createTestEnv({
    MAX_ROTATIONS_PER_HOUR: "2",
    WELCOME_ROTATION_DELAY: "0",
    WORKER_LOCK_DURATION: "2s",
    WORKER_STALLED_INTERVAL: "1s",
  });
  app = await buildApp({
    rotor: env.ctx.rotor,
    apiToken: TOKEN,
    ingestToken: INGEST,
    checkReady: () => env.ctx.checkReady(),
  });
  runtime = startWorkerRuntime(env.ctx, ALL_HANDLERS);
});

afterAll(async () => {
  await app?.close();
  await runtime?.close();
  await env?.cleanup();
});

const welcome = (id: string) =>
  app.inject({
    method: "POST",
    url: `/v1/identities/${id}/welcome`,
    headers: { authorization: `Bearer ${INGEST}` },
  });

describe("MAX_ROTATIONS_PER_HOUR", () => {
  it("defers a welcome over the cap to the next allowed time, never drops it", async () => {
    const { rotor } = env.ctx;
    await identities.register(rotor, "alice"); // rotation 1 of this hour: the first package
    const [first] = (await identities.status(rotor, "alice")).keyPackages;
    if (first === undefined) throw new Error("no first key package");
    // The rotation the welcome causes is the one serving the welcome's deadline (a wake-up of
    // the registration's own deadline, 0 s away, may also report a rotation meanwhile).
    type Rotation = { identityId: string; outcome: string; deadline?: number };
    const rotations: Rotation[] = [];
    const onRotation = (e: Rotation) => rotations.push(e);
    rotor.events.on("rotation", onRotation);
    const pulled = await welcome("alice"); // rotation 2: under the cap
    expect(pulled.statusCode).toBe(202);
    const deadline = Date.parse(pulled.json().nextRotationAt);
    const served = (e: Rotation) =>
      e.identityId === "alice" && e.outcome === "rotated" && e.deadline === deadline;
    if (!rotations.some(served)) await nextEvent<Rotation>(rotor.events, "rotation", served);
    rotor.events.off("rotation", onRotation);
    expect((await identities.status(rotor, "alice")).generation).toBe(2);

    const over = await welcome("alice"); // a third in the hour: deferred
    expect(over.statusCode).toBe(202);
    const allowedAt = first.createdAt.getTime() + CAP_WINDOW_MS;
    expect(over.json()).toMatchObject({
      pulledIn: true,
      nextRotationAt: new Date(allowedAt).toISOString(),
    });
    const status = await identities.status(rotor, "alice");
    expect(status.nextRotationAt?.getTime()).toBe(allowedAt);
    expect(status.wakeups.rotation).toEqual({ state: "delayed", fireAt: allowedAt });
    // Another welcome changes nothing: the deferred rotation already stands.
    expect((await welcome("alice")).json()).toMatchObject({ pulledIn: false });
  });
});

describe("cost metrics", () => {
  it("counts the rotations welcomes caused, per principal, with a bounded label set", async () => {
    await identities.register(env.ctx.rotor, "bob");
    await welcome("bob");
    const body = (await metricsFor(env.ctx.rotor).scrape()).body;
    const series = body.split("\n").filter((l) => l.startsWith("kp_rotor_welcome_rotations_total"));
    expect(series.map((l) => l.split(" ")[0]).sort()).toEqual([
      'kp_rotor_welcome_rotations_total{principal="anonymous"}',
      'kp_rotor_welcome_rotations_total{principal="api"}',
      'kp_rotor_welcome_rotations_total{principal="board"}',
      'kp_rotor_welcome_rotations_total{principal="ingest"}',
    ]);
    // alice's two pull-ins (one deferred) and bob's, all by the ingest token.
    expect(body).toMatch(/^kp_rotor_welcome_rotations_total\{principal="ingest"\} 3$/m);
  });
});
