/**
 * Validation of a key package a device uploads (custody "device"): RFC 9420 §10.1 plus this
 * service's policy. Pure: no I/O, the time is a parameter, and everything known about the
 * identity (its credential, its registered signature key, the init keys it used before) is
 * passed in. Each refusal names the check that failed with a code the API answers as 422.
 *
 * The checks run in a fixed order (the order of UPLOAD_CHECKS), so a package with several defects
 * is refused for the first; the table test builds one package per defect.
 */
import { createHash } from "node:crypto";
import {
  type CiphersuiteImpl,
  type CiphersuiteName,
  ciphersuites,
  decodeMlsMessage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  type KeyPackage,
} from "ts-mls";
import { decodeVarLenData } from "ts-mls/codec/variableLength.js";
import { makeKeyPackageRef, verifyKeyPackage } from "ts-mls/keyPackage.js";
import { decodeLeafNode, verifyLeafNodeSignatureKeyPackage } from "ts-mls/leafNode.js";
import { UPLOAD_CHECKS, type UploadCheckCode } from "../contract/api.js";

// The codes of the checks, in the order they run, are part of the API's contract.
export { UPLOAD_CHECKS, type UploadCheckCode };

/** RFC 9420 §17.3: last_resort (draft-ietf-mls-extensions, the older encoding). */
export const LAST_RESORT_EXTENSION = 0x000a;
/** draft-ietf-mls-extensions: app_data_dictionary extension, the carrier of components. */
export const APP_DATA_DICTIONARY_EXTENSION = 0x0006;
/** draft-ietf-mls-extensions: the last_resort_key_package component id. */
export const LAST_RESORT_COMPONENT_ID = 0x0004;
/** RFC 9420 §7.2: the default extension types need not be listed in capabilities. */
const DEFAULT_EXTENSION_TYPES = new Set([1, 2, 3, 4, 5]);
const MLS10 = 1;
const WIRE_FORMAT_KEY_PACKAGE = 5;

/** The service's policy for uploads (config: MLS_ALLOWED_CIPHERSUITES, KEY_PACKAGE_MARGIN...). */
export interface UploadPolicy {
  allowedCiphersuites: readonly string[];
  /** not_after - now must be at least rotationIntervalMs + marginMs. */
  rotationIntervalMs: number;
  marginMs: number;
  /** not_after - not_before must be at most this (MAX_KEY_PACKAGE_LIFETIME). */
  maxLifetimeMs: number;
}

/** What the service knows about the identity the package is uploaded for. */
export interface UploadExpectation {
  /** The basic credential's identity bytes the identity was registered with. */
  credentialIdentity: Uint8Array;
  /** The registered signature public key, when one was registered. */
  signaturePublicKey: Uint8Array | null;
  /** initKeyDigest of every init key this identity used before. */
  seenInitKeys: ReadonlySet<string>;
}

/** A package that passed every check. */
export interface ValidatedUpload {
  ref: string;
  ciphersuite: string;
  keyPackage: Uint8Array;
  notBefore: Date;
  notAfter: Date;
  initKeyDigest: string;
  signaturePublicKey: Uint8Array;
}

export type UploadVerdict =
  | { ok: true; upload: ValidatedUpload }
  | { ok: false; code: UploadCheckCode; message: string };

/** SHA-256 of an init key (hex): how init keys are remembered, never the key itself. */
export function initKeyDigest(initKey: Uint8Array): string {
  return createHash("sha256").update(initKey).digest("hex");
}

const refuse = (code: UploadCheckCode, message: string): UploadVerdict => ({
  ok: false,
  code,
  message,
});

/**
 * Validates `bytes` (a TLS-encoded MLSMessage carrying one KeyPackage) at time `now` (epoch ms).
 * Never throws for bad input: every defect is a verdict with its code.
 */
export async function validateUpload(
  bytes: Uint8Array,
  expectation: UploadExpectation,
  policy: UploadPolicy,
  now: number,
): Promise<UploadVerdict> {
  // The version fields are read raw: ts-mls cannot decode a version it does not know, and a
  // refusal should say which check failed, not that decoding failed.
  if (bytes.length < 8)
    return refuse(UPLOAD_CHECKS.malformed, "body is too short for an MLSMessage");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const messageVersion = view.getUint16(0);
  const wireFormat = view.getUint16(2);
  const packageVersion = view.getUint16(4);
  const suiteId = view.getUint16(6);
  if (wireFormat !== WIRE_FORMAT_KEY_PACKAGE) {
    return refuse(
      UPLOAD_CHECKS.malformed,
      `MLSMessage wire format ${wireFormat} is not mls_key_package (5)`,
    );
  }
  if (messageVersion !== MLS10 || packageVersion !== MLS10) {
    return refuse(
      UPLOAD_CHECKS.protocolVersion,
      `protocol version ${packageVersion} (message ${messageVersion}); only mls10 (1) is accepted`,
    );
  }
  const suite = suiteName(suiteId);
  if (suite === undefined || !policy.allowedCiphersuites.includes(suite)) {
    return refuse(
      UPLOAD_CHECKS.ciphersuite,
      `ciphersuite ${suite ?? `0x${suiteId.toString(16).padStart(4, "0")}`} is not allowed (allowed: ${policy.allowedCiphersuites.join(", ")})`,
    );
  }
  const source = leafNodeSourceOf(bytes);
  if (source !== undefined && source !== "key_package") {
    return refuse(
      UPLOAD_CHECKS.leafNodeSource,
      `leaf_node_source is ${source}, expected key_package`,
    );
  }
  const keyPackage = decodeKeyPackage(bytes);
  if (typeof keyPackage === "string") return refuse(UPLOAD_CHECKS.malformed, keyPackage);
  const { leafNode } = keyPackage;
  if (leafNode.leafNodeSource !== "key_package") {
    return refuse(
      UPLOAD_CHECKS.leafNodeSource,
      `leaf_node_source is ${leafNode.leafNodeSource}, expected key_package`,
    );
  }

  const impl = await loadSuite(suite as CiphersuiteName);
  if (!(await safely(() => verifyKeyPackage(keyPackage, impl.signature)))) {
    return refuse(UPLOAD_CHECKS.signature, "the KeyPackage signature does not verify");
  }
  if (!(await safely(() => verifyLeafNodeSignatureKeyPackage(leafNode, impl.signature)))) {
    return refuse(UPLOAD_CHECKS.leafSignature, "the leaf node signature does not verify");
  }
  if (equalBytes(keyPackage.initKey, leafNode.hpkePublicKey)) {
    return refuse(
      UPLOAD_CHECKS.initKeyEqualsEncryptionKey,
      "init_key equals the leaf node's encryption_key (RFC 9420 §10.1)",
    );
  }
  const digest = initKeyDigest(keyPackage.initKey);
  if (expectation.seenInitKeys.has(digest)) {
    return refuse(
      UPLOAD_CHECKS.initKeyReused,
      "init_key was used by an earlier key package of this identity",
    );
  }
  const credential = leafNode.credential;
  if (
    credential.credentialType !== "basic" ||
    !equalBytes(credential.identity, expectation.credentialIdentity)
  ) {
    return refuse(
      UPLOAD_CHECKS.credential,
      credential.credentialType !== "basic"
        ? `credential type ${credential.credentialType}; a basic credential is expected`
        : "the credential's identity is not the one registered for this identity",
    );
  }
  if (
    expectation.signaturePublicKey !== null &&
    !equalBytes(leafNode.signaturePublicKey, expectation.signaturePublicKey)
  ) {
    return refuse(
      UPLOAD_CHECKS.signatureKey,
      "the signature key is not the one registered for this identity",
    );
  }

  const notBefore = seconds(leafNode.lifetime.notBefore);
  const notAfter = seconds(leafNode.lifetime.notAfter);
  if (notBefore > now) {
    return refuse(
      UPLOAD_CHECKS.notYetValid,
      `not_before ${iso(notBefore)} is after now (${iso(now)})`,
    );
  }
  if (now >= notAfter)
    return refuse(UPLOAD_CHECKS.expired, `not_after ${iso(notAfter)} has passed`);
  const needed = policy.rotationIntervalMs + policy.marginMs;
  if (notAfter - now < needed) {
    return refuse(
      UPLOAD_CHECKS.lifetimeTooShort,
      `not_after ${iso(notAfter)} leaves ${days(notAfter - now)} d; at least ${days(needed)} d (rotation interval + margin) are needed`,
    );
  }
  if (notAfter - notBefore > policy.maxLifetimeMs) {
    return refuse(
      UPLOAD_CHECKS.lifetimeTooLong,
      `total lifetime ${days(notAfter - notBefore)} d exceeds the maximum of ${days(policy.maxLifetimeMs)} d`,
    );
  }

  const caps = leafNode.capabilities;
  if (
    !caps.ciphersuites.includes(suite as CiphersuiteName) ||
    !caps.credentials.includes("basic")
  ) {
    return refuse(
      UPLOAD_CHECKS.capabilities,
      `capabilities must list the package's ciphersuite (${suite}) and credential type (basic)`,
    );
  }
  const unlisted = [...keyPackage.extensions, ...leafNode.extensions]
    .map((e) => e.extensionType)
    // ts-mls names the default types (1 to 5) and gives the others as numbers.
    .filter((t): t is number => typeof t === "number")
    .filter((t) => !DEFAULT_EXTENSION_TYPES.has(t) && !caps.extensions.includes(t));
  if (unlisted.length > 0) {
    return refuse(
      UPLOAD_CHECKS.extensionNotInCapabilities,
      `extension type(s) ${unlisted.map(hex16).join(", ")} used but not listed in the leaf's capabilities`,
    );
  }
  if (!isLastResort(keyPackage)) {
    return refuse(
      UPLOAD_CHECKS.lastResort,
      "no last-resort marker (extension 0x000a or the last_resort_key_package component)",
    );
  }

  return {
    ok: true,
    upload: {
      ref: Buffer.from(await makeKeyPackageRef(keyPackage, impl.hash)).toString("hex"),
      ciphersuite: suite,
      keyPackage: bytes.slice(),
      notBefore: new Date(notBefore),
      notAfter: new Date(notAfter),
      initKeyDigest: digest,
      signaturePublicKey: leafNode.signaturePublicKey,
    },
  };
}

/** Both encodings of the last-resort marker: extension 0x000a, or the draft's component. */
export function isLastResort(keyPackage: KeyPackage): boolean {
  for (const ext of keyPackage.extensions) {
    if (ext.extensionType === LAST_RESORT_EXTENSION) return true;
    if (ext.extensionType === APP_DATA_DICTIONARY_EXTENSION) {
      const ids = componentIds(ext.extensionData);
      if (ids?.includes(LAST_RESORT_COMPONENT_ID)) return true;
    }
  }
  return false;
}

/**
 * The component ids of an app_data_dictionary (struct { ComponentData entries<V> } with
 * ComponentData { uint32 component_id; opaque data<V> }); undefined when it does not parse.
 */
export function componentIds(data: Uint8Array): number[] | undefined {
  try {
    const outer = decodeVarLenData(data, 0);
    if (outer === undefined || outer[1] !== data.length) return undefined;
    const entries = outer[0];
    const ids: number[] = [];
    let offset = 0;
    while (offset < entries.length) {
      if (offset + 4 > entries.length) return undefined;
      const id = new DataView(entries.buffer, entries.byteOffset + offset, 4).getUint32(0);
      const value = decodeVarLenData(entries, offset + 4);
      if (value === undefined) return undefined;
      ids.push(id);
      offset += 4 + value[1];
    }
    return ids;
  } catch {
    return undefined;
  }
}

/** Encodes an app_data_dictionary holding the given components (for devices and tests). */
export function encodeAppDataDictionary(
  components: { id: number; data: Uint8Array }[],
): Uint8Array {
  const entries = Buffer.concat(
    components.map((c) => {
      const id = Buffer.alloc(4);
      id.writeUInt32BE(c.id);
      return Buffer.concat([id, varLen(c.data)]);
    }),
  );
  return new Uint8Array(varLen(entries));
}

function varLen(data: Uint8Array): Buffer {
  const n = data.length;
  let prefix: Buffer;
  if (n < 64) prefix = Buffer.from([n]);
  else if (n < 16384) prefix = Buffer.from([0x40 | (n >> 8), n & 0xff]);
  else {
    prefix = Buffer.alloc(4);
    prefix.writeUInt32BE((0x80 << 24) | n);
  }
  return Buffer.concat([prefix, data]);
}

function suiteName(id: number): string | undefined {
  return Object.entries(ciphersuites).find(([, value]) => value === id)?.[0];
}

/** The leaf's source, read with ts-mls's generic leaf decoder (the KeyPackage decoder refuses others). */
function leafNodeSourceOf(bytes: Uint8Array): string | undefined {
  try {
    const initKey = decodeVarLenData(bytes, 8);
    if (initKey === undefined) return undefined;
    return decodeLeafNode(bytes, 8 + initKey[1])?.[0].leafNodeSource;
  } catch {
    return undefined;
  }
}

function decodeKeyPackage(bytes: Uint8Array): KeyPackage | string {
  let decoded: ReturnType<typeof decodeMlsMessage>;
  try {
    decoded = decodeMlsMessage(bytes, 0);
  } catch {
    return "body is not a valid MLSMessage";
  }
  if (decoded === undefined) return "body is not a valid MLSMessage";
  const [message, consumed] = decoded;
  if (message.wireformat !== "mls_key_package") return "MLSMessage is not a key package";
  if (consumed !== bytes.length) return `key package has ${bytes.length - consumed} trailing bytes`;
  return message.keyPackage;
}

const suites = new Map<string, Promise<CiphersuiteImpl>>();
function loadSuite(name: CiphersuiteName): Promise<CiphersuiteImpl> {
  let impl = suites.get(name);
  if (impl === undefined) {
    impl = getCiphersuiteImpl(getCiphersuiteFromName(name));
    suites.set(name, impl);
  }
  return impl;
}

async function safely(verify: () => Promise<boolean>): Promise<boolean> {
  try {
    return await verify();
  } catch {
    return false;
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

const seconds = (s: bigint) => Math.min(Number(s) * 1000, 8.64e15);
const iso = (ms: number) => new Date(ms).toISOString();
const days = (ms: number) => (ms / 86_400_000).toFixed(2);
const hex16 = (n: number) => `0x${n.toString(16).padStart(4, "0")}`;
