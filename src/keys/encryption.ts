import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { ErrorCodes, KpRotorError } from "../errors.js";

/**
 * Encryption at rest of private key material: AES-256-GCM with a key-encryption key (KEK) from
 * the environment. Every ciphertext names the KEK that sealed it, so the KEK can be rotated: new
 * material is sealed with the current key, and the previous key stays readable. The identity id
 * and the purpose of the material are bound as associated data, so a ciphertext copied to
 * another identity (or from one column to another) does not decrypt.
 *
 * Layout (version 1):
 * ```
 * u8 version = 1 | u8 key id length | key id (ASCII) | 12-byte IV | ciphertext | 16-byte GCM tag
 * ```
 */

const VERSION = 1;
const IV_BYTES = 12;
const TAG_BYTES = 16;

/** What the material is; part of the associated data. */
export type Purpose = "key-package-private" | "signature-private";

export interface Keyring {
  /** Id of the key new material is sealed with. */
  readonly currentKeyId: string;
  seal(plaintext: Uint8Array, identityId: string, purpose: Purpose): Uint8Array;
  open(sealed: Uint8Array, identityId: string, purpose: Purpose): Uint8Array;
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

const aad = (identityId: string, purpose: Purpose) =>
  Buffer.from(`kp-rotor/v1|${purpose}|${identityId}`, "utf8");

export function createKeyring(current: Uint8Array, previous?: Uint8Array): Keyring {
  const keys = new Map<string, Uint8Array>();
  const currentKeyId = keyIdOf(current);
  keys.set(currentKeyId, current);
  if (previous) keys.set(keyIdOf(previous), previous);

  return {
    currentKeyId,
    seal(plaintext, identityId, purpose) {
      const iv = randomBytes(IV_BYTES);
      const cipher = createCipheriv("aes-256-gcm", current, iv);
      cipher.setAAD(aad(identityId, purpose));
      const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
      const id = Buffer.from(currentKeyId, "ascii");
      return new Uint8Array(
        Buffer.concat([Buffer.from([VERSION, id.length]), id, iv, body, cipher.getAuthTag()]),
      );
    },
    open(sealed, identityId, purpose) {
      const bytes = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
      if (bytes.length < 2 || bytes[0] !== VERSION) {
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
      decipher.setAAD(aad(identityId, purpose));
      decipher.setAuthTag(bytes.subarray(bytes.length - TAG_BYTES));
      try {
        const body = bytes.subarray(headerEnd, bytes.length - TAG_BYTES);
        return new Uint8Array(Buffer.concat([decipher.update(body), decipher.final()]));
      } catch {
        throw new DecryptionError(
          `sealed key material of identity ${JSON.stringify(identityId)} failed authentication: it was altered, or belongs to another identity or purpose`,
        );
      }
    },
  };
}
