import type { FastifyError, FastifyInstance } from "fastify";
import { API_ERRORS, type ApiErrorCode, errorBody } from "../../contract/api.js";
import { KpRotorError } from "../../errors.js";
import { redactError } from "../../safe-errors.js";

/** A code of the API's table, or undefined (the table is src/contract/api.ts). */
const apiCode = (code: unknown): ApiErrorCode | undefined =>
  typeof code === "string" && Object.hasOwn(API_ERRORS, code) ? (code as ApiErrorCode) : undefined;

/**
 * The code of a 4xx that Fastify or a plugin raised: a plugin's own code when it is one of ours
 * (rate limiting says RATE_LIMITED), else the one its status stands for.
 */
function clientErrorCode(err: unknown, status: number): ApiErrorCode {
  const own = apiCode((err as { error?: unknown }).error);
  if (own !== undefined) return own;
  if (status === 413) return "PAYLOAD_TOO_LARGE";
  if (status === 415) return "UNSUPPORTED_MEDIA_TYPE";
  if (status === 429) return "RATE_LIMITED";
  if (status === 404) return "ROUTE_NOT_FOUND";
  return "INVALID_REQUEST";
}

/**
 * The one place errors become HTTP answers: what the client did wrong is said plainly (4xx);
 * a dependency that is down is 503 with Retry-After; anything else is a 500 whose details stay
 * in the log.
 */
export function registerErrorHandler(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | KpRotorError | Error, request, reply) => {
    const code = err instanceof KpRotorError ? apiCode(err.code) : undefined;
    if (code !== undefined) {
      const status = API_ERRORS[code].status;
      if (status === 503) reply.header("retry-after", "5");
      if (code === "DEPENDENCY_UNAVAILABLE") {
        request.log.warn({ err: redactError(err) }, "dependency unavailable");
      }
      return reply.status(status).send(errorBody(code, err.message));
    }
    const fastifyErr = err as FastifyError;
    if (fastifyErr.validation) {
      return reply.status(400).send(errorBody("INVALID_REQUEST", err.message));
    }
    if (
      typeof fastifyErr.statusCode === "number" &&
      fastifyErr.statusCode >= 400 &&
      fastifyErr.statusCode < 500
    ) {
      return reply
        .status(fastifyErr.statusCode)
        .send(errorBody(clientErrorCode(err, fastifyErr.statusCode), err.message));
    }
    request.log.error({ err: redactError(err) }, "internal error");
    return reply.status(500).send(errorBody("INTERNAL", "internal error"));
  });
  app.setNotFoundHandler((request, reply) =>
    reply
      .status(404)
      .send(errorBody("ROUTE_NOT_FOUND", `no route ${request.method} ${request.url}`)),
  );
}
