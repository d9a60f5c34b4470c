import type { DeviceNotification, NewKeyPackage, PendingKeyPackage } from "../core/ports.js";
import { deviceNotificationId } from "../core/transitions.js";
import { ErrorCodes, KpRotorError } from "../errors.js";
import { publishesByPromoting } from "../keys/publisher.js";
import { validateUpload } from "../keys/validate-upload.js";
import { assertIdentityId, notFound } from "../errors.js";
import { completeRotation, type PreparedPackage, promoteInPrepare } from "./rotation.service.js";
import type { DeviceSupport, Rotor } from "./rotor.js";

/**
 * Device custody (docs/device-custody.md): the device generates its key packages and uploads
 * them; the service validates each upload, publishes it through the same steps as a rotation
 * (publish before supersede, fenced on the generation, one lock per identity), and tells the
 * device when to rotate and when an old package is gone.
 */

export function devicesOf(rotor: Rotor): DeviceSupport {
  if (rotor.devices === undefined) {
    throw new KpRotorError(ErrorCodes.invalidConfig, "device custody is not configured");
  }
  return rotor.devices;
}

export interface UploadResult {
  ref: string;
  generation: number;
  rotationDeadline: number | null;
  /** False when the upload was this identity's current package already (a retried request). */
  changed: boolean;
}

/**
 * An uploaded key package (a TLS-encoded MLSMessage) becomes the identity's current one: a
 * rotation whose package comes from the device. Validated under the identity's row lock at the
 * store's clock (so the init-key check and its record are one step); a refusal is a KpRotorError
 * whose code names the check (422). The directory publisher promotes in the same transaction;
 * another publisher stores it pending, publishes, then promotes (fenced on the generation).
 */
export async function uploadKeyPackage(
  rotor: Rotor,
  id: string,
  bytes: Uint8Array,
): Promise<UploadResult> {
  assertIdentityId(id);
  const devices = devicesOf(rotor);
  const prepared = await rotor.store.transaction(async (tx) => {
    const identity = await tx.lockIdentity(id);
    if (identity === undefined || identity.deregistered) throw notFound(id);
    if (identity.custody !== "device") {
      throw new KpRotorError(
        ErrorCodes.custodyMismatch,
        `identity ${JSON.stringify(id)} has custody "service": the service generates its key packages`,
      );
    }
    const now = identity.now;
    const verdict = await validateUpload(
      bytes,
      {
        credentialIdentity: identity.credentialIdentity ?? new TextEncoder().encode(id),
        signaturePublicKey: identity.signaturePublicKey,
        seenInitKeys: await tx.seenInitKeys(id),
      },
      {
        allowedCiphersuites: devices.allowedCiphersuites,
        rotationIntervalMs: rotor.timing.rotationIntervalMs,
        marginMs: devices.marginMs,
        maxLifetimeMs: devices.maxLifetimeMs,
      },
      now,
    );
    if (!verdict.ok) {
      if (verdict.code === "KP_INIT_KEY_REUSED") {
        // The same bytes again: a retry. Still pending (its publish failed): publish it again.
        const pending = await tx.findPending(id);
        if (pending !== undefined && sameBytes(pending.keyPackage, bytes)) {
          return { kind: "publish" as const, pending };
        }
        // Already current, or a real reuse: decided after the commit, without the row lock.
        return { kind: "reused" as const, generation: identity.generation, verdict };
      }
      throw new KpRotorError(verdict.code, verdict.message);
    }
    const { upload } = verdict;
    const kp: NewKeyPackage = {
      ref: upload.ref,
      ciphersuite: upload.ciphersuite,
      keyPackage: upload.keyPackage,
      privateKey: null,
      notBefore: upload.notBefore,
      notAfter: upload.notAfter,
    };
    const generation = identity.generation + 1;
    const existing = await tx.findPending(id);
    // A newer upload replaces one still being published (that one's promote then fails).
    if (existing) await tx.deletePending(existing.id);
    await tx.recordInitKey(id, upload.initKeyDigest, now);
    if (publishesByPromoting(rotor.publisher)) {
      let packageId = 0;
      const at = await promoteInPrepare(rotor, tx, identity, now, generation, async (t) => {
        packageId = await tx.insertCurrent(id, generation, t, kp);
      });
      const pending: PreparedPackage = { ...kp, id: packageId, generation, promotedAt: at };
      return { kind: "publish" as const, pending };
    }
    const [pending] = await Promise.all([
      tx.insertPending(id, generation, now, kp),
      tx.markPublishing(id, now),
    ]);
    return { kind: "publish" as const, pending: pending as PendingKeyPackage };
  });
  if (prepared.kind === "reused") {
    if (!(await isCurrent(rotor, id, bytes))) {
      throw new KpRotorError(prepared.verdict.code, prepared.verdict.message);
    }
    const status = await rotor.store.getIdentity(id);
    const current = await rotor.store.getCurrent(id);
    return {
      ref: current?.ref ?? "",
      generation: prepared.generation,
      rotationDeadline: status?.rotationDeadline?.getTime() ?? null,
      changed: false,
    };
  }
  const { outcome } = await completeRotation(rotor, id, prepared.pending, (deadline, fence) =>
    rotor.timers.arm("rotation", id, deadline, rotor.clock(), fence),
  );
  if (outcome === "fenced") {
    throw new KpRotorError(
      ErrorCodes.uploadSuperseded,
      "another upload for this identity was made current first; upload again if this one should win",
    );
  }
  rotor.events.emit("device-upload", { identityId: id, ref: prepared.pending.ref });
  const status = await rotor.store.getIdentity(id);
  return {
    ref: prepared.pending.ref,
    generation: prepared.pending.generation,
    rotationDeadline: status?.rotationDeadline?.getTime() ?? null,
    changed: true,
  };
}

async function isCurrent(rotor: Rotor, id: string, bytes: Uint8Array): Promise<boolean> {
  const current = await rotor.store.getCurrent(id);
  return current !== undefined && sameBytes(current.keyPackage, bytes);
}

const sameBytes = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));

/** The `rotate` notification for a due device identity. */
export function rotateNotification(
  identityId: string,
  endpoint: string,
  deadline: number,
  currentRef: string | null,
): DeviceNotification {
  return {
    type: "rotate",
    id: deviceNotificationId("rotate", identityId, deadline),
    identityId,
    endpoint,
    deadline,
    currentRef,
  };
}

/** The `delete` notification for a superseded package past its grace. */
export function deleteNotification(
  identityId: string,
  endpoint: string,
  ref: string,
): DeviceNotification {
  return {
    type: "delete",
    id: deviceNotificationId("delete", identityId, ref),
    identityId,
    endpoint,
    ref,
  };
}
