/**
 * The machine: description and two reference figures measured in the same run (redis-benchmark
 * against a private redis-server, pgbench single-row UPDATE against a private database).
 */
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { round } from "../lib.js";
import type { Infra } from "./common.js";

const run = promisify(execFile);

async function text(cmd: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await run(cmd, args, { maxBuffer: 1 << 22 });
    return stdout.trim();
  } catch (err) {
    return `(${cmd} failed: ${(err as Error).message.split("\n")[0]})`;
  }
}

export interface MachineInfo {
  nproc: string;
  cpuModel: string;
  memoryGiB: number;
  kernel: string;
  node: string;
  redisServer: string;
  postgres: string;
  loadavgStart: number[];
}

export async function describeMachine(admin: {
  unsafe(q: string): Promise<unknown[]>;
}): Promise<MachineInfo> {
  const [row] = (await admin.unsafe("select version() as v")) as { v: string }[];
  return {
    nproc: await text("nproc", []),
    cpuModel: cpus()[0]?.model ?? "?",
    memoryGiB: round(totalmem() / 2 ** 30, 1),
    kernel: await text("uname", ["-r"]),
    node: process.version,
    redisServer: await text("redis-server", ["--version"]),
    postgres: row?.v ?? "?",
    loadavgStart: loadavg().map((x) => round(x, 2)),
  };
}

export interface Limits {
  redisBenchmark: { command: string; setPerS: number | null; zaddPerS: number | null; raw: string };
  pgbench: { command: string; tps: number | null; raw: string };
}

export async function machineLimits(infra: Infra, pgbenchSeconds: number): Promise<Limits> {
  const redis = await infra.newRedis();
  const rbArgs = ["-p", String(redis.port), "-q", "-t", "set,zadd", "-n", "100000", "-c", "50"];
  infra.log(`redis-benchmark ${rbArgs.join(" ")}`);
  const rb = await text("redis-benchmark", rbArgs);
  await redis.stop();
  const perS = (name: string) => {
    const m = new RegExp(`^${name}: ([\\d.]+) requests per second`, "mi").exec(
      rb.replace(/\r/g, "\n"),
    );
    return m ? Number(m[1]) : null;
  };
  const db = await infra.newDatabase();
  const url = db.url;
  infra.log("pgbench -i -s 1");
  await text("pgbench", ["-i", "-s", "1", "-q", url]);
  const script = join(tmpdir(), `kp-peers-update-${process.pid}.sql`);
  writeFileSync(
    script,
    "\\set aid random(1, 100000)\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n",
  );
  const pbArgs = ["-n", "-c", "16", "-j", "2", "-T", String(pgbenchSeconds), "-f", script, url];
  infra.log(`pgbench ${pbArgs.slice(0, -1).join(" ")} <db>`);
  const pb = await text("pgbench", pbArgs);
  await db.drop();
  const tps = /tps = ([\d.]+)/.exec(pb);
  return {
    redisBenchmark: {
      command: `redis-benchmark -p <private port> ${rbArgs.slice(2).join(" ")}`,
      setPerS: perS("SET"),
      zaddPerS: perS("ZADD"),
      raw: rb
        .replace(/\r/g, "\n")
        .split("\n")
        .filter((l) => /requests per second/.test(l))
        .map((l) => l.trim())
        .join("; "),
    },
    pgbench: {
      command: `pgbench -i -s 1 <private db>; pgbench -n -c 16 -j 2 -T ${pgbenchSeconds} -f update.sql <private db>  (update.sql: \\set aid random(1, 100000); UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;)`,
      tps: tps ? round(Number(tps[1]), 0) : null,
      raw: pb
        .split("\n")
        .filter((l) => /tps|latency average/.test(l))
        .join("; "),
    },
  };
}
