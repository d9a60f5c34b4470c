import { describe, expect, it } from "vitest";
import { restartDelayMs } from "../../src/runtime/api-cluster.js";
import { perProcessLimits } from "../../src/runtime/api-process.js";

describe("perProcessLimits: one API process's share of the host-wide limits", () => {
  const defaults = {
    rateLimitMax: 60_000,
    rateLimitRegisterMax: 600,
    authFailureMax: 20,
    maxConnectionsPerClient: 256,
  };
  it.each<[string, typeof defaults, number, typeof defaults]>([
    ["one process keeps every limit", defaults, 1, defaults],
    [
      "two processes halve them",
      defaults,
      2,
      {
        rateLimitMax: 30_000,
        rateLimitRegisterMax: 300,
        authFailureMax: 10,
        maxConnectionsPerClient: 128,
      },
    ],
    [
      "an uneven share rounds up",
      defaults,
      3,
      {
        rateLimitMax: 20_000,
        rateLimitRegisterMax: 200,
        authFailureMax: 7,
        maxConnectionsPerClient: 86,
      },
    ],
    [
      "a limit never falls to 0 (which would mean no limit)",
      { rateLimitMax: 1, rateLimitRegisterMax: 1, authFailureMax: 1, maxConnectionsPerClient: 1 },
      4,
      { rateLimitMax: 1, rateLimitRegisterMax: 1, authFailureMax: 1, maxConnectionsPerClient: 1 },
    ],
    [
      "0 (no limit) stays 0",
      { rateLimitMax: 0, rateLimitRegisterMax: 0, authFailureMax: 0, maxConnectionsPerClient: 0 },
      4,
      { rateLimitMax: 0, rateLimitRegisterMax: 0, authFailureMax: 0, maxConnectionsPerClient: 0 },
    ],
  ])("%s", (_name, limits, processes, expected) => {
    expect(perProcessLimits(limits, processes)).toEqual(expected);
  });
});

describe("restartDelayMs: the backoff before a dead API process is replaced", () => {
  it.each([
    [0, 250],
    [1, 500],
    [2, 1_000],
    [6, 16_000],
    [7, 30_000],
    [50, 30_000],
  ])("after %i quick deaths in a row: %i ms", (failures, ms) => {
    expect(restartDelayMs(failures)).toBe(ms);
  });
});
