import { type ChildProcess, spawn } from "node:child_process";
import { request } from "node:http";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { afterAll, beforeAll, expect, it } from "vitest";
import * as identities from "../../src/services/identities.service.js";
import { createTestEnv, freePort, type TestEnv } from "../helpers/env.js";

// `kp-rotor api` with API_PROCESSES=2, as a real process tree: a node:cluster primary and two
// API processes sharing one port. What is observed: the access log (one JSON line per request,
// with the pid of the process that served it), the primary's log, METRICS_PORT, Postgres.

const BIN = fileURLToPath(new URL("../../bin/kp-rotor.mjs", import.meta.url));
const TOKEN = "api-processes-token-0123456789";
const IDS = Array.from({ length: 24 }, (_, i) => `cluster-${i}`);

let t: TestEnv;
let port: number;
let metricsPort: number;
let primary: ChildProcess;
let exited: Promise<number | null>;
const logLines: Record<string, unknown>[] = [];
const waiters: { match: (line: Record<string, unknown>) => boolean; resolve: () => void }[] = [];

/** Resolves at the first log line (already written or to come) that matches. */
function logged(match: (line: Record<string, unknown>) => boolean): Promise<void> {
  if (logLines.some(match)) return Promise.resolve();
  return new Promise((resolve) => waiters.push({ match, resolve }));
}

beforeAll(async () => {
  t = await createTestEnv();
  for (const id of IDS) await identities.register(t.ctx.rotor, id);
  [port, metricsPort] = [await freePort(), await freePort()];
  primary = spawn(process.execPath, [BIN, "api"], {
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      ...t.env,
      HOST: "127.0.0.1",
      PORT: String(port),
      METRICS_PORT: String(metricsPort),
      API_TOKEN: TOKEN,
      API_PROCESSES: "2",
      LOG_LEVEL: "info",
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  exited = new Promise((resolve) => primary.once("exit", resolve));
  let buffered = "";
  primary.stdout?.on("data", (chunk) => {
    buffered += chunk;
    const lines = buffered.split("\n");
    buffered = lines.pop() ?? "";
    for (const text of lines) {
      if (!text.startsWith("{")) continue;
      const line = JSON.parse(text) as Record<string, unknown>;
      logLines.push(line);
      for (const w of waiters.splice(0)) {
        if (w.match(line)) w.resolve();
        else waiters.push(w);
      }
    }
  });
  // Both API processes listening: two "api listening" lines from two pids.
  await logged(() => listeningPids().size >= 2);
});

afterAll(async () => {
  if (primary?.exitCode === null) {
    primary.kill("SIGKILL");
    for (const pid of listeningPids()) tryKill(pid);
  }
  await t?.cleanup();
});

const listeningPids = () =>
  new Set(logLines.filter((l) => l.msg === "api listening").map((l) => l.pid as number));

function tryKill(pid: number) {
  try {
    process.kill(pid, "SIGKILL");
  } catch {}
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** One request on a new connection (no keep-alive), so the primary deals each one out anew. */
function call(
  method: string,
  path: string,
  target = port,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: "127.0.0.1",
        port: target,
        method,
        path,
        agent: false,
        headers: { authorization: `Bearer ${TOKEN}` },
      },
      (res) => {
        let body = "";
        res.on("data", (chunk) => {
          body += chunk;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on("error", reject);
    req.end();
  });
}

const welcome = (id: string) => call("POST", `/v1/identities/${id}/welcome`);

/** The pids that served welcomes, from the access log. */
const servedBy = (path: string) =>
  logLines.filter((l) => l.msg === "request" && l.url === path).map((l) => l.pid as number);

const counter = (body: string, name: string) => {
  const line = body.split("\n").find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.split(" ")[1]);
};

it("serves from both API processes and aggregates their metrics on METRICS_PORT", async () => {
  const k = 10;
  for (let i = 0; i < k; i++) expect((await welcome("cluster-0")).status).toBe(202);
  await logged(() => servedBy("/v1/identities/cluster-0/welcome").length === k);
  const pids = new Set(servedBy("/v1/identities/cluster-0/welcome"));
  expect(pids).toEqual(listeningPids());
  expect(pids.has(primary.pid as number)).toBe(false);

  // The sum over the children, whichever served, and whichever child a scrape of the API's
  // own GET /metrics lands on.
  const scraped = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
  expect(scraped.status).toBe(200);
  const body = await scraped.text();
  expect(counter(body, "kp_rotor_welcomes_total")).toBe(k);
  expect(counter(body, "kp_rotor_api_processes")).toBe(2);
  for (let i = 0; i < 4; i++) {
    const viaApi = await call("GET", "/metrics");
    expect(viaApi.status).toBe(200);
    expect(counter(viaApi.body, "kp_rotor_welcomes_total")).toBe(k);
  }
});

it("replaces an API process killed with SIGKILL while the other keeps serving", async () => {
  const [victim, survivor] = [...listeningPids()] as [number, number];
  process.kill(victim, "SIGKILL");
  await logged(
    (l) => l.msg === "api process died unexpectedly; replacing it" && l.apiPid === victim,
  );
  for (let i = 0; i < 4; i++) expect((await welcome("cluster-1")).status).toBe(202);
  await logged(() => listeningPids().size >= 3);
  const replacement = [...listeningPids()].find((pid) => pid !== victim && pid !== survivor);
  expect(replacement).toBeDefined();
  expect(alive(replacement as number)).toBe(true);
  // The replacement takes its turn: new connections reach it too.
  for (let i = 0; i < 6; i++) expect((await welcome("cluster-2")).status).toBe(202);
  await logged(() => servedBy("/v1/identities/cluster-2/welcome").length === 6);
  expect(servedBy("/v1/identities/cluster-2/welcome")).toContain(replacement);
  const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  expect(counter(metrics, "kp_rotor_api_process_restarts_total")).toBe(1);
});

it("drains every API process on SIGTERM, exits 0, and loses no acknowledged welcome", async () => {
  const children = [...listeningPids()].filter(alive);
  expect(children).toHaveLength(2);
  const acked = new Map<string, string>();
  const queue = IDS.slice(3);
  let resolveFirst: () => void = () => {};
  const firstAck = new Promise<void>((resolve) => {
    resolveFirst = resolve;
  });
  // Three callers welcome one identity each until the API refuses connections.
  const callers = [0, 1, 2].map(async () => {
    for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
      const answer = await welcome(id).catch(() => undefined);
      if (answer === undefined) return;
      if (answer.status === 202) {
        acked.set(id, JSON.parse(answer.body).nextRotationAt);
        resolveFirst();
      }
    }
  });
  await firstAck;
  // Sent at the first ack: most identities are still to be welcomed while the processes drain.
  primary.kill("SIGTERM");
  await Promise.all(callers);
  expect(await exited).toBe(0);
  for (const pid of children) expect(alive(pid)).toBe(false);
  // Each API process drained as a single one does.
  for (const pid of children) {
    expect(logLines.some((l) => l.msg === "shutting down" && l.pid === pid)).toBe(true);
  }
  expect(logLines.some((l) => l.msg === "every api process exited")).toBe(true);

  expect(acked.size).toBeGreaterThan(0);
  const sql = postgres(t.env.DATABASE_URL as string, { max: 1, onnotice: () => {} });
  try {
    const rows = await sql<{ id: string; rotation_deadline: Date }[]>`
      select id, rotation_deadline from identities where id in ${sql([...acked.keys()])}`;
    expect(rows).toHaveLength(acked.size);
    for (const row of rows) {
      expect(row.rotation_deadline.getTime()).toBeLessThanOrEqual(
        new Date(acked.get(row.id) as string).getTime(),
      );
    }
  } finally {
    await sql.end();
  }
});
