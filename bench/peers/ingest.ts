/**
 * Welcome ingest over HTTP: one welcome per request (POST /v1/identities/:id/welcome with the
 * ingest token), a closed loop over C keep-alive connections (autocannon 9, in the benchmark
 * process), against a separate kp-rotor API process started as deployed (`src/cli/main.ts api`).
 */
import autocannon from "autocannon";
import { mulberry32 } from "../lib.js";

export interface LoadRun {
  /** Requests of the run, and how they ended. */
  requests: number;
  ok: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  statusCodes: Record<string, number>;
  seconds: number;
  /** Milliseconds, as the load generator measured them (whole ms). */
  latency: { mean: number; p50: number; p90: number; p99: number; max: number };
  /** 202 answers that said `"pulledIn":true` (the welcome moved the deadline). */
  pulledIn: number;
}

/**
 * Sends one POST per id of `ids` (in that order, wrapping around if more requests are made),
 * at most `maxSeconds`, over `connections` connections; resolves with autocannon's figures.
 */
export async function welcomeLoad(o: {
  baseUrl: string;
  token: string;
  ids: readonly string[];
  connections: number;
  maxSeconds: number;
}): Promise<LoadRun> {
  let next = 0;
  let pulledIn = 0;
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    const instance = autocannon(
      {
        url: o.baseUrl,
        connections: o.connections,
        pipelining: 1,
        amount: o.ids.length,
        timeout: 10,
        headers: { authorization: `Bearer ${o.token}` },
        requests: [
          {
            method: "POST",
            setupRequest: (req) => {
              const id = o.ids[next++ % o.ids.length] as string;
              return { ...req, path: `/v1/identities/${encodeURIComponent(id)}/welcome` };
            },
            onResponse: (status, body) => {
              if (status === 202 && body.includes('"pulledIn":true')) pulledIn++;
            },
          },
        ],
      },
      (err, res) => (err ? reject(err) : resolve(res)),
    );
    timer = setTimeout(() => instance.stop(), o.maxSeconds * 1000);
  }).finally(() => clearTimeout(timer));
  const seconds = (performance.now() - started) / 1000;
  const statusCodes = Object.fromEntries(
    Object.entries(result.statusCodeStats ?? {}).map(([code, v]) => [
      code,
      (v as { count: number }).count,
    ]),
  );
  const ok = result["2xx"];
  return {
    requests: ok + result.non2xx,
    ok,
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    statusCodes,
    seconds,
    latency: {
      mean: result.latency.average,
      p50: result.latency.p50,
      p90: result.latency.p90,
      p99: result.latency.p99,
      max: result.latency.max,
    },
    pulledIn,
  };
}

/** A fixed-seed shuffle, so the welcomes are spread over the identities, not in id order. */
export function shuffled<T>(items: readonly T[], seed = 11): T[] {
  const out = [...items];
  const random = mulberry32(seed);
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}
