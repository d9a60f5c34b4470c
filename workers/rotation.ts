import type { WakeHandler } from "../src/queue/workers.js";
import type { Rotor } from "../src/services/rotor.js";
import { handleRotationWake, handleWakeFailure } from "../src/services/wakeups.service.js";
import { runWorkerProcess } from "../src/worker-process.js";

/**
 * The rotation processor: when an identity's rotation wake-up fires, rotate it if its deadline
 * (in Postgres) has passed, otherwise re-arm to that deadline. Failures retry with backoff.
 */
export function createRotationHandler(rotor: Rotor): WakeHandler {
  const log = rotor.log.child({ component: "rotation-worker" });
  return async (wake) => {
    const started = rotor.clock();
    try {
      const outcome = await handleRotationWake(rotor, wake);
      log.info(
        { identityId: wake.identityId, jobId: wake.jobId, outcome, ms: rotor.clock() - started },
        "rotation wake-up",
      );
    } catch (err) {
      await handleWakeFailure(rotor, wake, "rotation", err);
    }
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await runWorkerProcess({ rotation: createRotationHandler });
}
