import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { loadKeysConfig } from "../../src/keys/keys-config.js";
import {
  createKeyring,
  DecryptionError,
  INSECURE_DEV_KEY,
  keyIdOf,
  parseKey,
  sealedHeader,
} from "../../src/keys/encryption.js";
import { sealV1 } from "../helpers/legacy-seal.js";

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
      /failed authentication: it was altered, or belongs to another identity, purpose or key package/,
    );
  });

  it("binds a key package's generation and ref (version 2), and still reads version 1", () => {
    const kek = key();
    const ring = createKeyring(kek);
    const binding = { generation: 7, ref: "ab".repeat(32) };
    const sealed = ring.seal(secret, "alice", "key-package-private", binding);
    expect(sealedHeader(sealed)).toEqual({ version: 2, keyId: keyIdOf(kek) });
    expect(ring.open(sealed, "alice", "key-package-private", binding)).toEqual(secret);
    for (const other of [
      { ...binding, generation: 8 },
      { ...binding, ref: "cd".repeat(32) },
      undefined,
    ]) {
      expect(() => ring.open(sealed, "alice", "key-package-private", other)).toThrow(
        DecryptionError,
      );
    }
    const legacy = sealV1(kek, secret, "alice", "key-package-private");
    expect(sealedHeader(legacy)).toEqual({ version: 1, keyId: keyIdOf(kek) });
    expect(ring.open(legacy, "alice", "key-package-private", binding)).toEqual(secret);
    expect(() => ring.open(legacy, "bob", "key-package-private", binding)).toThrow(DecryptionError);
    expect(createKeyring(key(), kek).keyIds).toContain(keyIdOf(kek));
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
      "PUBLISH_WEBHOOK_URL: expected an https:// URL",
      "PUBLISH_WEBHOOK_SECRET: expected one or more space-separated secrets of at least 16 characters",
      "PUBLISH_WEBHOOK_TIMEOUT: expected a duration from 1ms to 10m, e.g. 5s",
    ]);
    const other: string[] = [];
    loadKeysConfig({ KEY_ENCRYPTION_KEY: good, PUBLISHER: "carrier-pigeon" }, other);
    expect(other).toEqual(['PUBLISHER="carrier-pigeon": expected directory or webhook']);
  });

  it("requires https:// for the webhook except to loopback or with PUBLISH_WEBHOOK_ALLOW_HTTP", () => {
    const urlProblems = (url: string, allowHttp?: string) => {
      const problems: string[] = [];
      loadKeysConfig(
        {
          KEY_ENCRYPTION_KEY: good,
          PUBLISHER: "webhook",
          PUBLISH_WEBHOOK_URL: url,
          PUBLISH_WEBHOOK_SECRET: "0123456789abcdef",
          ...(allowHttp === undefined ? {} : { PUBLISH_WEBHOOK_ALLOW_HTTP: allowHttp }),
        },
        problems,
      );
      return problems;
    };
    for (const ok of [
      "https://receiver.example/kp",
      "http://127.0.0.1:8080/kp",
      "http://localhost/kp",
      "http://[::1]:9/kp",
    ]) {
      expect(urlProblems(ok), ok).toEqual([]);
    }
    expect(urlProblems("http://receiver.example/kp")).toEqual([
      expect.stringMatching(
        /^PUBLISH_WEBHOOK_URL: expected an https:\/\/ URL \(http:\/\/ only to a loopback/,
      ),
    ]);
    // A name that merely starts like a loopback address is not one.
    expect(urlProblems("http://127.0.0.1.evil.example/kp")).toHaveLength(1);
    expect(urlProblems("http://receiver.example/kp", "true")).toEqual([]);
  });

  it("takes several space-separated webhook secrets, for rotation", () => {
    const problems: string[] = [];
    const config = loadKeysConfig(
      {
        KEY_ENCRYPTION_KEY: good,
        PUBLISHER: "webhook",
        PUBLISH_WEBHOOK_URL: "https://receiver.example/kp",
        PUBLISH_WEBHOOK_SECRET: " old-secret-0123456789  whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw ",
      },
      problems,
    );
    expect(problems).toEqual([]);
    expect(config.publisher).toMatchObject({
      secrets: ["old-secret-0123456789", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    });
  });

  it("refuses degenerate keys, and the development key in production", () => {
    for (const byte of [0, 7, 255]) {
      const problems: string[] = [];
      loadKeysConfig({ KEY_ENCRYPTION_KEY: Buffer.alloc(32, byte).toString("base64") }, problems);
      expect(problems).toEqual([
        expect.stringMatching(/^KEY_ENCRYPTION_KEY: refusing a degenerate key/),
      ]);
      const previous: string[] = [];
      loadKeysConfig(
        {
          KEY_ENCRYPTION_KEY: good,
          KEY_ENCRYPTION_KEY_PREVIOUS: Buffer.alloc(32, byte).toString("base64"),
        },
        previous,
      );
      expect(previous).toEqual([
        expect.stringMatching(/^KEY_ENCRYPTION_KEY_PREVIOUS: refusing a degenerate/),
      ]);
    }
    const flag: string[] = [];
    loadKeysConfig({ KP_ROTOR_INSECURE_DEV_KEY: "1", NODE_ENV: "production" }, flag);
    expect(flag).toEqual([
      expect.stringMatching(/^KP_ROTOR_INSECURE_DEV_KEY: refused with NODE_ENV=production/),
    ]);
    const devKey = Buffer.from(INSECURE_DEV_KEY).toString("base64");
    const named: string[] = [];
    loadKeysConfig({ KEY_ENCRYPTION_KEY: devKey, NODE_ENV: "production" }, named);
    expect(named).toEqual([
      "KEY_ENCRYPTION_KEY: the public development key is refused with NODE_ENV=production",
    ]);
    const dev: string[] = [];
    loadKeysConfig({ KP_ROTOR_INSECURE_DEV_KEY: "1", NODE_ENV: "development" }, dev);
    expect(dev).toEqual([]);
  });
});
