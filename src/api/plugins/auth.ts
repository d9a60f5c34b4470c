import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyInstance } from "fastify";

const digest = (value: string) => createHash("sha256").update(value).digest();

/** Routes anyone may call: process and dependency health, for probes. */
const PUBLIC = new Set(["/healthz", "/readyz"]);

/**
 * Bearer-token auth on every route but the health checks. Tokens are compared as SHA-256 digests
 * with timingSafeEqual, so neither their content nor their length leaks through timing.
 */
export function registerAuth(app: FastifyInstance, token: string | undefined): void {
  if (token === undefined) return;
  const expected = digest(token);
  app.addHook("onRequest", async (request, reply) => {
    if (PUBLIC.has(request.url.split("?")[0] ?? "")) return;
    const header = request.headers.authorization ?? "";
    const presented = header.startsWith("Bearer ") ? header.slice(7) : "";
    if (!timingSafeEqual(digest(presented), expected)) {
      reply.header("www-authenticate", 'Bearer realm="kp-rotor"');
      return reply
        .status(401)
        .send({ error: "UNAUTHORIZED", message: "missing or wrong bearer token" });
    }
  });
}
