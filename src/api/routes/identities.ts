import type { FastifyInstance } from "fastify";
import * as identities from "../../services/identities.service.js";
import type { Rotor } from "../../services/rotor.js";

/** Most identities one batch request may name (message ingest batches welcomes). */
export const MAX_BATCH = 1_000;

const identityParams = {
  type: "object",
  required: ["identityId"],
  properties: { identityId: { type: "string" } },
} as const;

const iso = (ms: number) => new Date(ms).toISOString();

/** Thin routes: validate, call one service function, shape the answer. */
export function identityRoutes(app: FastifyInstance, rotor: Rotor): void {
  app.put<{ Params: { identityId: string } }>(
    "/v1/identities/:identityId",
    { schema: { params: identityParams } },
    async (request, reply) => {
      const result = await identities.register(rotor, request.params.identityId);
      return reply.status(result.created ? 201 : 200).send({
        identityId: request.params.identityId,
        created: result.created,
        generation: result.generation,
        nextRotationAt: iso(result.rotationDeadline),
      });
    },
  );

  app.post<{ Params: { identityId: string } }>(
    "/v1/identities/:identityId/welcome",
    { schema: { params: identityParams } },
    async (request, reply) => {
      const result = await identities.welcome(rotor, request.params.identityId);
      return reply.status(202).send({
        identityId: result.identityId,
        nextRotationAt: iso(result.rotationDeadline),
        pulledIn: result.changed,
      });
    },
  );

  app.post<{ Params: { identityId: string } }>(
    "/v1/identities/:identityId/rotate",
    { schema: { params: identityParams } },
    async (request, reply) => {
      const result = await identities.rotateSoon(rotor, request.params.identityId);
      return reply.status(202).send({
        identityId: result.identityId,
        nextRotationAt: iso(result.rotationDeadline),
        pulledIn: result.changed,
      });
    },
  );

  app.post<{ Body: { identityIds: string[] } }>(
    "/v1/welcomes",
    {
      schema: {
        body: {
          type: "object",
          required: ["identityIds"],
          additionalProperties: false,
          properties: {
            identityIds: {
              type: "array",
              minItems: 1,
              maxItems: MAX_BATCH,
              items: { type: "string" },
            },
          },
        },
      },
    },
    async (request, reply) => {
      const { results, notFound } = await identities.pullInMany(
        rotor,
        request.body.identityIds,
        rotor.timing.welcomeRotationDelayMs,
      );
      return reply.status(202).send({
        accepted: results.map((r) => ({
          identityId: r.identityId,
          nextRotationAt: iso(r.rotationDeadline),
          pulledIn: r.changed,
        })),
        notFound,
      });
    },
  );

  app.get<{ Params: { identityId: string } }>(
    "/v1/identities/:identityId",
    { schema: { params: identityParams } },
    async (request) => identities.status(rotor, request.params.identityId),
  );

  app.delete<{ Params: { identityId: string } }>(
    "/v1/identities/:identityId",
    { schema: { params: identityParams } },
    async (request, reply) => {
      await identities.deregister(rotor, request.params.identityId);
      return reply.status(204).send();
    },
  );
}
