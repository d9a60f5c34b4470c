/**
 * Slow-body attack against a real API process, and what an operator sees meanwhile.
 *
 *   npx tsx bench/slow-bodies.ts [--connections 2000] [--seconds 30] [--addresses 100]
 *                                [--root <checkout>]
 *
 * The attacker holds `--connections` connections, each a `POST /v1/welcomes` with
 * `Content-Length: 100000` (with the ingest token: a hostile client that has one) sending one
 * byte every 5 s, and reopens each one the server closes. It spreads them over `--addresses`
 * loopback addresses (127.0.1.x), so a per-address connection limit alone cannot stop it. The
 * operator, from 127.0.0.1, sends `GET /v1/identities/<id>` with the API token, one at a time,
 * for `--seconds`, and the figure is the share of those answered 2xx within 3 s.
 * `--root` runs the API of another checkout (e.g. an older commit) for a before/after figure.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { connect, type Socket } from "node:net";
import { parseArgs } from "node:util";
import { createTestDatabase, freePort, REDIS_URL, randomName } from "../test/helpers/env.js";
import { defer, ROOT, runMain, sleep, wholeNumber } from "./lib.js";

const TOKEN = "operator-token-0123456789abcdef";
const INGEST = "ingest-token-0123456789abcdef";

const { values } = parseArgs({
  options: {
    connections: { type: "string" },
    seconds: { type: "string" },
    addresses: { type: "string" },
    root: { type: "string" },
  },
});
const connections = wholeNumber("connections", values.connections, 2_000);
const seconds = wholeNumber("seconds", values.seconds, 30);
const addresses = Math.max(1, wholeNumber("addresses", values.addresses, 100));
const root = values.root ?? ROOT;

function run(args: string[], env: Record<string, string>): ChildProcess {
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ["ignore", "ignore", "inherit"],
  });
  defer(`kp-rotor ${args[0]}`, () => {
    if (child.exitCode === null) child.kill("SIGKILL");
  });
  return child;
}

/** One attacking connection; reopens itself whenever the server closes it. */
function attacker(
  port: number,
  from: string,
  stop: { stopped: boolean },
  stats: { opened: number },
) {
  let socket: Socket | undefined;
  let ticker: NodeJS.Timeout | undefined;
  const open = () => {
    if (stop.stopped) return;
    stats.opened++;
    socket = connect({ port, host: "127.0.0.1", localAddress: from }, () => {
      socket?.write(
        `POST /v1/welcomes HTTP/1.1\r\nHost: kp\r\nAuthorization: Bearer ${INGEST}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{`,
      );
      ticker = setInterval(() => socket?.write(" "), 5_000);
    });
    socket.on("error", () => {});
    socket.resume();
    socket.once("close", () => {
      clearInterval(ticker);
      // Back off a little, as a real attacker's reconnect loop would.
      setTimeout(open, 200);
    });
  };
  open();
  return () => {
    clearInterval(ticker);
    socket?.destroy();
  };
}

async function main() {
  const db = await createTestDatabase();
  defer(`drop database ${db.name}`, () => db.drop());
  const port = await freePort();
  const env = {
    DATABASE_URL: db.url,
    REDIS_URL,
    QUEUE_PREFIX: randomName("kpslow"),
    KEY_ENCRYPTION_KEY: Buffer.from(Array.from({ length: 32 }, (_, i) => i * 7 + 1)).toString(
      "base64",
    ),
    API_TOKEN: TOKEN,
    INGEST_TOKEN: INGEST,
    HOST: "127.0.0.1",
    PORT: String(port),
    METRICS_PORT: "0",
    LOG_LEVEL: "error",
  };
  const migrate = run(["migrate"], env);
  await new Promise((resolve) => migrate.once("exit", resolve));
  run(["api"], env);
  const base = `http://127.0.0.1:${port}`;
  const auth = { authorization: `Bearer ${TOKEN}` };
  for (;;) {
    const ok = await fetch(`${base}/healthz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    await sleep(200);
  }
  const put = await fetch(`${base}/v1/identities/operator-view`, { method: "PUT", headers: auth });
  if (put.status >= 300) throw new Error(`registration answered ${put.status}`);

  const stop = { stopped: false };
  const stats = { opened: 0 };
  const closers = Array.from({ length: connections }, (_, i) =>
    attacker(port, `127.0.1.${(i % addresses) + 1}`, stop, stats),
  );
  defer("attackers", () => {
    stop.stopped = true;
    for (const close of closers) close();
  });
  await sleep(2_000); // let the connections pile up

  const latencies: number[] = [];
  let within = 0;
  let readyTrue = 0;
  let readyChecks = 0;
  const statuses = new Map<number, number>();
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end) {
    const started = Date.now();
    const status = await fetch(`${base}/v1/identities/operator-view`, {
      headers: auth,
      signal: AbortSignal.timeout(10_000),
    }).then(
      async (r) => {
        await r.arrayBuffer();
        return r.status;
      },
      () => 0,
    );
    const ms = Date.now() - started;
    latencies.push(ms);
    statuses.set(status, (statuses.get(status) ?? 0) + 1);
    if (status >= 200 && status < 300 && ms <= 3_000) within++;
    if (latencies.length % 10 === 0) {
      readyChecks++;
      const ready = await fetch(`${base}/readyz`).then(
        (r) => r.status,
        () => 0,
      );
      if (ready === 200) readyTrue++;
    }
    await sleep(100);
  }
  stop.stopped = true;
  const sorted = [...latencies].sort((a, b) => a - b);
  const pct = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
  console.log(
    JSON.stringify(
      {
        root,
        connections,
        addresses,
        seconds,
        attackerConnectionsOpened: stats.opened,
        operatorRequests: latencies.length,
        operator2xxWithin3s: `${((100 * within) / latencies.length).toFixed(1)} %`,
        statuses: Object.fromEntries(statuses),
        latencyMs: { p50: pct(0.5), p90: pct(0.9), p99: pct(0.99), max: sorted.at(-1) },
        readyz200: `${readyTrue}/${readyChecks}`,
      },
      null,
      2,
    ),
  );
}

void runMain(main);
