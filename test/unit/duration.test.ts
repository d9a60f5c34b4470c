import { describe, expect, it } from "vitest";
import { formatDuration, parseDuration } from "../../src/core/duration.js";

const DAY = 86_400_000;

describe("parseDuration accepts", () => {
  it.each<[string, number]>([
    ["0", 0],
    ["500", 500],
    ["500ms", 500],
    ["0ms", 0],
    ["5s", 5_000],
    ["10m", 600_000],
    ["2h", 7_200_000],
    ["1d", DAY],
    ["30d", 2_592_000_000],
    ["90d", 7_776_000_000],
    ["007s", 7_000],
    ["9007199254740991", Number.MAX_SAFE_INTEGER],
    ["9007199254740991ms", Number.MAX_SAFE_INTEGER],
    ["104249991d", 104_249_991 * DAY],
  ])("%j -> %d", (text, expected) => {
    expect(parseDuration(text)).toBe(expected);
  });
});

describe("parseDuration rejects", () => {
  it.each<[string, string]>([
    ["empty", ""],
    ["leading space", " 5s"],
    ["trailing space", "5s "],
    ["trailing newline", "5s\n"],
    ["space before unit", "5 s"],
    ["fraction", "1.5d"],
    ["negative", "-1"],
    ["plus sign", "+5s"],
    ["unknown unit", "5x"],
    ["unit only", "s"],
    ["upper-case unit", "5S"],
    ["two units", "5s10ms"],
    ["exponent", "1e3"],
    ["hex", "0x10"],
    ["beyond safe integers (bare)", "9007199254740992"],
    ["beyond safe integers (ms)", "99999999999999999999ms"],
    ["beyond safe integers (days)", "104249992d"],
    ["beyond safe integers (huge days)", "999999999999999d"],
    ["non-ASCII digits", "\u0665s"],
  ])("%s (%j)", (_name, text) => {
    expect(parseDuration(text)).toBeUndefined();
  });
});

describe("formatDuration", () => {
  it.each<[number, string]>([
    [0, "0ms"],
    [1, "1ms"],
    [500, "500ms"],
    [1_500, "1500ms"],
    [1_000, "1s"],
    [5_000, "5s"],
    [90_000, "90s"],
    [60_000, "1m"],
    [600_000, "10m"],
    [5_400_000, "90m"],
    [7_200_000, "2h"],
    [36 * 3_600_000, "36h"],
    [DAY, "1d"],
    [24 * DAY, "24d"],
    [30 * DAY, "30d"],
    [90 * DAY, "90d"],
  ])("%d -> %s", (ms, expected) => {
    expect(formatDuration(ms)).toBe(expected);
  });

  it.each(["500ms", "5s", "10m", "2h", "30d", "90d", "1500ms", "36h"])("round-trips %s", (text) => {
    const ms = parseDuration(text);
    expect(ms).toBeTypeOf("number");
    expect(formatDuration(ms as number)).toBe(text);
  });
});
