/**
 * What each path of the service costs in Postgres statements and Redis commands, measured on the
 * real code (services and worker runtime in this process) against a private redis-server and a
 * private database reached through a counting proxy. The simulation (bench/simulate.ts) multiplies
 * its event counts by these figures.
 *
 *   npx tsx bench/sim/measure-costs.ts      # about 2 minutes; writes bench/results/sim-costs.json
 *
 * Postgres: every Execute ('E') and simple Query ('Q') message the service's connections send
 * (a statement each, BEGIN and COMMIT included), counted by a TCP proxy in front of Postgres.
 * Redis: total_commands_processed of the private redis-server (Lua scripts' inner redis.call
 * commands counted too, as BENCHMARKS.md counts them), minus the worker runtime's idle rate over
 * the same window where a worker runtime runs.
 */
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { createConnection, createServer, type Server } from "node:net";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { loadConfig } from "../../src/config.js";
import { createContext } from "../../src/context.js";
import { createLogger } from "../../src/logger.js";
import { pullInMany, register, welcome } from "../../src/services/identities.service.js";
import { startWorkerRuntime } from "../../src/runtime/worker-process.js";
import { freePort, randomName } from "../../test/helpers/env.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";
import {
  createPrivateDatabase,
  defer,
  ROOT,
  redisDelta,
  redisInfo,
  runMain,
  sleep,
  startPrivateRedis,
} from "../lib.js";

const SSL_REQUEST = 80_877_103;
const GSS_REQUEST = 80_877_104;

/** A TCP proxy to Postgres that counts the statements (Execute and Query messages) sent. */
async function countingProxy(target: URL): Promise<{ port: number; statements: () => number }> {
  let statements = 0;
  const server: Server = createServer((client) => {
    const upstream = createConnection(Number(target.port || 5432), target.hostname);
    upstream.on("error", () => client.destroy());
    client.on("error", () => upstream.destroy());
    upstream.pipe(client);
    let started = false;
    let pending = Buffer.alloc(0);
    let skip = 0;
    client.on("data", (chunk: Buffer) => {
      upstream.write(chunk);
      let buf = pending.length > 0 ? Buffer.concat([pending, chunk]) : chunk;
      pending = Buffer.alloc(0);
      for (;;) {
        if (skip > 0) {
          const n = Math.min(skip, buf.length);
          skip -= n;
          buf = buf.subarray(n);
          if (skip > 0) return;
        }
        if (!started) {
          if (buf.length < 8) break;
          const length = buf.readInt32BE(0);
          const code = buf.readInt32BE(4);
          if (code !== SSL_REQUEST && code !== GSS_REQUEST) started = true;
          skip = length;
          continue;
        }
        if (buf.length < 5) break;
        const type = String.fromCharCode(buf[0] as number);
        if (type === "E" || type === "Q") statements++;
        skip = 1 + buf.readInt32BE(1);
      }
      pending = Buffer.from(buf);
    });
    client.on("close", () => upstream.end());
  });
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  defer("postgres counting proxy", () => new Promise<void>((r) => server.close(() => r())));
  return { port, statements: () => statements };
}

interface Cost {
  /** Postgres statements per event (BEGIN and COMMIT included). */
  pg: number;
  /** Redis commands per event (Lua inner commands included). */
  redis: number;
  /** How many events the figure is averaged over. */
  samples: number;
  /** Redis commands by name over the sample (for the record). */
  redisByCommand: Record<string, number>;
}

async function main() {
  const redisServer = await startPrivateRedis();
  const database = await createPrivateDatabase();
  const target = new URL(database.url);
  const proxy = await countingProxy(target);
  const viaProxy = new URL(database.url);
  viaProxy.port = String(proxy.port);
  const config = loadConfig({
    DATABASE_URL: viaProxy.toString(),
    REDIS_URL: redisServer.url,
    QUEUE_PREFIX: randomName("kpc"),
    LOG_LEVEL: "silent",
    KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64"),
    METRICS_PORT: "0",
    ROTATION_INTERVAL: "30d",
    WELCOME_ROTATION_DELAY: "60s",
    // Long enough that the deletions fire after every rotation of the sample has finished.
    DELETION_GRACE: "60s",
    // Off while measuring: the idle figures come from BENCHMARKS.md (measured with them on).
    WATCHDOG_INTERVAL: "0",
    RECONCILE_CHECK_INTERVAL: "0",
  });
  const ctx = await createContext(config, createLogger("silent"), { migrate: true });
  defer("context", () => ctx.close());
  const { rotor } = ctx;
  const measure = new Redis(redisServer.url);
  defer("measuring redis", () => measure.quit());

  const snapshot = async () => ({ info: await redisInfo(measure), pg: proxy.statements() });
  type Snap = Awaited<ReturnType<typeof snapshot>>;
  const cost = (a: Snap, b: Snap, samples: number, idleRedis = 0): Cost => {
    const d = redisDelta(a.info, b.info);
    return {
      pg: (b.pg - a.pg) / samples,
      redis: Math.max(0, d.commands - idleRedis) / samples,
      samples,
      redisByCommand: d.byCommand,
    };
  };
  const costs: Record<string, Cost> = {};
  const R = 200;
  const B = 1_000;
  const ids = Array.from({ length: R }, (_, i) => `single-${i}`);
  const batch = Array.from({ length: B }, (_, i) => `batch-${i}`);
  const log = (what: string, c: unknown) => console.error(`${what}: ${JSON.stringify(c)}`);

  let a = await snapshot();
  for (const id of ids) await register(rotor, id);
  let b = await snapshot();
  costs.register = cost(a, b, R);
  log("register", costs.register);
  for (const id of batch) await register(rotor, id);

  // The worker runtime runs from here on, as in production; its idle commands are subtracted.
  let rotated = 0;
  let deleted = 0;
  rotor.events.on("rotation", (e) => {
    if (e.outcome === "rotated") rotated++;
  });
  rotor.events.on("deletion", (e) => {
    deleted += e.deleted;
  });
  const runtime = startWorkerRuntime(ctx, ALL_HANDLERS);
  defer("worker runtime", () => runtime.close());
  await runtime.startupReconcile;
  await sleep(2_000);
  a = await snapshot();
  let t = performance.now();
  await sleep(20_000);
  b = await snapshot();
  const idlePerS = cost(a, b, 1).redis / ((performance.now() - t) / 1000);
  log("idle Redis commands/s of this runtime (watchdog and mark check off)", idlePerS);
  const window = async (samples: number, run: () => Promise<unknown>): Promise<Cost> => {
    const before = await snapshot();
    const started = performance.now();
    await run();
    const after = await snapshot();
    return cost(before, after, samples, (idlePerS * (performance.now() - started)) / 1000);
  };

  // Welcomes pull the deadlines in to now + WELCOME_ROTATION_DELAY (60 s here, so that the
  // rotations they cause come after these windows).
  costs.welcomeMoved = await window(R, async () => {
    for (const id of ids) await welcome(rotor, id);
  });
  costs.welcomeUnchanged = await window(R, async () => {
    for (const id of ids) await welcome(rotor, id);
  });
  costs.welcomeBatchOf1000 = await window(B, () =>
    pullInMany(rotor, batch, config.welcomeRotationDelayMs),
  );
  log("welcome", [costs.welcomeMoved, costs.welcomeUnchanged, costs.welcomeBatchOf1000]);

  // Then the rotation wake-ups those welcomes armed, then the deletion wake-ups their rotations
  // armed (DELETION_GRACE later).
  const due = R + B;
  costs.rotationWakeup = await window(due, async () => {
    while (rotated < due) await sleep(50);
  });
  log("rotation wake-up", costs.rotationWakeup);
  costs.deletionWakeup = await window(due, async () => {
    while (deleted < due) await sleep(50);
  });
  log("deletion wake-up", costs.deletionWakeup);
  t = performance.now();
  await runtime.close();
  const out = {
    measuredAt: new Date().toISOString(),
    machine: `${cpus().length} cores (${cpus()[0]?.model ?? "?"}), ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`,
    command: "npx tsx bench/sim/measure-costs.ts",
    notes: [
      "pg: Execute and simple Query messages per event through a counting proxy (BEGIN and COMMIT included)",
      "redis: total_commands_processed per event on a private redis-server, Lua inner commands included; the worker runtime's idle rate over the window subtracted",
      "register includes generating, sealing and publishing (directory publisher) the first key package",
      "rotationWakeup and deletionWakeup: the real handlers (ALL_HANDLERS) on BullMQ Workers, WORKER_CONCURRENCY 16",
    ],
    idleRedisPerSecondMeasuredHere: idlePerS,
    costs,
  };
  writeFileSync(join(ROOT, "bench/results/sim-costs.json"), `${JSON.stringify(out, null, 2)}\n`);
  console.log(JSON.stringify(out, null, 2));
}

await runMain(main);
