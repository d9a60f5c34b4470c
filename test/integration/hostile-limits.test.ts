import { connect, type Socket } from "node:net";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.js";
import * as identities from "../../src/services/identities.service.js";
import { createTestEnv, type TestEnv } from "../helpers/env.js";

const TOKEN = "admin-token-0123456789abcdef";
const INGEST = "ingest-token-0123456789abcdef";
const auth = { authorization: `Bearer ${TOKEN}` };
let env: TestEnv;

beforeAll(async () => {
  env = await createTestEnv();
  for (const id of ["alice", "bob"]) await identities.register(env.ctx.rotor, id);
});

afterAll(async () => {
  await env?.cleanup();
});

const build = (extra: Partial<Parameters<typeof buildApp>[0]> = {}) =>
  buildApp({
    rotor: env.ctx.rotor,
    apiToken: TOKEN,
    ingestToken: INGEST,
    checkReady: () => env.ctx.checkReady(),
    ...extra,
  });

async function codes(app: FastifyInstance, n: number, headers: () => Record<string, string>) {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    out.push(
      (await app.inject({ method: "GET", url: "/v1/identities/alice", headers: headers() }))
        .statusCode,
    );
  }
  return out;
}

describe("rate limiter", () => {
  it("keys on the verified principal: the scheme's spelling does not buy a new quota", async () => {
    const app = await build({ rateLimit: { max: 3, windowMs: 60_000 } });
    try {
      const spellings = ["Bearer", "bearer", "BEARER", "bEaReR", "Bearer"];
      let i = 0;
      const got = await codes(app, 5, () => ({ authorization: `${spellings[i++]} ${TOKEN}` }));
      expect(got).toEqual([200, 200, 200, 429, 429]);
    } finally {
      await app.close();
    }
  });

  it("on an open API, a random Authorization header per request does not bypass it", async () => {
    const app = await build({
      apiToken: undefined,
      ingestToken: undefined,
      rateLimit: { max: 3, windowMs: 60_000 },
    });
    try {
      let i = 0;
      const got = await codes(app, 5, () => ({ authorization: `Bearer random-${i++}` }));
      expect(got).toEqual([200, 200, 200, 429, 429]);
    } finally {
      await app.close();
    }
  });

  it("registrations have their own, lower quota (RATE_LIMIT_REGISTER_MAX)", async () => {
    const app = await build({ rateLimit: { max: 100, windowMs: 60_000, registerMax: 2 } });
    try {
      const got: number[] = [];
      for (const id of ["reg-1", "reg-2", "reg-3"]) {
        got.push(
          (await app.inject({ method: "PUT", url: `/v1/identities/${id}`, headers: auth }))
            .statusCode,
        );
      }
      expect(got).toEqual([201, 201, 429]);
      expect((await identities.status(env.ctx.rotor, "reg-2")).generation).toBe(1);
      await expect(identities.status(env.ctx.rotor, "reg-3")).rejects.toMatchObject({
        code: "IDENTITY_NOT_FOUND",
      });
      // Other calls of the same principal still have their quota.
      expect(await codes(app, 2, () => auth)).toEqual([200, 200]);
    } finally {
      await app.close();
    }
  });
});

describe("failed authentication", () => {
  it("is limited per client address, before the credentials are compared", async () => {
    const app = await build({
      authFailures: { max: 3, windowMs: 60_000 },
      board: { user: "operator", password: "board-password-1" },
    });
    const basic = (password: string) =>
      `Basic ${Buffer.from(`operator:${password}`).toString("base64")}`;
    const tryBoard = (password: string, remoteAddress = "10.0.0.1") =>
      app.inject({
        method: "GET",
        url: "/admin/queues",
        headers: { authorization: basic(password) },
        remoteAddress,
      });
    try {
      const guesses = [];
      for (let i = 0; i < 4; i++) guesses.push((await tryBoard(`guess-${i}-000000`)).statusCode);
      expect(guesses).toEqual([401, 401, 401, 429]);
      // Blocked: even the right password is not compared until the window ends.
      const right = await tryBoard("board-password-1");
      expect(right.statusCode).toBe(429);
      expect(Number(right.headers["retry-after"])).toBeGreaterThan(0);
      // Another address is not affected, and a bearer token guess counts the same way.
      expect((await tryBoard("board-password-1", "10.0.0.2")).statusCode).toBe(200);
      const bearer = [];
      for (let i = 0; i < 4; i++) {
        bearer.push(
          (
            await app.inject({
              method: "GET",
              url: "/v1/identities/alice",
              headers: { authorization: `Bearer wrong-${i}` },
              remoteAddress: "10.0.0.3",
            })
          ).statusCode,
        );
      }
      expect(bearer).toEqual([401, 401, 401, 429]);
    } finally {
      await app.close();
    }
  });
});

describe("slow bodies", () => {
  /** Opens a connection from `from` that sends headers and one byte of a 100 kB body. */
  function slowBody(port: number, from: string): Promise<Socket> {
    return new Promise((resolve) => {
      const socket = connect({ port, host: "127.0.0.1", localAddress: from }, () => {
        socket.write(
          `POST /v1/welcomes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${INGEST}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{`,
        );
        resolve(socket);
      });
      socket.on("error", () => {});
      socket.resume(); // read what the server answers (a 408), so its close is seen
    });
  }

  it("do not count as work, are cut off by the request timeout, and are capped per address", async () => {
    const app = await build({
      maxInFlight: 10,
      requestTimeoutMs: 1_500,
      maxConnectionsPerClient: 15,
    });
    await app.listen({ port: 0, host: "127.0.0.1" });
    const port = (app.server.address() as { port: number }).port;
    const sockets = await Promise.all(
      Array.from({ length: 20 }, () => slowBody(port, "127.0.0.2")),
    );
    const started = Date.now();
    let closes = 0;
    let fiveClosed: () => void = () => {};
    const firstFive = new Promise<void>((resolve) => {
      fiveClosed = resolve;
    });
    const closed = sockets.map(
      (s) =>
        new Promise<number>((resolve) =>
          s.once("close", () => {
            if (++closes === 5) fiveClosed();
            resolve(Date.now());
          }),
        ),
    );
    try {
      // Past the per-address cap (15), the other 5 connections are closed at once.
      await firstFive;
      expect(Date.now() - started).toBeLessThan(1_000);
      // The operator is served while the slow bodies trickle; readiness says not overloaded.
      const base = `http://127.0.0.1:${port}`;
      for (let i = 0; i < 5; i++) {
        const res = await fetch(`${base}/v1/identities/bob`, { headers: auth });
        expect(res.status).toBe(200);
      }
      const ready = await (await fetch(`${base}/readyz`)).json();
      expect(ready).toMatchObject({ ready: true, overloaded: false });
      // The request timeout (1.5 s, checked every second) closes the rest.
      const ends = await Promise.all(closed);
      expect(Math.max(...ends) - started).toBeLessThan(5_000);
    } finally {
      for (const s of sockets) s.destroy();
      await app.close();
    }
  });
});
