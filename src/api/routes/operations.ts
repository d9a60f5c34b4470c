import type { FastifyInstance } from "fastify";
import type { Metrics } from "../../metrics/metrics.js";
import { commonErrors, health, readiness } from "../schemas.js";

export interface OperationRouteDeps {
  checkReady: () => Promise<{ postgres: boolean; redis: boolean }>;
  isAccepting?: (() => boolean) | undefined;
  /** True while the API refuses new work (503 OVERLOADED). */
  isOverloaded?: (() => boolean) | undefined;
  metrics: Metrics;
}

const tags = ["operations"];

/** Health for probes (no auth) and Prometheus metrics (behind the API token when set). */
export function operationRoutes(app: FastifyInstance, deps: OperationRouteDeps): void {
  app.get(
    "/healthz",
    {
      schema: {
        tags,
        summary: "The process is up",
        security: [],
        response: { 200: { description: "Up", ...health } },
      },
    },
    async () => ({ status: "ok" }),
  );

  app.get(
    "/readyz",
    {
      schema: {
        tags,
        summary: "Postgres and Redis answer, the process is not overloaded and not shutting down",
        security: [],
        response: {
          200: { description: "Ready", ...readiness },
          503: { description: "Not ready: see which check failed", ...readiness },
        },
      },
    },
    async (_request, reply) => {
      const checks = await deps.checkReady();
      const accepting = deps.isAccepting?.() ?? true;
      const overloaded = deps.isOverloaded?.() ?? false;
      const ready = accepting && !overloaded && checks.postgres && checks.redis;
      return reply.status(ready ? 200 : 503).send({ ready, accepting, overloaded, ...checks });
    },
  );

  app.get(
    "/metrics",
    {
      schema: {
        tags,
        summary: "Prometheus metrics of this process",
        description:
          "Text exposition format. Counters count what this process did; queue and key-package gauges are read on scrape.",
        response: {
          200: {
            description: "Metrics",
            content: { "text/plain": { schema: { type: "string" } } },
          },
          401: commonErrors[401],
        },
      },
    },
    async (_request, reply) => {
      const { contentType, body } = await deps.metrics.scrape();
      return reply.type(contentType).send(body);
    },
  );
}
