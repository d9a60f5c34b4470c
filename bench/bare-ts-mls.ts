/**
 * The baseline of the rotations/s goal: complete KeyPackages straight from ts-mls (generate,
 * sign, encode), one at a time, with the same suite, credential, lifetime and last_resort
 * extension the service uses. Shared by bench/keygen.ts and the side-by-side run.
 */
import {
  type CiphersuiteName,
  defaultCapabilities,
  encodeMlsMessage,
  generateKeyPackageWithKey,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
} from "ts-mls";

const LAST_RESORT = 0x000a;

export async function bareTsMls(
  n: number,
  ciphersuite: string,
  warmup = 50,
): Promise<{ perSecond: number; sample: Uint8Array }> {
  const impl = await getCiphersuiteImpl(getCiphersuiteFromName(ciphersuite as CiphersuiteName));
  const signatureKeys = await impl.signature.keygen();
  const identity = new TextEncoder().encode("bench");
  const once = async () => {
    const now = Date.now();
    const capabilities = defaultCapabilities();
    capabilities.extensions.push(LAST_RESORT);
    const { publicPackage } = await generateKeyPackageWithKey(
      { credentialType: "basic", identity },
      capabilities,
      {
        notBefore: BigInt(Math.floor(now / 1000) - 3600),
        notAfter: BigInt(Math.floor(now / 1000) + 84 * 86400),
      },
      [{ extensionType: LAST_RESORT, extensionData: new Uint8Array(0) }],
      signatureKeys,
      impl,
    );
    return encodeMlsMessage({
      version: "mls10",
      wireformat: "mls_key_package",
      keyPackage: publicPackage,
    });
  };
  for (let i = 0; i < warmup; i++) await once();
  let sample: Uint8Array = new Uint8Array(0);
  const started = performance.now();
  for (let i = 0; i < n; i++) sample = await once();
  return { perSecond: n / ((performance.now() - started) / 1000), sample };
}
