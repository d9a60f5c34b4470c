import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { createFailureLimiter } from "./auth-failures.js";
import { errorBody } from "../../contract/api.js";

const digest = (value: string) => createHash("sha256").update(value).digest();

/** Routes anyone may call: process and dependency health, for probes. */
const PUBLIC = new Set(["/healthz", "/readyz"]);
/** Pages a person opens in a browser: they also take HTTP basic auth (BOARD_USER/PASSWORD). */
export const BOARD_PREFIX = "/admin/queues";
export const DOCS_PREFIX = "/docs";

/** The routes an ingest token may call: reporting welcomes, nothing else. */
const INGEST_ROUTES = new Set(["/v1/identities/:identityId/welcome", "/v1/welcomes"]);

export interface AuthOptions {
  /** Bearer token for every route but the health checks (API_TOKEN). */
  token: string | undefined;
  /** Bearer token that may only report welcomes (INGEST_TOKEN). */
  ingestToken?: string | undefined;
  /** HTTP basic credentials, accepted on the board and the docs only. */
  basic: { user: string; password: string } | undefined;
  /** Serve /docs without credentials (DOCS_PUBLIC). */
  docsPublic: boolean;
  /** Failed authentications per client address per window before 429; absent or 0: no limit. */
  failures?: { max: number; windowMs: number };
}

type Area = "public" | "api" | "docs" | "board";

const under = (path: string, prefix: string) => path === prefix || path.startsWith(`${prefix}/`);

/**
 * Which rules apply, by the route that matched (its pattern, not the raw URL, so no spelling of
 * a path can pass for another area). An unmatched URL (404) is treated as an API route.
 */
function areaOf(request: FastifyRequest, docsPublic: boolean): Area {
  const route = request.routeOptions.url;
  if (route === undefined) return "api";
  if (PUBLIC.has(route)) return "public";
  if (under(route, BOARD_PREFIX)) return "board";
  if (under(route, DOCS_PREFIX)) return docsPublic ? "public" : "docs";
  return "api";
}

/**
 * Bearer-token auth on every route but the health checks; the board and the docs also take HTTP
 * basic auth, which a browser can prompt for. Secrets are compared as SHA-256 digests with
 * timingSafeEqual, so neither their content nor their length leaks through timing.
 *
 * - API routes and /metrics: the bearer token when API_TOKEN is set, else open. The ingest
 *   token (INGEST_TOKEN) opens the two welcome routes and gets 403 everywhere else.
 * - /docs: like the API, and basic credentials also do; DOCS_PUBLIC=true opens it.
 * - /admin/queues: always closed; bearer token or basic credentials, whichever are configured
 *   (the board is not mounted when neither is).
 *
 * A request that passes is marked with its principal (`request.principal`), which the rate
 * limiter keys on. A client address whose credentials failed `failures.max` times in a window
 * gets 429 before any credential it sends is even compared, so a password cannot be guessed at
 * line speed.
 */
export function registerAuth(app: FastifyInstance, options: AuthOptions): void {
  const { token, basic, docsPublic } = options;
  if (token === undefined && basic === undefined) {
    // An open API (ALLOW_UNAUTHENTICATED): each address is its own client.
    app.addHook("onRequest", async (request) => {
      request.principal = `ip:${request.ip}`;
    });
    return;
  }
  const failures =
    options.failures && options.failures.max > 0
      ? createFailureLimiter(options.failures.max, options.failures.windowMs)
      : undefined;
  const expectedToken = token === undefined ? undefined : digest(token);
  const expectedIngest =
    options.ingestToken === undefined ? undefined : digest(options.ingestToken);
  // The scheme is case-insensitive (RFC 9110); the token is not.
  const presented = (header: string) => digest(/^Bearer /i.test(header) ? header.slice(7) : "");
  const expectedBasic = basic === undefined ? undefined : digest(`${basic.user}:${basic.password}`);

  const bearerOk = (header: string) =>
    expectedToken !== undefined && timingSafeEqual(presented(header), expectedToken);
  const ingestOk = (header: string) =>
    expectedIngest !== undefined && timingSafeEqual(presented(header), expectedIngest);
  const basicOk = (header: string) => {
    if (expectedBasic === undefined || !/^Basic /i.test(header)) return false;
    const decoded = Buffer.from(header.slice(6).trim(), "base64").toString("utf8");
    return timingSafeEqual(digest(decoded), expectedBasic);
  };

  app.addHook("onRequest", async (request, reply) => {
    const area = areaOf(request, docsPublic);
    request.principal = `ip:${request.ip}`;
    if (area === "public") return;
    // With no API token the API is open (ALLOW_UNAUTHENTICATED); its docs too, unless the board's
    // login exists to protect them.
    if (token === undefined && (area === "api" || (area === "docs" && basic === undefined))) return;
    const retryAfter = failures?.blockedFor(request.ip);
    if (retryAfter !== undefined) {
      reply.header("retry-after", String(retryAfter));
      return reply
        .status(429)
        .send(
          errorBody(
            "RATE_LIMITED",
            "too many failed authentications from this address; retry later",
          ),
        );
    }
    const header = request.headers.authorization ?? "";
    if (bearerOk(header)) {
      request.principal = "api";
      return;
    }
    if (area === "api" && ingestOk(header)) {
      request.principal = "ingest";
      if (INGEST_ROUTES.has(request.routeOptions.url ?? "")) return;
      return reply
        .status(403)
        .send(
          errorBody(
            "FORBIDDEN",
            "the ingest token may only report welcomes (POST /v1/identities/:id/welcome, POST /v1/welcomes)",
          ),
        );
    }
    const browser = area === "board" || area === "docs";
    if (browser && basicOk(header)) {
      request.principal = "board";
      return;
    }
    failures?.fail(request.ip);
    const challenge =
      browser && basic !== undefined ? 'Basic realm="kp-rotor"' : 'Bearer realm="kp-rotor"';
    reply.header("www-authenticate", challenge);
    return reply
      .status(401)
      .send(
        errorBody(
          "UNAUTHORIZED",
          browser ? "missing or wrong credentials" : "missing or wrong bearer token",
        ),
      );
  });
}
