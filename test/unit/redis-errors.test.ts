import { ReplyError } from "ioredis";
import { describe, expect, it } from "vitest";
import { KpRotorError } from "../../src/errors.js";
import { classifyRedisError } from "../../src/queue/errors.js";

/**
 * The Redis adapter's classification table, on the errors ioredis raises as it raises them (a
 * cluster with no reachable node, a failover, a replica promoted under a write, a restart): each
 * is DEPENDENCY_UNAVAILABLE; anything else passes through. The live cases (a closed port, a
 * Postgres lock wait cancelled) are in test/integration/driver-errors.test.ts.
 */
const unavailable = (err: unknown) => {
  const classified = classifyRedisError(err);
  return classified instanceof KpRotorError && classified.code === "DEPENDENCY_UNAVAILABLE";
};

describe("classifyRedisError", () => {
  it.each([
    [
      "no node took the command in time",
      new Error(
        "Too many Cluster redirections. Last error: Error: CLUSTERDOWN The cluster is down",
      ),
    ],
    ["no seed node answers", new Error("None of startup nodes is available")],
    ["offline queue off", new Error("Cluster isn't ready and enableOfflineQueue options is false")],
    [
      "a replica promoted under a write",
      new ReplyError("READONLY You can't write against a read only replica."),
    ],
    [
      "a restart loading its data",
      new ReplyError("LOADING Redis is loading the dataset in memory"),
    ],
    ["a command timeout", new Error("Command timed out")],
    ["the connection closed", new Error("Connection is closed.")],
  ])("%s is DEPENDENCY_UNAVAILABLE", (_name, err) => {
    expect(unavailable(err)).toBe(true);
  });

  it.each([
    ["a script error", new ReplyError("ERR Error running script (call to f_x): bad argument")],
    [
      "a wrong type",
      new ReplyError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    ],
    ["a bug of ours", new TypeError("cannot read properties of undefined")],
  ])("%s passes through", (_name, err) => {
    expect(classifyRedisError(err)).toBe(err);
  });
});
