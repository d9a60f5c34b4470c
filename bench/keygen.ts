/**
 * Key-package generations per second on one core, bare (ts-mls alone) and with the service around
 * it (a worker process rotating identities: lock, generate, seal, store, publish, promote,
 * re-arm), measured in the same process so the ratio holds on a noisy machine.
 *
 *   npx tsx bench/keygen.ts [--count 1000] [--concurrency <WORKER_CONCURRENCY, default 16>]
 *                           [--rounds 1] [--only bare|service] [--include-startup]
 *
 * Three rates, all for the same ciphersuite (MLS_CIPHERSUITE, default suite 0x0001) and the same
 * KeyPackage content (basic credential, last_resort extension listed in the capabilities,
 * explicit lifetime):
 *  - bare ts-mls: `generateKeyPackageWithKey` with ts-mls's default crypto provider, then
 *    `encodeMlsMessage`: one complete, publishable KeyPackage, one at a time (one core). This is
 *    the goal's denominator.
 *  - factory: the service's `KeyPackageFactory.generate` alone (what a rotation calls: the same
 *    package, plus its KeyPackageRef, the private-half encoding and the key-pair check).
 *  - service: rotations per second of one worker process at its configured concurrency, once it
 *    is up: the clock starts when every deadline is due, after the worker's start-up reconcile.
 *    With --include-startup, the clock starts with the worker instead, as this bench first did,
 *    so the window also holds the start-up reconcile of all `count` identities.
 * Bare and factory are measured before and after the service phase and averaged; every round
 * checks that both sides produced a complete, verifiable last-resort package of the same suite.
 */
import { parseArgs } from "node:util";
import * as kps from "../src/db/key-packages.repo.js";
import { bareTsMls } from "./bare-ts-mls.js";
import { type CiphersuiteName, ciphersuites } from "ts-mls";
import {
  createKeyPackageFactory,
  DEFAULT_CIPHERSUITE,
  inspectKeyPackage,
} from "../src/keys/key-package.js";
import * as identities from "../src/services/identities.service.js";
import { startWorkerRuntime } from "../src/runtime/worker-process.js";
import { createTestEnv } from "../test/helpers/env.js";
import { ALL_HANDLERS } from "../src/runtime/handlers.js";

const { values } = parseArgs({
  options: {
    count: { type: "string", default: "1000" },
    concurrency: { type: "string" },
    rounds: { type: "string", default: "1" },
    only: { type: "string" },
    "include-startup": { type: "boolean", default: false },
  },
});
const count = Number(values.count);
const rounds = Number(values.rounds);
const ciphersuite = process.env.MLS_CIPHERSUITE || DEFAULT_CIPHERSUITE;
const identity = new TextEncoder().encode("bench");
const WARMUP = 50;

/** The service's own generator alone (what prepareRotation calls). */
async function factory(n: number): Promise<{ perSecond: number; sample: Uint8Array }> {
  const keys = await createKeyPackageFactory(ciphersuite);
  const signatureKeys = await keys.generateSignatureKeyPair();
  const once = async () =>
    (await keys.generate({ identity, signatureKeys, now: Date.now() })).publicBytes;
  for (let i = 0; i < WARMUP; i++) await once();
  let sample: Uint8Array = new Uint8Array(0);
  const started = performance.now();
  for (let i = 0; i < n; i++) sample = await once();
  return { perSecond: n / ((performance.now() - started) / 1000), sample };
}

async function service(n: number): Promise<{
  perSecond: number;
  registerPerSecond: number;
  concurrency: number;
  sample: Uint8Array;
  failed: number;
  reconcileMs: number;
}> {
  const env = await createTestEnv({
    ROTATION_INTERVAL: "30d",
    MLS_CIPHERSUITE: ciphersuite,
    ...(values.concurrency === undefined ? {} : { WORKER_CONCURRENCY: values.concurrency }),
  });
  try {
    const { rotor } = env.ctx;
    const ids = Array.from({ length: n }, (_, i) => `bench-${i}`);
    const registerStarted = performance.now();
    for (let i = 0; i < ids.length; i += 32) {
      await Promise.all(ids.slice(i, i + 32).map((id) => identities.register(rotor, id)));
    }
    const registerPerSecond = n / ((performance.now() - registerStarted) / 1000);
    let rotated = 0;
    let rotatedBeforeStart = 0;
    let failed = 0;
    rotor.events.on("wake-failed", () => failed++);
    const done = new Promise<void>((resolve) => {
      rotor.events.on("rotation", (e) => {
        if (e.outcome === "rotated" && ++rotated === n) resolve();
      });
    });
    const pullIn = async () => {
      for (let i = 0; i < ids.length; i += 1000) {
        await identities.pullInMany(rotor, ids.slice(i, i + 1000), 0);
      }
    };
    let started: number;
    let runtime: ReturnType<typeof startWorkerRuntime>;
    let reconcileMs = 0;
    if (values["include-startup"]) {
      // The original measurement: deadlines due first, then the clock and the worker start
      // together, so the window includes the worker's start-up reconcile of all n identities.
      await pullIn();
      started = performance.now();
      runtime = startWorkerRuntime(env.ctx, ALL_HANDLERS);
      void runtime.startupReconcile.then(() => {
        reconcileMs = performance.now() - started;
      });
    } else {
      // Steady state: the worker is up and its start-up reconcile done; the clock starts once
      // every deadline is due (pulled in and committed) and counts the rotations after that.
      runtime = startWorkerRuntime(env.ctx, ALL_HANDLERS);
      await runtime.startupReconcile;
      await pullIn();
      rotatedBeforeStart = rotated;
      started = performance.now();
    }
    const window = [process.hrtime.bigint() / 1000n];
    await done;
    const perSecond = (n - rotatedBeforeStart) / ((performance.now() - started) / 1000);
    window.push(process.hrtime.bigint() / 1000n);
    // For --cpu-prof: the rotation phase as monotonic microseconds, the profile's own clock.
    if (values.only === "service") console.log(`rotation window (us): ${window.join(" ")}`);
    await runtime.close();
    // Every identity rotated exactly once after its registration: generation 2, one superseded.
    const current = await kps.getCurrent(rotor.db, ids[n - 1] as string);
    if (current?.generation !== 2) throw new Error(`unexpected generation ${current?.generation}`);
    return {
      perSecond,
      failed,
      reconcileMs,
      registerPerSecond,
      concurrency: env.ctx.config.workerConcurrency,
      sample: current.keyPackage,
    };
  } finally {
    await env.cleanup();
  }
}

/** Both sides must produce a complete, verifiable last-resort KeyPackage of the same suite. */
async function checkComplete(label: string, bytes: Uint8Array): Promise<void> {
  const info = await inspectKeyPackage(bytes, ciphersuite);
  if (!info.signatureValid || !info.lastResort) {
    throw new Error(
      `${label}: key package incomplete (signature ${info.signatureValid}, last_resort ${info.lastResort})`,
    );
  }
}

const rate = (n: number) => Math.round(n);
const results = [];
for (let round = 1; round <= rounds; round++) {
  const bareN = Math.min(count, 1000);
  if (values.only === "service") {
    const s = await service(count);
    console.log(
      `service rotations/s: ${rate(s.perSecond)} (concurrency ${s.concurrency}, failed attempts ${s.failed}${values["include-startup"] ? `, start-up reconcile done after ${rate(s.reconcileMs)} ms` : ""})`,
    );
    continue;
  }
  if (values.only === "bare") {
    const b = await bareTsMls(bareN, ciphersuite);
    const f = await factory(bareN);
    console.log(`bare ts-mls/s: ${rate(b.perSecond)}, factory/s: ${rate(f.perSecond)}`);
    continue;
  }
  const bare1 = await bareTsMls(bareN, ciphersuite);
  const fact1 = await factory(bareN);
  const svc = await service(count);
  const bare2 = await bareTsMls(bareN, ciphersuite);
  const fact2 = await factory(bareN);
  await checkComplete("bare ts-mls", bare2.sample);
  await checkComplete("factory", fact2.sample);
  await checkComplete("service", svc.sample);
  const bare = (bare1.perSecond + bare2.perSecond) / 2;
  const fact = (fact1.perSecond + fact2.perSecond) / 2;
  const result = {
    round,
    count,
    ciphersuite,
    ciphersuiteId: ciphersuites[ciphersuite as CiphersuiteName],
    concurrency: svc.concurrency,
    clock: values["include-startup"] ? "with worker start" : "steady state",
    bareGenerationsPerSecond: rate(bare),
    factoryGenerationsPerSecond: rate(fact),
    serviceRotationsPerSecond: rate(svc.perSecond),
    ratio: Number((svc.perSecond / bare).toFixed(3)),
    ratioToFactory: Number((svc.perSecond / fact).toFixed(3)),
    failedAttempts: svc.failed,
    registrationsPerSecond: rate(svc.registerPerSecond),
  };
  results.push(result);
  console.log(
    [
      `round ${round}, ${ciphersuite}`,
      `bare ts-mls generations/s (one core): ${result.bareGenerationsPerSecond} (before ${rate(bare1.perSecond)}, after ${rate(bare2.perSecond)})`,
      `factory generations/s (one core): ${result.factoryGenerationsPerSecond} (before ${rate(fact1.perSecond)}, after ${rate(fact2.perSecond)})`,
      `service rotations/s (one worker process, concurrency ${svc.concurrency}): ${result.serviceRotationsPerSecond} (failed attempts: ${svc.failed})`,
      `ratio service/bare ts-mls: ${result.ratio} (service/factory: ${result.ratioToFactory})`,
      `registrations/s (32 concurrent, first key package published inline): ${result.registrationsPerSecond}`,
    ].join("\n"),
  );
  console.log(JSON.stringify(result));
}
