import type { FastifyInstance } from "fastify";
import { buildApp } from "../api/app.js";
import { assertApiProtected, type Config } from "../config.js";
import type { Context } from "../context.js";
import type { Metrics } from "../metrics/metrics.js";

type Limits = Pick<
  Config,
  "rateLimitMax" | "rateLimitRegisterMax" | "authFailureMax" | "maxConnectionsPerClient"
>;

/**
 * One process's share of the host-wide limits when `processes` API processes serve one port
 * (API_PROCESSES): each limit divided by the processes, rounded up, never below 1; 0 (no limit)
 * stays 0. The limits are counted in each process's memory and the cluster primary deals out
 * connections round-robin, so the host-wide limit holds approximately (docs/security.md).
 */
export function perProcessLimits(limits: Limits, processes: number): Limits {
  const share = (limit: number) => (limit === 0 ? 0 : Math.max(1, Math.ceil(limit / processes)));
  return {
    rateLimitMax: share(limits.rateLimitMax),
    rateLimitRegisterMax: share(limits.rateLimitRegisterMax),
    authFailureMax: share(limits.authFailureMax),
    maxConnectionsPerClient: share(limits.maxConnectionsPerClient),
  };
}

export interface RunningApi {
  app: FastifyInstance;
  address: string;
  /** Readiness goes false first, then the server stops accepting and drains. */
  close(): Promise<void>;
}

/**
 * Builds the API on a context and listens on the configured host and port. `openBoard` mounts
 * Bull Board without credentials when none are configured: dev mode only, which listens on
 * loopback only (src/cli/dev.ts). `processes` > 1: this is one of that many API processes on
 * the port, and enforces its share of the limits (perProcessLimits).
 */
export async function startApi(
  ctx: Context,
  options: {
    openBoard?: boolean | undefined;
    processes?: number;
    metrics?: Metrics | undefined;
  } = {},
): Promise<RunningApi> {
  assertApiProtected(ctx.config);
  let accepting = true;
  const limits = perProcessLimits(ctx.config, options.processes ?? 1);
  const app = await buildApp({
    ...(options.metrics === undefined ? {} : { metrics: options.metrics }),
    rotor: ctx.rotor,
    apiToken: ctx.config.apiToken,
    ingestToken: ctx.config.ingestToken,
    rateLimit: {
      max: limits.rateLimitMax,
      windowMs: ctx.config.rateLimitWindowMs,
      registerMax: limits.rateLimitRegisterMax,
    },
    authFailures: { max: limits.authFailureMax, windowMs: ctx.config.rateLimitWindowMs },
    requestTimeoutMs: ctx.config.requestTimeoutMs,
    maxConnectionsPerClient: limits.maxConnectionsPerClient,
    checkReady: () => ctx.checkReady(),
    isAccepting: () => accepting,
    logger: ctx.rotor.log.child({ component: "api" }),
    board: {
      user: ctx.config.boardUser,
      password: ctx.config.boardPassword,
      readOnly: ctx.config.boardReadOnly,
      open: options.openBoard ?? false,
    },
    docsPublic: ctx.config.docsPublic,
  });
  const address = await app.listen({ port: ctx.config.port, host: ctx.config.host });
  let closing: Promise<void> | undefined;
  return {
    app,
    address,
    close() {
      closing ??= (async () => {
        accepting = false;
        await app.close();
      })();
      return closing;
    },
  };
}
