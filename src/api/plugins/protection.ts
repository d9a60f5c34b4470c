import { createHash } from "node:crypto";
import rateLimit from "@fastify/rate-limit";
import underPressure from "@fastify/under-pressure";
import type { FastifyInstance } from "fastify";
import helmet from "helmet";

/**
 * Security headers on every answer, and a request quota per client. A client is its bearer
 * token (hashed: the key never holds the secret) or, without one, its address; health checks are
 * never limited, so probes keep working under load. An exhausted quota answers 429 with
 * Retry-After, as the API answers 503 when a dependency is slow: callers back off instead of
 * queueing without bound.
 */
/** Requests in progress beyond which new ones are refused (each holds a Postgres connection). */
export const MAX_IN_FLIGHT = 2_000;

export async function registerProtection(
  app: FastifyInstance,
  limit: { max: number; windowMs: number } | undefined,
  maxInFlight = MAX_IN_FLIGHT,
): Promise<void> {
  // Backpressure: when the event loop lags (the process is saturated) or too many requests wait
  // on Postgres or Redis, answer 503 with Retry-After at once instead of queueing without bound.
  await app.register(underPressure, {
    // Only a process that is truly stuck: a busy but healthy one lags far less than this.
    maxEventLoopDelay: 5_000,
    retryAfter: 5,
    exposeStatusRoute: false,
    pressureHandler: (_request, reply) => {
      reply.header("retry-after", "5");
      reply.status(503).send({
        error: "OVERLOADED",
        message: "the service is overloaded; retry after Retry-After seconds",
      });
    },
  });
  let inFlight = 0;
  app.addHook("onRequest", async (request, reply) => {
    if (request.url === "/healthz" || request.url === "/readyz") return;
    if (inFlight >= maxInFlight) {
      reply.header("retry-after", "5");
      return reply.status(503).send({
        error: "OVERLOADED",
        message: `more than ${maxInFlight} requests in progress; retry after Retry-After seconds`,
      });
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
    // 'unsafe-inline', everything else stays same-origin (the board's web font aside).
    contentSecurityPolicy: {
      directives: {
        defaultSrc: ["'self'"],
        scriptSrc: ["'self'", "'unsafe-inline'"],
        styleSrc: ["'self'", "'unsafe-inline'", "https://fonts.googleapis.com"],
        fontSrc: ["'self'", "https://fonts.gstatic.com", "data:"],
        imgSrc: ["'self'", "data:"],
        connectSrc: ["'self'"],
        frameAncestors: ["'none'"],
      },
    },
  });
  app.addHook("onRequest", (request, reply, done) => {
    securityHeaders(request.raw, reply.raw, (err) => done(err as Error | undefined));
  });
  if (limit === undefined || limit.max === 0) return;
  await app.register(rateLimit, {
    max: limit.max,
    timeWindow: limit.windowMs,
    keyGenerator: (request) => {
      const auth = request.headers.authorization;
      return auth ? `auth:${createHash("sha256").update(auth).digest("hex")}` : `ip:${request.ip}`;
    },
    allowList: (request) => request.url === "/healthz" || request.url === "/readyz",
    errorResponseBuilder: (_request, context) => ({
      statusCode: 429,
      error: "RATE_LIMITED",
      message: `more than ${context.max} requests in ${context.after}; retry later`,
    }),
  });
}
