import { describe, expect, it } from "vitest";
import { type Config, loadConfig } from "../../src/config.js";
import { KpRotorError } from "../../src/errors.js";

/** The operations settings: metrics port, Bull Board credentials and mode, public docs. */

const PASSWORD = "correct-horse-battery";
/** The service refuses to start without a key-encryption key; it is beside the point here. */
const BASE = { KEY_ENCRYPTION_KEY: Buffer.from(Array.from({ length: 32 }, (_, i) => i + 7)).toString("base64") };
const load = (env: Record<string, string>) => loadConfig({ ...BASE, ...env });

function problemsOf(env: Record<string, string>): string[] {
  try {
    load(env);
  } catch (error) {
    expect(error).toBeInstanceOf(KpRotorError);
    return (error as Error).message.split("\n").filter((line) => line.startsWith("  - "));
  }
  throw new Error(`loadConfig accepted ${JSON.stringify(env)}`);
}

describe("operations settings", () => {
  it.each<[Record<string, string>, Partial<Config>]>([
    [{}, { metricsPort: 9464, boardReadOnly: false, docsPublic: false }],
    [{ METRICS_PORT: "0" }, { metricsPort: 0 }],
    [{ METRICS_PORT: "9100" }, { metricsPort: 9100 }],
    [
      { BOARD_USER: "ops", BOARD_PASSWORD: PASSWORD },
      { boardUser: "ops", boardPassword: PASSWORD },
    ],
    [{ BOARD_USER: "", BOARD_PASSWORD: "" }, { boardUser: undefined, boardPassword: undefined }],
    [{ BOARD_READ_ONLY: "true" }, { boardReadOnly: true }],
    [{ DOCS_PUBLIC: "true" }, { docsPublic: true }],
    [{ DOCS_PUBLIC: "false" }, { docsPublic: false }],
  ])("%j", (env, expected) => {
    expect(load(env)).toMatchObject(expected);
  });

  it.each<[Record<string, string>, string]>([
    [{ METRICS_PORT: "65536" }, 'METRICS_PORT="65536": expected a whole number from 0 to 65535'],
    [{ BOARD_USER: "ops" }, "BOARD_USER and BOARD_PASSWORD: expected both or neither"],
    [{ BOARD_PASSWORD: PASSWORD }, "BOARD_USER and BOARD_PASSWORD: expected both or neither"],
    [{ BOARD_USER: "o:ps", BOARD_PASSWORD: PASSWORD }, "BOARD_USER: expected no ':'"],
    [
      { BOARD_USER: "ops", BOARD_PASSWORD: "short" },
      "BOARD_PASSWORD: expected at least 12 characters",
    ],
    [{ BOARD_READ_ONLY: "yes" }, 'BOARD_READ_ONLY="yes": expected true or false'],
    [{ DOCS_PUBLIC: "1" }, 'DOCS_PUBLIC="1": expected true or false'],
  ])("rejects %j", (env, message) => {
    expect(problemsOf(env)).toEqual([`  - ${message}`]);
  });

  it("reports every bad operations variable in one error", () => {
    const lines = problemsOf({ METRICS_PORT: "x", BOARD_USER: "ops", DOCS_PUBLIC: "yes" });
    expect(lines.map((line) => /^ {2}- ([A-Z_]+)/.exec(line)?.[1]).sort()).toEqual([
      "BOARD_USER",
      "DOCS_PUBLIC",
      "METRICS_PORT",
    ]);
  });
});
