import { describe, expect, it } from "vitest";
import { IDENTITY_ID_PATTERN, identityIdProblem } from "../../src/core/identity-id.js";

const CHARSET = "identity id may contain only letters A-Z a-z, digits 0-9, '.', '_' and '-'";

describe("identityIdProblem: valid ids", () => {
  it.each<[string, string]>([
    ["1 char", "a"],
    ["1 digit", "7"],
    ["128 chars", "x".repeat(128)],
    ["digits only", "123"],
    ["with . _ -", "alice.b_c-d"],
    ["only punctuation", "._-"],
    ["mixed case", "Alice-0001"],
    ["leading dot", ".hidden"],
  ])("%s", (_name, id) => {
    expect(identityIdProblem(id)).toBeUndefined();
    expect(new RegExp(IDENTITY_ID_PATTERN).test(id)).toBe(true);
  });
});

describe("identityIdProblem: invalid ids", () => {
  it.each<[string, unknown, string]>([
    ["empty", "", "identity id must not be empty"],
    ["129 chars", "x".repeat(129), "identity id is 129 characters long; at most 128 are allowed"],
    [
      "1000 chars",
      "a".repeat(1000),
      "identity id is 1000 characters long; at most 128 are allowed",
    ],
    ["space", "alice bob", CHARSET],
    ["leading space", " alice", CHARSET],
    ["trailing newline", "alice\n", CHARSET],
    ["colon", "alice:1", CHARSET],
    ["slash", "alice/1", CHARSET],
    ["backslash", "alice\\1", CHARSET],
    ["asterisk", "alice*", CHARSET],
    ["unicode letter", "alicé", CHARSET],
    ["emoji", "a😀", CHARSET],
    ["NUL", "a\u0000b", CHARSET],
    // Path segments: a receiver building a URL or a file name from the id would climb a level.
    ["dot", ".", 'identity id must not be "."'],
    ["dot dot", "..", 'identity id must not be ".."'],
    ["number", 123, "identity id must be a string"],
    ["undefined", undefined, "identity id must be a string"],
    ["null", null, "identity id must be a string"],
    ["array", ["a"], "identity id must be a string"],
    ["String object", new String("abc"), "identity id must be a string"],
  ])("%s", (_name, value, message) => {
    expect(identityIdProblem(value)).toBe(message);
    if (typeof value === "string") expect(new RegExp(IDENTITY_ID_PATTERN).test(value)).toBe(false);
  });
});
