import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import type { FastifyInstance } from "fastify";
import Type from "typebox";
import * as identities from "../../services/identities.service.js";
import type { LiveRotor as Rotor } from "../../services/rotor.js";
import { safetyReport } from "../../services/safety.service.js";
import {
  commonErrors,
  described,
  IdentityParams,
  KeyPackageJson,
  KeyPackageQuery,
  notFoundError,
  SafetyReport,
} from "../../contract/api.js";
import { toWire } from "../wire.js";

/** Whether an Accept header asks for JSON rather than the raw key package. */
function prefersJson(accept: string | undefined): boolean {
  if (accept === undefined) return false;
  const types = accept.split(",").map((part) => part.split(";")[0]?.trim().toLowerCase());
  const json = types.indexOf("application/json");
  const binary = types.findIndex((t) => t === "message/mls" || t === "application/octet-stream");
  return json !== -1 && (binary === -1 || json < binary);
}

/** Serving the published key packages, and the fleet's lifetime-safety view. */
export function keyRoutes(fastify: FastifyInstance, rotor: Rotor): void {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  app.get(
    "/v1/identities/:identityId/key-package",
    {
      schema: {
        tags: ["key packages"],
        summary: "The identity's current published key package",
        description:
          "The TLS-encoded MLSMessage (message/mls) by default, with its ref and lifetime in headers; JSON with the bytes in base64 when the request prefers application/json or says ?format=json.",
        params: IdentityParams,
        querystring: KeyPackageQuery,
        produces: ["message/mls", "application/octet-stream", "application/json"],
        response: {
          200: {
            description: "The current key package",
            content: {
              "message/mls": {
                schema: Type.Unsafe<Uint8Array>({ type: "string", format: "binary" }),
              },
              "application/json": { schema: KeyPackageJson },
            },
          },
          ...commonErrors,
          ...notFoundError,
        },
      },
    },
    async (request, reply) => {
      const id = request.params.identityId;
      const kp = await identities.currentKeyPackage(rotor, id);
      const wantsJson =
        request.query.format === "json" ||
        (request.query.format === undefined && prefersJson(request.headers.accept));
      if (wantsJson) {
        return reply.type("application/json").send({
          identityId: id,
          generation: kp.generation,
          ref: kp.ref,
          ciphersuite: kp.ciphersuite,
          keyPackage: Buffer.from(kp.keyPackage).toString("base64"),
          notBefore: kp.notBefore.toISOString(),
          notAfter: kp.notAfter.toISOString(),
          publishedAt: kp.publishedAt?.toISOString() ?? null,
        });
      }
      return reply
        .type("message/mls")
        .header("kp-rotor-ref", kp.ref)
        .header("kp-rotor-generation", String(kp.generation))
        .header("kp-rotor-ciphersuite", kp.ciphersuite)
        .header("kp-rotor-not-before", kp.notBefore.toISOString())
        .header("kp-rotor-not-after", kp.notAfter.toISOString())
        .send(Buffer.from(kp.keyPackage));
    },
  );

  app.get(
    "/v1/safety",
    {
      schema: {
        tags: ["key packages"],
        summary: "Lifetime safety of the fleet",
        description:
          "Identities drifting toward key-package expiry (84 days after creation): current key packages older than ROTATION_INTERVAL + 1 day, within 7 days of not_after, failing rotations, and the oldest current key package. At most 100 identities per list; counts are complete.",
        response: {
          200: described(SafetyReport, "The safety view"),
          401: commonErrors[401],
          503: commonErrors[503],
        },
      },
    },
    async () => toWire(await safetyReport(rotor)),
  );
}
