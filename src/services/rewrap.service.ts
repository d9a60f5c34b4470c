/**
 * Retiring a key-encryption key (KEK). `rewrap` re-seals every sealed blob (signature keys and
 * key packages' private halves) under the current KEK, in the current format (version 2, which
 * binds a key package's generation and ref), page by page under the identities' row locks.
 * Idempotent and resumable: a blob already sealed that way is left alone, so running it again,
 * after an interruption or not, only does what is left. Once it reports nothing left, the
 * previous KEK (KEY_ENCRYPTION_KEY_PREVIOUS) can be dropped.
 *
 * `checkSealedKeys` counts blobs by the KEK they name, once (a full scan): at start, every
 * process reports blobs sealed under a key it does not have, which it could never open again.
 */
import * as sealed from "../db/sealed.repo.js";
import { sealedHeader } from "../keys/encryption.js";
import type { LiveRotor as Rotor } from "./rotor.js";

export interface SealedKeysReport {
  checkedAt: string;
  /** Blobs per KEK id (the first 16 hex digits of its SHA-256). */
  byKeyId: Record<string, number>;
  /** Blobs sealed under a KEK this process does not have: they cannot be opened. */
  unreadable: number;
  unknownKeyIds: string[];
}

const reports = new WeakMap<Rotor, SealedKeysReport>();

/** The last report of `checkSealedKeys` in this process, if it ran. */
export const lastSealedKeysReport = (rotor: Rotor): SealedKeysReport | undefined =>
  reports.get(rotor);

export async function checkSealedKeys(rotor: Rotor): Promise<SealedKeysReport> {
  const counts = await sealed.countByKeyId(rotor.db);
  const unknownKeyIds = [...counts.keys()].filter((id) => !rotor.keyring.keyIds.includes(id));
  const report: SealedKeysReport = {
    checkedAt: new Date(rotor.clock()).toISOString(),
    byKeyId: Object.fromEntries(counts),
    unreadable: unknownKeyIds.reduce((n, id) => n + (counts.get(id) ?? 0), 0),
    unknownKeyIds,
  };
  reports.set(rotor, report);
  if (report.unreadable > 0) {
    rotor.log.error(
      { unreadable: report.unreadable, unknownKeyIds },
      "sealed key material names a KEY_ENCRYPTION_KEY this process does not have: set it as KEY_ENCRYPTION_KEY_PREVIOUS and run kp-rotor rewrap",
    );
  }
  return report;
}

export interface RewrapSummary {
  identities: number;
  resealed: number;
  /** Already under the current KEK and format. */
  current: number;
  /** Sealed under a KEK this process does not have (left as they are). */
  unreadable: number;
  /** Named a known KEK but did not open (altered?): left as they are. */
  failed: number;
  failedIdentities: string[];
}

export async function rewrap(
  rotor: Rotor,
  options: { pageSize?: number; onProgress?: (done: number, total: number) => void } = {},
): Promise<RewrapSummary> {
  const pageSize = options.pageSize ?? 500;
  const { keyring } = rotor;
  const total = await sealed.countSealedIdentities(rotor.db);
  const summary: RewrapSummary = {
    identities: 0,
    resealed: 0,
    current: 0,
    unreadable: 0,
    failed: 0,
    failedIdentities: [],
  };
  let after = "";
  for (;;) {
    const ids = await rotor.db.transaction(async (tx) => {
      const page = await sealed.lockSealedPage(tx, after, pageSize);
      for (const blob of page.blobs) {
        const header = sealedHeader(blob.sealed);
        if (header?.version === 2 && header.keyId === keyring.currentKeyId) {
          summary.current++;
          continue;
        }
        if (header === undefined || !keyring.keyIds.includes(header.keyId)) {
          summary.unreadable++;
          continue;
        }
        const purpose = blob.table === "identities" ? "signature-private" : "key-package-private";
        let plaintext: Uint8Array;
        try {
          plaintext = keyring.open(blob.sealed, blob.identityId, purpose, blob.binding);
        } catch {
          summary.failed++;
          if (summary.failedIdentities.length < 20) summary.failedIdentities.push(blob.identityId);
          continue;
        }
        await sealed.replaceSealed(
          tx,
          blob,
          keyring.seal(plaintext, blob.identityId, purpose, blob.binding),
        );
        plaintext.fill(0);
        summary.resealed++;
      }
      return page.ids;
    });
    if (ids.length === 0) break;
    summary.identities += ids.length;
    after = ids[ids.length - 1] as string;
    options.onProgress?.(summary.identities, Math.max(total, summary.identities));
  }
  return summary;
}
