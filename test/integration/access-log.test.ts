import { Writable } from "node:stream";
import { afterAll, beforeAll, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.js";
import { createLogger } from "../../src/logger.js";
import { createTestEnv, type TestEnv } from "../helpers/env.js";

/** The API writes exactly one access-log line per request, without the caller's token. */
const TOKEN = "test-token-access-log-0123456789";
let env: TestEnv;
const lines: string[] = [];

beforeAll(async () => {
  env = await createTestEnv({});
});
afterAll(async () => {
  await env?.cleanup();
});

it("logs one line per request with method, url, status and duration", async () => {
  const sink = new Writable({
    write(chunk, _encoding, callback) {
      lines.push(...String(chunk).split("\n").filter(Boolean));
      callback();
    },
  });
  const app = await buildApp({
    rotor: env.ctx.rotor,
    apiToken: TOKEN,
    checkReady: () => env.ctx.checkReady(),
    logger: createLogger("info", sink),
  });
  try {
    const auth = { authorization: `Bearer ${TOKEN}` };
    await app.inject({ method: "GET", url: "/v1/identities/nobody", headers: auth });
    await app.inject({ method: "POST", url: "/v1/identities/nobody/welcome", headers: auth });
    await app.inject({ method: "GET", url: "/v1/identities/nobody" });
  } finally {
    await app.close();
  }
  const access = lines.map((l) => JSON.parse(l)).filter((l) => l.msg === "request");
  expect(access.map((l) => [l.method, l.url, l.statusCode])).toEqual([
    ["GET", "/v1/identities/nobody", 404],
    ["POST", "/v1/identities/nobody/welcome", 404],
    ["GET", "/v1/identities/nobody", 401],
  ]);
  for (const l of access) expect(typeof l.ms).toBe("number");
  expect(lines.some((l) => /incoming request|request completed/.test(l))).toBe(false);
  expect(lines.join("\n")).not.toContain(TOKEN);
});
