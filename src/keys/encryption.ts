import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { ErrorCodes, KpRotorError } from "../errors.js";

/**
 * Encryption at rest of private key material: AES-256-GCM with a key-encryption key (KEK) from
 * the environment. Every ciphertext names the KEK that sealed it, so the KEK can be rotated: new
 * material is sealed with the current key, the previous key stays readable, and `kp-rotor
 * rewrap` re-seals the rest so the previous key can be retired. The identity id, the purpose of
 * the material and, for a key package, its generation and KeyPackageRef are bound as associated
 * data, so a ciphertext copied to another identity, column or key-package row does not decrypt.
 *
 * Layout (versions 1 and 2):
 * ```
 * u8 version | u8 key id length | key id (ASCII) | 12-byte IV | ciphertext | 16-byte GCM tag
 * ```
 * Version 1 (older blobs) binds `kp-rotor/v1|<purpose>|<identity>`; version 2, written now,
 * binds `kp-rotor/v2|<purpose>|<identity>|<generation>|<ref>` (both empty for a signature key,
 * which belongs to the identity, not to one key package). Both are read; rewrap upgrades v1.
 */

const VERSION = 2;
const LEGACY_VERSION = 1;
const IV_BYTES = 12;
const TAG_BYTES = 16;

/** What the material is; part of the associated data. */
export type Purpose = "key-package-private" | "signature-private";

/** The key package a blob belongs to (key-package-private material only). */
export interface Binding {
  generation: number;
  ref: string;
}

export interface Keyring {
  /** Id of the key new material is sealed with. */
  readonly currentKeyId: string;
  /** Ids of every key this keyring can open with (current and previous). */
  readonly keyIds: readonly string[];
  seal(plaintext: Uint8Array, identityId: string, purpose: Purpose, binding?: Binding): Uint8Array;
  open(sealed: Uint8Array, identityId: string, purpose: Purpose, binding?: Binding): Uint8Array;
}

/** The version and key id a sealed blob names, or undefined for something else. */
export function sealedHeader(sealed: Uint8Array): { version: number; keyId: string } | undefined {
  const version = sealed[0];
  const idLength = sealed[1];
  if (version === undefined || idLength === undefined || sealed.length < 2 + idLength)
    return undefined;
  if (version !== VERSION && version !== LEGACY_VERSION) return undefined;
  return { version, keyId: Buffer.from(sealed.subarray(2, 2 + idLength)).toString("ascii") };
}

export class DecryptionError extends KpRotorError {
  constructor(message: string) {
    super(ErrorCodes.keyMaterial, message);
    this.name = "DecryptionError";
  }
}

/** A key's id: the first 8 bytes of its SHA-256, in hex. Names the key, reveals nothing useful. */
export const keyIdOf = (key: Uint8Array): string =>
  createHash("sha256").update(key).digest("hex").slice(0, 16);

/** Decodes a base64 key-encryption key; says what is wrong (never echoing the value). */
export function parseKey(name: string, base64: string): Uint8Array {
  const key = Buffer.from(base64, "base64");
  if (key.length !== 32 || key.toString("base64") !== base64.trim()) {
    throw new KpRotorError(
      ErrorCodes.invalidConfig,
      `${name}: expected 32 bytes in base64 (44 characters, e.g. from "openssl rand -base64 32"), got ${key.length} bytes`,
    );
  }
  return new Uint8Array(key);
}

/** The development key used only with KP_ROTOR_INSECURE_DEV_KEY: derived from a public string. */
export const INSECURE_DEV_KEY = new Uint8Array(
  createHash("sha256")
    .update("kp-rotor insecure development key; never use in production")
    .digest(),
);

/** A key nobody should seal with: one byte repeated (all zeros included: an unset buffer). */
export const isDegenerateKey = (key: Uint8Array): boolean => key.every((byte) => byte === key[0]);

const aad = (version: number, identityId: string, purpose: Purpose, binding?: Binding) =>
  Buffer.from(
    version === LEGACY_VERSION
      ? `kp-rotor/v1|${purpose}|${identityId}`
      : `kp-rotor/v2|${purpose}|${identityId}|${binding?.generation ?? ""}|${binding?.ref ?? ""}`,
    "utf8",
  );

export function createKeyring(current: Uint8Array, previous?: Uint8Array): Keyring {
  const keys = new Map<string, Uint8Array>();
  const currentKeyId = keyIdOf(current);
  keys.set(currentKeyId, current);
  if (previous) keys.set(keyIdOf(previous), previous);

  return {
    currentKeyId,
    keyIds: [...keys.keys()],
    seal(plaintext, identityId, purpose, binding) {
      const iv = randomBytes(IV_BYTES);
      const cipher = createCipheriv("aes-256-gcm", current, iv);
      cipher.setAAD(aad(VERSION, identityId, purpose, binding));
      const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
      const id = Buffer.from(currentKeyId, "ascii");
      return new Uint8Array(
        Buffer.concat([Buffer.from([VERSION, id.length]), id, iv, body, cipher.getAuthTag()]),
      );
    },
    open(sealed, identityId, purpose, binding) {
      const bytes = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
      const version = bytes[0];
      if (bytes.length < 2 || (version !== VERSION && version !== LEGACY_VERSION)) {
        throw new DecryptionError("sealed key material has an unknown format version");
      }
      const idLength = bytes[1] as number;
      const headerEnd = 2 + idLength + IV_BYTES;
      if (bytes.length < headerEnd + TAG_BYTES) {
        throw new DecryptionError("sealed key material is truncated");
      }
      const keyId = bytes.subarray(2, 2 + idLength).toString("ascii");
      const key = keys.get(keyId);
      if (key === undefined) {
        throw new DecryptionError(
          `sealed key material names key ${keyId}, which is neither KEY_ENCRYPTION_KEY nor KEY_ENCRYPTION_KEY_PREVIOUS`,
        );
      }
      const decipher = createDecipheriv(
        "aes-256-gcm",
        key,
        bytes.subarray(2 + idLength, headerEnd),
      );
      decipher.setAAD(aad(version, identityId, purpose, binding));
      decipher.setAuthTag(bytes.subarray(bytes.length - TAG_BYTES));
      try {
        const body = bytes.subarray(headerEnd, bytes.length - TAG_BYTES);
        return new Uint8Array(Buffer.concat([decipher.update(body), decipher.final()]));
      } catch {
        throw new DecryptionError(
          `sealed key material of identity ${JSON.stringify(identityId)} failed authentication: it was altered, or belongs to another identity, purpose or key package`,
        );
      }
    },
  };
}
