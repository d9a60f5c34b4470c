import type { WakeHandler } from "../src/queue/workers.js";
import type { Rotor } from "../src/services/rotor.js";
import { handleDeletionWake, handleWakeFailure } from "../src/services/wakeups.service.js";
import { runWorkerProcess } from "../src/worker-process.js";

/**
 * The deletion processor: delete the identity's superseded key packages whose delete_at has
 * passed, then re-arm to the next delete_at or finish.
 */
export function createDeletionHandler(rotor: Rotor): WakeHandler {
  const log = rotor.log.child({ component: "deletion-worker" });
  return async (wake) => {
    try {
      const outcome = await handleDeletionWake(rotor, wake);
      log.info({ identityId: wake.identityId, jobId: wake.jobId, outcome }, "deletion wake-up");
    } catch (err) {
      await handleWakeFailure(rotor, wake, "deletion", err);
    }
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await runWorkerProcess({ deletion: createDeletionHandler });
}
