import { identityIdProblem } from "../core/identity-id.js";
import { deletionDeadline, pullIn } from "../core/timers.js";
import * as repo from "../db/identities.repo.js";
import { ErrorCodes, KpRotorError } from "../errors.js";
import type { Rotor } from "./rotor.js";

/**
 * Register, welcome, rotate-now and deregister. Each runs in one transaction that holds the
 * identity's row lock while it writes Postgres and arms the wake-ups, so the wake-up written last
 * always matches the deadline committed last (DESIGN.md, "One lock per identity").
 */

export function assertIdentityId(id: unknown): asserts id is string {
  const problem = identityIdProblem(id);
  if (problem) throw new KpRotorError(ErrorCodes.invalidIdentityId, problem);
}

const notFound = (id: string) =>
  new KpRotorError(ErrorCodes.notFound, `identity ${JSON.stringify(id)} is not registered`);

export interface RegisterResult {
  created: boolean;
  rotationDeadline: number;
  generation: number;
}

/** Registers an identity (idempotent): first key package and rotation deadline, or nothing new. */
export async function register(rotor: Rotor, id: string): Promise<RegisterResult> {
  assertIdentityId(id);
  return rotor.db.transaction(async (tx) => {
    const existing = await repo.lockOrTombstone(tx, id);
    const now = rotor.clock();
    if (!existing.deregistered && existing.rotationDeadline !== null) {
      // Re-registering repairs the wake-up, so a client retry also heals a lost one.
      await rotor.timers.arm("rotation", id, existing.rotationDeadline, now);
      return {
        created: false,
        rotationDeadline: existing.rotationDeadline,
        generation: existing.generation,
      };
    }
    const signatureKeys = await rotor.keys.generateSignatureKeyPair();
    const keyPackage = await generateFor(rotor, id, signatureKeys, now);
    const generation = existing.generation + 1;
    const rotationDeadline = now + rotor.timing.rotationIntervalMs;
    await repo.insertIdentity(tx, {
      id,
      generation,
      rotationDeadline,
      now,
      signaturePublicKey: signatureKeys.publicKey,
      signaturePrivateKey: signatureKeys.privateKey,
      keyPackage,
    });
    // Arming before commit is safe: if the commit fails, the wake-up finds no live identity.
    await rotor.timers.arm("rotation", id, rotationDeadline, now);
    return { created: true, rotationDeadline, generation };
  });
}

/** Generates the identity's next key package in the shape the repository stores. */
export async function generateFor(
  rotor: Rotor,
  id: string,
  signatureKeys: { publicKey: Uint8Array; privateKey: Uint8Array },
  now: number,
): Promise<repo.NewKeyPackage> {
  const kp = await rotor.keys.generate({
    identity: new TextEncoder().encode(id),
    signatureKeys,
    now,
  });
  return {
    ref: kp.ref,
    ciphersuite: rotor.keys.ciphersuite,
    keyPackage: kp.publicBytes,
    privateKey: kp.privateBytes,
    notBefore: kp.notBefore,
    notAfter: kp.notAfter,
  };
}

export interface PullInResult {
  identityId: string;
  rotationDeadline: number;
  changed: boolean;
}

/**
 * Pulls rotation deadlines in to now + delay (earliest wins) for one or many identities, in one
 * transaction. The pulled-in deadline and its wake-up are in place when this resolves; unknown
 * identities are returned apart and nothing is written for them.
 */
export async function pullInMany(
  rotor: Rotor,
  ids: readonly string[],
  delayMs: number,
): Promise<{ results: PullInResult[]; notFound: string[] }> {
  for (const id of ids) assertIdentityId(id);
  const unique = [...new Set(ids)];
  return rotor.db.transaction(async (tx) => {
    const locked = await repo.lockIdentities(tx, unique);
    const now = rotor.clock();
    const results: PullInResult[] = [];
    for (const identity of locked) {
      if (identity.deregistered || identity.rotationDeadline === null) continue;
      const next = pullIn(identity.rotationDeadline, now, delayMs);
      results.push({
        identityId: identity.id,
        rotationDeadline: next.deadline,
        changed: next.changed,
      });
    }
    const changed = results.filter((r) => r.changed);
    await repo.setRotationDeadlines(tx, changed);
    // Earlier wake-ups may be armed before the commit: if it fails they only fire early.
    await Promise.all(
      changed.map((r) => rotor.timers.arm("rotation", r.identityId, r.rotationDeadline, now)),
    );
    const found = new Set(results.map((r) => r.identityId));
    return { results, notFound: unique.filter((id) => !found.has(id)) };
  });
}

/** A welcome consumed the identity's key package: rotate within WELCOME_ROTATION_DELAY. */
export async function welcome(rotor: Rotor, id: string): Promise<PullInResult> {
  return pullInOne(rotor, id, rotor.timing.welcomeRotationDelayMs);
}

/** Rotate as soon as a worker is free. */
export async function rotateSoon(rotor: Rotor, id: string): Promise<PullInResult> {
  return pullInOne(rotor, id, 0);
}

async function pullInOne(rotor: Rotor, id: string, delayMs: number): Promise<PullInResult> {
  const { results } = await pullInMany(rotor, [id], delayMs);
  const [result] = results;
  if (result === undefined) throw notFound(id);
  return result;
}

/**
 * Deregisters: key material deleted and a tombstone left in one commit; the wake-ups are removed
 * afterwards under the lock. A crash in between leaves wake-ups that find the tombstone and
 * remove themselves.
 */
export async function deregister(rotor: Rotor, id: string): Promise<void> {
  assertIdentityId(id);
  await rotor.db.transaction(async (tx) => {
    const identity = await repo.lockIdentity(tx, id);
    if (identity === undefined || identity.deregistered) throw notFound(id);
    await repo.tombstone(tx, id, rotor.clock());
  });
  await rotor.db.transaction(async (tx) => {
    await repo.lockIdentity(tx, id);
    const now = rotor.clock();
    await rotor.timers.arm("rotation", id, null, now);
    await rotor.timers.arm("deletion", id, null, now);
  });
}

/** What the status endpoint shows: deadlines from Postgres, wake-ups as they stand in Redis. */
export async function status(rotor: Rotor, id: string) {
  assertIdentityId(id);
  const found = await repo.getStatus(rotor.db, id);
  if (found === undefined) throw notFound(id);
  const [rotationWake] = await rotor.timers.view("rotation", [id]);
  const [deletionWake] = await rotor.timers.view("deletion", [id]);
  const { identity, keyPackages } = found;
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
    wakeups: { rotation: rotationWake, deletion: deletionWake },
    keyPackages: keyPackages.map((kp) => ({
      generation: kp.generation,
      ref: kp.ref,
      ciphersuite: kp.ciphersuite,
      current: kp.isCurrent,
      createdAt: kp.createdAt,
      notBefore: kp.notBefore,
      notAfter: kp.notAfter,
      deleteAt: kp.deleteAt,
    })),
  };
}

const toDate = (ms: number | null) => (ms === null ? null : new Date(ms));
