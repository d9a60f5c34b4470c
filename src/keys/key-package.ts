/**
 * MLS (RFC 9420) last-resort KeyPackages, built with ts-mls 1.x.
 *
 * Each identity keeps one signature key pair across rotations; every rotation mints a fresh
 * KeyPackage (new init and leaf encryption keys) signed with it. The public half is the
 * TLS-encoded MLSMessage that gets published, the private half a small versioned blob (layout on
 * {@link GeneratedKeyPackage.privateBytes}).
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  sign,
} from "node:crypto";
import {
  type CiphersuiteImpl,
  type CiphersuiteName,
  ciphersuites,
  decodeMlsMessage,
  defaultCapabilities,
  type Extension,
  encodeMlsMessage,
  generateKeyPackageWithKey,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  type KeyPackage,
  zeroOutUint8Array,
} from "ts-mls";
// @noble/hashes is a runtime dependency of this service (package.json) though no line here names
// it: ts-mls 1.6.4's root module re-exports its noble crypto provider, which imports
// @noble/hashes at load time without declaring it, so without it this import fails at start
// (ERR_MODULE_NOT_FOUND), whatever the ciphersuite.
// Not re-exported from the package root, but public through ts-mls's "./*.js" export map.
import { makeKeyPackageRef, verifyKeyPackage } from "ts-mls/keyPackage.js";
import { verifyLeafNodeSignatureKeyPackage } from "ts-mls/leafNode.js";
import { ErrorCodes, KpRotorError } from "../errors.js";

/** Ciphersuite 0x0001, the RFC 9420 mandatory-to-implement suite; works with ts-mls alone. */
export const DEFAULT_CIPHERSUITE = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519";
/**
 * Validity window of a KeyPackage after its creation (OpenMLS default: 84 days); longer when the
 * rotation interval plus KEY_PACKAGE_MARGIN needs it (src/context.ts), so that a package never
 * expires before its successor is due.
 */
export const KEY_PACKAGE_LIFETIME_MS = 84 * 24 * 3600 * 1000;
/** not_before is backdated by this much so peers whose clocks lag still accept a fresh package. */
export const NOT_BEFORE_SKEW_MS = 3600 * 1000;

/** A signature key pair in the encoding of the ciphersuite's signature scheme (Ed25519: raw 32-byte seed and 32-byte public key). */
export interface SignatureKeyPair {
  publicKey: Uint8Array;
  privateKey: Uint8Array;
}

/** One freshly generated KeyPackage, both halves. */
export interface GeneratedKeyPackage {
  /** TLS-encoded MLSMessage (version mls10, wireformat mls_key_package): what gets published. */
  publicBytes: Uint8Array;
  /**
   * The private half, self-describing so it can be decoded without knowing the ciphersuite:
   *
   * ```
   * offset 0   uint8   format version, currently 1
   * offset 1   uint16  cipher suite id (RFC 9420 registry, e.g. 0x0001), big-endian
   * then three times: uint16 big-endian length, followed by that many bytes:
   *            init private key        (HPKE KEM private key, e.g. 32-byte X25519 scalar)
   *            encryption private key  (HPKE private key of leaf_node.encryption_key)
   *            signature private key   (as in SignatureKeyPair.privateKey)
   * ```
   *
   * Nothing follows the last key. Keys are in the KEM's SerializePrivateKey form, which is what
   * ts-mls's `hpke.importPrivateKey` takes back.
   */
  privateBytes: Uint8Array;
  /** KeyPackageRef (RFC 9420 §5.2: RefHash("MLS 1.0 KeyPackage Reference", KeyPackage)) as lowercase hex. */
  ref: string;
  /** Start of the lifetime as encoded: `now - NOT_BEFORE_SKEW_MS`, rounded down to a whole second. */
  notBefore: Date;
  /** End of the lifetime as encoded: `now + KEY_PACKAGE_LIFETIME_MS`, rounded down to a whole second. */
  notAfter: Date;
}

/** Generates KeyPackages for one ciphersuite; obtain one with {@link createKeyPackageFactory}. */
export interface KeyPackageFactory {
  /** RFC 9420 ciphersuite name, e.g. {@link DEFAULT_CIPHERSUITE}. */
  readonly ciphersuite: string;
  /** A new signature key pair for an identity; keep it and pass it to every {@link KeyPackageFactory.generate}. */
  generateSignatureKeyPair(): Promise<SignatureKeyPair>;
  /**
   * Generates a last-resort KeyPackage for the identity (basic credential holding `identity`),
   * signed with `signatureKeys`, with the explicit lifetime not_before = now - 1 h,
   * not_after = now + 84 d. `now` is in epoch milliseconds. Rejects if the key pair does not
   * produce a verifiable signature (for instance a public key that does not match the private one).
   */
  generate(input: {
    identity: Uint8Array;
    signatureKeys: SignatureKeyPair;
    now: number;
  }): Promise<GeneratedKeyPackage>;
}

/** RFC 9420 §17.3 registry value of last_resort; ts-mls has no name for it, so it is a plain number. */
const LAST_RESORT_EXTENSION_TYPE = 0x000a;
const PRIVATE_FORMAT_VERSION = 1;
// WebCrypto exports Ed25519 private keys as PKCS#8 DER: this fixed 16-byte header, then the seed.
const ED25519_PKCS8_HEADER = Uint8Array.from([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
]);
// Keeps inspectKeyPackage from returning an Invalid Date (whose toISOString throws) for foreign
// packages that say "valid forever" (ts-mls's defaultLifetime ends at 2^63-1 seconds).
const MAX_DATE_MS = 8.64e15;

/**
 * Creates a factory for `ciphersuite`. Rejects with a KpRotorError (INVALID_CONFIG) naming the
 * suite when it is not an RFC 9420 name ts-mls knows, or when ts-mls cannot run it here (suites
 * other than the default need optional packages, e.g. @hpke/chacha20poly1305 or @noble/curves).
 */
export async function createKeyPackageFactory(
  ciphersuite: string = DEFAULT_CIPHERSUITE,
  /** How long a generated package is valid: at least KEY_PACKAGE_LIFETIME_MS. */
  lifetimeMs: number = KEY_PACKAGE_LIFETIME_MS,
): Promise<KeyPackageFactory> {
  const impl = await loadCiphersuite(ciphersuite);
  const suiteId = ciphersuites[impl.name];
  const suite = getCiphersuiteFromName(impl.name);
  const isEd25519 = suite.signature === "Ed25519";
  const normalizeSignatureKey = (key: Uint8Array): Uint8Array =>
    isEd25519 ? ed25519Seed(key) : key;
  // X25519 suites: the init and leaf encryption key pairs come from Node's synchronous X25519
  // keygen, exported in the KEM's serialized form (RFC 9180: the raw 32-byte private and public
  // keys, which is also what ts-mls's own export gives and its importPrivateKey takes back).
  const hpke: CiphersuiteImpl =
    suite.hpke.kem === "DHKEM-X25519-HKDF-SHA256"
      ? {
          ...impl,
          hpke: {
            ...impl.hpke,
            generateKeyPair: async () => {
              const { privateKey } = generateKeyPairSync("x25519");
              const jwk = privateKey.export({ format: "jwk" });
              return {
                privateKey: rawKey(jwk.d) as unknown as HpkeKeyPair["privateKey"],
                publicKey: rawKey(jwk.x) as unknown as HpkeKeyPair["publicKey"],
              };
            },
            exportPrivateKey: async (key) => exportRaw(key),
            exportPublicKey: async (key) => exportRaw(key),
          },
        }
      : impl;
  // The KeyPackageRef is one hash of the encoded package: Node's synchronous hash gives the same
  // digest as ts-mls's WebCrypto one without a trip through the crypto job queue.
  const nodeHash = NODE_HASHES[suite.hash];
  const refHash: CiphersuiteImpl["hash"] =
    nodeHash === undefined
      ? impl.hash
      : {
          ...impl.hash,
          digest: async (data) => new Uint8Array(createHash(nodeHash).update(data).digest()),
        };

  return {
    ciphersuite: impl.name,

    async generateSignatureKeyPair() {
      const { publicKey, signKey } = await impl.signature.keygen();
      return { publicKey, privateKey: normalizeSignatureKey(signKey) };
    },

    async generate({ identity, signatureKeys, now }) {
      // A negative not_before cannot be encoded as uint64; anything this small is a bug anyway.
      if (!Number.isFinite(now) || now < NOT_BEFORE_SKEW_MS) {
        throw new RangeError(`now must be epoch milliseconds, got ${now}`);
      }
      if (identity.length === 0) throw new RangeError("identity must not be empty");

      // RFC 9420 Lifetime is uint64 seconds since the epoch; ts-mls takes it as bigint seconds.
      const notBeforeS = Math.floor((now - NOT_BEFORE_SKEW_MS) / 1000);
      const notAfterS = Math.floor((now + Math.max(lifetimeMs, KEY_PACKAGE_LIFETIME_MS)) / 1000);

      const capabilities = defaultCapabilities();
      // RFC 9420 §7.2 and §10: extensions used in the KeyPackage must be listed in the leaf's
      // capabilities, except the default ones (1-5); OpenMLS rejects the package otherwise.
      // defaultCapabilities() lists none of its own (only random GREASE values).
      capabilities.extensions.push(LAST_RESORT_EXTENSION_TYPE);
      const lastResort: Extension = {
        extensionType: LAST_RESORT_EXTENSION_TYPE,
        extensionData: new Uint8Array(0),
      };
      const signKey = normalizeSignatureKey(signatureKeys.privateKey);
      // Ed25519: import the signature key once (ts-mls's default signer imports it from PKCS#8
      // for each of its two signatures, which is OpenSSL's slow decoder path) and sign with
      // Node's synchronous Ed25519; signatures are deterministic, so the bytes are the same.
      const ed25519 = isEd25519 ? importEd25519(signKey, signatureKeys.publicKey) : undefined;
      const signer: CiphersuiteImpl =
        ed25519 === undefined
          ? hpke
          : {
              ...hpke,
              signature: {
                ...hpke.signature,
                sign: async (_key, message) => new Uint8Array(sign(null, message, ed25519)),
              },
            };

      const { publicPackage, privatePackage } = await generateKeyPackageWithKey(
        // Copy: ts-mls keeps references, and the caller may reuse its buffer.
        { credentialType: "basic", identity: identity.slice() },
        capabilities,
        { notBefore: BigInt(notBeforeS), notAfter: BigInt(notAfterS) },
        [lastResort],
        { signKey, publicKey: signatureKeys.publicKey },
        signer,
      );
      // ts-mls signs with the private key and embeds the public key without checking that they
      // belong together; a mismatched pair would publish a package nobody can verify. For
      // Ed25519, importEd25519 already checked that the public key is the private key's own
      // (which is what makes the signatures verify); other schemes verify the package.
      if (ed25519 === undefined && !(await verifyKeyPackage(publicPackage, impl.signature))) {
        throw new Error(MISMATCHED_KEYS);
      }

      const privateBytes = encodePrivate(suiteId, [
        privatePackage.initPrivateKey,
        privatePackage.hpkePrivateKey,
        signKey,
      ]);
      // The exported HPKE keys are ours alone; the signature key belongs to the caller.
      zeroOutUint8Array(privatePackage.initPrivateKey);
      zeroOutUint8Array(privatePackage.hpkePrivateKey);

      return {
        publicBytes: encodeMlsMessage({
          version: "mls10",
          wireformat: "mls_key_package",
          keyPackage: publicPackage,
        }),
        privateBytes,
        ref: toHex(await makeKeyPackageRef(publicPackage, refHash)),
        notBefore: new Date(notBeforeS * 1000),
        notAfter: new Date(notAfterS * 1000),
      };
    },
  };
}

/**
 * Decodes a published KeyPackage (the MLSMessage from {@link GeneratedKeyPackage.publicBytes})
 * for status output and tests. The package names its own ciphersuite; `ciphersuite`, when given,
 * is what the caller expects and a different one is an error. Throws on bytes that are not
 * exactly one mls_key_package MLSMessage or on a non-basic credential. `signatureValid` covers
 * both the KeyPackage and the leaf node signature; lifetime and extensions are reported, not judged.
 */
export async function inspectKeyPackage(
  publicBytes: Uint8Array,
  ciphersuite?: string,
): Promise<{
  notBefore: Date;
  notAfter: Date;
  lastResort: boolean;
  signatureValid: boolean;
  identity: Uint8Array;
  initKey: Uint8Array;
  encryptionKey: Uint8Array;
  signaturePublicKey: Uint8Array;
}> {
  const keyPackage = decodeKeyPackageMessage(publicBytes);
  if (ciphersuite !== undefined && keyPackage.cipherSuite !== ciphersuite) {
    throw new Error(`key package uses ${keyPackage.cipherSuite}, expected ${ciphersuite}`);
  }
  const { leafNode } = keyPackage;
  if (leafNode.credential.credentialType !== "basic") {
    throw new Error(
      `key package has a ${leafNode.credential.credentialType} credential, expected basic`,
    );
  }
  const impl = await loadCiphersuite(keyPackage.cipherSuite);
  return {
    notBefore: secondsToDate(leafNode.lifetime.notBefore),
    notAfter: secondsToDate(leafNode.lifetime.notAfter),
    lastResort: keyPackage.extensions.some((e) => e.extensionType === LAST_RESORT_EXTENSION_TYPE),
    signatureValid:
      (await verifiesSafely(() => verifyKeyPackage(keyPackage, impl.signature))) &&
      (await verifiesSafely(() => verifyLeafNodeSignatureKeyPackage(leafNode, impl.signature))),
    identity: leafNode.credential.identity,
    initKey: keyPackage.initKey,
    encryptionKey: leafNode.hpkePublicKey,
    signaturePublicKey: leafNode.signaturePublicKey,
  };
}

/** The KeyPackageRef (hex) of a published MLSMessage, in its own ciphersuite. */
export async function keyPackageRef(publicBytes: Uint8Array): Promise<string> {
  const keyPackage = decodeKeyPackageMessage(publicBytes);
  const impl = await loadCiphersuite(keyPackage.cipherSuite);
  return toHex(await makeKeyPackageRef(keyPackage, impl.hash));
}

async function loadCiphersuite(name: string): Promise<CiphersuiteImpl> {
  // getCiphersuiteFromName returns undefined for unknown names, which would surface later as a
  // TypeError deep inside ts-mls; check up front.
  if (!Object.hasOwn(ciphersuites, name)) {
    throw new KpRotorError(
      ErrorCodes.invalidConfig,
      `unsupported MLS ciphersuite ${JSON.stringify(name)}: not an RFC 9420 ciphersuite name (e.g. ${DEFAULT_CIPHERSUITE})`,
    );
  }
  try {
    return await getCiphersuiteImpl(getCiphersuiteFromName(name as CiphersuiteName));
  } catch (cause) {
    // ts-mls loads optional crypto packages lazily and throws DependencyError when one is missing.
    const reason = cause instanceof Error ? cause.message : String(cause);
    throw new KpRotorError(
      ErrorCodes.invalidConfig,
      `unsupported MLS ciphersuite ${JSON.stringify(name)}: ${reason}`,
      { cause },
    );
  }
}

function decodeKeyPackageMessage(bytes: Uint8Array): KeyPackage {
  let decoded: ReturnType<typeof decodeMlsMessage>;
  try {
    decoded = decodeMlsMessage(bytes, 0);
  } catch (cause) {
    throw new Error("key package bytes are not a valid MLSMessage", { cause });
  }
  if (decoded === undefined) throw new Error("key package bytes are not a valid MLSMessage");
  const [message, consumed] = decoded;
  if (message.wireformat !== "mls_key_package") {
    throw new Error(`MLSMessage has wireformat ${message.wireformat}, expected mls_key_package`);
  }
  if (consumed !== bytes.length) {
    throw new Error(`key package has ${bytes.length - consumed} trailing bytes`);
  }
  return message.keyPackage;
}

// Malformed keys make WebCrypto throw rather than return false; for inspection both mean "invalid".
async function verifiesSafely(verify: () => Promise<boolean>): Promise<boolean> {
  try {
    return await verify();
  } catch {
    return false;
  }
}

type HpkeKeyPair = Awaited<ReturnType<CiphersuiteImpl["hpke"]["generateKeyPair"]>>;

/** An X25519 key from the fast path above, already in its serialized form. */
class RawKey {
  constructor(readonly bytes: Uint8Array) {}
}
const rawKey = (base64url: string | undefined): RawKey => {
  if (base64url === undefined) throw new Error("X25519 key export without key material");
  return new RawKey(new Uint8Array(Buffer.from(base64url, "base64url")));
};
// Only keys from the fast path's generateKeyPair reach its exports: generateKeyPackageWithKey
// exports the pairs it has just generated, nothing else.
const exportRaw = (key: unknown): Uint8Array => {
  if (!(key instanceof RawKey)) throw new TypeError("not a key from the X25519 fast path");
  return key.bytes.slice();
};

const MISMATCHED_KEYS =
  "the signature key pair does not verify: public and private key do not match";

const NODE_HASHES: Partial<Record<string, string>> = {
  "SHA-256": "sha256",
  "SHA-384": "sha384",
  "SHA-512": "sha512",
};

/**
 * Imports an Ed25519 seed for Node's signer, from JWK (a raw import: about ten times cheaper than
 * PKCS#8 through OpenSSL 3's decoders), and checks that `publicKey` is the seed's own public key.
 * Node derives the public key from `d` alone, so comparing it with `publicKey` is the check.
 */
function importEd25519(seed: Uint8Array, publicKey: Uint8Array): KeyObject {
  if (seed.length !== 32 || publicKey.length !== 32) throw new Error(MISMATCHED_KEYS);
  const x = Buffer.from(publicKey.buffer, publicKey.byteOffset, publicKey.byteLength).toString(
    "base64url",
  );
  const key = createPrivateKey({
    key: {
      kty: "OKP",
      crv: "Ed25519",
      d: Buffer.from(seed.buffer, seed.byteOffset, seed.byteLength).toString("base64url"),
      x,
    },
    format: "jwk",
  });
  if (createPublicKey(key).export({ format: "jwk" }).x !== x) throw new Error(MISMATCHED_KEYS);
  return key;
}

// Stores the RFC 8032 seed, the form other MLS libraries use and that both of ts-mls's Ed25519
// backends (WebCrypto and @noble/curves) accept; PKCS#8 is only understood by the WebCrypto one.
function ed25519Seed(key: Uint8Array): Uint8Array {
  const header = ED25519_PKCS8_HEADER;
  const isPkcs8 = key.length === header.length + 32 && header.every((byte, i) => key[i] === byte);
  return isPkcs8 ? key.slice(header.length) : key;
}

function encodePrivate(suiteId: number, keys: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(3 + keys.reduce((n, key) => n + 2 + key.length, 0));
  const view = new DataView(out.buffer);
  view.setUint8(0, PRIVATE_FORMAT_VERSION);
  view.setUint16(1, suiteId);
  let offset = 3;
  for (const key of keys) {
    if (key.length > 0xffff) throw new RangeError("private key too long for the private encoding");
    view.setUint16(offset, key.length);
    out.set(key, offset + 2);
    offset += 2 + key.length;
  }
  return out;
}

function secondsToDate(seconds: bigint): Date {
  return new Date(Math.min(Number(seconds) * 1000, MAX_DATE_MS));
}

function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}
