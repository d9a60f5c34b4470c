/**
 * Arm throughput and memory, kp-rotor against raw BullMQ in the same run, on a private
 * redis-server and a private database (nothing shared is flushed).
 *
 *   npx tsx bench/arm-throughput.ts [--identities 100000] [--welcomes 100000] [--raw 100000]
 *
 * 1. seeds N live identities by SQL (generate_series): a rotation deadline 1-30 days out and a
 *    superseded key package (so a deletion deadline 1-2 days out): two timers per identity;
 * 2. reconcile() into the empty Redis (both timers, under row locks): identities/s, timers/s,
 *    and Redis bytes per identity and per job (INFO used_memory delta, plus MEMORY USAGE);
 * 3. pullInMany(1,000 ids, 5 s) over `--welcomes` ids, one call after the other: welcomes/s;
 * 4. raw BullMQ on a fresh FLUSHALLed private Redis: addBulk of delayed jobs in pages of 1,000
 *    (jobs/s, bytes per job) and getJob + changeDelay(5 s), 64 concurrent (changes/s).
 * It uses only public service functions, so the same file runs against an older checkout.
 */
import { randomBytes } from "node:crypto";
import { Queue } from "bullmq";
import { Redis } from "ioredis";
import postgres from "postgres";
import { loadConfig } from "../src/config.js";
import { createContext } from "../src/context.js";
import { createLogger } from "../src/logger.js";
import { pullInMany } from "../src/services/identities.service.js";
import { reconcile } from "../src/services/reconcile.service.js";
import { createTestDatabase, randomName, startRedisServer } from "../test/helpers/env.js";

const DAY = 86_400_000;

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const raw = i >= 0 ? process.argv[i + 1] : undefined;
  const n = raw === undefined ? fallback : Number(raw);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`--${name} must be a whole number`);
  return n;
}

const usedMemory = async (r: Redis) => {
  const info = await r.info("memory");
  return Number(/used_memory:(\d+)/.exec(info)?.[1] ?? 0);
};
const perS = (n: number, ms: number) => Math.round((n / ms) * 1000);

/** CPU seconds used so far by this process and by the private redis-server. */
async function cpu(r: Redis): Promise<{ node: number; redis: number }> {
  const info = await r.info("cpu");
  const num = (k: string) => Number(new RegExp(`${k}:([\\d.]+)`).exec(info)?.[1] ?? 0);
  const u = process.cpuUsage();
  return { node: (u.user + u.system) / 1e6, redis: num("used_cpu_user") + num("used_cpu_sys") };
}
const cpuDelta = (a: { node: number; redis: number }, b: { node: number; redis: number }) => ({
  nodeCpuS: Math.round((b.node - a.node) * 100) / 100,
  redisCpuS: Math.round((b.redis - a.redis) * 100) / 100,
});

async function main() {
  const n = arg("identities", 100_000);
  const welcomes = Math.min(n, arg("welcomes", n));
  const rawN = arg("raw", Math.min(n, 100_000));
  const redisServer = await startRedisServer();
  const database = await createTestDatabase();
  const admin = new Redis(redisServer.url);
  const results: Record<string, unknown> = { identities: n, welcomes, raw: rawN };
  const log = (m: string) => process.stderr.write(`${new Date().toISOString()} ${m}\n`);
  try {
    const config = loadConfig({
      DATABASE_URL: database.url,
      REDIS_URL: redisServer.url,
      QUEUE_PREFIX: randomName("kpb"),
      LOG_LEVEL: "silent",
      KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64"),
      WATCHDOG_INTERVAL: "0",
      ROTATION_INTERVAL: "30d",
      WELCOME_ROTATION_DELAY: "5s",
    });
    const ctx = await createContext(config, createLogger("silent"), { migrate: true });
    const { rotor } = ctx;

    // 1. Seed.
    const sql = postgres(database.url, { max: 1, onnotice: () => {} });
    const now = Date.now();
    let started = performance.now();
    await sql.begin(async (tx) => {
      await tx`select setseed(0.5)`;
      await tx`
        insert into identities (id, generation, rotation_deadline, last_rotated_at,
          credential_identity, signature_public_key, signature_private_key, created_at)
        select 'id-' || lpad(g::text, 8, '0'), 2,
          to_timestamp((${now}::float8 + ${DAY}::float8 * (1 + 29 * random())) / 1000.0),
          to_timestamp(${now}::float8 / 1000.0), '\\x01'::bytea, '\\x02'::bytea, '\\x03'::bytea,
          to_timestamp(${now}::float8 / 1000.0)
        from generate_series(1, ${n}::int) g`;
      await tx`
        insert into key_packages (identity_id, generation, ref, ciphersuite, key_package,
          private_key, not_before, not_after, created_at, is_current, published_at, delete_at)
        select i.id, k.generation, i.id || '-' || k.generation, 'bench', '\\x00'::bytea,
          '\\x00'::bytea, now(), now() + interval '84 days', now(), k.generation = 2, now(),
          case when k.generation = 1
            then to_timestamp((${now}::float8 + ${DAY}::float8 * (1 + random())) / 1000.0)
          end
        from identities i, (values (1), (2)) as k(generation)`;
    });
    await sql`vacuum analyze identities`;
    await sql`vacuum analyze key_packages`;
    log(`seeded ${n} identities in ${Math.round(performance.now() - started)} ms`);

    // 2. Reconcile into the empty Redis.
    const before = await usedMemory(admin);
    started = performance.now();
    let cpu0 = await cpu(admin);
    let walked = started;
    const report = await reconcile(rotor, {
      onProgress: (done) => {
        walked = performance.now();
        if (done % 100_000 === 0) log(`reconcile ${done}`);
      },
    });
    const reconcileMs = performance.now() - started;
    const reconcileCpu = cpuDelta(cpu0, await cpu(admin));
    const bytes = (await usedMemory(admin)) - before;
    const timers = report.repairs.rotation.add + report.repairs.deletion.add;
    const sample = await Promise.all(
      ["00000001", "00000002", "00000003"].map(async (s) => ({
        rotation: await admin.memory("USAGE", rotor.timers.queues.rotation.toKey(`id-id-${s}`)),
        encoding: await admin.object("ENCODING", rotor.timers.queues.rotation.toKey(`id-id-${s}`)),
      })),
    );
    results.reconcile = {
      ms: Math.round(reconcileMs),
      overdueAndWalkMs: Math.round(walked - started),
      orphanScanMs: Math.round(started + reconcileMs - walked),
      identitiesPerS: perS(report.identities, reconcileMs),
      timersPerS: perS(timers, reconcileMs),
      extrapolated1MSeconds: Math.round((reconcileMs / report.identities) * 1e6) / 1000,
      ...reconcileCpu,
      repairs: report.repairs,
      redisBytesPerIdentityBothTimers: Math.round(bytes / report.identities),
      redisBytesPerJob: Math.round(bytes / timers),
      steadyStateBytesPerIdentity: Math.round((bytes / timers) * (1 + 1 / 30)),
      jobHashMemoryUsage: sample,
    };
    log(`reconcile: ${JSON.stringify(results.reconcile)}`);

    // 3. Welcomes through pullInMany, 1,000 ids per call.
    const ids = Array.from({ length: welcomes }, (_, i) => `id-${String(i + 1).padStart(8, "0")}`);
    cpu0 = await cpu(admin);
    started = performance.now();
    let changed = 0;
    for (let i = 0; i < ids.length; i += 1000) {
      const { results: r } = await pullInMany(rotor, ids.slice(i, i + 1000), 5_000);
      changed += r.filter((x) => x.changed).length;
    }
    const welcomeMs = performance.now() - started;
    results.welcomes = {
      ms: Math.round(welcomeMs),
      changed,
      perS: perS(welcomes, welcomeMs),
      ...cpuDelta(cpu0, await cpu(admin)),
    };
    log(`welcomes: ${JSON.stringify(results.welcomes)}`);
    await sql.end();
    await ctx.close();

    // 4. Raw BullMQ, same machine, same run, fresh private Redis contents.
    await admin.flushall();
    const rawBefore = await usedMemory(admin);
    const connection = new Redis(redisServer.url, { maxRetriesPerRequest: null });
    const queue = new Queue("rotation", { connection });
    const rawIds = Array.from({ length: rawN }, (_, i) => `id-${String(i).padStart(8, "0")}`);
    started = performance.now();
    for (let i = 0; i < rawN; i += 1000) {
      const t = Date.now();
      await queue.addBulk(
        rawIds.slice(i, i + 1000).map((jobId, j) => ({
          name: "rotate",
          data: { due: t + DAY + (i + j) },
          opts: { jobId, delay: DAY + (i + j), timestamp: t },
        })),
      );
    }
    const addMs = performance.now() - started;
    const rawBytes = (await usedMemory(admin)) - rawBefore;
    started = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: 64 }, async () => {
        while (next < rawIds.length) {
          const job = await queue.getJob(rawIds[next++] as string);
          await job?.changeDelay(5_000);
        }
      }),
    );
    const changeMs = performance.now() - started;
    results.rawBullmq = {
      addBulkJobsPerS: perS(rawN, addMs),
      changeDelayPerS: perS(rawN, changeMs),
      bytesPerJob: Math.round(rawBytes / rawN),
    };
    await queue.close();
    await connection.quit();
    const r = results.reconcile as { timersPerS: number; identitiesPerS: number };
    const w = results.welcomes as { perS: number };
    const raw = results.rawBullmq as { addBulkJobsPerS: number; changeDelayPerS: number };
    results.ratios = {
      rescheduleVsChangeDelay: Math.round((w.perS / raw.changeDelayPerS) * 100) / 100,
      scheduleTimersVsAddBulk: Math.round((r.timersPerS / raw.addBulkJobsPerS) * 100) / 100,
      scheduleIdentitiesVsAddBulk: Math.round((r.identitiesPerS / raw.addBulkJobsPerS) * 100) / 100,
    };
    console.log(JSON.stringify(results, null, 2));
  } finally {
    await admin.quit().catch(() => {});
    await redisServer.stop();
    await database.drop();
  }
}

await main();
process.exit(0);
