import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import type { FastifyInstance } from "fastify";
import Type from "typebox";
import * as identities from "../../services/identities.service.js";
import type { Rotor } from "../../services/rotor.js";
import { ErrorCodes, KpRotorError } from "../../errors.js";
import {
  commonErrors,
  custodyConflict,
  described,
  IdentityParams,
  IdentityStatus,
  notFoundError,
  PulledIn,
  RegisterBody,
  Registered,
  WelcomeBatchBody,
  WelcomeBatchResult,
} from "../../contract/api.js";
import { toWire } from "../wire.js";

/** Most identities one batch request may name (message ingest batches welcomes). */
export const MAX_BATCH = 1_000;

const iso = (ms: number) => new Date(ms).toISOString();

/** Base64 request fields become bytes; a field that is absent stays undefined. */
function decodeBase64(name: string, value: string | undefined, maxBytes: number) {
  if (value === undefined) return undefined;
  const bytes = Buffer.from(value, "base64");
  if (bytes.toString("base64") !== value) {
    throw new KpRotorError(
      ErrorCodes.invalidRequest,
      `${name} must be standard base64 with padding`,
    );
  }
  if (bytes.length > maxBytes) {
    throw new KpRotorError(
      ErrorCodes.invalidRequest,
      `${name} is ${bytes.length} bytes; at most ${maxBytes} are allowed`,
    );
  }
  return new Uint8Array(bytes);
}
const tags = ["identities"];

export interface IdentityRouteDeps {
  rotor: Rotor;
  /**
   * Told how many welcomes each request accepted and how many of them pulled a rotation in
   * (each such causes one rotation), and by whom (the welcomes counters).
   */
  onWelcomes?: (count: number, pulledIn: number, principal: string | undefined) => void;
}

/** Thin routes: validate, call one service function, shape the answer. */
export function identityRoutes(fastify: FastifyInstance, deps: IdentityRouteDeps): void {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { rotor } = deps;

  app.put(
    "/v1/identities/:identityId",
    {
      schema: {
        tags,
        summary: "Register an identity",
        description:
          "Stores the identity (its own credential and Ed25519 key if given, sealed at rest), generates and publishes its first key package and arms its rotation 30 days on. With custody device nothing private is generated or stored: the answer carries the notificationSecret, and the device is sent a signed device.rotate after WELCOME_ROTATION_DELAY unless it uploads first (PUT .../key-package). If the first publish fails, the identity is still registered (201 with publishError) and the rotation worker retries. Idempotent: an identity that exists answers 200 with its current state (and its wake-up is repaired).",
        params: IdentityParams,
        body: RegisterBody,
        response: {
          200: described(Registered, "Already registered; nothing new"),
          201: described(Registered, "Registered"),
          ...commonErrors,
          ...custodyConflict,
        },
      },
    },
    async (request, reply) => {
      const body = request.body ?? {};
      const result = await identities.register(rotor, request.params.identityId, {
        credentialIdentity: decodeBase64("credentialIdentity", body.credentialIdentity, 1024),
        signaturePrivateKey: decodeBase64("signaturePrivateKey", body.signaturePrivateKey, 64),
        signaturePublicKey: decodeBase64("signaturePublicKey", body.signaturePublicKey, 256),
        ...(body.custody === undefined ? {} : { custody: body.custody }),
        ...(body.notifyUrl === undefined ? {} : { notifyUrl: body.notifyUrl }),
      });
      return reply.status(result.created ? 201 : 200).send({
        identityId: request.params.identityId,
        created: result.created,
        generation: result.generation,
        nextRotationAt: iso(result.rotationDeadline),
        published: result.generation > 0,
        custody: result.custody,
        ...(result.notificationSecret === undefined
          ? {}
          : { notificationSecret: result.notificationSecret }),
        ...(result.publishError === undefined ? {} : { publishError: result.publishError }),
      });
    },
  );

  app.post(
    "/v1/identities/:identityId/welcome",
    {
      schema: {
        tags,
        summary: "Report a welcome",
        description:
          "A welcome message consumed the identity's key package: rotate within WELCOME_ROTATION_DELAY (5 s). The earliest deadline wins. A 202 means the deadline is committed and its wake-up armed.",
        params: IdentityParams,
        response: {
          202: described(PulledIn, "Deadline committed and wake-up armed"),
          ...commonErrors,
          ...notFoundError,
        },
      },
    },
    async (request, reply) => {
      const result = await identities.welcome(rotor, request.params.identityId);
      deps.onWelcomes?.(1, result.changed ? 1 : 0, request.principal);
      return reply.status(202).send({
        identityId: result.identityId,
        nextRotationAt: iso(result.rotationDeadline),
        pulledIn: result.changed,
      });
    },
  );

  app.post(
    "/v1/identities/:identityId/rotate",
    {
      schema: {
        tags,
        summary: "Rotate as soon as possible",
        description: "Pulls the rotation deadline in to now; a worker rotates when it is free.",
        params: IdentityParams,
        response: {
          202: described(PulledIn, "Deadline committed and wake-up armed"),
          ...commonErrors,
          ...notFoundError,
        },
      },
    },
    async (request, reply) => {
      const result = await identities.rotateSoon(rotor, request.params.identityId);
      return reply.status(202).send({
        identityId: result.identityId,
        nextRotationAt: iso(result.rotationDeadline),
        pulledIn: result.changed,
      });
    },
  );

  app.post(
    "/v1/welcomes",
    {
      schema: {
        tags,
        summary: "Report a batch of welcomes",
        description: `Like the single welcome for up to ${MAX_BATCH} identities, in one transaction. Unknown identities are listed apart and change nothing; one malformed id rejects the whole batch (400).`,
        body: WelcomeBatchBody(MAX_BATCH),
        response: {
          202: described(WelcomeBatchResult, "Deadlines committed and wake-ups armed"),
          ...commonErrors,
        },
      },
    },
    async (request, reply) => {
      const { results, notFound } = await identities.pullInMany(
        rotor,
        request.body.identityIds,
        rotor.timing.welcomeRotationDelayMs,
      );
      deps.onWelcomes?.(results.length, results.filter((r) => r.changed).length, request.principal);
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

  app.get(
    "/v1/identities/:identityId",
    {
      schema: {
        tags,
        summary: "An identity's state",
        description:
          "Deadlines and key packages from Postgres, wake-ups as they stand in Redis, and the last rotation failure if any.",
        params: IdentityParams,
        response: {
          200: described(IdentityStatus, "The identity"),
          ...commonErrors,
          ...notFoundError,
        },
      },
    },
    async (request) => toWire(await identities.status(rotor, request.params.identityId)),
  );

  app.delete(
    "/v1/identities/:identityId",
    {
      schema: {
        tags,
        summary: "Deregister an identity",
        description:
          "Deletes its key material and wake-ups; registering it again starts a new life with a new key package.",
        params: IdentityParams,
        response: {
          204: Type.Null({ description: "Deregistered" }),
          ...commonErrors,
          ...notFoundError,
        },
      },
    },
    async (request, reply) => {
      await identities.deregister(rotor, request.params.identityId);
      return reply.status(204).send(null);
    },
  );
}
