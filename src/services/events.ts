import { EventEmitter } from "node:events";
import type { ArmAction } from "../core/deadlines.js";
import type { WakeupKind } from "../core/ports.js";

/**
 * What the service did, as events: tests wait on them instead of sleeping, and metrics and logs
 * can subscribe. `at` is the rotor clock when the wake-up started its work.
 */
export interface RotorEventMap {
  /**
   * A rotation wake-up finished. `startedAt`: when it began (before the lock); `at`: when it
   * decided (the promote, for a rotation); `deadline`: the deadline it served, when it rotated.
   */
  rotation: [
    { identityId: string; outcome: string; at: number; startedAt: number; deadline?: number },
  ];
  deletion: [{ identityId: string; deleted: number; at: number }];
  reconcile: [ReconcileReport];
  /** arm_seq was behind the fences recorded in Redis and was moved past them. */
  "arm-fence-advanced": [{ from: number; redisFence: number }];
  /** A reconcile that did not complete (it wrote no mark and will be retried). */
  "reconcile-failed": [{ reason: string; error: string }];
  /** A device's upload became its current key package. */
  "device-upload": [{ identityId: string; ref: string }];
  /** A notification to a device was sent (ok) or failed (error). */
  "device-notify": [
    { identityId: string; type: "rotate" | "delete"; id: string; ok: boolean; error?: string },
  ];
  /** A published package was read back and checked (reason: why it failed). */
  "published-checked": [
    { identityId: string; when: "publish" | "mid-interval"; ok: boolean; reason?: string },
  ];
  "wake-failed": [
    { identityId: string; kind: "rotation" | "deletion"; failures: number; error: string },
  ];
}

export type RepairCounts = Record<WakeupKind, Record<Exclude<ArmAction["kind"], "none">, number>>;

export interface ReconcileReport {
  identities: number;
  /** Identities already past their deadline, armed first (most overdue first). */
  overdue: number;
  repairs: RepairCounts;
  orphansRemoved: number;
  durationMs: number;
  /**
   * Pages per queue armed without a view first (most of their jobs were missing, as after a
   * loss of Redis data); the rest were viewed, then armed.
   */
  pagesWithoutView: Record<WakeupKind, number>;
  /** The queue shards it was scoped to (ReconcileOptions.shards); absent: every shard. */
  shards?: number[];
}

export class RotorEvents extends EventEmitter<RotorEventMap> {}
