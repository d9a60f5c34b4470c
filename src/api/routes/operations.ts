import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import type { FastifyInstance } from "fastify";
import type { Metrics } from "../../metrics/metrics.js";
import { commonErrors, described, Health, Readiness } from "../../contract/api.js";

export interface OperationRouteDeps {
  checkReady: () => Promise<{ postgres: boolean; redis: boolean }>;
  isAccepting?: (() => boolean) | undefined;
  /** True while the API refuses new work (503 OVERLOADED). */
  isOverloaded?: (() => boolean) | undefined;
  metrics: Metrics;
}

const tags = ["operations"];

/** Health for probes (no auth) and Prometheus metrics (behind the API token when set). */
export function operationRoutes(fastify: FastifyInstance, deps: OperationRouteDeps): void {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  app.get(
    "/healthz",
    {
      schema: {
        tags,
        summary: "The process is up",
        security: [],
        response: { 200: described(Health, "Up") },
      },
    },
    async () => ({ status: "ok" as const }),
  );

  app.get(
    "/readyz",
    {
      schema: {
        tags,
        summary: "Postgres and Redis answer, the process is not overloaded and not shutting down",
        security: [],
        response: {
          200: described(Readiness, "Ready"),
          503: described(Readiness, "Not ready: see which check failed"),
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
