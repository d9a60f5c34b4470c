import { Validator } from "@seriousme/openapi-schema-validator";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.js";
import { API_ERRORS } from "../../src/contract/api.js";
import { createTestEnv, type TestEnv } from "../helpers/env.js";

/** The OpenAPI document at /docs/json: valid, complete, and true to what the routes answer. */

const TOKEN = "test-token-0123456789abcdef";
const auth = { authorization: `Bearer ${TOKEN}` };
let env: TestEnv;
let app: FastifyInstance;

type Schema = {
  $ref?: string;
  type?: string | string[];
  properties?: Record<string, Schema>;
  required?: string[];
  items?: Schema;
  additionalProperties?: boolean | Schema;
};
type Operation = {
  tags?: string[];
  summary?: string;
  requestBody?: unknown;
  responses: Record<string, { description: string; content?: Record<string, { schema: Schema }> }>;
};
type Spec = {
  openapi: string;
  paths: Record<string, Record<string, Operation>>;
  components?: { schemas?: Record<string, Schema> };
};

beforeAll(async () => {
  env = await createTestEnv({ WELCOME_ROTATION_DELAY: "5s", ROTATION_INTERVAL: "30d" });
  app = await buildApp({
    rotor: env.ctx.rotor,
    apiToken: TOKEN,
    checkReady: () => env.ctx.checkReady(),
  });
});

afterAll(async () => {
  await app?.close();
  await env?.cleanup();
});

async function spec(): Promise<Spec> {
  const res = await app.inject({ method: "GET", url: "/docs/json", headers: auth });
  expect(res.statusCode).toBe(200);
  return res.json();
}

/** Every route Fastify serves, as "METHOD /path", from its route tree. */
function servedRoutes(instance: FastifyInstance): string[] {
  const stack: string[] = [];
  const routes: string[] = [];
  for (const line of instance.printRoutes({ commonPrefix: false }).split("\n")) {
    const match = /^([│ ]*)[├└]── (.+?)(?: \(([A-Z, ]+)\))?$/.exec(line);
    if (!match) continue;
    const depth = (match[1] ?? "").length / 4;
    stack.length = depth;
    stack.push(match[2] ?? "");
    const path = stack.join("").replace(/\/+/g, "/");
    for (const method of (match[3] ?? "").split(", ").filter(Boolean)) {
      routes.push(`${method} ${path}`);
    }
  }
  return routes;
}

const openApiPath = (path: string) => path.replace(/:(\w+)/g, "{$1}");

/**
 * Checks a response body against its schema in the document: every property is documented,
 * every required one is there, nulls only where allowed. Returns what is wrong.
 */
function drift(document: Spec, schema: Schema, value: unknown, at = "$"): string[] {
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop() ?? "";
    return drift(document, document.components?.schemas?.[name] ?? {}, value, at);
  }
  const nullable = (schema as { nullable?: boolean }).nullable === true;
  if (value === null) return nullable ? [] : [`${at} is null`];
  if (Array.isArray(value)) {
    return value.flatMap((item, i) => drift(document, schema.items ?? {}, item, `${at}[${i}]`));
  }
  if (typeof value !== "object" || value === undefined) return [];
  const problems: string[] = [];
  const properties = schema.properties ?? {};
  for (const key of schema.required ?? []) {
    if (!(key in value)) problems.push(`${at}.${key} is required but missing`);
  }
  for (const [key, child] of Object.entries(value)) {
    const childSchema = properties[key];
    if (childSchema === undefined) problems.push(`${at}.${key} is not documented`);
    else problems.push(...drift(document, childSchema, child, `${at}.${key}`));
  }
  return problems;
}

describe("OpenAPI document", () => {
  it("is behind the API token by default", async () => {
    for (const url of ["/docs/json", "/docs"]) {
      const res = await app.inject({ method: "GET", url });
      expect(res.statusCode).toBe(401);
    }
    const ui = await app.inject({ method: "GET", url: "/docs", headers: auth });
    expect(ui.statusCode).toBe(200);
    expect(ui.body).toContain("Swagger UI");
  });

  it("is a valid OpenAPI 3 document", async () => {
    const document = await spec();
    expect(document.openapi).toMatch(/^3\.\d+\.\d+$/);
    const result = await new Validator().validate(document);
    expect(result.errors ?? []).toEqual([]);
    expect(result.valid).toBe(true);
  });

  it("documents every /v1 route with its responses", async () => {
    const document = await spec();
    const served = servedRoutes(app)
      .filter((r) => r.includes(" /v1/"))
      .map((r) => {
        const [method = "", path = ""] = r.split(" ");
        return `${method.toLowerCase()} ${openApiPath(path)}`;
      })
      .filter((r) => !r.startsWith("head "));
    const documented = Object.entries(document.paths)
      .filter(([path]) => path.startsWith("/v1/"))
      .flatMap(([path, ops]) => Object.keys(ops).map((method) => `${method} ${path}`));
    expect(documented.sort()).toEqual(served.sort());

    const expected: Record<string, string[]> = {
      "put /v1/identities/{identityId}": ["200", "201", "400", "401", "409", "503"],
      "get /v1/identities/{identityId}": ["200", "400", "401", "404", "503"],
      "delete /v1/identities/{identityId}": ["204", "400", "401", "404", "503"],
      "post /v1/identities/{identityId}/welcome": ["202", "400", "401", "404", "503"],
      "post /v1/identities/{identityId}/rotate": ["202", "400", "401", "404", "503"],
      "post /v1/welcomes": ["202", "400", "401", "503"],
      "get /v1/identities/{identityId}/key-package": ["200", "400", "401", "404", "503"],
      "put /v1/identities/{identityId}/key-package": [
        "200",
        "400",
        "401",
        "404",
        "409",
        "413",
        "415",
        "422",
        "502",
        "503",
      ],
      "get /v1/safety": ["200", "401", "503"],
    };
    expect(Object.keys(expected).sort()).toEqual(documented.sort());
    for (const [route, statuses] of Object.entries(expected)) {
      const [method = "", path = ""] = route.split(" ");
      const operation = document.paths[path]?.[method];
      expect(operation, route).toBeDefined();
      if (operation === undefined) continue;
      expect(operation.tags, route).toEqual(
        route.includes("key-package") || route.includes("safety")
          ? ["key packages"]
          : ["identities"],
      );
      expect(operation.summary, route).toBeTruthy();
      expect(Object.keys(operation.responses).sort(), route).toEqual(statuses);
      for (const [status, response] of Object.entries(operation.responses)) {
        expect(response.description, `${route} ${status}`).toBeTruthy();
        if (status !== "204") {
          expect(
            response.content?.["application/json"]?.schema,
            `${route} ${status}`,
          ).toBeDefined();
        }
      }
    }
    expect(document.paths["/v1/welcomes"]?.post?.requestBody).toBeDefined();
    expect(document.components?.schemas?.ErrorResponse).toBeDefined();
  });

  it("lists exactly the contract's error codes (the typed client's ApiErrorCode is their union)", async () => {
    const document = await spec();
    const error = document.components?.schemas?.ErrorResponse?.properties?.error as
      | { enum?: unknown }
      | undefined;
    expect(error?.enum).toEqual(Object.keys(API_ERRORS));
  });

  it("describes what the routes really answer", async () => {
    const document = await spec();
    const check = async (
      method: "GET" | "PUT" | "POST" | "DELETE",
      url: string,
      path: string,
      payload?: object,
    ) => {
      const res = await app.inject({ method, url, headers: auth, ...(payload ? { payload } : {}) });
      const response = document.paths[path]?.[method.toLowerCase()]?.responses[res.statusCode];
      expect(response, `${method} ${url} answered ${res.statusCode}`).toBeDefined();
      const schema = response?.content?.["application/json"]?.schema;
      if (schema !== undefined) expect(drift(document, schema, res.json())).toEqual([]);
    };
    const one = "/v1/identities/{identityId}";
    await check("PUT", "/v1/identities/olive", one);
    await check("PUT", "/v1/identities/olive", one);
    await check("POST", "/v1/identities/olive/welcome", `${one}/welcome`);
    await check("POST", "/v1/identities/olive/rotate", `${one}/rotate`);
    await check("POST", "/v1/welcomes", "/v1/welcomes", { identityIds: ["olive", "nobody"] });
    await check("POST", "/v1/welcomes", "/v1/welcomes", { identityIds: [] });
    await check("GET", "/v1/identities/olive", one);
    await check("GET", "/v1/identities/nobody", one);
    await check("GET", "/v1/identities/bad%20id", one);
    await check("DELETE", "/v1/identities/olive", one);
    await check("POST", "/v1/identities/olive/welcome", `${one}/welcome`);
    const res = await app.inject({ method: "PUT", url: "/v1/identities/olive" });
    expect(res.statusCode).toBe(401);
    expect(drift(document, { $ref: "#/components/schemas/ErrorResponse" }, res.json())).toEqual([]);
  });

  it("DOCS_PUBLIC serves the docs without credentials; board credentials also open them", async () => {
    const open = await buildApp({
      rotor: env.ctx.rotor,
      apiToken: TOKEN,
      checkReady: () => env.ctx.checkReady(),
      docsPublic: true,
    });
    const browser = await buildApp({
      rotor: env.ctx.rotor,
      apiToken: TOKEN,
      checkReady: () => env.ctx.checkReady(),
      board: { user: "ops", password: "correct-horse-battery" },
    });
    try {
      expect((await open.inject({ method: "GET", url: "/docs/json" })).statusCode).toBe(200);
      expect((await open.inject({ method: "GET", url: "/docs" })).statusCode).toBe(200);
      // Only the docs: the API itself still needs the token.
      expect((await open.inject({ method: "GET", url: "/v1/identities/x" })).statusCode).toBe(401);

      const challenge = await browser.inject({ method: "GET", url: "/docs" });
      expect(challenge.statusCode).toBe(401);
      expect(challenge.headers["www-authenticate"]).toBe('Basic realm="kp-rotor"');
      const basic = `Basic ${Buffer.from("ops:correct-horse-battery").toString("base64")}`;
      const res = await browser.inject({
        method: "GET",
        url: "/docs/json",
        headers: { authorization: basic },
      });
      expect(res.statusCode).toBe(200);
    } finally {
      await open.close();
      await browser.close();
    }
  });
});
