import rateLimit from "@fastify/rate-limit";
import underPressure from "@fastify/under-pressure";
import type { FastifyInstance } from "fastify";
import helmet from "helmet";
import { errorBody } from "../../contract/api.js";

/** Requests in progress beyond which new ones are refused (each holds a Postgres connection). */
export const MAX_IN_FLIGHT = 2_000;

export interface RateLimitOptions {
  max: number;
  windowMs: number;
  /** Registrations (PUT /v1/identities/:id) per principal per window; 0 or absent: only `max`. */
  registerMax?: number;
}

/** What readiness reports: the process refuses new work right now. */
export interface Load {
  overloaded(): boolean;
}

const HEALTH = new Set(["/healthz", "/readyz"]);
const REGISTER_ROUTE = "/v1/identities/:identityId";

/**
 * Security headers and `Cache-Control: no-store` on every answer, backpressure, and a request
 * quota per client. A client is its verified principal (set by the auth hook, which runs first:
 * the API token, the ingest token, the board login) or, on an open API, its address; health
 * checks are never limited, so probes keep working under load. An exhausted quota answers 429
 * with Retry-After, as the API answers 503 when it is overloaded: callers back off instead of
 * queueing without bound.
 */
export async function registerProtection(
  app: FastifyInstance,
  limit: RateLimitOptions | undefined,
  maxInFlight = MAX_IN_FLIGHT,
): Promise<Load> {
  // Backpressure: when the event loop lags (the process is saturated) or too many requests wait
  // on Postgres or Redis, answer 503 with Retry-After at once instead of queueing without bound.
  await app.register(underPressure, {
    // Only a process that is truly stuck: a busy but healthy one lags far less than this.
    maxEventLoopDelay: 5_000,
    retryAfter: 5,
    exposeStatusRoute: false,
    pressureHandler: (_request, reply) => {
      reply.header("retry-after", "5");
      reply
        .status(503)
        .send(
          errorBody("OVERLOADED", "the service is overloaded; retry after Retry-After seconds"),
        );
    },
  });
  let inFlight = 0;
  // Counted once the request has fully arrived (preHandler runs after the body is read): a client
  // that trickles a body in holds a socket, not a slot, so slow bodies cannot crowd out work.
  app.addHook("preHandler", async (request, reply) => {
    if (HEALTH.has(request.url)) return;
    if (inFlight >= maxInFlight) {
      reply.header("retry-after", "5");
      return reply
        .status(503)
        .send(
          errorBody(
            "OVERLOADED",
            `more than ${maxInFlight} requests in progress; retry after Retry-After seconds`,
          ),
        );
    }
    inFlight++;
    let released = false;
    const release = () => {
      if (!released) {
        released = true;
        inFlight--;
      }
    };
    reply.raw.once("close", release);
    reply.raw.once("finish", release);
  });
  // Built once: @fastify/helmet rebuilds helmet's middleware (and re-parses the policy) on every
  // request, which cost about 5 % of the API's CPU under welcome ingest.
  const securityHeaders = helmet({
    // Bull Board and Swagger UI are served from here; their inline styles and scripts need
    // 'unsafe-inline', everything else stays same-origin (the board's web-font link is removed,
    // see board.ts).
    contentSecurityPolicy: {
      directives: {
        defaultSrc: ["'self'"],
        scriptSrc: ["'self'", "'unsafe-inline'"],
        styleSrc: ["'self'", "'unsafe-inline'"],
        fontSrc: ["'self'", "data:"],
        imgSrc: ["'self'", "data:"],
        connectSrc: ["'self'"],
        frameAncestors: ["'none'"],
      },
    },
  });
  app.addHook("onRequest", (request, reply, done) => {
    // Answers about identities and keys are never for a shared cache (or the browser's).
    reply.header("cache-control", "no-store");
    securityHeaders(request.raw, reply.raw, (err) => done(err as Error | undefined));
  });
  const load: Load = { overloaded: () => inFlight >= maxInFlight || app.isUnderPressure() };
  if (limit === undefined || limit.max === 0) return load;
  const registerMax = limit.registerMax ?? 0;
  if (registerMax > 0) {
    // Registrations get a quota of their own (each costs a key generation and a publish); the
    // rate-limit plugin reads it from the route's config when the route is added.
    app.addHook("onRoute", (route) => {
      if (route.url !== REGISTER_ROUTE || route.method !== "PUT") return;
      route.config = {
        ...(route.config as object),
        rateLimit: { max: registerMax, timeWindow: limit.windowMs },
      } as typeof route.config;
    });
  }
  await app.register(rateLimit, {
    max: limit.max,
    timeWindow: limit.windowMs,
    // After the auth hook (onRequest), before the body is read.
    hook: "preParsing",
    keyGenerator: (request) => request.principal ?? `ip:${request.ip}`,
    allowList: (request) => HEALTH.has(request.url),
    errorResponseBuilder: (_request, context) => ({
      statusCode: 429,
      ...errorBody(
        "RATE_LIMITED",
        `more than ${context.max} requests in ${context.after}; retry later`,
      ),
    }),
  });
  return load;
}

/** Methods whose body the API reads; any body must be JSON (or there is none). */
const WITH_BODY = new Set(["POST", "PUT", "PATCH", "DELETE"]);
const JSON_TYPE = /^application\/json\s*(;\s*charset=("?)utf-8\2\s*)?$/i;
/** A device's key package upload: message/mls is not a CORS-safelisted type (a preflight). */
const MLS_TYPE = /^message\/mls\s*$/i;
const UPLOAD_ROUTE = "/v1/identities/:identityId/key-package";

/**
 * Only `application/json` (UTF-8), or no body at all (or `message/mls` on a device's key package
 * upload), on every POST, PUT, PATCH and DELETE. A
 * browser sends text/plain, form and multipart bodies cross-site without a CORS preflight; the
 * API takes none of them, so no other site can make a browser call it. Checked before the body
 * is read.
 */
export function registerContentTypePolicy(app: FastifyInstance): void {
  app.addHook("onRequest", async (request, reply) => {
    if (!WITH_BODY.has(request.method)) return;
    const type = request.headers["content-type"];
    const length = request.headers["content-length"];
    const hasBody =
      request.headers["transfer-encoding"] !== undefined ||
      (length !== undefined && length !== "0");
    if (type === undefined ? !hasBody : JSON_TYPE.test(type)) return;
    if (
      request.method === "PUT" &&
      request.routeOptions.url === UPLOAD_ROUTE &&
      MLS_TYPE.test(type ?? "")
    ) {
      return;
    }
    return reply
      .status(415)
      .send(
        errorBody(
          "UNSUPPORTED_MEDIA_TYPE",
          `${request.method} takes an application/json body or none${type === undefined ? "" : `, not ${JSON.stringify(type.slice(0, 100))}`}`,
        ),
      );
  });
}

declare module "fastify" {
  interface FastifyRequest {
    /** Who the request is, once authenticated: "api", "ingest", "board", or "ip:<address>". */
    principal?: string;
  }
}
