import fc from "fast-check";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.js";
import { API_ERROR_CODES } from "../../src/contract/api.js";
import * as identities from "../../src/services/identities.service.js";
import { createTestEnv, type TestEnv } from "../helpers/env.js";

const TOKEN = "admin-token-0123456789abcdef";
const INGEST = "ingest-token-0123456789abcdef";
let env: TestEnv;
let app: FastifyInstance;

beforeAll(async () => {
  env = await createTestEnv({ ROTATION_INTERVAL: "30d" });
  app = await buildApp({
    rotor: env.ctx.rotor,
    apiToken: TOKEN,
    ingestToken: INGEST,
    checkReady: () => env.ctx.checkReady(),
    board: { user: "operator", password: "board-password-1" },
  });
  // alice and bob serve the tests after the fuzzer; the fuzzer may delete fz-1 and fz-2.
  for (const id of ["alice", "bob", "fz-1", "fz-2"]) await identities.register(env.ctx.rotor, id);
});

afterAll(async () => {
  await app?.close();
  await env?.cleanup();
});

/** Everything a request can change, to show that refused requests changed nothing. */
async function snapshot() {
  const sql = env.ctx.database.sql;
  const [ids, kps] = await Promise.all([
    sql`select id, generation, (extract(epoch from rotation_deadline) * 1000)::float8 as d,
      deregistered_at is null as live from identities order by id`,
    sql`select identity_id, generation, is_current, delete_at is null as kept from key_packages order by id`,
  ]);
  return JSON.stringify([ids, kps]);
}

const auth = { authorization: `Bearer ${TOKEN}` };

describe("hostile input", () => {
  it("fuzzed requests get 4xx (never 5xx, never a crash) and refused ones write nothing", async () => {
    const idArb = fc.oneof(
      fc.constantFrom(
        "fz-1",
        "fz-2",
        "nobody",
        "",
        ".",
        "..",
        "a:b",
        "x".repeat(129),
        "%00",
        "%2F",
      ),
      fc.string({ unit: "grapheme", maxLength: 40 }).map(encodeURIComponent),
      fc.string({ maxLength: 300 }).map(encodeURIComponent),
    );
    const pathArb = fc
      .tuple(
        fc.constantFrom(
          "/v1/identities/{}",
          "/v1/identities/{}/welcome",
          "/v1/identities/{}/rotate",
          "/v1/identities/{}/key-package",
          "/v1/welcomes",
          "/v1/{}",
          "/{}",
        ),
        idArb,
      )
      .map(([template, id]) => template.replace("{}", id));
    const bodyArb = fc.oneof(
      fc.constant(undefined),
      fc.jsonValue().map((v) => JSON.stringify(v)),
      fc.record({ identityIds: fc.array(idArb, { maxLength: 5 }) }).map((v) => JSON.stringify(v)),
      fc
        .record({ signaturePrivateKey: fc.string(), credentialIdentity: fc.base64String() })
        .map((v) => JSON.stringify(v)),
      fc.string({ maxLength: 200 }),
      fc.constant("x".repeat(300 * 1024)),
    );
    const contentTypeArb = fc.constantFrom(
      "application/json",
      "application/json; charset=utf-16",
      "text/plain",
      "application/x-www-form-urlencoded",
      "multipart/form-data; boundary=x",
      "",
    );
    const methodArb = fc.constantFrom(
      "GET",
      "PUT",
      "POST",
      "DELETE",
      "PATCH",
      "OPTIONS",
    ) as fc.Arbitrary<"GET" | "PUT" | "POST" | "DELETE" | "PATCH" | "OPTIONS">;
    type Method = "GET" | "PUT" | "POST" | "DELETE" | "PATCH" | "OPTIONS";
    const hostileArb = fc.tuple(methodArb, pathArb, bodyArb, contentTypeArb);
    // Well-formed requests mixed in, so every run reaches the accepting side too
    // (by chance alone, 400 hostile requests sometimes hold no success at all).
    const wellFormedArb = fc.oneof(
      fc
        .constantFrom("alice", "bob", "fz-1", "fz-2")
        .map((id): [Method, string, string | undefined, string] => [
          "GET",
          `/v1/identities/${id}`,
          undefined,
          "",
        ]),
      fc
        .constantFrom("fz-1", "fz-2", "fz-3")
        .map((id): [Method, string, string | undefined, string] => [
          "POST",
          "/v1/welcomes",
          JSON.stringify({ identityIds: [id] }),
          "application/json",
        ]),
    );
    const requestArb = fc.oneof(
      { arbitrary: hostileArb, weight: 9 },
      { arbitrary: wellFormedArb, weight: 1 },
    );
    const statuses = new Map<number, number>();

    await fc.assert(
      fc.asyncProperty(requestArb, async ([method, url, body, type]) => {
        const before = method === "GET" ? undefined : await snapshot();
        const headers: Record<string, string> = { ...auth };
        if (type) headers["content-type"] = type;
        const res = await app.inject({
          method,
          url,
          headers,
          ...(body === undefined ? {} : { payload: body }),
        });
        statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
        expect(res.statusCode, `${method} ${url}`).toBeLessThan(500);
        expect(res.body).not.toMatch(/at .*\.(ts|js):\d+/); // no stack traces
        if (res.statusCode >= 400) {
          const parsed = res.json();
          expect(typeof parsed.message).toBe("string");
          // Every code sent is one of the contract's (the client's ApiErrorCode is their union).
          expect(API_ERROR_CODES, `${method} ${url}`).toContain(parsed.error);
          if (before !== undefined) expect(await snapshot()).toBe(before);
        }
      }),
      { numRuns: 400 },
    );
    // The fuzzer reached both sides: refusals and successes.
    expect([...statuses.keys()].some((s) => s >= 400)).toBe(true);
    expect([...statuses.keys()].some((s) => s < 300)).toBe(true);
  });

  it("limits body size and batch length", async () => {
    const big = await app.inject({
      method: "POST",
      url: "/v1/welcomes",
      headers: { ...auth, "content-type": "application/json" },
      payload: JSON.stringify({ identityIds: ["a".repeat(300 * 1024)] }),
    });
    expect(big.statusCode).toBe(413);
    const long = await app.inject({
      method: "POST",
      url: "/v1/welcomes",
      headers: auth,
      payload: { identityIds: Array.from({ length: 1001 }, () => "alice") },
    });
    expect(long.statusCode).toBe(400);
  });
});

describe("tokens", () => {
  it("the ingest token may report welcomes and nothing else", async () => {
    const ingest = { authorization: `Bearer ${INGEST}` };
    expect(
      (await app.inject({ method: "POST", url: "/v1/identities/alice/welcome", headers: ingest }))
        .statusCode,
    ).toBe(202);
    expect(
      (
        await app.inject({
          method: "POST",
          url: "/v1/welcomes",
          headers: ingest,
          payload: { identityIds: ["bob"] },
        })
      ).statusCode,
    ).toBe(202);
    for (const [method, url] of [
      ["GET", "/v1/identities/alice"],
      ["PUT", "/v1/identities/mallory"],
      ["DELETE", "/v1/identities/alice"],
      ["POST", "/v1/identities/alice/rotate"],
      ["GET", "/metrics"],
      ["GET", "/admin/queues"],
    ] as const) {
      const res = await app.inject({ method, url, headers: ingest });
      expect(res.statusCode, `${method} ${url}`).toBe(url === "/admin/queues" ? 401 : 403);
    }
    expect(
      (await app.inject({ method: "GET", url: "/v1/identities/alice", headers: auth })).statusCode,
    ).toBe(200);
  });

  it("refuses missing and wrong tokens, and never echoes them", async () => {
    const upper = `Bearer ${TOKEN.toUpperCase()}`;
    for (const authorization of [
      "",
      "Bearer",
      `Bearer ${TOKEN}x`,
      upper,
      `Basic ${TOKEN}`,
      TOKEN,
    ]) {
      const res = await app.inject({
        method: "GET",
        url: "/v1/identities/alice",
        headers: { authorization },
      });
      expect(res.statusCode).toBe(401);
      expect(res.body).not.toContain(TOKEN);
    }
    // The scheme is case-insensitive.
    const lower = await app.inject({
      method: "GET",
      url: "/v1/identities/alice",
      headers: { authorization: `bearer ${TOKEN}` },
    });
    expect(lower.statusCode).toBe(200);
  });
});

describe("security headers", () => {
  it.each(["/docs/json", "/admin/queues", "/v1/identities/alice"])(
    "%s carries them",
    async (url) => {
      const res = await app.inject({ method: "GET", url, headers: auth });
      expect(res.statusCode).toBeLessThan(400);
      expect(res.headers["x-content-type-options"]).toBe("nosniff");
      expect(res.headers["x-frame-options"]).toBe("SAMEORIGIN");
      expect(String(res.headers["content-security-policy"])).toContain("frame-ancestors 'none'");
    },
  );
});

describe("rate limiting", () => {
  it("answers 429 with Retry-After once a client's quota is spent, per client", async () => {
    const limited = await buildApp({
      rotor: env.ctx.rotor,
      apiToken: TOKEN,
      ingestToken: INGEST,
      checkReady: () => env.ctx.checkReady(),
      rateLimit: { max: 5, windowMs: 60_000 },
    });
    try {
      const codes: number[] = [];
      for (let i = 0; i < 7; i++) {
        codes.push(
          (await limited.inject({ method: "GET", url: "/v1/identities/alice", headers: auth }))
            .statusCode,
        );
      }
      expect(codes).toEqual([200, 200, 200, 200, 200, 429, 429]);
      const res = await limited.inject({
        method: "GET",
        url: "/v1/identities/alice",
        headers: auth,
      });
      expect(res.json()).toMatchObject({ error: "RATE_LIMITED" });
      expect(Number(res.headers["retry-after"])).toBeGreaterThan(0);
      // Another client (the ingest token) has its own quota; health checks are never limited.
      const other = await limited.inject({
        method: "POST",
        url: "/v1/identities/alice/welcome",
        headers: { authorization: `Bearer ${INGEST}` },
      });
      expect(other.statusCode).toBe(202);
      for (let i = 0; i < 10; i++) {
        expect((await limited.inject({ method: "GET", url: "/healthz" })).statusCode).toBe(200);
      }
    } finally {
      await limited.close();
    }
  });
});

describe("backpressure", () => {
  it("answers 503 with Retry-After at once when too many requests wait on Postgres", async () => {
    const small = await buildApp({
      rotor: env.ctx.rotor,
      apiToken: TOKEN,
      checkReady: () => env.ctx.checkReady(),
      maxInFlight: 2,
    });
    // Two welcomes wait on alice's row lock, held here.
    const holder = await env.ctx.database.sql.reserve();
    await holder`begin`;
    await holder`select 1 from identities where id = 'alice' for update`;
    try {
      const waiting = [1, 2].map(() =>
        small.inject({ method: "POST", url: "/v1/identities/alice/welcome", headers: auth }),
      );
      await waitUntil(async () => {
        const [row] = await env.ctx.database.sql<{ n: number }[]>`
          select count(*)::int as n from pg_stat_activity
          where datname = current_database() and wait_event_type = 'Lock'`;
        return (row?.n ?? 0) >= 2;
      });
      const refused = await small.inject({
        method: "GET",
        url: "/v1/identities/bob",
        headers: auth,
      });
      expect(refused.statusCode).toBe(503);
      expect(refused.headers["retry-after"]).toBe("5");
      expect(refused.json().error).toBe("OVERLOADED");
      expect((await small.inject({ method: "GET", url: "/healthz" })).statusCode).toBe(200);
      // Readiness tells the truth: a load balancer should send this instance nothing new.
      const ready = await small.inject({ method: "GET", url: "/readyz" });
      expect(ready.statusCode).toBe(503);
      expect(ready.json()).toMatchObject({ ready: false, overloaded: true });
      await holder`commit`;
      for (const res of await Promise.all(waiting)) expect(res.statusCode).toBe(202);
      expect(
        (await small.inject({ method: "GET", url: "/v1/identities/bob", headers: auth }))
          .statusCode,
      ).toBe(200);
    } finally {
      holder.release();
      await small.close();
    }
  });
});

async function waitUntil(check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error("condition not reached");
}
