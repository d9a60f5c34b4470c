/**
 * Key-package generations per second on one core, bare (ts-mls alone) and with the service around
 * it (a worker process rotating identities: lock, generate, seal, store, publish, promote,
 * re-arm), measured in the same process so the ratio holds on a noisy machine.
 *
 *   npx tsx bench/keygen.ts [--count 2000] [--concurrency 16]
 */
import { parseArgs } from "node:util";
import { createKeyPackageFactory } from "../src/keys/key-package.js";
import * as identities from "../src/services/identities.service.js";
import { startWorkerRuntime } from "../src/worker-process.js";
import { createTestEnv } from "../test/helpers/env.js";
import { ALL_HANDLERS } from "../workers/index.js";

const { values } = parseArgs({
  options: {
    count: { type: "string", default: "2000" },
    concurrency: { type: "string", default: "16" },
  },
});
const count = Number(values.count);

async function bare(n: number): Promise<number> {
  const factory = await createKeyPackageFactory();
  const signatureKeys = await factory.generateSignatureKeyPair();
  const identity = new TextEncoder().encode("bench");
  for (let i = 0; i < 50; i++) await factory.generate({ identity, signatureKeys, now: Date.now() });
  const started = performance.now();
  for (let i = 0; i < n; i++) await factory.generate({ identity, signatureKeys, now: Date.now() });
  return n / ((performance.now() - started) / 1000);
}

async function service(n: number): Promise<{ perSecond: number; registerPerSecond: number }> {
  const env = await createTestEnv({
    ROTATION_INTERVAL: "30d",
    WORKER_CONCURRENCY: values.concurrency as string,
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
    const done = new Promise<void>((resolve) => {
      rotor.events.on("rotation", (e) => {
        if (e.outcome === "rotated" && ++rotated === n) resolve();
      });
    });
    for (let i = 0; i < ids.length; i += 1000) {
      await identities.pullInMany(rotor, ids.slice(i, i + 1000), 0);
    }
    const started = performance.now();
    const runtime = startWorkerRuntime(env.ctx, ALL_HANDLERS);
    await done;
    const perSecond = n / ((performance.now() - started) / 1000);
    await runtime.close();
    return { perSecond, registerPerSecond };
  } finally {
    await env.cleanup();
  }
}

const bareBefore = await bare(Math.min(count, 1000));
const withService = await service(count);
const bareAfter = await bare(Math.min(count, 1000));
const bareRate = (bareBefore + bareAfter) / 2;
const result = {
  count,
  bareGenerationsPerSecond: Math.round(bareRate),
  serviceRotationsPerSecond: Math.round(withService.perSecond),
  ratio: Number((withService.perSecond / bareRate).toFixed(3)),
  registrationsPerSecond: Math.round(withService.registerPerSecond),
};
console.log(
  [
    `bare ts-mls generations/s (one core): ${result.bareGenerationsPerSecond} (before ${Math.round(bareBefore)}, after ${Math.round(bareAfter)})`,
    `service rotations/s (one worker process, concurrency ${values.concurrency}): ${result.serviceRotationsPerSecond}`,
    `ratio service/bare: ${result.ratio}`,
    `registrations/s (32 concurrent, first key package published inline): ${result.registrationsPerSecond}`,
  ].join("\n"),
);
console.log(JSON.stringify(result));
