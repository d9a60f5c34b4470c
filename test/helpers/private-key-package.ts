/**
 * The private half of a generated key package (GeneratedKeyPackage.privateBytes in
 * src/keys/key-package.ts), decoded. The service seals these bytes and never reads them back;
 * tests decode them to check that they open what was sealed to the package.
 */
/** The private half of a key package, decoded from {@link GeneratedKeyPackage.privateBytes}. */
export interface PrivateKeyPackage {
  cipherSuiteId: number;
  initPrivateKey: Uint8Array;
  encryptionPrivateKey: Uint8Array;
  signaturePrivateKey: Uint8Array;
}

/** Decodes {@link GeneratedKeyPackage.privateBytes}; throws on any other layout. */
export function decodePrivateKeyPackage(bytes: Uint8Array): PrivateKeyPackage {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 3 || view.getUint8(0) !== 1) {
    throw new Error("private key package: unknown format version");
  }
  const keys: Uint8Array[] = [];
  let offset = 3;
  for (let i = 0; i < 3; i++) {
    if (offset + 2 > bytes.length) throw new Error("private key package: truncated");
    const length = view.getUint16(offset);
    if (offset + 2 + length > bytes.length) throw new Error("private key package: truncated");
    keys.push(bytes.slice(offset + 2, offset + 2 + length));
    offset += 2 + length;
  }
  if (offset !== bytes.length) throw new Error("private key package: trailing bytes");
  const [initPrivateKey, encryptionPrivateKey, signaturePrivateKey] = keys as [
    Uint8Array,
    Uint8Array,
    Uint8Array,
  ];
  return {
    cipherSuiteId: view.getUint16(1),
    initPrivateKey,
    encryptionPrivateKey,
    signaturePrivateKey,
  };
}
