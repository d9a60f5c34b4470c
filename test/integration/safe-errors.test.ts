import { Writable } from "node:stream";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.js";
import { type Context, createContext } from "../../src/context.js";
import * as repo from "../../src/db/identities.repo.js";
import { PublishError } from "../../src/keys/publisher.js";
import { createLogger } from "../../src/logger.js";
import * as identities from "../../src/services/identities.service.js";
import { createTestEnv, type TestEnv } from "../helpers/env.js";

const TOKEN = "admin-token-0123456789abcdef";
const auth = { authorization: `Bearer ${TOKEN}` };
let env: TestEnv;
let ctx: Context;
let app: FastifyInstance;
const lines: string[] = [];

beforeAll(async () => {
  env = await createTestEnv();
  const sink = new Writable({
    write(chunk, _encoding, done) {
      lines.push(String(chunk));
      done();
    },
  });
  ctx = await createContext(env.config, createLogger("info", sink));
  app = await buildApp({ rotor: ctx.rotor, apiToken: TOKEN, checkReady: () => ctx.checkReady() });
});

afterAll(async () => {
  await app?.close();
  await ctx?.close();
  await env?.cleanup();
});

describe("internal errors", () => {
  it("a failing insert reaches neither the client nor last_error, and the log is redacted", async () => {
    // Every key-package insert fails inside Postgres: drizzle's error message then holds the SQL
    // and its parameters (the key package and the sealed private key).
    const sql = env.ctx.database.sql;
    await sql.unsafe(`
      create function refuse_kp() returns trigger language plpgsql as
        $$ begin raise exception 'refused by test trigger'; end $$;
      create trigger refuse_kp before insert on key_packages
        for each row execute function refuse_kp();`);
    try {
      const res = await app.inject({ method: "PUT", url: "/v1/identities/victim", headers: auth });
      expect(res.statusCode).toBe(201);
      const body = res.json();
      expect(body.publishError).toBe("INTERNAL: internal error; the details are in the server log");
      for (const url of ["/v1/identities/victim", "/v1/safety"]) {
        const text = (await app.inject({ method: "GET", url, headers: auth })).body;
        expect(text).toContain("INTERNAL: internal error");
        expect(text).not.toMatch(/insert|params|key_packages|refused by test trigger/i);
      }
      const log = lines.join("");
      expect(log).toContain("refused by test trigger"); // the details are in the log
      expect(log).toContain("params: [redacted]");
      expect(log).not.toMatch(/params: (?!\[redacted\])/);
    } finally {
      await sql.unsafe("drop trigger refuse_kp on key_packages; drop function refuse_kp();");
    }
  });

  it("our own errors keep their code and words, control characters removed", async () => {
    const publisher = ctx.rotor.publisher;
    ctx.rotor.publisher = {
      kind: "webhook",
      publish: async () => {
        throw new PublishError("webhook unreachable: bad\u0000byte");
      },
    };
    try {
      const result = await identities.register(ctx.rotor, "nul-victim");
      expect(result.publishError).toBe("PUBLISH_FAILED: webhook unreachable: bad byte");
      const status = await identities.status(ctx.rotor, "nul-victim");
      expect(status).toMatchObject({ rotationFailures: 1, lastError: result.publishError });
    } finally {
      ctx.rotor.publisher = publisher;
    }
  });

  it("a NUL byte in an error message does not make recordRotationFailure fail", async () => {
    await identities.register(ctx.rotor, "nul-direct");
    await repo.recordRotationFailure(ctx.rotor.db, "nul-direct", Date.now(), "a\u0000b");
    const status = await identities.status(ctx.rotor, "nul-direct");
    expect(status).toMatchObject({ rotationFailures: 1, lastError: "a b" });
  });
});
