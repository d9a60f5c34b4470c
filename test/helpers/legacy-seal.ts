import { createCipheriv, randomBytes } from "node:crypto";
import { keyIdOf } from "../../src/keys/encryption.js";

/** A blob as version 1 sealed it (identity and purpose bound, nothing else), from its spec. */
export function sealV1(
  kek: Uint8Array,
  plaintext: Uint8Array,
  identityId: string,
  purpose: string,
) {
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", kek, iv);
  cipher.setAAD(Buffer.from(`kp-rotor/v1|${purpose}|${identityId}`, "utf8"));
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  const id = Buffer.from(keyIdOf(kek), "ascii");
  return new Uint8Array(
    Buffer.concat([Buffer.from([1, id.length]), id, iv, body, cipher.getAuthTag()]),
  );
}
