import { createHmac, hkdfSync } from "node:crypto";
import type { DeviceNotification, DeviceNotifier } from "../core/ports.js";
import { ErrorCodes, KpRotorError } from "../errors.js";
import type { DeviceNotificationMessage } from "../client/webhooks.js";
import { signWebhook } from "../webhooks/signature.js";
import { webhookUrlProblem } from "./keys-config.js";
import { post } from "./publisher.js";

/**
 * Notifications to device identities (custody "device"): a JSON body signed with Standard
 * Webhooks, as the publisher's webhook is (src/webhooks/signature.ts), POSTed to the device's
 * endpoint. Each identity has its own secret, derived from DEVICE_NOTIFY_SECRET and its id, so
 * one device cannot forge another's notifications and nothing per identity is stored.
 */

export class DeviceNotifyError extends KpRotorError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCodes.deviceNotifyFailed, message, options);
    this.name = "DeviceNotifyError";
  }
}

/**
 * The identity's notification secret, `whsec_<base64>` (Standard Webhooks): HMAC-SHA256 of the
 * identity id under the master secret. Deterministic: registering again returns the same one.
 */
export function deviceSecret(master: Uint8Array, identityId: string): string {
  const key = createHmac("sha256", master)
    .update(`kp-rotor device notify v1\0${identityId}`)
    .digest();
  return `whsec_${key.toString("base64")}`;
}

/** The master secret when DEVICE_NOTIFY_SECRET is unset: derived from the key-encryption key. */
export function deriveNotifyMaster(encryptionKey: Uint8Array): Uint8Array {
  return new Uint8Array(
    hkdfSync("sha256", encryptionKey, new Uint8Array(0), "kp-rotor device notifications", 32),
  );
}

/** The message a notification sends (the body, before signing). */
export function notificationMessage(n: DeviceNotification, at: number): DeviceNotificationMessage {
  return n.type === "rotate"
    ? {
        type: "device.rotate",
        timestamp: new Date(at).toISOString(),
        data: {
          identityId: n.identityId,
          deadline: new Date(n.deadline).toISOString(),
          currentRef: n.currentRef,
        },
      }
    : {
        type: "device.delete",
        timestamp: new Date(at).toISOString(),
        data: { identityId: n.identityId, ref: n.ref },
      };
}

export interface DeviceNotifierOptions {
  master: Uint8Array;
  timeoutMs: number;
  now?: () => number;
}

export function createDeviceNotifier(options: DeviceNotifierOptions): DeviceNotifier {
  const now = options.now ?? Date.now;
  return {
    async notify(notification) {
      const at = now();
      const body = JSON.stringify(notificationMessage(notification, at));
      const headers = signWebhook([deviceSecret(options.master, notification.identityId)], {
        id: notification.id,
        timestampSeconds: Math.floor(at / 1000),
        body,
      });
      let status: number;
      try {
        status = await post(new URL(notification.endpoint), headers, body, options.timeoutMs);
      } catch (cause) {
        throw new DeviceNotifyError(
          `device endpoint: ${(cause as Error).message.replace(/^webhook:? ?/, "")}`,
          { cause },
        );
      }
      if (status < 200 || status >= 300) {
        throw new DeviceNotifyError(`device endpoint answered ${status}`);
      }
    },
  };
}

/** Why a device's notification endpoint is refused (the publisher webhook's rule), or undefined. */
export function deviceEndpointProblem(url: string, allowHttp: boolean): string | undefined {
  return webhookUrlProblem(url, allowHttp)?.replace(
    "PUBLISH_WEBHOOK_ALLOW_HTTP",
    "DEVICE_NOTIFY_ALLOW_HTTP",
  );
}
