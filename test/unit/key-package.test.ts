import { sha256 } from "@noble/hashes/sha2.js";
import {
  type CiphersuiteImpl,
  decodeMlsMessage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
} from "ts-mls";
import { describe, expect, it } from "vitest";
import { KpRotorError } from "../../src/errors.js";
import {
  createKeyPackageFactory,
  DEFAULT_CIPHERSUITE,
  inspectKeyPackage,
  KEY_PACKAGE_LIFETIME_MS,
  NOT_BEFORE_SKEW_MS,
} from "../../src/keys/key-package.js";
import { decodePrivateKeyPackage } from "../helpers/private-key-package.js";

// A whole second, so the encoded lifetime (seconds) maps back to exact millisecond dates.
const NOW = Date.UTC(2025, 0, 15, 12, 0, 0);
const identity = new TextEncoder().encode("identity-0001");
const utf8 = new TextEncoder();

const factory = await createKeyPackageFactory();
const impl: CiphersuiteImpl = await getCiphersuiteImpl(getCiphersuiteFromName(DEFAULT_CIPHERSUITE));

/** Seals to `publicKey` and opens with `privateKey`; resolves to the plaintext or rejects. */
async function sealOpen(publicKey: Uint8Array, privateKey: Uint8Array): Promise<Uint8Array> {
  const info = utf8.encode("kp-rotor test");
  const { ct, enc } = await impl.hpke.seal(
    await impl.hpke.importPublicKey(publicKey),
    utf8.encode("hello"),
    info,
  );
  return impl.hpke.open(await impl.hpke.importPrivateKey(privateKey), enc, ct, info);
}

/** RFC 9420 §2.1.2 variable-size vector length prefix. */
function varint(n: number): number[] {
  if (n < 0x40) return [n];
  if (n < 0x4000) return [0x40 | (n >> 8), n & 0xff];
  return [0x80 | (n >>> 24), (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff];
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}

describe("key packages", () => {
  it("round-trips through inspectKeyPackage", async () => {
    const signatureKeys = await factory.generateSignatureKeyPair();
    const kp = await factory.generate({ identity, signatureKeys, now: NOW });
    const info = await inspectKeyPackage(kp.publicBytes, DEFAULT_CIPHERSUITE);

    expect(info.signatureValid).toBe(true);
    expect(info.lastResort).toBe(true);
    expect(info.notBefore).toEqual(new Date(NOW - NOT_BEFORE_SKEW_MS));
    expect(info.notAfter).toEqual(new Date(NOW + KEY_PACKAGE_LIFETIME_MS));
    expect(info.notBefore.getTime()).toBe(NOW - 3600 * 1000);
    expect(info.notAfter.getTime() - NOW).toBe(84 * 24 * 3600 * 1000);
    expect(kp.notBefore).toEqual(info.notBefore);
    expect(kp.notAfter).toEqual(info.notAfter);
    expect(info.identity).toEqual(identity);
    expect(info.signaturePublicKey).toEqual(signatureKeys.publicKey);
    expect(info.initKey).not.toEqual(info.encryptionKey);
    // MLSMessage header: version mls10 (1), wireformat mls_key_package (5).
    expect([...kp.publicBytes.subarray(0, 4)]).toEqual([0, 1, 0, 5]);
  });

  it("rounds a sub-second now down to whole seconds", async () => {
    const signatureKeys = await factory.generateSignatureKeyPair();
    const kp = await factory.generate({ identity, signatureKeys, now: NOW + 999 });
    const info = await inspectKeyPackage(kp.publicBytes);
    expect(info.notBefore).toEqual(new Date(NOW - NOT_BEFORE_SKEW_MS));
    expect(info.notAfter).toEqual(new Date(NOW + KEY_PACKAGE_LIFETIME_MS));
    expect(kp.notAfter).toEqual(info.notAfter);
  });

  it("carries an empty last_resort extension that the capabilities advertise", async () => {
    const signatureKeys = await factory.generateSignatureKeyPair();
    const kp = await factory.generate({ identity, signatureKeys, now: NOW });
    const decoded = decodeMlsMessage(kp.publicBytes, 0);
    if (decoded?.[0].wireformat !== "mls_key_package") throw new Error("not a key package");
    const { keyPackage } = decoded[0];

    expect(keyPackage.cipherSuite).toBe(DEFAULT_CIPHERSUITE);
    expect(keyPackage.extensions).toEqual([
      { extensionType: 0x000a, extensionData: new Uint8Array(0) },
    ]);
    expect(keyPackage.leafNode.capabilities.extensions).toContain(0x000a);
    expect(keyPackage.leafNode.credential).toEqual({ credentialType: "basic", identity });
  });

  it("computes ref as the RFC 9420 KeyPackageRef", async () => {
    const signatureKeys = await factory.generateSignatureKeyPair();
    const kp = await factory.generate({ identity, signatureKeys, now: NOW });
    // RefHash(label, value) = Hash(struct { opaque label<V>; opaque value<V>; }), where value is
    // the encoded KeyPackage, i.e. the MLSMessage without its 4-byte header.
    const label = utf8.encode("MLS 1.0 KeyPackage Reference");
    const value = kp.publicBytes.subarray(4);
    const input = Uint8Array.from([
      ...varint(label.length),
      ...label,
      ...varint(value.length),
      ...value,
    ]);
    expect(kp.ref).toMatch(/^[0-9a-f]{64}$/);
    expect(kp.ref).toBe(hex(sha256(input)));
  });

  it("stores private keys that belong to the published public keys", async () => {
    const signatureKeys = await factory.generateSignatureKeyPair();
    const kp = await factory.generate({ identity, signatureKeys, now: NOW });
    const info = await inspectKeyPackage(kp.publicBytes);
    const priv = decodePrivateKeyPackage(kp.privateBytes);

    expect(kp.privateBytes[0]).toBe(1); // format version
    expect(priv.cipherSuiteId).toBe(0x0001);
    expect(await sealOpen(info.initKey, priv.initPrivateKey)).toEqual(utf8.encode("hello"));
    expect(await sealOpen(info.encryptionKey, priv.encryptionPrivateKey)).toEqual(
      utf8.encode("hello"),
    );
    // The two keys are distinct: each private key fails to open what was sealed to the other.
    await expect(sealOpen(info.initKey, priv.encryptionPrivateKey)).rejects.toThrow();
    await expect(sealOpen(info.encryptionKey, priv.initPrivateKey)).rejects.toThrow();

    expect(priv.signaturePrivateKey).toEqual(signatureKeys.privateKey);
    const message = utf8.encode("signed");
    const signature = await impl.signature.sign(priv.signaturePrivateKey, message);
    expect(await impl.signature.verify(info.signaturePublicKey, message, signature)).toBe(true);
  });

  it("gives fresh init keys and refs per generation but keeps the signature key", async () => {
    const signatureKeys = await factory.generateSignatureKeyPair();
    const a = await factory.generate({ identity, signatureKeys, now: NOW });
    const b = await factory.generate({ identity, signatureKeys, now: NOW });
    const [ia, ib] = await Promise.all([
      inspectKeyPackage(a.publicBytes),
      inspectKeyPackage(b.publicBytes),
    ]);

    expect(ia.initKey).not.toEqual(ib.initKey);
    expect(ia.encryptionKey).not.toEqual(ib.encryptionKey);
    expect(a.ref).not.toBe(b.ref);
    expect(ia.signaturePublicKey).toEqual(ib.signaturePublicKey);
  });

  it("uses raw 32-byte Ed25519 keys and accepts ts-mls's PKCS#8 form", async () => {
    const generated = await factory.generateSignatureKeyPair();
    expect(generated.privateKey).toHaveLength(32);
    expect(generated.publicKey).toHaveLength(32);

    const { publicKey, signKey } = await impl.signature.keygen();
    const kp = await factory.generate({
      identity,
      signatureKeys: { publicKey, privateKey: signKey },
      now: NOW,
    });
    expect((await inspectKeyPackage(kp.publicBytes)).signatureValid).toBe(true);
    expect(decodePrivateKeyPackage(kp.privateBytes).signaturePrivateKey).toEqual(signKey.slice(-32));
  });

  it("rejects a signature key pair whose halves do not match", async () => {
    const a = await factory.generateSignatureKeyPair();
    const b = await factory.generateSignatureKeyPair();
    await expect(
      factory.generate({
        identity,
        signatureKeys: { publicKey: a.publicKey, privateKey: b.privateKey },
        now: NOW,
      }),
    ).rejects.toThrow(/do not match/);
  });

  it("reports a tampered package as not signature-valid", async () => {
    const signatureKeys = await factory.generateSignatureKeyPair();
    const kp = await factory.generate({ identity, signatureKeys, now: NOW });
    const tampered = kp.publicBytes.slice();
    // The last byte belongs to the KeyPackage signature.
    tampered[tampered.length - 1] = (tampered[tampered.length - 1] ?? 0) ^ 0x01;
    expect((await inspectKeyPackage(tampered)).signatureValid).toBe(false);
  });

  it("rejects bytes that are not exactly one key package", async () => {
    const signatureKeys = await factory.generateSignatureKeyPair();
    const kp = await factory.generate({ identity, signatureKeys, now: NOW });
    await expect(inspectKeyPackage(new Uint8Array([1, 2, 3]))).rejects.toThrow(/MLSMessage/);
    await expect(inspectKeyPackage(Uint8Array.from([...kp.publicBytes, 0]))).rejects.toThrow(
      /trailing/,
    );
    await expect(
      inspectKeyPackage(kp.publicBytes, "MLS_128_DHKEMP256_AES128GCM_SHA256_P256"),
    ).rejects.toThrow(/expected MLS_128_DHKEMP256/);
  });

  it("fails clearly on an unknown ciphersuite name", async () => {
    const attempt = createKeyPackageFactory("MLS_NOT_A_SUITE");
    await expect(attempt).rejects.toThrow(/unsupported MLS ciphersuite "MLS_NOT_A_SUITE"/);
    await expect(attempt).rejects.toBeInstanceOf(KpRotorError);
    await expect(attempt).rejects.toMatchObject({ code: "INVALID_CONFIG" });
  });

  it("fails clearly on a ciphersuite whose optional crypto package is not installed", async () => {
    // P-256 needs @noble/curves, which this service does not install (suites 1 and 3 are ours).
    const suite = "MLS_128_DHKEMP256_AES128GCM_SHA256_P256";
    const attempt = createKeyPackageFactory(suite);
    await expect(attempt).rejects.toThrow(
      /unsupported MLS ciphersuite "MLS_128_DHKEMP256_AES128GCM_SHA256_P256".*@noble\/curves/,
    );
    await expect(attempt).rejects.toMatchObject({ code: "INVALID_CONFIG" });
  });

  it("builds suite 3 (ChaCha20-Poly1305) key packages", async () => {
    const suite = "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519";
    const chacha = await createKeyPackageFactory(suite);
    const kp = await chacha.generate({
      identity,
      signatureKeys: await chacha.generateSignatureKeyPair(),
      now: NOW,
    });
    const info = await inspectKeyPackage(kp.publicBytes, suite);
    expect(info.signatureValid).toBe(true);
    expect(info.lastResort).toBe(true);
  });

  it("rejects a nonsensical now and an empty identity", async () => {
    const signatureKeys = await factory.generateSignatureKeyPair();
    await expect(factory.generate({ identity, signatureKeys, now: Number.NaN })).rejects.toThrow(
      RangeError,
    );
    await expect(
      factory.generate({ identity: new Uint8Array(0), signatureKeys, now: NOW }),
    ).rejects.toThrow(/identity/);
  });
});
