import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.js";
import { assertApiProtected } from "../../src/config.js";
import * as identities from "../../src/services/identities.service.js";
import { createTestEnv, type TestEnv } from "../helpers/env.js";

const TOKEN = "admin-token-0123456789abcdef";
const INGEST = "ingest-token-0123456789abcdef";
const auth = { authorization: `Bearer ${TOKEN}` };
const BIN = fileURLToPath(new URL("../../bin/kp-rotor.mjs", import.meta.url));
let env: TestEnv;
let app: FastifyInstance;

beforeAll(async () => {
  env = await createTestEnv();
  app = await buildApp({
    rotor: env.ctx.rotor,
    apiToken: TOKEN,
    ingestToken: INGEST,
    checkReady: () => env.ctx.checkReady(),
  });
  await identities.register(env.ctx.rotor, "alice");
});

afterAll(async () => {
  await app?.close();
  await env?.cleanup();
});

const deadline = async (id: string) =>
  (await identities.status(env.ctx.rotor, id)).nextRotationAt?.getTime();

describe("an API without a token", () => {
  it("is refused unless ALLOW_UNAUTHENTICATED=true, in one line naming API_TOKEN", async () => {
    expect(() => assertApiProtected({ apiToken: undefined, allowUnauthenticated: false })).toThrow(
      /^API_TOKEN is not set/,
    );
    expect(() =>
      assertApiProtected({ apiToken: undefined, allowUnauthenticated: true }),
    ).not.toThrow();
    const run = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      execFile(
        process.execPath,
        [BIN, "api"],
        { env: { PATH: process.env.PATH, ...env.env, PORT: "0", METRICS_PORT: "0" } },
        (err, _stdout, stderr) => resolve({ code: err ? (err.code as number) : 0, stderr }),
      );
    });
    expect(run.code).toBe(1);
    const lines = run.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^kp-rotor api: API_TOKEN is not set/);
  });
});

describe("request bodies", () => {
  it("takes only application/json or no body on POST, PUT and DELETE", async () => {
    const before = await deadline("alice");
    for (const [type, payload] of [
      ["text/plain", ""],
      ["text/plain", "x"],
      ["application/x-www-form-urlencoded", "a=b"],
      ["multipart/form-data; boundary=x", "--x--"],
      ["application/json; charset=utf-16", "{}"],
    ] as const) {
      for (const [method, url] of [
        ["POST", "/v1/identities/alice/rotate"],
        ["POST", "/v1/identities/alice/welcome"],
        ["PUT", "/v1/identities/alice"],
        ["DELETE", "/v1/identities/alice"],
      ] as const) {
        const res = await app.inject({
          method,
          url,
          headers: { ...auth, "content-type": type },
          payload,
        });
        expect(res.statusCode, `${method} ${url} ${type}`).toBe(415);
        expect(res.json().error).toBe("UNSUPPORTED_MEDIA_TYPE");
      }
    }
    // A body without a type is refused too; no body and no type is fine.
    const untyped = await app.inject({
      method: "POST",
      url: "/v1/identities/alice/rotate",
      headers: { ...auth, "content-length": "2" },
      payload: "{}",
    });
    expect(untyped.statusCode).toBe(415);
    expect(await deadline("alice")).toBe(before);
    const bare = await app.inject({
      method: "POST",
      url: "/v1/identities/alice/rotate",
      headers: auth,
    });
    expect(bare.statusCode).toBe(202);
    const json = await app.inject({
      method: "POST",
      url: "/v1/welcomes",
      headers: { ...auth, "content-type": "application/json; charset=UTF-8" },
      payload: JSON.stringify({ identityIds: ["alice"] }),
    });
    expect(json.statusCode).toBe(202);
  });
});

describe("identity ids", () => {
  it("PUT /v1/identities/%2E is refused", async () => {
    const res = await app.inject({ method: "PUT", url: "/v1/identities/%2E", headers: auth });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatch(/^INVALID_/);
  });

  it("a batch naming . or .. is refused whole", async () => {
    const res = await app.inject({
      method: "POST",
      url: "/v1/welcomes",
      headers: auth,
      payload: { identityIds: ["alice", ".."] },
    });
    expect(res.statusCode).toBe(400);
  });

  it("the services refuse . and .. too", async () => {
    for (const id of [".", ".."]) {
      await expect(identities.register(env.ctx.rotor, id)).rejects.toMatchObject({
        code: "INVALID_IDENTITY_ID",
      });
    }
  });
});

describe("caching", () => {
  it.each([
    ["GET", "/v1/identities/alice", auth],
    ["GET", "/v1/identities/alice/key-package", auth],
    ["GET", "/v1/identities/alice", {}],
    ["GET", "/v1/nowhere", auth],
  ] as const)("%s %s answers Cache-Control: no-store", async (method, url, headers) => {
    const res = await app.inject({ method, url, headers });
    expect(res.headers["cache-control"]).toBe("no-store");
  });
});

describe("Bull Board", () => {
  it("loads nothing from another origin", async () => {
    const res = await app.inject({ method: "GET", url: "/admin/queues", headers: auth });
    expect(res.statusCode).toBe(200);
    expect(res.body).toContain("<html");
    expect(res.body).not.toMatch(/(href|src)="(https?:)?\/\//);
    const csp = String(res.headers["content-security-policy"]);
    expect(csp).not.toMatch(/https?:/);
  });
});

describe("docs", () => {
  it("need the board's login when only the board's credentials are set", async () => {
    const board = await buildApp({
      rotor: env.ctx.rotor,
      apiToken: undefined,
      checkReady: () => env.ctx.checkReady(),
      board: { user: "operator", password: "board-password-1" },
    });
    try {
      expect((await board.inject({ method: "GET", url: "/docs/json" })).statusCode).toBe(401);
      const basic = `Basic ${Buffer.from("operator:board-password-1").toString("base64")}`;
      const res = await board.inject({
        method: "GET",
        url: "/docs/json",
        headers: { authorization: basic },
      });
      expect(res.statusCode).toBe(200);
    } finally {
      await board.close();
    }
  });
});
