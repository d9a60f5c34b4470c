import type { FastifyInstance } from "fastify";
import { buildApp } from "../api/app.js";
import { assertApiProtected } from "../config.js";
import type { Context } from "../context.js";

export interface RunningApi {
  app: FastifyInstance;
  address: string;
  /** Readiness goes false first, then the server stops accepting and drains. */
  close(): Promise<void>;
}

/**
 * Builds the API on a context and listens on the configured host and port. `openBoard` mounts
 * Bull Board without credentials when none are configured: dev mode only, which listens on
 * loopback only (src/cli/dev.ts).
 */
export async function startApi(
  ctx: Context,
  options: { openBoard?: boolean | undefined } = {},
): Promise<RunningApi> {
  assertApiProtected(ctx.config);
  let accepting = true;
  const app = await buildApp({
    rotor: ctx.rotor,
    apiToken: ctx.config.apiToken,
    ingestToken: ctx.config.ingestToken,
    rateLimit: {
      max: ctx.config.rateLimitMax,
      windowMs: ctx.config.rateLimitWindowMs,
      registerMax: ctx.config.rateLimitRegisterMax,
    },
    authFailures: { max: ctx.config.authFailureMax, windowMs: ctx.config.rateLimitWindowMs },
    requestTimeoutMs: ctx.config.requestTimeoutMs,
    maxConnectionsPerClient: ctx.config.maxConnectionsPerClient,
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
