import { deletionDeadline } from "../core/deadlines.js";
import type { Custody } from "../core/ports.js";
import { plannedRotationWake, type PullInResult } from "../core/transitions.js";
import { ed25519PublicKey } from "../keys/signature.js";
import { completeRotation, prepareRotation } from "./rotation.service.js";
import { assertIdentityId, ErrorCodes, KpRotorError, notFound } from "../errors.js";
import { devicesOf } from "./device.service.js";
import type { Rotor } from "./rotor.js";
import { formatSafeError, redactError } from "../safe-errors.js";

/**
 * Register, welcome, rotate-now and deregister. Each runs in one transaction that holds the
 * identity's row lock while it writes Postgres and arms the wake-ups, so the wake-up written last
 * always matches the deadline committed last (DESIGN.md, "One lock per identity").
 */

export interface RegisterInput {
  /** The basic credential's identity bytes; defaults to the identity id in UTF-8. */
  credentialIdentity?: Uint8Array;
  /** An Ed25519 private key (32-byte seed) to sign with; generated when absent. Service custody only. */
  signaturePrivateKey?: Uint8Array;
  /** "service" (default): keys generated and sealed here; "device": the device uploads its own. */
  custody?: Custody;
  /** Device custody: where its signed notifications go (required). */
  notifyUrl?: string;
  /** Device custody: the signature public key every upload must carry (optional). */
  signaturePublicKey?: Uint8Array;
}

export interface RegisterResult {
  created: boolean;
  rotationDeadline: number;
  generation: number;
  custody: Custody;
  /** Device custody: the secret its notifications are signed with (`whsec_…`, Standard Webhooks). */
  notificationSecret?: string;
  /** Set when the first key package could not be published yet (a worker keeps retrying). */
  publishError?: string;
}

/**
 * Registers an identity (idempotent). A new identity is stored with its signature key (sealed)
 * and a first rotation deadline of now + WELCOME_ROTATION_DELAY, armed; then its first key
 * package is generated, published and made current right away, in this request, which moves the
 * deadline to now + ROTATION_INTERVAL. If publishing fails, the identity stays registered and
 * the armed wake-up retries it like any failed rotation.
 */
export async function register(
  rotor: Rotor,
  id: string,
  input: RegisterInput = {},
): Promise<RegisterResult> {
  assertIdentityId(id);
  if (input.credentialIdentity !== undefined && input.credentialIdentity.length === 0) {
    throw new KpRotorError(ErrorCodes.invalidRequest, "credentialIdentity must not be empty");
  }
  const custody = input.custody ?? "service";
  const device = custody === "device";
  if (device) checkDeviceInput(rotor, input);
  else if (input.notifyUrl !== undefined || input.signaturePublicKey !== undefined) {
    throw new KpRotorError(
      ErrorCodes.invalidRequest,
      'notifyUrl and signaturePublicKey are for custody "device" only',
    );
  }
  // A device identity's keys never reach the service: nothing is generated or stored for it.
  const signatureKeys = device
    ? null
    : input.signaturePrivateKey
      ? importSignatureKey(rotor, input.signaturePrivateKey)
      : await rotor.keys.generateSignatureKeyPair();
  const notificationSecret = device ? { notificationSecret: rotor.devices?.secretFor(id) } : {};
  const registered = await rotor.store.transaction(async (tx) => {
    const existing = await tx.lockOrTombstone(id);
    const now = existing.now;
    if (!existing.deregistered && existing.rotationDeadline !== null) {
      if (existing.custody !== custody) {
        throw new KpRotorError(
          ErrorCodes.custodyMismatch,
          `identity ${JSON.stringify(id)} is registered with custody "${existing.custody}"; deregister it first to change custody`,
        );
      }
      // Re-registering repairs the wake-up, so a client retry also heals a lost one.
      const wake = plannedRotationWake(existing.rotationDeadline, existing.verifyAt);
      await rotor.timers.arm("rotation", id, wake, now, existing.fence);
      return {
        created: false,
        rotationDeadline: existing.rotationDeadline,
        generation: existing.generation,
        custody,
        ...notificationSecret,
      };
    }
    // A device is asked for its first package when this deadline passes (unless it uploads first).
    const firstDeadline = now + rotor.timing.welcomeRotationDelayMs;
    await tx.insertIdentity({
      id,
      rotationDeadline: firstDeadline,
      now,
      credentialIdentity: input.credentialIdentity ?? new TextEncoder().encode(id),
      signaturePublicKey: signatureKeys?.publicKey ?? input.signaturePublicKey ?? null,
      signaturePrivateKey:
        signatureKeys === null
          ? null
          : rotor.keyring.seal(signatureKeys.privateKey, id, "signature-private"),
      custody,
      notifyUrl: device ? (input.notifyUrl ?? null) : null,
    });
    // Arming before commit is safe: if the commit fails, the wake-up finds no live identity.
    await rotor.timers.arm("rotation", id, firstDeadline, now, existing.fence);
    return {
      created: true,
      rotationDeadline: firstDeadline,
      generation: existing.generation,
      custody,
      ...notificationSecret,
    };
  });
  if (!registered.created || device) return registered;
  try {
    const rotated = await rotateInline(rotor, id);
    return { ...registered, ...rotated };
  } catch (err) {
    // The client and last_error get a code and this service's own words; the log the details.
    const publishError = formatSafeError(err);
    await rotor.store.recordRotationFailure(id, rotor.clock(), publishError).catch(() => {});
    rotor.log.warn(
      { identityId: id, err: redactError(err) },
      "first key package not published yet; the worker retries",
    );
    return { ...registered, publishError };
  }
}

function checkDeviceInput(rotor: Rotor, input: RegisterInput): void {
  const devices = devicesOf(rotor);
  if (input.signaturePrivateKey !== undefined) {
    throw new KpRotorError(
      ErrorCodes.invalidRequest,
      'signaturePrivateKey is refused for custody "device": a device\'s private keys never leave it',
    );
  }
  if (input.notifyUrl === undefined) {
    throw new KpRotorError(ErrorCodes.invalidRequest, 'notifyUrl is required for custody "device"');
  }
  const problem = devices.endpointProblem(input.notifyUrl);
  if (problem !== undefined) {
    throw new KpRotorError(ErrorCodes.invalidRequest, `notifyUrl: ${problem}`);
  }
}

function importSignatureKey(rotor: Rotor, privateKey: Uint8Array) {
  if (!rotor.keys.ciphersuite.endsWith("_Ed25519")) {
    throw new KpRotorError(
      ErrorCodes.invalidRequest,
      `importing a signature key needs an Ed25519 ciphersuite; this service uses ${rotor.keys.ciphersuite}`,
    );
  }
  return { privateKey, publicKey: ed25519PublicKey(privateKey) };
}

/** One rotation outside any worker (registration): prepare, publish, promote, re-arm. */
async function rotateInline(
  rotor: Rotor,
  id: string,
): Promise<{ rotationDeadline: number; generation: number }> {
  const prepared = await rotor.store.transaction(async (tx) => {
    const identity = await tx.lockOrTombstone(id);
    return prepareRotation(rotor, tx, identity, identity.now, { firstPublish: true });
  });
  if (prepared.kind === "publish") {
    await completeRotation(rotor, id, prepared.pending, (deadline, fence) =>
      rotor.timers.arm("rotation", id, deadline, rotor.clock(), fence),
    );
  }
  const identity = await rotor.store.getIdentity(id);
  if (identity === undefined) throw notFound(id);
  return {
    rotationDeadline: identity.rotationDeadline?.getTime() ?? rotor.clock(),
    generation: identity.generation,
  };
}

export type { PullInResult };
export { pullInMany, rotateSoon, welcome } from "./pull-in.service.js";

/**
 * Deregisters: key material deleted and a tombstone left in one commit; the wake-ups are removed
 * afterwards under the lock. A crash in between leaves wake-ups that find the tombstone and
 * remove themselves.
 */
export async function deregister(rotor: Rotor, id: string): Promise<void> {
  assertIdentityId(id);
  await rotor.store.transaction(async (tx) => {
    const identity = await tx.lockIdentity(id);
    if (identity === undefined || identity.deregistered) throw notFound(id);
    await tx.tombstone(id, rotor.clock());
  });
  await rotor.store.transaction(async (tx) => {
    const identity = await tx.lockIdentity(id);
    // Registered again in between: its registration armed its own wake-ups; leave them.
    if (identity === undefined || !identity.deregistered) return;
    await rotor.timers.arm("rotation", id, null, identity.now, identity.fence);
    await rotor.timers.arm("deletion", id, null, identity.now, identity.fence);
  });
}

/** What the status endpoint shows: deadlines from Postgres, wake-ups as they stand in Redis. */
export async function status(rotor: Rotor, id: string) {
  assertIdentityId(id);
  const identity = await rotor.store.getIdentity(id);
  if (identity === undefined) throw notFound(id);
  const keyPackages = await rotor.store.listPublic(id);
  const [rotationWake] = await rotor.timers.view("rotation", [id]);
  const [deletionWake] = await rotor.timers.view("deletion", [id]);
  const deleteAts = keyPackages.flatMap((kp) => (kp.deleteAt ? [kp.deleteAt.getTime()] : []));
  return {
    identityId: identity.id,
    generation: identity.generation,
    nextRotationAt: identity.rotationDeadline,
    lastRotatedAt: identity.lastRotatedAt,
    nextDeletionAt: toDate(deletionDeadline(deleteAts)),
    rotationFailures: identity.rotationFailures,
    lastError: identity.lastError,
    lastFailureAt: identity.lastFailureAt,
    createdAt: identity.createdAt,
    custody: identity.custody,
    awaitingDeviceSince: identity.awaitingDeviceSince,
    publishedCheck: { lastCheckedAt: identity.lastVerifiedAt, error: identity.verifyError },
    awaitingDeviceSeconds:
      identity.awaitingDeviceSince === null
        ? null
        : Math.max(0, Math.round((rotor.clock() - identity.awaitingDeviceSince.getTime()) / 1000)),
    wakeups: { rotation: rotationWake, deletion: deletionWake },
    keyPackages: keyPackages.map(({ isCurrent, ...kp }) => ({
      ...kp,
      state: (isCurrent ? "current" : kp.deleteAt ? "superseded" : "pending") as
        | "current"
        | "superseded"
        | "pending",
      current: isCurrent,
    })),
  };
}

/** The identity's current published key package (public half). */
export async function currentKeyPackage(rotor: Rotor, id: string) {
  assertIdentityId(id);
  const current = await rotor.store.getCurrent(id);
  if (current === undefined) {
    const identity = await rotor.store.getIdentity(id);
    throw identity === undefined
      ? notFound(id)
      : new KpRotorError(
          ErrorCodes.notFound,
          `identity ${JSON.stringify(id)} has no published key package yet`,
        );
  }
  return current;
}

const toDate = (ms: number | null) => (ms === null ? null : new Date(ms));
