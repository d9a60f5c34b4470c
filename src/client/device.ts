/**
 * For a device with custody "device": it keeps its own private keys, builds its key packages
 * and uploads them; kp-rotor tells it when (signed `device.rotate`) and when an old package is
 * gone (signed `device.delete`). Depends on ts-mls (and the client), not on the service.
 *
 *   const message = verifyNotification(secret, rawBody, request.headers);
 *   if (message.type === "device.rotate") {
 *     const built = await buildKeyPackage({ identity, signatureKeys });
 *     keep(built.privatePackage); // never sent anywhere
 *     await client.uploadKeyPackage(identityId, built.keyPackage);
 *   } else forget(message.data.ref);
 */
import {
  type CiphersuiteName,
  defaultCapabilities,
  encodeMlsMessage,
  generateKeyPackageWithKey,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  type PrivateKeyPackage,
} from "ts-mls";
import { makeKeyPackageRef } from "ts-mls/keyPackage.js";
import { type DeviceNotificationMessage, verifyDeviceNotification } from "./webhooks.js";

export type { DeviceNotificationMessage };

/** RFC 9420 §17.3's last_resort extension type. */
const LAST_RESORT = 0x000a;
const DAY = 86_400_000;

/**
 * Verifies a notification with the identity's `notificationSecret` (from its registration) and
 * returns its body; throws WebhookSignatureError otherwise. Deduplicate on `webhook-id`.
 */
export function verifyNotification(
  secret: string,
  body: string,
  headers: Record<string, string | string[] | undefined>,
): DeviceNotificationMessage {
  return verifyDeviceNotification([secret], body, headers);
}

export interface BuildOptions {
  /** The basic credential's identity bytes the identity was registered with (default: its id). */
  identity: Uint8Array;
  /** The device's signature key pair (keep it across rotations). */
  signatureKeys: { signKey: Uint8Array; publicKey: Uint8Array };
  /** Epoch ms; default now. */
  now?: number;
  /** not_after - now; default 84 days (kp-rotor wants at least ROTATION_INTERVAL + 7 d, at most 90 d in all). */
  lifetimeMs?: number;
  ciphersuite?: CiphersuiteName;
}

/** A last-resort key package for upload, and the private half the device keeps. */
export async function buildKeyPackage(options: BuildOptions): Promise<{
  keyPackage: Uint8Array;
  ref: string;
  privatePackage: PrivateKeyPackage;
}> {
  const now = options.now ?? Date.now();
  const impl = await getCiphersuiteImpl(
    getCiphersuiteFromName(options.ciphersuite ?? "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"),
  );
  const capabilities = defaultCapabilities();
  capabilities.extensions.push(LAST_RESORT);
  const { publicPackage, privatePackage } = await generateKeyPackageWithKey(
    { credentialType: "basic", identity: options.identity },
    capabilities,
    {
      // An hour back, for peers whose clocks lag (as the service's own packages do).
      notBefore: BigInt(Math.floor((now - 3_600_000) / 1000)),
      notAfter: BigInt(Math.floor((now + (options.lifetimeMs ?? 84 * DAY)) / 1000)),
    },
    [{ extensionType: LAST_RESORT, extensionData: new Uint8Array(0) }],
    options.signatureKeys,
    impl,
  );
  return {
    keyPackage: encodeMlsMessage({
      version: "mls10",
      wireformat: "mls_key_package",
      keyPackage: publicPackage,
    }),
    ref: Buffer.from(await makeKeyPackageRef(publicPackage, impl.hash)).toString("hex"),
    privatePackage,
  };
}

/** A fresh signature key pair for a device (Ed25519 by default). */
export async function generateSignatureKeys(ciphersuite?: CiphersuiteName) {
  const impl = await getCiphersuiteImpl(
    getCiphersuiteFromName(ciphersuite ?? "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"),
  );
  return impl.signature.keygen();
}
