import { EventEmitter } from "node:events";

/**
 * What the service did, as events: tests wait on them instead of sleeping, and metrics and logs
 * can subscribe. `at` is the rotor clock when the wake-up started its work.
 */
export interface RotorEventMap {
  rotation: [{ identityId: string; outcome: string; at: number; deadline?: number }];
  deletion: [{ identityId: string; deleted: number; at: number }];
  "wake-failed": [
    { identityId: string; kind: "rotation" | "deletion"; failures: number; error: string },
  ];
}

export class RotorEvents extends EventEmitter<RotorEventMap> {}
