import { judgePublished, type PublishedVerdict } from "../core/transitions.js";
import { observePublished } from "../keys/published-reader.js";
import { formatSafeError, redactError } from "../safe-errors.js";
import { pullInMany } from "./pull-in.service.js";
import type { Rotor } from "./rotor.js";

/**
 * Verify what is published (issue 15, item 4): read the identity's package back from where it
 * was published and check its ref, its signatures and its remaining lifetime. A failed check is
 * recorded (status and /v1/safety), counted, and rotates at once (rotate-now: the rotation cap
 * and the publish window apply as for any rotate-now). A check that could not read is recorded
 * and counted but rotates nothing: a rotation would not make the reader answer.
 *
 * Runs without the row lock (a network read); its verdict is applied under the lock only if the
 * identity is still at the generation that was checked, so a rotation racing with the check is
 * never undone or doubled by it.
 */
export async function verifyPublished(
  rotor: Rotor,
  id: string,
  when: "publish" | "mid-interval",
): Promise<PublishedVerdict | { ok: false; reason: "unreadable"; detail: string } | undefined> {
  const verifier = rotor.verifier;
  if (verifier === undefined) return undefined;
  const [current, identity] = await Promise.all([
    rotor.store.getCurrent(id),
    rotor.store.getIdentity(id),
  ]);
  if (current === undefined || identity === undefined || identity.rotationDeadline === null) {
    return undefined;
  }
  let verdict: PublishedVerdict | { ok: false; reason: "unreadable"; detail: string };
  try {
    const observed = await observePublished(await verifier.reader.read(id));
    verdict = judgePublished(
      current.ref,
      observed,
      identity.rotationDeadline.getTime(),
      verifier.marginMs,
    );
  } catch (err) {
    rotor.log.warn(
      { identityId: id, err: redactError(err) },
      "could not read the published key package",
    );
    verdict = { ok: false, reason: "unreadable", detail: formatSafeError(err) };
  }
  const applies = await rotor.store.transaction(async (tx) => {
    const locked = await tx.lockIdentity(id);
    if (locked === undefined || locked.deregistered || locked.generation !== current.generation) {
      return false;
    }
    await tx.recordVerify(
      id,
      locked.now,
      verdict.ok ? null : `${when}: ${verdict.reason}: ${verdict.detail}`,
    );
    return true;
  });
  if (!applies) return undefined;
  rotor.events.emit("published-checked", {
    identityId: id,
    when,
    ok: verdict.ok,
    ...(verdict.ok ? {} : { reason: verdict.reason }),
  });
  // One rotation per failure streak: when the previous check failed too (the new package is just
  // as wrong where it is published), rotating again would only repeat itself; it stays recorded.
  if (!verdict.ok && verdict.reason !== "unreadable" && identity.verifyError === null) {
    rotor.log.warn(
      { identityId: id, reason: verdict.reason, when },
      "published key package failed its check; rotating now",
    );
    await pullInMany(rotor, [id], 0);
  }
  return verdict;
}
