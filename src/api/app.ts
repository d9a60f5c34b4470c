import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from "fastify";
import type { Logger } from "../logger.js";
import { type Metrics, metricsFor } from "../metrics/metrics.js";
import type { LiveRotor as Rotor } from "../services/rotor.js";
import { BOARD_PREFIX, registerAuth } from "./plugins/auth.js";
import { registerBoard } from "./plugins/board.js";
import { registerDocsUi, registerOpenApi } from "./plugins/docs.js";
import { registerErrorHandler } from "./plugins/errors.js";
import { limitConnectionsPerAddress, serverTimeouts } from "./plugins/connections.js";
import {
  type RateLimitOptions,
  registerContentTypePolicy,
  registerProtection,
} from "./plugins/protection.js";
import { identityRoutes } from "./routes/identities.js";
import { keyRoutes } from "./routes/keys.js";
import { operationRoutes } from "./routes/operations.js";

export interface AppDeps {
  rotor: Rotor;
  apiToken: string | undefined;
  /** A token that may only report welcomes (INGEST_TOKEN). */
  ingestToken?: string | undefined;
  /** Requests per client (principal) per window; 0 or absent: no limit. */
  rateLimit?: RateLimitOptions;
  /** Failed authentications per client address per window before 429 (AUTH_FAILURE_MAX). */
  authFailures?: { max: number; windowMs: number };
  /** Longest a request may take to arrive, headers and body (default 10 s). */
  requestTimeoutMs?: number;
  /** Open connections per client address (default 256; 0: no limit). */
  maxConnectionsPerClient?: number;
  /** Requests in progress beyond which new ones get 503 (default MAX_IN_FLIGHT). */
  maxInFlight?: number;
  checkReady: () => Promise<{ postgres: boolean; redis: boolean }>;
  /** False once shutdown has begun, so readiness fails before connections close. */
  isAccepting?: () => boolean;
  logger?: Logger;
  /** The process's metrics; by default those of the rotor (shared with a worker in-process). */
  metrics?: Metrics;
  /**
   * Bull Board at /admin/queues: HTTP basic credentials (BOARD_USER/BOARD_PASSWORD) and
   * read-only mode. The board is mounted only if these or an API token protect it.
   */
  board?: {
    user?: string | undefined;
    password?: string | undefined;
    readOnly?: boolean;
    /** Mount it without credentials when none are configured (dev mode, loopback only). */
    open?: boolean;
  };
  /** Serve /docs without credentials (DOCS_PUBLIC). */
  docsPublic?: boolean;
}

const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;

/** Builds the API as a Fastify instance; never listens (src/server.ts does). */
export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const app = Fastify({
    ...serverTimeouts(deps.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS),
    loggerInstance: deps.logger as FastifyBaseLogger | undefined,
    bodyLimit: 256 * 1024,
    // Identity ids are up to 128 characters; the router's default limit is 100.
    routerOptions: { maxParamLength: 256 },
    // Errors say which field is wrong, all of them; a string is never taken for an array of one.
    ajv: { customOptions: { allErrors: true, coerceTypes: false, removeAdditional: false } },
    // One access-log line per request (below) instead of Fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
  });
  app.addHook("onResponse", (request, reply, done) => {
    request.log.info(
      {
        method: request.method,
        url: request.url,
        statusCode: reply.statusCode,
        ms: Math.round(reply.elapsedTime * 10) / 10,
      },
      "request",
    );
    done();
  });
  const metrics = deps.metrics ?? metricsFor(deps.rotor);
  const { user, password } = deps.board ?? {};
  const basic = user !== undefined && password !== undefined ? { user, password } : undefined;

  limitConnectionsPerAddress(app.server, deps.maxConnectionsPerClient ?? 256);
  registerErrorHandler(app);
  const load = await registerProtection(app, deps.rateLimit, deps.maxInFlight);
  registerAuth(app, {
    token: deps.apiToken,
    ingestToken: deps.ingestToken,
    basic,
    docsPublic: deps.docsPublic ?? false,
    failures: deps.authFailures,
  });
  registerContentTypePolicy(app);
  await registerOpenApi(app, { bearer: deps.apiToken !== undefined });

  operationRoutes(app, {
    checkReady: deps.checkReady,
    isAccepting: deps.isAccepting,
    isOverloaded: () => load.overloaded(),
    metrics,
  });
  identityRoutes(app, {
    rotor: deps.rotor,
    onWelcomes: (count, pulledIn, principal) =>
      metrics.welcomesAccepted(count, { pulledIn, principal }),
  });
  keyRoutes(app, deps.rotor);
  await registerDocsUi(app);

  const open = deps.apiToken === undefined && basic === undefined;
  if (open && deps.board?.open) {
    await registerBoard(app, {
      queues: deps.rotor.timers.shardQueues,
      readOnly: deps.board.readOnly ?? false,
    });
    app.log.info(`Bull Board at ${BOARD_PREFIX} without credentials (dev mode)`);
  } else if (open) {
    app.log.warn(
      `Bull Board not mounted at ${BOARD_PREFIX}: set API_TOKEN or BOARD_USER and BOARD_PASSWORD`,
    );
  } else {
    await registerBoard(app, {
      queues: deps.rotor.timers.shardQueues,
      readOnly: deps.board?.readOnly ?? false,
    });
    app.log.info(
      { basicAuth: basic !== undefined, bearer: deps.apiToken !== undefined },
      `Bull Board at ${BOARD_PREFIX}`,
    );
  }
  return app;
}
