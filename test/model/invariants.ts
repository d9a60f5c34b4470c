import type { PullInResult } from "../../src/core/transitions.js";
import { type ModelProcess, OVERDUE_GRACE_MS, TIMING, WATCHDOG_MS } from "./processes.js";
import { STALL_MS, type World } from "./world.js";

/**
 * The invariants, checked against the committed rows as model time runs (the safety ones,
 * "no rotation before its deadline nor twice for one" and "no deletion before delete_at", are
 * checked at each commit by World.applyCommit):
 *
 *  - every due deadline (rotation deadlines of live identities, delete_at of superseded
 *    packages) is handled within its bound;
 *  - every acknowledged welcome (or rotate-now) is honoured: a rotation whose package was
 *    generated after the request commits no later than the acknowledged deadline's bound.
 *
 * The bound of a deadline D is D + SLACK, or, after a fault at F that the service heals in
 * HEAL[kind], max(D, F) + HEAL[kind] + SLACK. SLACK covers what the protocol allows without any
 * loss: stall recovery of a dead worker (60 s), the backoff cap (60 s), the mark check (15 s), a
 * dead reconciler's lease (60 s) and clock skew (30 s). Identities whose publish fails are
 * exempt while it fails (they are overdue and retrying, as they should be).
 */

/** How far a worker's clock may run ahead: fireTimeFor shifts its re-arms by that much. */
const MAX_SKEW_MS = 30_000;

const SLACK_MS = STALL_MS + 60_000 + 15_000 + 60_000 + 30_000 + 15_000;

/** How long after a fault the service's own healing may take, by kind (DESIGN.md, issue 10). */
const HEAL_MS: Record<string, number> = {
  // The mark check (15 s) finds the loss; the reconcile re-arms everything.
  "full loss": 60_000,
  // The census finds it at the next watchdog tick (+ its 2 s re-reading) and the reconcile
  // repairs it; unless a lasting orphan (a deregistration that died before its removal, or
  // whose wake-ups a tail loss brought back) balances the count: then the overdue scans find it,
  // as for a tail loss.
  "partial loss": OVERDUE_GRACE_MS + WATCHDOG_MS + 60_000,
  // Invisible to the mark and the census (a job moved back, a resurrected one balancing a lost
  // one): the overdue scans find it once it is overdue by the grace, at the next watchdog tick.
  "tail loss": OVERDUE_GRACE_MS + WATCHDOG_MS + 60_000,
  // Script writes are fenced (a late one changes nothing); a worker's own move or a BullMQ
  // remove is not, and is found like a tail loss.
  "late write": OVERDUE_GRACE_MS + WATCHDOG_MS + 60_000,
  // A process that dies while it runs the census' reconcile leaves its lease for 60 s and the
  // mark intact: the next watchdog tick (of any process) redoes it.
  crash: WATCHDOG_MS + 60_000 + 60_000,
};

interface Ack {
  id: string;
  reqSeq: number;
  deadline: number;
  lives: number;
  /** When the answer came. */
  at: number;
}

export class Invariants {
  readonly foreverFailing = new Set<string>();
  /** Device identities (custody "device"): their duty is to be asked, not to rotate. */
  readonly devices = new Set<string>();
  /** Uploads acknowledged (200) per device, by request step. */
  readonly uploads: { id: string; reqSeq: number }[] = [];
  private readonly events: { at: number; heal: number; kind: string }[] = [];
  private readonly acks: Ack[] = [];
  private readonly reported = new Set<string>();

  constructor(private readonly world: World) {
    world.onFault = (kind) => this.fault(kind);
  }

  fault(kind: string): void {
    this.events.push({ at: this.world.now(), heal: HEAL_MS[kind] ?? 0, kind });
  }

  acknowledged(results: readonly PullInResult[], reqSeq: number): void {
    for (const r of results) {
      this.acks.push({
        id: r.identityId,
        reqSeq,
        deadline: r.rotationDeadline,
        lives: this.world.lives(r.identityId),
        at: this.world.now(),
      });
    }
  }

  uploaded(id: string, reqSeq: number): void {
    this.uploads.push({ id, reqSeq });
  }

  /**
   * A device identity's due deadline is handled by asking: a rotate notification no earlier than
   * the deadline (a worker's skew aside), and another within the backoff cap of the last one for
   * as long as no upload comes (the device that never answers is asked forever).
   */
  private deviceAsked(id: string, deadline: number, now: number): boolean {
    const asked = this.world.notifications.filter(
      (n) => n.type === "rotate" && n.identityId === id && n.at >= deadline - MAX_SKEW_MS,
    );
    const last = asked.at(-1);
    return last !== undefined && now <= this.bound(last.at + 60_000);
  }

  /** The latest time deadline `d` may still be unhandled. */
  bound(d: number): number {
    let until = d + SLACK_MS;
    for (const e of this.events) until = Math.max(until, Math.max(d, e.at) + e.heal + SLACK_MS);
    return until;
  }

  /** Model time long enough for every bound of the run to pass. */
  quietPhaseMs(): number {
    return OVERDUE_GRACE_MS + 2 * WATCHDOG_MS + TIMING.deletionGraceMs + SLACK_MS;
  }

  private violation(key: string, message: string): void {
    if (this.reported.has(key)) return;
    this.reported.add(key);
    this.world.violations.push(message);
  }

  check(failing: ReadonlySet<string>): void {
    const now = this.world.now();
    this.checkArmed(now);
    const { identities, packages } = this.world.db;
    for (const row of identities.values()) {
      if (row.deregisteredAt !== null || failing.has(row.id) || row.rotationDeadline === null)
        continue;
      if (row.custody === "device") {
        if (
          now > this.bound(row.rotationDeadline) &&
          !this.deviceAsked(row.id, row.rotationDeadline, now)
        ) {
          this.violation(
            `device ${row.id} ${row.rotationDeadline} ${Math.floor(now / WATCHDOG_MS)}`,
            `${row.id}: device not asked (again) for its due deadline ${this.t(row.rotationDeadline)} by ${this.t(now)}`,
          );
        }
        continue;
      }
      if (now > this.bound(row.rotationDeadline)) {
        this.violation(
          `deadline ${row.id} ${row.rotationDeadline}`,
          `${row.id}: rotation deadline ${this.t(row.rotationDeadline)} still not handled at ${this.t(now)} (bound ${this.t(this.bound(row.rotationDeadline))})`,
        );
      }
    }
    for (const p of packages) {
      if (p.deleteAt !== null && now > this.bound(p.deleteAt)) {
        this.violation(
          `delete ${p.id}`,
          `${p.identityId}#${p.generation}: delete_at ${this.t(p.deleteAt)} still not deleted at ${this.t(now)}`,
        );
      }
    }
    for (const ack of this.acks) {
      if (failing.has(ack.id) || this.world.lives(ack.id) !== ack.lives) continue;
      if (identities.get(ack.id)?.deregisteredAt !== null) continue;
      // Honoured by a rotation whose package was stored after the request; for a device, also
      // by asking it after the request (whether it answers is the device's business). A device
      // awaited already (its deadline long past) has until the backoff after the request: it is
      // asked again by then, or its upload in the meantime is the rotation.
      const due = this.devices.has(ack.id) ? Math.max(ack.deadline, ack.at) + 60_000 : ack.deadline;
      const rotationDue = ack.deadline <= ack.at ? due : ack.deadline;
      const honoured =
        this.world.rotations.some(
          (r) => r.id === ack.id && r.createdSeq > ack.reqSeq && r.at <= this.bound(rotationDue),
        ) ||
        (this.devices.has(ack.id) &&
          this.world.notifications.some(
            (n) =>
              n.type === "rotate" &&
              n.identityId === ack.id &&
              n.seq > ack.reqSeq &&
              n.at <= this.bound(due),
          ));
      if (!honoured && now > this.bound(due)) {
        this.violation(
          `ack ${ack.id} ${ack.reqSeq}`,
          `${ack.id}: welcome acknowledged with deadline ${this.t(ack.deadline)} (request at step ${ack.reqSeq}) not honoured by ${this.t(now)}`,
        );
      }
    }
  }

  /**
   * The arm invariant (DESIGN.md, guarantee 2), once the service has had time to heal the last
   * fault: every live identity's rotation wake-up, and its deletion wake-up while it has a
   * superseded package, fires no later than the deadline (a worker's skew aside), or is
   * waiting, running, or retrying within the backoff cap. Checked only at quiet points.
   */
  private checkArmed(now: number): void {
    if (this.events.some((e) => now <= e.at + e.heal + SLACK_MS)) return;
    const { identities, packages } = this.world.db;
    for (const row of identities.values()) {
      if (row.deregisteredAt !== null || row.rotationDeadline === null) continue;
      const deleteAts = packages.flatMap((p) =>
        p.identityId === row.id && p.deleteAt !== null ? [p.deleteAt] : [],
      );
      const wanted = {
        rotation: row.rotationDeadline,
        deletion: deleteAts.length > 0 ? Math.min(...deleteAts) : null,
      };
      for (const kind of ["rotation", "deletion"] as const) {
        const deadline = wanted[kind];
        if (deadline === null) continue;
        const job = this.world.redis.queues[kind].get(row.id);
        const ok =
          job !== undefined &&
          (job.state === "waiting" ||
            job.state === "active" ||
            (job.state === "delayed" &&
              job.fireAt <= Math.max(deadline, now + 60_000) + MAX_SKEW_MS));
        if (!ok) {
          this.violation(
            `armed ${kind} ${row.id} ${deadline}`,
            `${row.id}: no ${kind} wake-up for its deadline ${this.t(deadline)} at ${this.t(now)} (job: ${job ? `${job.state}${job.state === "delayed" ? ` at ${this.t(job.fireAt)}` : ""}` : "missing"})`,
          );
        }
      }
    }
  }

  final(failing: ReadonlySet<string>): void {
    this.check(failing);
  }

  /** The next moment something is due in Redis for a live worker (a fire time, a stall). */
  nextDue(procs: readonly ModelProcess[]): number {
    const now = this.world.now();
    const skews = procs.filter((p) => p.worker && !p.proc.dead).map((p) => p.proc.skew);
    const ahead = skews.length === 0 ? 0 : Math.max(...skews);
    let next = Number.POSITIVE_INFINITY;
    for (const queue of Object.values(this.world.redis.queues)) {
      for (const job of queue.values()) {
        const at =
          job.state === "delayed" ? job.fireAt - ahead : (job.stallAt ?? Number.POSITIVE_INFINITY);
        if (at > now && at < next) next = at;
      }
    }
    return next;
  }

  /** A job some live worker would take now. */
  workPending(procs: readonly ModelProcess[]): boolean {
    const now = this.world.now();
    const workers = procs.filter((p) => p.worker && !p.proc.dead);
    if (workers.length === 0) return false;
    const ahead = Math.max(...workers.map((p) => p.proc.skew));
    for (const queue of Object.values(this.world.redis.queues)) {
      for (const job of queue.values()) {
        if (job.state === "waiting" || (job.state === "delayed" && job.fireAt <= now + ahead))
          return true;
        if (job.state === "active" && job.stallAt !== undefined && job.stallAt <= now) return true;
      }
    }
    return false;
  }

  private t(ms: number): string {
    return `T+${Math.round((ms - this.world.t0) / 1000)}s`;
  }
}
