import swagger from "@fastify/swagger";
import swaggerUi from "@fastify/swagger-ui";
import type { FastifyInstance } from "fastify";
import { ErrorResponse } from "../../contract/api.js";
import { DOCS_PREFIX } from "./auth.js";

/**
 * The OpenAPI document, generated from the route schemas. Must be registered before the routes
 * (it collects them as they are added); the UI goes after them with `registerDocsUi`.
 */
export async function registerOpenApi(
  app: FastifyInstance,
  options: { bearer: boolean },
): Promise<void> {
  app.addSchema(ErrorResponse);
  await app.register(swagger, {
    openapi: {
      openapi: "3.0.3",
      info: {
        title: "kp-rotor",
        version: "1.0.0",
        description:
          "Durable MLS key-package rotation and deletion timers. Message ingest registers identities and reports welcomes; kp-rotor rotates each identity's key package 30 days after the last rotation, or 5 s after a welcome consumed it, and deletes superseded key packages a day later.",
      },
      tags: [
        { name: "identities", description: "Register identities and report welcomes" },
        { name: "operations", description: "Health, readiness and metrics" },
      ],
      ...(options.bearer
        ? {
            components: {
              securitySchemes: { bearer: { type: "http", scheme: "bearer" } },
            },
            security: [{ bearer: [] }],
          }
        : {}),
    },
    // Shared schemas appear under their own $id in components.schemas.
    refResolver: {
      buildLocalReference: (json, _baseUri, _fragment, i) =>
        typeof json.$id === "string" ? json.$id : `def-${i}`,
    },
  });
}

/** Swagger UI at /docs, the document at /docs/json (and /docs/yaml). */
export async function registerDocsUi(app: FastifyInstance): Promise<void> {
  await app.register(swaggerUi, {
    routePrefix: DOCS_PREFIX,
    uiConfig: { docExpansion: "list", deepLinking: true },
  });
}
