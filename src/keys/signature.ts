import { createPrivateKey, createPublicKey } from "node:crypto";
import { ErrorCodes, KpRotorError } from "../errors.js";

/** DER prefix of a PKCS#8 Ed25519 private key; the 32-byte seed follows it. */
const ED25519_PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");

/**
 * Derives the Ed25519 public key of an imported 32-byte private key (seed), so an identity can be
 * registered with its own signature key and the pair is guaranteed to match.
 */
export function ed25519PublicKey(seed: Uint8Array): Uint8Array {
  if (seed.length !== 32) {
    throw new KpRotorError(
      ErrorCodes.invalidRequest,
      `signaturePrivateKey must be a 32-byte Ed25519 private key (seed), got ${seed.length} bytes`,
    );
  }
  const key = createPrivateKey({
    key: Buffer.concat([ED25519_PKCS8_PREFIX, seed]),
    format: "der",
    type: "pkcs8",
  });
  const jwk = createPublicKey(key).export({ format: "jwk" });
  return new Uint8Array(Buffer.from(jwk.x as string, "base64url"));
}
