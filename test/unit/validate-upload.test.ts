import { describe, expect, it } from "vitest";
import {
  initKeyDigest,
  type UploadCheckCode,
  type UploadExpectation,
  type UploadPolicy,
  validateUpload,
} from "../../src/keys/validate-upload.js";
import { type BuildOptions, buildPackage, deviceKeys, SUITE } from "../helpers/device-packages.js";

const DAY = 86_400_000;
const NOW = Date.UTC(2026, 11, 5, 12, 0, 0);
const identity = new TextEncoder().encode("device-0001");
const keys = await deviceKeys();
const otherKeys = await deviceKeys();
const reusedInitKey = new Uint8Array(32).fill(7);

const policy: UploadPolicy = {
  allowedCiphersuites: [SUITE],
  rotationIntervalMs: 30 * DAY,
  marginMs: 7 * DAY,
  maxLifetimeMs: 90 * DAY,
};
const expectation: UploadExpectation = {
  credentialIdentity: identity,
  signaturePublicKey: keys.publicKey,
  seenInitKeys: new Set([initKeyDigest(reusedInitKey)]),
};

type Row = [name: string, options: Partial<BuildOptions>, code: UploadCheckCode | "ok"];

// One defect per row; every other field is valid. The code is the check that must refuse it.
const table: Row[] = [
  ["a valid package (extension marker)", {}, "ok"],
  ["a valid package (component marker)", { lastResort: "component" }, "ok"],
  ["protocol version 2", { version: 2 }, "KP_PROTOCOL_VERSION"],
  ["leaf_node_source update", { leafNodeSource: "update" }, "KP_LEAF_NODE_SOURCE"],
  ["KeyPackage signed with another key", { badSignature: true }, "KP_SIGNATURE_INVALID"],
  ["leaf node signed with another key", { badLeafSignature: true }, "KP_LEAF_SIGNATURE_INVALID"],
  [
    "init_key = encryption_key",
    { initKeyEqualsEncryptionKey: true },
    "KP_INIT_KEY_EQUALS_ENCRYPTION_KEY",
  ],
  ["init_key used before", { initKey: reusedInitKey }, "KP_INIT_KEY_REUSED"],
  [
    "another identity's credential",
    { identity: new TextEncoder().encode("someone-else") },
    "KP_CREDENTIAL_MISMATCH",
  ],
  ["an x509 credential", { credentialType: "x509" }, "KP_CREDENTIAL_MISMATCH"],
  ["not_before in the future", { notBeforeMs: NOW + 60_000 }, "KP_NOT_YET_VALID"],
  ["not_after passed", { notBeforeMs: NOW - 100 * DAY, notAfterMs: NOW - 1000 }, "KP_EXPIRED"],
  ["not_after exactly now", { notBeforeMs: NOW - DAY, notAfterMs: NOW }, "KP_EXPIRED"],
  ["36 days left (needs 37)", { notAfterMs: NOW + 36 * DAY }, "KP_LIFETIME_TOO_SHORT"],
  [
    "total lifetime 91 days",
    { notBeforeMs: NOW - 10 * DAY, notAfterMs: NOW + 81 * DAY },
    "KP_LIFETIME_TOO_LONG",
  ],
  ["capabilities without the suite", { capabilitiesWithoutSuite: true }, "KP_CAPABILITIES"],
  ["capabilities without basic", { capabilitiesWithoutBasic: true }, "KP_CAPABILITIES"],
  [
    "marker not listed in capabilities",
    { unlistedMarker: true },
    "KP_EXTENSION_NOT_IN_CAPABILITIES",
  ],
  ["no last-resort marker", { lastResort: "none" }, "KP_NOT_LAST_RESORT"],
];

describe("validateUpload", () => {
  it.each(table)("%s -> %s", async (_name, options, code) => {
    const bytes = await buildPackage(keys, { identity, now: NOW, ...options });
    const verdict = await validateUpload(bytes, expectation, policy, NOW);
    expect(verdict.ok ? "ok" : verdict.code).toBe(code);
    if (!verdict.ok) expect(verdict.message.length).toBeGreaterThan(10);
  });

  it("refuses a signature key other than the registered one, and accepts any when none was registered", async () => {
    const bytes = await buildPackage(otherKeys, { identity, now: NOW });
    const refused = await validateUpload(bytes, expectation, policy, NOW);
    expect(refused.ok ? "ok" : refused.code).toBe("KP_SIGNATURE_KEY_MISMATCH");
    const open = await validateUpload(
      bytes,
      { ...expectation, signaturePublicKey: null },
      policy,
      NOW,
    );
    expect(open.ok).toBe(true);
  });

  it("refuses a ciphersuite outside the allowlist", async () => {
    const bytes = await buildPackage(keys, { identity, now: NOW });
    const verdict = await validateUpload(
      bytes,
      expectation,
      { ...policy, allowedCiphersuites: ["MLS_256_DHKEMP384_AES256GCM_SHA384_P384"] },
      NOW,
    );
    expect(verdict.ok ? "ok" : verdict.code).toBe("KP_CIPHERSUITE_NOT_ALLOWED");
  });

  it("refuses bytes that are not a key package, naming what is wrong", async () => {
    const bytes = await buildPackage(keys, { identity, now: NOW });
    for (const bad of [
      new Uint8Array(3),
      bytes.slice(0, bytes.length - 5),
      Uint8Array.from([...bytes, 0]),
    ]) {
      const verdict = await validateUpload(bad, expectation, policy, NOW);
      expect(verdict.ok ? "ok" : verdict.code).toBe("KP_MALFORMED");
    }
  });

  it("returns the ref, lifetime and init-key digest of a valid package", async () => {
    const bytes = await buildPackage(keys, { identity, now: NOW, notAfterMs: NOW + 40 * DAY });
    const verdict = await validateUpload(bytes, expectation, policy, NOW);
    if (!verdict.ok) throw new Error(verdict.message);
    expect(verdict.upload.ref).toMatch(/^[0-9a-f]{64}$/);
    expect(verdict.upload.notAfter.getTime()).toBe(NOW + 40 * DAY);
    expect(verdict.upload.notBefore.getTime()).toBe(NOW - 3_600_000);
    expect(verdict.upload.initKeyDigest).toMatch(/^[0-9a-f]{64}$/);
    // The digest is what the next upload is checked against.
    const again = await validateUpload(
      bytes,
      { ...expectation, seenInitKeys: new Set([verdict.upload.initKeyDigest]) },
      policy,
      NOW,
    );
    expect(again.ok ? "ok" : again.code).toBe("KP_INIT_KEY_REUSED");
  });

  it("the lifetime bounds are inclusive where the policy says so", async () => {
    // Exactly interval + margin left: accepted. Exactly 90 days total: accepted.
    const edge = await buildPackage(keys, {
      identity,
      now: NOW,
      notBeforeMs: NOW - 53 * DAY,
      notAfterMs: NOW + 37 * DAY,
    });
    const verdict = await validateUpload(edge, expectation, policy, NOW);
    expect(verdict.ok ? "ok" : verdict.code).toBe("ok");
  });
});
