import type { FastifyError, FastifyInstance } from "fastify";
import { ErrorCodes, KpRotorError } from "../../errors.js";
import { UPLOAD_CHECKS } from "../../keys/validate-upload.js";
import { isUnavailable, redactError } from "../../safe-errors.js";

const STATUS: Record<string, number> = {
  [ErrorCodes.invalidIdentityId]: 400,
  [ErrorCodes.invalidRequest]: 400,
  [ErrorCodes.notFound]: 404,
  [ErrorCodes.unavailable]: 503,
  [ErrorCodes.publishFailed]: 502,
  [ErrorCodes.custodyMismatch]: 409,
  [ErrorCodes.uploadSuperseded]: 409,
  ...Object.fromEntries(Object.values(UPLOAD_CHECKS).map((code) => [code, 422])),
};

/** A plugin's own code (rate limiting says RATE_LIMITED), else Fastify's, else a generic one. */
function clientErrorCode(err: unknown, code: string | undefined): string {
  const own = (err as { error?: unknown }).error;
  return typeof own === "string" && /^[A-Z_]+$/.test(own) ? own : (code ?? "BAD_REQUEST");
}

/**
 * The one place errors become HTTP answers: what the client did wrong is said plainly (4xx);
 * a dependency that is down is 503 with Retry-After; anything else is a 500 whose details stay
 * in the log.
 */
export function registerErrorHandler(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | KpRotorError | Error, request, reply) => {
    if (err instanceof KpRotorError && STATUS[err.code] !== undefined) {
      const status = STATUS[err.code] as number;
      if (status === 503) reply.header("retry-after", "5");
      return reply.status(status).send({ error: err.code, message: err.message });
    }
    const fastifyErr = err as FastifyError;
    if (fastifyErr.validation) {
      return reply.status(400).send({ error: ErrorCodes.invalidRequest, message: err.message });
    }
    if (
      typeof fastifyErr.statusCode === "number" &&
      fastifyErr.statusCode >= 400 &&
      fastifyErr.statusCode < 500
    ) {
      return reply
        .status(fastifyErr.statusCode)
        .send({ error: clientErrorCode(err, fastifyErr.code), message: err.message });
    }
    if (isUnavailable(err)) {
      request.log.warn({ err: redactError(err) }, "dependency unavailable");
      reply.header("retry-after", "5");
      return reply.status(503).send({
        error: ErrorCodes.unavailable,
        message: "Postgres or Redis is unavailable; retry later",
      });
    }
    request.log.error({ err: redactError(err) }, "internal error");
    return reply.status(500).send({ error: "INTERNAL", message: "internal error" });
  });
  app.setNotFoundHandler((request, reply) =>
    reply
      .status(404)
      .send({ error: "ROUTE_NOT_FOUND", message: `no route ${request.method} ${request.url}` }),
  );
}
