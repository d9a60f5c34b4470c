import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import type { FastifyInstance } from "fastify";
import Type from "typebox";
import { uploadKeyPackage } from "../../services/device.service.js";
import * as identities from "../../services/identities.service.js";
import type { LiveRotor as Rotor } from "../../services/rotor.js";
import { safetyReport } from "../../services/safety.service.js";
import {
  commonErrors,
  described,
  errorBody,
  IdentityParams,
  KeyPackageJson,
  KeyPackageQuery,
  notFoundError,
  SafetyReport,
  Uploaded,
  uploadRefused,
} from "../../contract/api.js";
import { toWire } from "../wire.js";

/** The largest key package upload accepted (a KeyPackage is a few hundred bytes). */
export const MAX_UPLOAD_BYTES = 64 * 1024;

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

  // A device's upload is the raw MLSMessage: kept as bytes (this content type only).
  app.addContentTypeParser(
    "message/mls",
    { parseAs: "buffer", bodyLimit: MAX_UPLOAD_BYTES },
    (_request, body, done) => done(null, body),
  );
  app.put(
    "/v1/identities/:identityId/key-package",
    {
      schema: {
        tags: ["key packages"],
        summary: "Upload a device identity's new key package",
        description:
          "Custody device only. The body is the TLS-encoded MLSMessage (Content-Type: message/mls). It is validated (RFC 9420 §10.1 and policy: 422 with a code naming the failed check), published, and made current; the previous package is superseded (deleted after DELETION_GRACE, with a signed device.delete) and the rotation deadline moves ROTATION_INTERVAL on. Uploading before being asked is a rotation too. Uploading the current package again answers 200 with changed=false.",
        params: IdentityParams,
        consumes: ["message/mls"],
        response: {
          200: described(Uploaded, "The upload is the current key package"),
          ...commonErrors,
          ...notFoundError,
          ...uploadRefused,
        },
      },
    },
    async (request, reply) => {
      const body = request.body;
      if (!Buffer.isBuffer(body)) {
        return reply
          .status(415)
          .send(
            errorBody(
              "UNSUPPORTED_MEDIA_TYPE",
              "upload the key package as Content-Type: message/mls",
            ),
          );
      }
      const result = await uploadKeyPackage(rotor, request.params.identityId, new Uint8Array(body));
      return reply.send({
        identityId: request.params.identityId,
        ref: result.ref,
        generation: result.generation,
        nextRotationAt:
          result.rotationDeadline === null ? null : new Date(result.rotationDeadline).toISOString(),
        changed: result.changed,
      });
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
