import type { WakeHandler } from "../queue/wake-worker.js";
import type { Rotor } from "../services/rotor.js";
import {
  handleDeletionWake,
  handleRotationWake,
  handleWakeFailure,
} from "../services/wakeups.service.js";
import type { HandlerFactories } from "./worker-process.js";

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

/** Both processors: what `kp-rotor worker` and workers/index.ts run. */
export const ALL_HANDLERS: HandlerFactories = {
  rotation: createRotationHandler,
  deletion: createDeletionHandler,
};
