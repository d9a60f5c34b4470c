import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { loadKeysConfig } from "../../src/keys/keys-config.js";
import {
  createKeyring,
  DecryptionError,
  INSECURE_DEV_KEY,
  keyIdOf,
  parseKey,
} from "../../src/keys/encryption.js";

const key = () => new Uint8Array(randomBytes(32));
const secret = new TextEncoder().encode("init, encryption and signature private keys");

describe("keyring", () => {
  it("round-trips, with a fresh IV every time and the key id in the ciphertext", () => {
    const k = key();
    const ring = createKeyring(k);
    const a = ring.seal(secret, "alice", "key-package-private");
    const b = ring.seal(secret, "alice", "key-package-private");
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(false);
    expect(Buffer.from(a).includes(Buffer.from(secret))).toBe(false);
    expect(Buffer.from(a).subarray(2, 18).toString("ascii")).toBe(keyIdOf(k));
    expect(ring.open(a, "alice", "key-package-private")).toEqual(secret);
  });

  it("refuses a wrong key, naming the key id it would need", () => {
    const sealed = createKeyring(key()).seal(secret, "alice", "key-package-private");
    expect(() => createKeyring(key()).open(sealed, "alice", "key-package-private")).toThrow(
      /names key [0-9a-f]{16}, which is neither KEY_ENCRYPTION_KEY nor KEY_ENCRYPTION_KEY_PREVIOUS/,
    );
  });

  it.each([
    [
      "a tampered ciphertext",
      (s: Uint8Array) => s.map((b, i) => (i === 40 ? b ^ 1 : b)),
      "alice",
      "key-package-private",
    ],
    [
      "a tampered tag",
      (s: Uint8Array) => s.map((b, i) => (i === s.length - 1 ? b ^ 1 : b)),
      "alice",
      "key-package-private",
    ],
    ["another identity (AAD)", (s: Uint8Array) => s, "bob", "key-package-private"],
    ["another purpose (AAD)", (s: Uint8Array) => s, "alice", "signature-private"],
  ] as const)("refuses %s with a clear error", (_name, change, identity, purpose) => {
    const ring = createKeyring(key());
    const sealed = change(ring.seal(secret, "alice", "key-package-private"));
    expect(() => ring.open(sealed, identity, purpose)).toThrow(DecryptionError);
    expect(() => ring.open(sealed, identity, purpose)).toThrow(
      /failed authentication: it was altered, or belongs to another identity or purpose/,
    );
  });

  it("refuses truncated input and unknown versions", () => {
    const ring = createKeyring(key());
    const sealed = ring.seal(secret, "alice", "key-package-private");
    expect(() => ring.open(sealed.subarray(0, 20), "alice", "key-package-private")).toThrow(
      /truncated/,
    );
    expect(() => ring.open(new Uint8Array([9, 0]), "alice", "key-package-private")).toThrow(
      /unknown format version/,
    );
  });

  it("reads material sealed with the previous key after a key rotation, seals with the new one", () => {
    const old = key();
    const next = key();
    const before = createKeyring(old).seal(secret, "alice", "signature-private");
    const rotated = createKeyring(next, old);
    expect(rotated.open(before, "alice", "signature-private")).toEqual(secret);
    expect(rotated.currentKeyId).toBe(keyIdOf(next));
    const after = rotated.seal(secret, "alice", "signature-private");
    expect(() => createKeyring(old).open(after, "alice", "signature-private")).toThrow(
      DecryptionError,
    );
  });
});

describe("key configuration", () => {
  const good = Buffer.from(key()).toString("base64");

  it("parses a base64 32-byte key and refuses anything else without echoing it", () => {
    expect(parseKey("KEY_ENCRYPTION_KEY", good)).toHaveLength(32);
    for (const bad of ["short", Buffer.alloc(31).toString("base64"), `${good}!`]) {
      expect(() => parseKey("KEY_ENCRYPTION_KEY", bad)).toThrow(/expected 32 bytes in base64/);
      try {
        parseKey("KEY_ENCRYPTION_KEY", bad);
      } catch (err) {
        expect((err as Error).message).not.toContain(bad);
      }
    }
  });

  it("refuses to start without a key unless the insecure development flag is set", () => {
    const problems: string[] = [];
    loadKeysConfig({}, problems);
    expect(problems).toEqual([
      expect.stringMatching(/^KEY_ENCRYPTION_KEY: required .* KP_ROTOR_INSECURE_DEV_KEY=1/),
    ]);

    const dev: string[] = [];
    const config = loadKeysConfig({ KP_ROTOR_INSECURE_DEV_KEY: "1" }, dev);
    expect(dev).toEqual([]);
    expect(config.insecureDevKey).toBe(true);
    expect(config.encryptionKey).toEqual(INSECURE_DEV_KEY);

    const real = loadKeysConfig({ KP_ROTOR_INSECURE_DEV_KEY: "1", KEY_ENCRYPTION_KEY: good }, []);
    expect(real.insecureDevKey).toBe(false);
  });

  it("validates the webhook publisher settings", () => {
    const problems: string[] = [];
    loadKeysConfig(
      {
        KEY_ENCRYPTION_KEY: good,
        PUBLISHER: "webhook",
        PUBLISH_WEBHOOK_URL: "ftp://x",
        PUBLISH_WEBHOOK_SECRET: "short",
        PUBLISH_WEBHOOK_TIMEOUT: "0",
      },
      problems,
    );
    expect(problems).toEqual([
      "PUBLISH_WEBHOOK_URL: expected an http:// or https:// URL",
      "PUBLISH_WEBHOOK_SECRET: expected at least 16 characters",
      "PUBLISH_WEBHOOK_TIMEOUT: expected a duration from 1ms to 10m, e.g. 5s",
    ]);
    const other: string[] = [];
    loadKeysConfig({ KEY_ENCRYPTION_KEY: good, PUBLISHER: "carrier-pigeon" }, other);
    expect(other).toEqual(['PUBLISHER="carrier-pigeon": expected directory or webhook']);
  });
});
