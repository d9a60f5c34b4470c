import {
  type CiphersuiteImpl,
  decodeMlsMessage,
  encodeMlsMessage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
} from "ts-mls";
import { signKeyPackage } from "ts-mls/keyPackage.js";
import { signLeafNodeKeyPackage } from "ts-mls/leafNode.js";
import { describe, expect, it } from "vitest";
import {
  createKeyPackageFactory,
  DEFAULT_CIPHERSUITE,
  inspectKeyPackage,
} from "../../src/keys/key-package.js";
import { decodePrivateKeyPackage } from "../helpers/private-key-package.js";

/**
 * The factory signs with Node's Ed25519 (one key import per package) and makes the HPKE key pairs
 * with Node's X25519 instead of ts-mls's WebCrypto defaults. These tests hold the result to what
 * ts-mls itself would produce and accept.
 */

const NOW = Date.UTC(2025, 0, 15, 12, 0, 0);
const identity = new TextEncoder().encode("identity-native");

const suites = [
  DEFAULT_CIPHERSUITE,
  "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519",
] as const;

async function tsMls(suite: string): Promise<CiphersuiteImpl> {
  return getCiphersuiteImpl(getCiphersuiteFromName(suite as typeof DEFAULT_CIPHERSUITE));
}

function decode(bytes: Uint8Array) {
  const decoded = decodeMlsMessage(bytes, 0);
  if (decoded?.[0].wireformat !== "mls_key_package") throw new Error("not a key package");
  return decoded[0].keyPackage;
}

describe.each(suites)("native crypto in the factory (%s)", (suite) => {
  it("signs exactly as ts-mls's own signer does (Ed25519 is deterministic)", async () => {
    const factory = await createKeyPackageFactory(suite);
    const impl = await tsMls(suite);
    const keys = await factory.generateSignatureKeyPair();
    const kp = decode(
      (await factory.generate({ identity, signatureKeys: keys, now: NOW })).publicBytes,
    );
    // Re-sign the same content with ts-mls's default (WebCrypto) signer: same bytes.
    const { signature: _leafSignature, ...leafTbs } = kp.leafNode;
    const leafNode = await signLeafNodeKeyPackage(
      leafTbs as Parameters<typeof signLeafNodeKeyPackage>[0],
      keys.privateKey,
      impl.signature,
    );
    expect(leafNode.signature).toEqual(kp.leafNode.signature);
    const { signature: _kpSignature, ...tbs } = kp;
    const resigned = await signKeyPackage({ ...tbs, leafNode }, keys.privateKey, impl.signature);
    expect(resigned.signature).toEqual(kp.signature);
    expect(
      encodeMlsMessage({ version: "mls10", wireformat: "mls_key_package", keyPackage: resigned }),
    ).toEqual(
      encodeMlsMessage({ version: "mls10", wireformat: "mls_key_package", keyPackage: kp }),
    );
  });

  it("stores HPKE private keys that ts-mls imports and that open what is sealed to the package", async () => {
    const factory = await createKeyPackageFactory(suite);
    const impl = await tsMls(suite);
    const keys = await factory.generateSignatureKeyPair();
    const seen = new Set<string>();
    for (let i = 0; i < 5; i++) {
      const generated = await factory.generate({ identity, signatureKeys: keys, now: NOW });
      const info = await inspectKeyPackage(generated.publicBytes, suite);
      expect(info.signatureValid).toBe(true);
      const priv = decodePrivateKeyPackage(generated.privateBytes);
      for (const [publicKey, privateKey] of [
        [info.initKey, priv.initPrivateKey],
        [info.encryptionKey, priv.encryptionPrivateKey],
      ] as const) {
        expect(publicKey).toHaveLength(32);
        expect(privateKey).toHaveLength(32);
        const message = new TextEncoder().encode(`hello ${i}`);
        const label = new TextEncoder().encode("kp-rotor native test");
        const { ct, enc } = await impl.hpke.seal(
          await impl.hpke.importPublicKey(publicKey),
          message,
          label,
        );
        const opened = await impl.hpke.open(
          await impl.hpke.importPrivateKey(privateKey),
          enc,
          ct,
          label,
        );
        expect(opened).toEqual(message);
        seen.add(Buffer.from(publicKey).toString("hex"));
      }
    }
    expect(seen.size).toBe(10); // fresh init and leaf keys every time
  });

  it("refuses signature keys of the wrong size or that do not belong together", async () => {
    const factory = await createKeyPackageFactory(suite);
    const a = await factory.generateSignatureKeyPair();
    const b = await factory.generateSignatureKeyPair();
    for (const signatureKeys of [
      { publicKey: b.publicKey, privateKey: a.privateKey },
      { publicKey: a.publicKey.slice(1), privateKey: a.privateKey },
      { publicKey: a.publicKey, privateKey: a.privateKey.slice(1) },
    ]) {
      await expect(factory.generate({ identity, signatureKeys, now: NOW })).rejects.toThrow(
        /do not match/,
      );
    }
  });
});
