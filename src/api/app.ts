import Fastify, { type FastifyBaseLogger, type FastifyInstance } from "fastify";
import type { Logger } from "../logger.js";
import type { Rotor } from "../services/rotor.js";
import { registerAuth } from "./plugins/auth.js";
import { registerErrorHandler } from "./plugins/errors.js";
import { identityRoutes } from "./routes/identities.js";

export interface AppDeps {
  rotor: Rotor;
  apiToken: string | undefined;
  checkReady: () => Promise<{ postgres: boolean; redis: boolean }>;
  /** False once shutdown has begun, so readiness fails before connections close. */
  isAccepting?: () => boolean;
  logger?: Logger;
}

/** Builds the API as a Fastify instance; never listens (src/server.ts does). */
export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.logger as FastifyBaseLogger | undefined,
    bodyLimit: 256 * 1024,
    // Identity ids are up to 128 characters; the router's default limit is 100.
    routerOptions: { maxParamLength: 256 },
    // Errors say which field is wrong, all of them; a string is never taken for an array of one.
    ajv: { customOptions: { allErrors: true, coerceTypes: false, removeAdditional: false } },
  });
  registerErrorHandler(app);
  registerAuth(app, deps.apiToken);

  app.get("/healthz", async () => ({ status: "ok" }));
  app.get("/readyz", async (_request, reply) => {
    const checks = await deps.checkReady();
    const accepting = deps.isAccepting?.() ?? true;
    const ready = accepting && checks.postgres && checks.redis;
    return reply.status(ready ? 200 : 503).send({ ready, accepting, ...checks });
  });
  identityRoutes(app, deps.rotor);
  return app;
}
