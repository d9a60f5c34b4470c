/**
 * Single-welcome ingest against the same run's pgbench (issue 14 item 6).
 *
 *   npx tsx bench/ingest.ts [--identities 150000] [--seconds 15] [--connections 64]
 *                           [--processes 1,2,3] [--pgbench-seconds 10] [--report-only]
 *
 * In one run: the machine's reference figures (bench/peers/machine.ts: redis-benchmark, then
 * pgbench single-row UPDATE on the same Postgres), then, for each API_PROCESSES value, one
 * welcome per request (POST /v1/identities/:id/welcome with the ingest token; the closed loop of
 * bench/peers/ingest.ts over `--connections` keep-alive connections) against a separate
 * `kp-rotor api` process on a private database and a private redis-server. The identities are
 * copies of one registered template (SQL), armed by reconcile(); each API_PROCESSES value gets
 * its own slice of them, so every welcome moves a deadline. Writes bench/results/ingest.json
 * and prints a markdown table.
 */
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { loadConfig } from "../src/config.js";
import { createContext } from "../src/context.js";
import { createLogger } from "../src/logger.js";
import { register } from "../src/services/identities.service.js";
import { reconcile } from "../src/services/reconcile.service.js";
import { freePort, randomName } from "../test/helpers/env.js";
import {
  adminSql,
  defer,
  pgDelta,
  pgStats,
  ROOT,
  round,
  runMain,
  seedIdentities,
  sleep,
  spawnService,
  vacuumAnalyze,
  wholeNumber,
} from "./lib.js";
import { writeSection } from "./sections.js";
import { makeInfra } from "./peers/common.js";
import { shuffled, welcomeLoad } from "./peers/ingest.js";
import { describeMachine, machineLimits } from "./peers/machine.js";

const DAY = 86_400_000;
const { values } = parseArgs({
  options: {
    identities: { type: "string" },
    seconds: { type: "string" },
    connections: { type: "string" },
    processes: { type: "string" },
    "pgbench-seconds": { type: "string" },
    "report-only": { type: "boolean", default: false },
  },
});
const IDENTITIES = wholeNumber("identities", values.identities, 150_000);
const SECONDS = wholeNumber("seconds", values.seconds, 15);
const CONNECTIONS = wholeNumber("connections", values.connections, 64);
const PGBENCH_S = wholeNumber("pgbench-seconds", values["pgbench-seconds"], 10);
const PROCESSES = (values.processes ?? "1,2,3").split(",").map((raw) => {
  const n = wholeNumber("processes", raw, 1);
  if (n < 1) throw new Error("--processes: expected whole numbers of at least 1");
  return n;
});
const WARMUP_S = 3;

const log = (msg: string) => console.error(`[ingest] ${msg}`);
const load = () => loadavg().map((x) => round(x, 2));

/** user + system CPU of a process from /proc (Linux), in ms; 0 when it is gone. */
function cpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
  } catch {
    return 0;
  }
}

/** A process and its children (the cluster's API processes), from /proc's parent pids. */
function processTree(root: number): number[] {
  const parents = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      parents.set(ppid, [...(parents.get(ppid) ?? []), Number(entry)]);
    } catch {
      // gone meanwhile
    }
  }
  const out = [root];
  for (let i = 0; i < out.length; i++) out.push(...(parents.get(out[i] as number) ?? []));
  return out;
}

interface Row {
  processes: number;
  welcomesPerS: number;
  ratioToPgbench: number | null;
  ok: number;
  non2xx: number;
  errors: number;
  pulledIn: number;
  /**
   * Transactions committed in the measured database per acknowledged welcome: below 1 when the
   * group commit (src/services/pull-in-batcher.ts) put several welcomes in one transaction.
   */
  commitsPerWelcome: number;
  /** The slice of identities ran out before `--seconds` (raise --identities): a shorter run. */
  poolExhausted: boolean;
  seconds: number;
  latencyMs: { p50: number; p90: number; p99: number; max: number };
  apiCpuPercent: number;
  loadGeneratorCpuPercent: number;
  loadavgStart: number[];
  loadavgEnd: number[];
}

async function main() {
  const loadavgStart = load();
  const admin = adminSql();
  const infra = makeInfra(admin, log);
  const machine = await describeMachine(admin);
  log(`load average at start: ${loadavgStart.join(" ")}`);
  const limits = await machineLimits(infra, PGBENCH_S);
  const tps = limits.pgbench.tps;
  log(`pgbench: ${tps} tps`);

  const redis = await infra.newRedis();
  const database = await infra.newDatabase();
  const env = {
    DATABASE_URL: database.url,
    REDIS_URL: redis.url,
    QUEUE_PREFIX: randomName("kpi"),
    KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64"),
    ROTATION_INTERVAL: "30d",
  };
  const ctx = await createContext(
    loadConfig({ ...env, LOG_LEVEL: "silent" }),
    createLogger("silent"),
    { migrate: true },
  );
  defer("context", () => ctx.close());
  await register(ctx.rotor, "tmpl-0");
  const now = Date.now();
  const seedMs = await seedIdentities(ctx.database.sql, {
    prefix: "id-",
    count: IDENTITIES,
    fromMs: now + DAY,
    toMs: now + 30 * DAY,
    templateId: "tmpl-0",
  });
  await vacuumAnalyze(ctx.config.databaseUrl);
  const armStarted = Date.now();
  await reconcile(ctx.rotor);
  log(`seeded ${IDENTITIES} identities in ${seedMs} ms, armed in ${Date.now() - armStarted} ms`);

  // Each API_PROCESSES value welcomes its own slice (a fixed shuffle): one welcome per identity.
  const ids = shuffled(
    Array.from({ length: IDENTITIES }, (_, i) => `id-${String(i + 1).padStart(8, "0")}`),
  );
  const slice = Math.floor(ids.length / PROCESSES.length);
  const rows: Row[] = [];
  for (const [index, processes] of PROCESSES.entries()) {
    const pool = ids.slice(index * slice, (index + 1) * slice);
    const [port, metricsPort] = [await freePort(), await freePort()];
    const apiToken = randomBytes(18).toString("base64url");
    const ingestToken = randomBytes(18).toString("base64url");
    const api = spawnService("api", {
      ...env,
      PORT: String(port),
      HOST: "127.0.0.1",
      // In a cluster the primary serves it (aggregated); scraped only before the measurement.
      METRICS_PORT: String(metricsPort),
      LOG_LEVEL: "info",
      API_TOKEN: apiToken,
      INGEST_TOKEN: ingestToken,
      API_PROCESSES: String(processes),
      // Host-wide; each process enforces its share. Raised so one load generator is not throttled.
      RATE_LIMIT_MAX: "10000000",
      RATE_LIMIT_WINDOW: "1m",
    });
    try {
      const baseUrl = `http://127.0.0.1:${port}`;
      const readyBy = Date.now() + 60_000;
      // Ready when /readyz answers and, in a cluster, every process listens (the primary's gauge).
      const listening = async () => {
        if (processes === 1) return true;
        const body = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).then(
          (r) => (r.ok ? r.text() : ""),
          () => "",
        );
        return body.split("\n").includes(`kp_rotor_api_processes ${processes}`);
      };
      for (;;) {
        const ok = await fetch(`${baseUrl}/readyz`).then(
          (r) => r.ok,
          () => false,
        );
        if (ok && (await listening())) break;
        if (!api.alive() || Date.now() > readyBy) {
          await Promise.race([api.crashed, sleep(100)]);
          throw new Error(`kp-rotor api (API_PROCESSES=${processes}) not ready in 60 s`);
        }
        await sleep(200);
      }
      const common = { baseUrl, token: ingestToken, connections: CONNECTIONS };
      const warmup = pool.splice(0, Math.min(2_000, Math.floor(pool.length / 10)));
      await welcomeLoad({ ...common, ids: warmup, maxSeconds: WARMUP_S });
      const tree = processTree(api.pid);
      const rowStart = load();
      const cpu0 = tree.reduce((sum, pid) => sum + cpuMs(pid), 0);
      const own0 = process.cpuUsage();
      const pg0 = await pgStats(admin, database.name);
      const run = await Promise.race([
        welcomeLoad({ ...common, ids: pool, maxSeconds: SECONDS }),
        api.crashed,
      ]);
      const cpu1 = tree.reduce((sum, pid) => sum + cpuMs(pid), 0);
      const own = process.cpuUsage(own0);
      // Postgres publishes a backend's counters within a second of its last transaction.
      await sleep(1_500);
      const commits = pgDelta(pg0, await pgStats(admin, database.name)).xact_commit;
      const wallMs = run.seconds * 1000;
      const perS = Math.round(run.ok / run.seconds);
      // Every identity of the slice welcomed before --seconds were up (autocannon's `amount`).
      const ranOut = run.requests >= pool.length && run.seconds < SECONDS - 0.5;
      rows.push({
        processes,
        welcomesPerS: perS,
        ratioToPgbench: tps ? round(perS / tps, 3) : null,
        ok: run.ok,
        non2xx: run.non2xx,
        errors: run.errors,
        pulledIn: run.pulledIn,
        commitsPerWelcome: run.ok === 0 ? 0 : round(commits / run.ok, 3),
        poolExhausted: ranOut,
        seconds: round(run.seconds, 2),
        latencyMs: {
          p50: run.latency.p50,
          p90: run.latency.p90,
          p99: run.latency.p99,
          max: run.latency.max,
        },
        apiCpuPercent: Math.round(((cpu1 - cpu0) / wallMs) * 100),
        loadGeneratorCpuPercent: Math.round(((own.user + own.system) / 1000 / wallMs) * 100),
        loadavgStart: rowStart,
        loadavgEnd: load(),
      });
      log(
        `API_PROCESSES=${processes}: ${perS} welcomes/s (${run.ok} ok, ${run.non2xx} non-2xx)${ranOut ? "; the identities ran out early, raise --identities" : ""}`,
      );
    } finally {
      await api.stop();
    }
  }

  const loadavgEnd = load();
  const result = {
    when: new Date().toISOString(),
    command: `npx tsx bench/ingest.ts ${process.argv.slice(2).join(" ")}`.trim(),
    what: `POST /v1/identities/:id/welcome (ingest token), one welcome per request, ${CONNECTIONS} keep-alive connections, closed loop (autocannon 9 in the benchmark process, same machine), against a separate \`kp-rotor api\` process at each API_PROCESSES, on a private database (${IDENTITIES} identities seeded by SQL, armed by reconcile) and a private redis-server; LOG_LEVEL info (stdout to /dev/null), METRICS_PORT on (not scraped while measuring), RATE_LIMIT_MAX 10,000,000 per 1 min; ${WARMUP_S} s warm-up, then ${SECONDS} s measured; no worker running`,
    machine,
    loadavgStart,
    loadavgEnd,
    limits,
    rows,
  };
  writeFileSync(join(ROOT, "bench/results/ingest.json"), `${JSON.stringify(result, null, 2)}\n`);
  const lines = section(result);
  writeSection("ingest", lines.join("\n"));
  console.log(`\n${lines.join("\n")}`);
  console.log("\nwritten: bench/results/ingest.json");
}

type IngestResult = {
  when: string;
  command: string;
  what: string;
  machine: { nproc: string | number; cpuModel?: string; memoryGiB: number; node: string };
  loadavgStart: number[];
  loadavgEnd: number[];
  limits: { pgbench: { command: string; tps: number | null } };
  rows: {
    processes: number;
    welcomesPerS: number;
    ratioToPgbench: number | null;
    latencyMs: { p50: number; p99: number };
    apiCpuPercent: number;
    loadGeneratorCpuPercent: number;
    commitsPerWelcome: number;
    non2xx: number;
    errors: number;
    loadavgStart: number[];
    loadavgEnd: number[];
  }[];
};

/** The section of BENCHMARKS.md for a run's result (--report-only renders it from the JSON). */
function section(r: IngestResult): string[] {
  const { machine, limits, rows } = r;
  return [
    "## Single-welcome ingest against pgbench",
    "",
    `\`${r.command}\`, ${r.when}, on ${machine.nproc} cores (${machine.cpuModel}), ${machine.memoryGiB} GiB, Node ${machine.node}. ${r.what}. Goal: one welcome per request at >= 50 % of the same run's pgbench (${limits.pgbench.tps ?? "?"} tps, single-row UPDATE, \`${limits.pgbench.command}\`); load average ${r.loadavgStart.join(" ")} at start, ${r.loadavgEnd.join(" ")} at end.`,
    "",
    "| API_PROCESSES | welcomes/s | of pgbench | goal met | p50 ms | p99 ms | API CPU % | load gen CPU % | Postgres commits per welcome | non-2xx | errors | load avg (1 min) start → end |",
    "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ...rows.map((row) => {
      const ratio = row.ratioToPgbench === null ? "?" : `${Math.round(row.ratioToPgbench * 100)} %`;
      const met = row.ratioToPgbench === null ? "?" : row.ratioToPgbench >= 0.5 ? "yes" : "no";
      return `| ${row.processes} | ${row.welcomesPerS} | ${ratio} | ${met} | ${row.latencyMs.p50} | ${row.latencyMs.p99} | ${row.apiCpuPercent} | ${row.loadGeneratorCpuPercent} | ${row.commitsPerWelcome} | ${row.non2xx} | ${row.errors} | ${row.loadavgStart[0]} → ${row.loadavgEnd[0]} |`;
    }),
    "",
  ];
}

if (values["report-only"]) {
  const stored = JSON.parse(
    readFileSync(join(ROOT, "bench/results/ingest.json"), "utf8"),
  ) as IngestResult;
  const md = section(stored).join("\n");
  writeSection("ingest", md);
  console.log(md);
} else {
  void runMain(main);
}
