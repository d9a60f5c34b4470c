import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { type Browser, chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.js";
import { type RunningApi, startApi } from "../../src/runtime/api-process.js";
import { createTestEnv, type TestEnv } from "../helpers/env.js";

/**
 * Bull Board as a person sees it: the API listening for real, Debian's Chromium (installed by
 * npm test's first step, scripts/test-tools.mjs) with basic-auth credentials, the registered
 * identity's wake-up on the Delayed tab. The screenshot lands in test/artifacts/board.png.
 */

const CHROMIUM = "/usr/bin/chromium";
const TOKEN = "test-token-0123456789abcdef";
const USER = "ops";
const PASSWORD = "correct-horse-battery";
const ARTIFACTS = new URL("../artifacts/", import.meta.url);
const basic = (user: string, password: string) =>
  `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;

let env: TestEnv;
let api: RunningApi;
let browser: Browser | undefined;

beforeAll(async () => {
  env = await createTestEnv({
    PORT: "0",
    HOST: "127.0.0.1",
    API_TOKEN: TOKEN,
    BOARD_USER: USER,
    BOARD_PASSWORD: PASSWORD,
  });
  api = await startApi(env.ctx);
});

afterAll(async () => {
  await browser?.close();
  await api?.close();
  await env?.cleanup();
});

describe("Bull Board at /admin/queues", () => {
  it("answers 401 with a Basic challenge without credentials, and to wrong ones", async () => {
    for (const headers of [
      {} as Record<string, string>,
      { authorization: basic(USER, "wrong-password-123") },
      { authorization: "Bearer wrong" },
    ]) {
      const res = await fetch(`${api.address}/admin/queues`, { headers });
      expect(res.status).toBe(401);
      expect(res.headers.get("www-authenticate")).toBe('Basic realm="kp-rotor"');
      await res.body?.cancel();
    }
    // The board's JSON API is behind the same door.
    const apiRes = await fetch(`${api.address}/admin/queues/api/queues`);
    expect(apiRes.status).toBe(401);
    await apiRes.body?.cancel();
  });

  it("takes the API bearer token or the basic credentials; the API takes only the token", async () => {
    for (const authorization of [`Bearer ${TOKEN}`, basic(USER, PASSWORD)]) {
      const res = await fetch(`${api.address}/admin/queues/api/queues`, {
        headers: { authorization },
      });
      expect(res.status).toBe(200);
      const body = (await res.json()) as { queues: { name: string }[] };
      expect(body.queues.map((q) => q.name).sort()).toEqual(["deletion", "rotation"]);
    }
    const res = await fetch(`${api.address}/v1/identities/nobody`, {
      headers: { authorization: basic(USER, PASSWORD) },
    });
    expect(res.status).toBe(401);
    expect(res.headers.get("www-authenticate")).toBe('Bearer realm="kp-rotor"');
    await res.body?.cancel();
  });

  it("shows both queues and the registered identity's job on the rotation queue's Delayed tab", async () => {
    const identityId = "board-alice";
    const registered = await fetch(`${api.address}/v1/identities/${identityId}`, {
      method: "PUT",
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(registered.status).toBe(201);
    await registered.body?.cancel();

    expect(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium`).toBe(true);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    const context = await browser.newContext({
      httpCredentials: { username: USER, password: PASSWORD },
      viewport: { width: 1280, height: 800 },
    });
    // Only our server: the board links a web font that is neither needed nor reachable here.
    const origin = new URL(api.address).origin;
    await context.route("**/*", (route) =>
      route.request().url().startsWith(origin) ? route.continue() : route.abort(),
    );
    const page = await context.newPage();
    const response = await page.goto(`${api.address}/admin/queues`);
    expect(response?.status()).toBe(200);

    const sidebar = page.getByRole("navigation");
    await sidebar.getByRole("link", { name: "rotation", exact: true }).waitFor();
    await sidebar.getByRole("link", { name: "deletion", exact: true }).waitFor();

    await sidebar.getByRole("link", { name: "rotation", exact: true }).click();
    await page.waitForURL(/\/admin\/queues\/queue\/rotation/);
    await page.getByRole("link", { name: /^delayed/i }).click();
    await page.waitForURL(/status=delayed/);
    const job = page.getByText(`id-${identityId}`, { exact: true });
    await job.waitFor();
    expect(await job.isVisible()).toBe(true);

    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: new URL("board.png", ARTIFACTS).pathname });
    await context.close();
  });
});

describe("board mounting", () => {
  it("is not mounted at all when neither an API token nor board credentials are set", async () => {
    const app = await buildApp({
      rotor: env.ctx.rotor,
      apiToken: undefined,
      checkReady: () => env.ctx.checkReady(),
    });
    try {
      const res = await app.inject({ method: "GET", url: "/admin/queues" });
      expect(res.statusCode).toBe(404);
    } finally {
      await app.close();
    }
  });

  it("BOARD_READ_ONLY mounts the queues read-only", async () => {
    const app = await buildApp({
      rotor: env.ctx.rotor,
      apiToken: undefined,
      checkReady: () => env.ctx.checkReady(),
      board: { user: USER, password: PASSWORD, readOnly: true },
    });
    try {
      const res = await app.inject({
        method: "GET",
        url: "/admin/queues/api/queues",
        headers: { authorization: basic(USER, PASSWORD) },
      });
      expect(res.statusCode).toBe(200);
      const queues = res.json().queues as { name: string; readOnlyMode: boolean }[];
      expect(queues.map((q) => [q.name, q.readOnlyMode]).sort()).toEqual([
        ["deletion", true],
        ["rotation", true],
      ]);
      // Without an API token, basic credentials are the only way in.
      expect((await app.inject({ method: "GET", url: "/admin/queues" })).statusCode).toBe(401);
    } finally {
      await app.close();
    }
  });
});
