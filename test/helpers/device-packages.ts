/**
 * Key packages as a device would build them, with ts-mls's own signing functions, and with one
 * defect at a time for the validation table: every field is set here, then signed, so a defect
 * is a real, well-signed package unless the defect is the signature itself.
 */
import {
  type CiphersuiteImpl,
  type CiphersuiteName,
  defaultCapabilities,
  encodeMlsMessage,
  type Extension,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
} from "ts-mls";
import { type KeyPackageTBS, signKeyPackage } from "ts-mls/keyPackage.js";
import { type LeafNodeTBSKeyPackage, signLeafNodeKeyPackage } from "ts-mls/leafNode.js";
import {
  APP_DATA_DICTIONARY_EXTENSION,
  encodeAppDataDictionary,
  LAST_RESORT_COMPONENT_ID,
  LAST_RESORT_EXTENSION,
} from "../../src/keys/validate-upload.js";

export const SUITE = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519" as const;
const DAY = 86_400_000;

export interface DeviceKeys {
  impl: CiphersuiteImpl;
  signKey: Uint8Array;
  publicKey: Uint8Array;
}

export async function deviceKeys(suite: CiphersuiteName = SUITE): Promise<DeviceKeys> {
  const impl = await getCiphersuiteImpl(getCiphersuiteFromName(suite));
  const { signKey, publicKey } = await impl.signature.keygen();
  return { impl, signKey, publicKey };
}

export interface BuildOptions {
  identity: Uint8Array;
  now: number;
  notBeforeMs?: number;
  notAfterMs?: number;
  lastResort?: "extension" | "component" | "none";
  /** Leave the marker's extension type out of the capabilities. */
  unlistedMarker?: boolean;
  credentialType?: "basic" | "x509";
  capabilitiesWithoutSuite?: boolean;
  capabilitiesWithoutBasic?: boolean;
  initKeyEqualsEncryptionKey?: boolean;
  initKey?: Uint8Array;
  leafNodeSource?: "key_package" | "update";
  /** Sign the KeyPackage (or the leaf) with another key than the one in the leaf. */
  badSignature?: boolean;
  badLeafSignature?: boolean;
  /** Patch the KeyPackage version field after encoding. */
  version?: number;
}

/** A TLS-encoded MLSMessage carrying one KeyPackage built to `options`. */
export async function buildPackage(keys: DeviceKeys, options: BuildOptions): Promise<Uint8Array> {
  const { impl } = keys;
  const now = options.now;
  const notBefore = BigInt(Math.floor((options.notBeforeMs ?? now - 3_600_000) / 1000));
  const notAfter = BigInt(Math.floor((options.notAfterMs ?? now + 84 * DAY) / 1000));
  const capabilities = defaultCapabilities();
  if (options.capabilitiesWithoutSuite) {
    capabilities.ciphersuites = capabilities.ciphersuites.filter((s) => s !== impl.name);
  }
  if (options.capabilitiesWithoutBasic) {
    capabilities.credentials = capabilities.credentials.filter((c) => c !== "basic");
  }
  const marker = options.lastResort ?? "extension";
  const extensions: Extension[] = [];
  if (marker === "extension") {
    extensions.push({ extensionType: LAST_RESORT_EXTENSION, extensionData: new Uint8Array(0) });
  }
  if (marker === "component") {
    extensions.push({
      extensionType: APP_DATA_DICTIONARY_EXTENSION,
      extensionData: encodeAppDataDictionary([
        { id: LAST_RESORT_COMPONENT_ID, data: new Uint8Array(0) },
      ]),
    });
  }
  if (!options.unlistedMarker) {
    for (const e of extensions) capabilities.extensions.push(e.extensionType as number);
  }
  const encryption = await impl.hpke.generateKeyPair();
  const encryptionKey = await impl.hpke.exportPublicKey(encryption.publicKey);
  const init = await impl.hpke.generateKeyPair();
  const initKey = options.initKeyEqualsEncryptionKey
    ? encryptionKey
    : (options.initKey ?? (await impl.hpke.exportPublicKey(init.publicKey)));
  const other = await impl.signature.keygen();
  const leafTbs = {
    leafNodeSource: "key_package",
    hpkePublicKey: encryptionKey,
    signaturePublicKey: keys.publicKey,
    credential:
      options.credentialType === "x509"
        ? { credentialType: "x509", certificates: [options.identity] }
        : { credentialType: "basic", identity: options.identity },
    capabilities,
    lifetime: { notBefore, notAfter },
    extensions: [],
  } as unknown as LeafNodeTBSKeyPackage;
  const signed = await signLeafNodeKeyPackage(
    leafTbs,
    options.badLeafSignature ? other.signKey : keys.signKey,
    impl.signature,
  );
  // An update leaf (no lifetime) where a key_package leaf belongs; its signature is moot.
  const leafNode =
    options.leafNodeSource === "update"
      ? ({ ...signed, leafNodeSource: "update", lifetime: undefined } as unknown as typeof signed)
      : signed;
  const tbs: KeyPackageTBS = {
    version: "mls10",
    cipherSuite: impl.name,
    initKey,
    leafNode,
    extensions,
  };
  const keyPackage = await signKeyPackage(
    tbs,
    options.badSignature ? other.signKey : keys.signKey,
    impl.signature,
  );
  const bytes = encodeMlsMessage({ version: "mls10", wireformat: "mls_key_package", keyPackage });
  if (options.version !== undefined)
    new DataView(bytes.buffer, bytes.byteOffset).setUint16(4, options.version);
  return bytes;
}
