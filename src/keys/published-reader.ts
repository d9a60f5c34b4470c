import type { PublishedReader, Store } from "../core/ports.js";
import type { PublishedObservation } from "../core/transitions.js";
import { inspectKeyPackage, keyPackageRef } from "./key-package.js";

/**
 * Reading a published key package back, to check it (docs/device-custody.md, "Verify what is
 * published"): the directory reads the row its own endpoint serves; a webhook deployment reads
 * PUBLISH_VERIFY_URL, a template where `{identityId}` is replaced by the (URL-encoded) id, which
 * answers the MLSMessage as the body (404: nothing published).
 */

export function createDirectoryReader(store: Store): PublishedReader {
  return {
    read: async (identityId) => (await store.getCurrent(identityId))?.keyPackage ?? null,
  };
}

export function createUrlReader(template: string, timeoutMs: number): PublishedReader {
  return {
    async read(identityId) {
      const url = template.replaceAll("{identityId}", encodeURIComponent(identityId));
      const res = await fetch(url, {
        headers: { accept: "message/mls, application/octet-stream" },
        redirect: "error",
        signal: AbortSignal.timeout(timeoutMs),
      });
      if (res.status === 404) return null;
      if (!res.ok) throw new Error(`PUBLISH_VERIFY_URL answered ${res.status}`);
      const body = new Uint8Array(await res.arrayBuffer());
      return body.length === 0 ? null : body;
    },
  };
}

/** What a check needs of published bytes; bytes that do not decode observe as a wrong ref. */
export async function observePublished(
  bytes: Uint8Array | null,
): Promise<PublishedObservation | null> {
  if (bytes === null) return null;
  try {
    const info = await inspectKeyPackage(bytes);
    return {
      ref: await keyPackageRef(bytes),
      signatureValid: info.signatureValid,
      notAfter: info.notAfter.getTime(),
    };
  } catch {
    return { ref: "(not a key package)", signatureValid: false, notAfter: 0 };
  }
}
