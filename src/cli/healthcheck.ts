/**
 * The image's HEALTHCHECK (`node dist/src/cli/healthcheck.js`), for any of its commands: exit 0
 * when the process is healthy, 1 otherwise. An API process (start, api) is asked GET /healthz on
 * PORT; a worker serves no API (nothing listens on PORT), so it counts as healthy when its
 * metrics listener (METRICS_PORT) accepts a connection, which it opens only once Postgres, Redis
 * and its queues are up. Reads the environment directly: it must not load the service.
 */
import { connect } from "node:net";

const HOST = "127.0.0.1";
const TIMEOUT_MS = 2_000;

async function apiHealth(port: number): Promise<"healthy" | "unhealthy" | "absent"> {
  try {
    const res = await fetch(`http://${HOST}:${port}/healthz`, {
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
    await res.body?.cancel();
    return res.ok ? "healthy" : "unhealthy";
  } catch (err) {
    const code = (err as { cause?: { code?: string } }).cause?.code;
    return code === "ECONNREFUSED" ? "absent" : "unhealthy";
  }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: HOST, port, timeout: TIMEOUT_MS });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.once("connect", () => done(true));
    socket.once("timeout", () => done(false));
    socket.once("error", () => done(false));
  });
}

const port = Number(process.env.PORT || 3000);
const metricsPort = Number(process.env.METRICS_PORT || 9464);
const api = await apiHealth(port);
const healthy =
  api === "healthy" || (api === "absent" && metricsPort > 0 && (await accepts(metricsPort)));
process.exitCode = healthy ? 0 : 1;
