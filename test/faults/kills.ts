/**
 * Where a worker process is when it is killed: its Postgres backends (matched by the client's
 * TCP port, which `ss` maps to the process) and what they are doing.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import type postgres from "postgres";
import { sleep } from "./harness.js";

const run = promisify(execFile);

export type KillPoint = "rotation-tx" | "deletion-tx" | "locked-tx" | "other";

/** Local ports of the process's TCP connections to the Postgres port. */
async function pgClientPorts(pid: number, pgPort: number): Promise<Set<number>> {
  const { stdout } = await run("ss", ["-tnpH", "state", "established", `( dport = :${pgPort} )`]);
  const ports = new Set<number>();
  for (const line of stdout.split("\n")) {
    if (!line.includes(`pid=${pid},`)) continue;
    const local = line.trim().split(/\s+/)[2] ?? "";
    ports.add(Number(local.slice(local.lastIndexOf(":") + 1)));
  }
  return ports;
}

/**
 * Pids among `pids` whose worker is running: a worker process holds three Redis connections once
 * its BullMQ workers run (the commands connection, the workers' shared one, and a blocking one),
 * after migrations and context set-up, which take seconds on a busy machine.
 */
export async function runningWorkers(pids: number[], redisPort: number): Promise<Set<number>> {
  const { stdout } = await run("ss", ["-tnpH", "state", "established", `( dport = :${redisPort} )`]);
  const counts = new Map<number, number>();
  for (const line of stdout.split("\n")) {
    const match = /pid=(\d+),/.exec(line);
    if (match) counts.set(Number(match[1]), (counts.get(Number(match[1])) ?? 0) + 1);
  }
  return new Set(pids.filter((pid) => (counts.get(pid) ?? 0) >= 3));
}

/** What the process's busy backends are doing right now, or undefined if none is in a transaction. */
export async function killPoint(
  sql: postgres.Sql,
  pid: number,
  pgPort: number,
): Promise<KillPoint | undefined> {
  const ports = await pgClientPorts(pid, pgPort);
  if (ports.size === 0) return undefined;
  const rows = await sql<{ port: number; state: string; query: string }[]>`
    select client_port as port, state, query from pg_stat_activity
    where application_name = 'kp-rotor' and state in ('active', 'idle in transaction')
      and xact_start is not null`;
  const mine = rows.filter((r) => ports.has(r.port));
  if (mine.length === 0) return undefined;
  const queries = mine.map((r) => r.query.toLowerCase());
  if (queries.some((q) => q.includes('delete from "key_packages"'))) return "deletion-tx";
  if (queries.some((q) => /insert into "key_packages"|update "key_packages"|update "identities"/.test(q))) {
    return "rotation-tx";
  }
  return "locked-tx";
}

/** Waits up to `maxMs` for the process to be inside a transaction; returns where it was. */
export async function waitForBusy(
  sql: postgres.Sql,
  pid: number,
  pgPort: number,
  maxMs: number,
): Promise<KillPoint> {
  const until = Date.now() + maxMs;
  while (Date.now() < until) {
    const point = await killPoint(sql, pid, pgPort).catch(() => undefined);
    if (point !== undefined) return point;
    await sleep(20);
  }
  return "other";
}
