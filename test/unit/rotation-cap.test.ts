import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.js";
import { CAP_WINDOW_MS, earliestAllowedRotation } from "../../src/core/rotation-cap.js";

const now = 10 * CAP_WINDOW_MS;
const ago = (ms: number) => now - ms;

describe("earliestAllowedRotation", () => {
  it.each<[string, number[], number, number]>([
    ["no rotations", [], 3, Number.NEGATIVE_INFINITY],
    ["under the cap", [ago(1_000), ago(2_000)], 3, Number.NEGATIVE_INFINITY],
    [
      "at the cap: when the oldest of the last three leaves the hour",
      [ago(1_000), ago(5_000), ago(9_000)],
      3,
      ago(9_000) + CAP_WINDOW_MS,
    ],
    ["order does not matter", [ago(9_000), ago(1_000), ago(5_000)], 3, ago(9_000) + CAP_WINDOW_MS],
    [
      "over the cap: the cap-th most recent counts",
      [ago(1_000), ago(2_000), ago(3_000), ago(4_000)],
      2,
      ago(2_000) + CAP_WINDOW_MS,
    ],
    [
      "rotations older than an hour do not count",
      [ago(CAP_WINDOW_MS), ago(CAP_WINDOW_MS + 1)],
      1,
      Number.NEGATIVE_INFINITY,
    ],
    ["a cap of one", [ago(60_000)], 1, ago(60_000) + CAP_WINDOW_MS],
  ])("%s", (_name, recent, cap, expected) => {
    expect(earliestAllowedRotation(recent, now, cap)).toBe(expected);
  });
});

describe("MAX_ROTATIONS_PER_HOUR configuration", () => {
  const KEY = Buffer.from(Array.from({ length: 32 }, (_, i) => i + 7)).toString("base64");
  const load = (env: Record<string, string>) => loadConfig({ KEY_ENCRYPTION_KEY: KEY, ...env });
  it("is unset (no cap) by default, a whole number when set", () => {
    expect(load({}).maxRotationsPerHour).toBeUndefined();
    expect(load({ MAX_ROTATIONS_PER_HOUR: "" }).maxRotationsPerHour).toBeUndefined();
    expect(load({ MAX_ROTATIONS_PER_HOUR: "4" }).maxRotationsPerHour).toBe(4);
    for (const bad of ["0", "-1", "1.5", "many"]) {
      expect(() => load({ MAX_ROTATIONS_PER_HOUR: bad })).toThrow(/MAX_ROTATIONS_PER_HOUR=/);
    }
  });
  it("needs superseded packages kept an hour, since it counts them", () => {
    expect(() => load({ MAX_ROTATIONS_PER_HOUR: "4", DELETION_GRACE: "30m" })).toThrow(
      "MAX_ROTATIONS_PER_HOUR: needs DELETION_GRACE of at least 1h",
    );
  });
});
