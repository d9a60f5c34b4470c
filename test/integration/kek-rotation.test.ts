import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.js";
import { loadConfig } from "../../src/config.js";
import { type Context, createContext } from "../../src/context.js";
import { createLogger } from "../../src/logger.js";
import { metricsFor } from "../../src/metrics/metrics.js";
import * as identities from "../../src/services/identities.service.js";
import { checkSealedKeys, rewrap } from "../../src/services/rewrap.service.js";
import { startWorkerRuntime } from "../../src/runtime/worker-process.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";
import { createTestEnv, nextEvent, type TestEnv } from "../helpers/env.js";
import { sealV1 } from "../helpers/legacy-seal.js";

const BIN = fileURLToPath(new URL("../../bin/kp-rotor.mjs", import.meta.url));
const kek = () => randomBytes(32);
const [K1, K2, K3] = [kek(), kek(), kek()];
const b64 = (k: Buffer) => k.toString("base64");
let env: TestEnv;
const contexts: Context[] = [];

/** A process of the service on the same database, with these keys. */
async function withKeys(current: Buffer, previous?: Buffer) {
  const vars = {
    ...env.env,
    KEY_ENCRYPTION_KEY: b64(current),
    KEY_ENCRYPTION_KEY_PREVIOUS: previous === undefined ? "" : b64(previous),
  };
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      lines.push(String(chunk));
      done();
    },
  });
  const ctx = await createContext(loadConfig(vars), createLogger("error", sink));
  contexts.push(ctx);
  return { ctx, vars, lines };
}

beforeAll(async () => {
  env = await createTestEnv({
    KEY_ENCRYPTION_KEY: b64(K1),
    WORKER_LOCK_DURATION: "2s",
    WORKER_STALLED_INTERVAL: "1s",
  });
  const { rotor } = env.ctx;
  for (const id of ["alice", "bob"]) await identities.register(rotor, id);
  // Blobs written before format version 2 (identity and purpose bound only): bob's signature key
  // and alice's key package, re-sealed here as the older service did.
  const sql = env.ctx.database.sql;
  const [bob] = await sql<{ k: Uint8Array }[]>`
    select signature_private_key as k from identities where id = 'bob'`;
  const bobKey = rotor.keyring.open(bob?.k as Uint8Array, "bob", "signature-private");
  await sql`update identities set signature_private_key = ${sealV1(K1, bobKey, "bob", "signature-private")}
    where id = 'bob'`;
  const [kp] = await sql<{ id: number; k: Uint8Array; generation: number; ref: string }[]>`
    select id, private_key as k, generation, ref from key_packages where identity_id = 'alice'`;
  const plain = rotor.keyring.open(kp?.k as Uint8Array, "alice", "key-package-private", {
    generation: kp?.generation as number,
    ref: kp?.ref as string,
  });
  await sql`update key_packages set private_key = ${sealV1(K1, plain, "alice", "key-package-private")}
    where id = ${kp?.id as number}`;
});

afterAll(async () => {
  for (const ctx of contexts) await ctx.close();
  await env?.cleanup();
});

describe("retiring a key-encryption key: KEK1 -> KEK2 -> rewrap -> KEK3", () => {
  it("without rewrap, KEK3 reports every blob it cannot open: log, metric, safety view", async () => {
    const { ctx, lines } = await withKeys(K3, K2);
    const report = await checkSealedKeys(ctx.rotor);
    expect(report.unreadable).toBe(4); // two signature keys, two key packages, all under KEK1
    expect(report.unknownKeyIds).toHaveLength(1);
    const logged = lines.map((l) => JSON.parse(l)).find((l) => l.unreadable === 4);
    expect(logged?.msg).toMatch(/KEY_ENCRYPTION_KEY this process does not have/);
    const scrape = (await metricsFor(ctx.rotor).scrape()).body;
    expect(scrape).toMatch(/^kp_rotor_sealed_keys_unreadable 4$/m);
    const app = await buildApp({
      rotor: ctx.rotor,
      apiToken: "kek-test-token-0123456789",
      checkReady: () => ctx.checkReady(),
    });
    try {
      const safety = await app.inject({
        method: "GET",
        url: "/v1/safety",
        headers: { authorization: "Bearer kek-test-token-0123456789" },
      });
      expect(safety.json().sealedKeys).toMatchObject({ unreadable: 4 });
    } finally {
      await app.close();
    }
  });

  it("rewrap under KEK2 re-seals everything (upgrading version 1), and again does nothing", async () => {
    const { ctx, vars } = await withKeys(K2, K1);
    const progress: [number, number][] = [];
    const first = await rewrap(ctx.rotor, {
      pageSize: 1,
      onProgress: (done, total) => progress.push([done, total]),
    });
    expect(first).toMatchObject({
      identities: 2,
      resealed: 4,
      current: 0,
      unreadable: 0,
      failed: 0,
    });
    expect(progress).toEqual([
      [1, 2],
      [2, 2],
    ]);
    // The command, run again: nothing left to do.
    const run = await new Promise<{ code: number | null; stdout: string }>((resolve) => {
      execFile(
        process.execPath,
        [BIN, "rewrap", "--quiet"],
        { env: { PATH: process.env.PATH, ...vars } },
        (err, stdout) => resolve({ code: err ? (err.code as number) : 0, stdout }),
      );
    });
    expect(run.code).toBe(0);
    expect(JSON.parse(run.stdout)).toMatchObject({ resealed: 0, current: 4, unreadable: 0 });
  });

  it("then KEK3 (previous KEK2) opens everything: identities registered under KEK1 rotate", async () => {
    const { ctx } = await withKeys(K3, K2);
    expect((await checkSealedKeys(ctx.rotor)).unreadable).toBe(0);
    const runtime = startWorkerRuntime(ctx, ALL_HANDLERS);
    try {
      for (const id of ["alice", "bob"]) {
        const rotated = nextEvent<{ identityId: string; outcome: string }>(
          ctx.rotor.events,
          "rotation",
          (e) => e.identityId === id && e.outcome === "rotated",
        );
        await identities.rotateSoon(ctx.rotor, id);
        await rotated;
        expect((await identities.status(ctx.rotor, id)).generation).toBe(2);
      }
    } finally {
      await runtime.close();
    }
  });
});
