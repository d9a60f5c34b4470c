/**
 * The invariants, checked directly against Postgres and Redis.
 *
 * Two test-only triggers keep a history the service itself throws away (superseded key packages
 * are deleted 1 s after a rotation): `fault_audit_identity` records every write of an identity's
 * generation or rotation deadline (with the values before and after, and Postgres'
 * clock_timestamp()), `fault_audit_kp_delete` every deleted key package with its delete_at and
 * the time of the delete. Both live in the scenario's private database; the service never reads
 * them. All clocks are this machine's clock (the service stores its own Date.now() values).
 */
import type { Cluster, Redis } from "ioredis";
import { shardOf, shardPrefix } from "../../src/queue/layout.js";
import type postgres from "postgres";
import type { WelcomeAck } from "./load.js";

export const AUDIT_SQL = `
create table if not exists fault_audit_identity (
  seq bigserial primary key,
  id text not null,
  op text not null,
  old_gen int,
  new_gen int,
  old_deadline timestamptz(3),
  new_deadline timestamptz(3),
  last_rotated_at timestamptz(3),
  at timestamptz not null default clock_timestamp(),
  txid bigint not null default txid_current()
);
create or replace function fault_audit_identity_fn() returns trigger language plpgsql as $$
begin
  if tg_op = 'INSERT' then
    insert into fault_audit_identity (id, op, new_gen, new_deadline, last_rotated_at)
    values (new.id, 'I', new.generation, new.rotation_deadline, new.last_rotated_at);
  elsif new.generation is distinct from old.generation
     or new.rotation_deadline is distinct from old.rotation_deadline then
    insert into fault_audit_identity
      (id, op, old_gen, new_gen, old_deadline, new_deadline, last_rotated_at)
    values (new.id, 'U', old.generation, new.generation, old.rotation_deadline,
      new.rotation_deadline, new.last_rotated_at);
  end if;
  return null;
end $$;
drop trigger if exists fault_audit_identity_trg on identities;
create trigger fault_audit_identity_trg after insert or update on identities
  for each row execute function fault_audit_identity_fn();
create table if not exists fault_audit_kp_delete (
  id bigint not null,
  identity_id text not null,
  generation int not null,
  is_current boolean not null,
  delete_at timestamptz(3),
  deleted_at timestamptz not null default clock_timestamp()
);
create or replace function fault_audit_kp_delete_fn() returns trigger language plpgsql as $$
begin
  insert into fault_audit_kp_delete (id, identity_id, generation, is_current, delete_at)
  values (old.id, old.identity_id, old.generation, old.is_current, old.delete_at);
  return null;
end $$;
drop trigger if exists fault_audit_kp_delete_trg on key_packages;
create trigger fault_audit_kp_delete_trg after delete on key_packages
  for each row execute function fault_audit_kp_delete_fn();
`;

export interface AuditRow {
  seq: number;
  id: string;
  op: "I" | "U";
  oldGen: number | null;
  newGen: number | null;
  oldDeadline: number | null;
  newDeadline: number | null;
  lastRotatedAt: number | null;
  at: number;
  txid: number;
}

const ms = (d: Date | null): number | null => (d === null ? null : d.getTime());

export async function readAudit(sql: postgres.Sql): Promise<Map<string, AuditRow[]>> {
  const rows = await sql<
    {
      seq: string;
      id: string;
      op: "I" | "U";
      old_gen: number | null;
      new_gen: number | null;
      old_deadline: Date | null;
      new_deadline: Date | null;
      last_rotated_at: Date | null;
      at: Date;
      txid: string;
    }[]
  >`select * from fault_audit_identity order by seq`;
  const byId = new Map<string, AuditRow[]>();
  for (const r of rows) {
    const row: AuditRow = {
      seq: Number(r.seq),
      id: r.id,
      op: r.op,
      oldGen: r.old_gen,
      newGen: r.new_gen,
      oldDeadline: ms(r.old_deadline),
      newDeadline: ms(r.new_deadline),
      lastRotatedAt: ms(r.last_rotated_at),
      at: r.at.getTime(),
      txid: Number(r.txid),
    };
    const list = byId.get(r.id);
    if (list) list.push(row);
    else byId.set(r.id, [row]);
  }
  return byId;
}

/** A rotation in the audit: the generation went up (by one, or it is a violation). */
const isRotation = (r: AuditRow) =>
  r.op === "U" && r.oldGen !== null && r.newGen !== null && r.newGen > r.oldGen;

/** Rotations after the first publish at registration (generation 0 -> 1). */
export function timerRotations(audit: Map<string, AuditRow[]>): AuditRow[] {
  return [...audit.values()].flat().filter((r) => isRotation(r) && (r.oldGen ?? 0) >= 1);
}

export interface WelcomeVerdict {
  served: number;
  unserved: WelcomeAck[];
  lost: { ack: WelcomeAck; why: string }[];
  /** Rotation time minus the acknowledged deadline, over the served welcomes. */
  lateness: number[];
  /** Deadlines later than the welcome's answer + WELCOME_ROTATION_DELAY (earliest-wins broken). */
  tooLate: WelcomeAck[];
  servedBy: { identityId: string; deadline: number; lateMs: number; rotatedAt: number }[];
}

/**
 * Every acknowledged welcome led to a rotation no later than its deadline + allowance.
 *
 * Which rotation serves a welcome: the answer's deadline D was committed in Postgres by some write
 * (this welcome's pull-in, or an earlier write it found sooner: earliest wins). That write is the
 * last audit row of the identity that set the deadline to exactly D no later than the answer.
 * Deadlines only move earlier until a rotation moves them on, so the welcome is served by the
 * first rotation committed after that write (a rotation already publishing when the welcome came
 * counts: it replaces the consumed key package). Its promotion time (last_rotated_at) must be
 * <= D + allowance. A welcome whose D cannot be found in the audit is reported as lost too.
 */
export function judgeWelcomes(
  acks: readonly WelcomeAck[],
  audit: Map<string, AuditRow[]>,
  opts: { allowanceMs: number; welcomeDelayMs: number; now: number },
): WelcomeVerdict {
  const verdict: WelcomeVerdict = {
    served: 0,
    unserved: [],
    lost: [],
    lateness: [],
    tooLate: [],
    servedBy: [],
  };
  for (const ack of acks) {
    if (ack.deadline > ack.answeredAt + opts.welcomeDelayMs) verdict.tooLate.push(ack);
    const rows = audit.get(ack.identityId) ?? [];
    let write: AuditRow | undefined;
    for (const r of rows) {
      if (r.at > ack.answeredAt) break;
      if (r.newDeadline === ack.deadline) write = r;
    }
    if (write === undefined) {
      verdict.lost.push({ ack, why: "acknowledged deadline never written in Postgres" });
      continue;
    }
    const writeSeq = write.seq;
    const serving = rows.find((r) => r.seq > writeSeq && isRotation(r));
    if (serving === undefined) {
      if (opts.now > ack.deadline + opts.allowanceMs) {
        verdict.lost.push({ ack, why: "no rotation after the acknowledged deadline" });
      } else verdict.unserved.push(ack);
      continue;
    }
    const late = (serving.lastRotatedAt ?? serving.at) - ack.deadline;
    if (late > opts.allowanceMs) {
      verdict.lost.push({ ack, why: `rotation ${late} ms after the acknowledged deadline` });
      continue;
    }
    verdict.served++;
    verdict.lateness.push(late);
    verdict.servedBy.push({
      identityId: ack.identityId,
      deadline: ack.deadline,
      lateMs: late,
      rotatedAt: serving.lastRotatedAt ?? serving.at,
    });
  }
  return verdict;
}

export interface RotationVerdict {
  rotations: number;
  firstPublishes: number;
  /** A rotation committed while its deadline had not passed: a second rotation for a deadline. */
  notDue: AuditRow[];
  /** The generation jumped by more than one, or went down. */
  generationJumps: AuditRow[];
  /** Two rotations of one identity closer than min(ROTATION_INTERVAL, WELCOME_ROTATION_DELAY). */
  tooClose: { first: AuditRow; second: AuditRow }[];
}

/**
 * "No identity rotated twice for the same deadline", observably:
 *  - a rotation is only committed once the deadline in force has passed: the deadline it replaced
 *    (old_deadline) <= its promotion time. A second rotation for a deadline the first one already
 *    moved on would replace a deadline in the future;
 *  - generations go up by exactly one per rotation (with the unique (identity, generation) index:
 *    no generation twice);
 *  - two rotations of an identity are at least min(ROTATION_INTERVAL, WELCOME_ROTATION_DELAY)
 *    apart: after a rotation at t the deadline is t + interval, and a welcome can only pull it in
 *    to (its own time >= t) + delay.
 */
export function judgeRotations(audit: Map<string, AuditRow[]>, minGapMs: number): RotationVerdict {
  const verdict: RotationVerdict = {
    rotations: 0,
    firstPublishes: 0,
    notDue: [],
    generationJumps: [],
    tooClose: [],
  };
  for (const rows of audit.values()) {
    let previous: AuditRow | undefined;
    for (const r of rows) {
      if (r.op !== "U" || r.oldGen === null || r.newGen === null) continue;
      const step = r.newGen - r.oldGen;
      if (step !== 0 && step !== 1) verdict.generationJumps.push(r);
      if (!isRotation(r)) continue;
      if (r.oldGen === 0) {
        verdict.firstPublishes++;
        previous = r;
        continue;
      }
      verdict.rotations++;
      const promotedAt = r.lastRotatedAt ?? r.at;
      if (r.oldDeadline === null || r.oldDeadline > promotedAt) verdict.notDue.push(r);
      if (previous !== undefined) {
        const gap = promotedAt - (previous.lastRotatedAt ?? previous.at);
        if (gap < minGapMs) verdict.tooClose.push({ first: previous, second: r });
      }
      previous = r;
    }
  }
  return verdict;
}

export interface DeletionVerdict {
  deleted: number;
  early: { id: number; identityId: string; deleteAt: number; deletedAt: number }[];
  currentDeleted: number;
  pendingDeleted: number;
}

/** No key package deleted before its delete_at; no current one deleted (no deregistrations here). */
export async function judgeDeletions(sql: postgres.Sql): Promise<DeletionVerdict> {
  const rows = await sql<
    {
      id: string;
      identity_id: string;
      is_current: boolean;
      delete_at: Date | null;
      deleted_at: Date;
      deregistered: boolean;
    }[]
  >`select d.*, (i.deregistered_at is not null) as deregistered
    from fault_audit_kp_delete d left join identities i on i.id = d.identity_id`;
  const verdict: DeletionVerdict = { deleted: 0, early: [], currentDeleted: 0, pendingDeleted: 0 };
  for (const r of rows) {
    if (r.deregistered) continue;
    verdict.deleted++;
    if (r.is_current) verdict.currentDeleted++;
    else if (r.delete_at === null) verdict.pendingDeleted++;
    else if (r.deleted_at.getTime() < r.delete_at.getTime()) {
      verdict.early.push({
        id: Number(r.id),
        identityId: r.identity_id,
        deleteAt: r.delete_at.getTime(),
        deletedAt: r.deleted_at.getTime(),
      });
    }
  }
  return verdict;
}

/**
 * Polls key_packages every 100 ms into memory; when a row disappears, the poll that no longer
 * sees it ended after the delete, so ending before the row's delete_at proves an early delete.
 */
export class KeyPackagePoller {
  private readonly seen = new Map<
    number,
    { deleteAt: number | null; current: boolean; identityId: string }
  >();
  private running = true;
  private readonly loop: Promise<void>;
  polls = 0;
  failedPolls = 0;
  disappeared = 0;
  /** Rows that vanished while last seen current or pending (never seen superseded). */
  vanishedUnseenSuperseded = 0;
  readonly early: { id: number; deleteAt: number; seenGoneAt: number }[] = [];

  constructor(private readonly sql: postgres.Sql) {
    this.loop = (async () => {
      while (this.running) {
        const started = Date.now();
        try {
          await this.poll();
        } catch {
          this.failedPolls++;
        }
        await new Promise((r) => setTimeout(r, Math.max(0, 100 - (Date.now() - started))));
      }
    })();
  }

  private async poll(): Promise<void> {
    const rows = await this.sql<
      { id: string; identity_id: string; is_current: boolean; delete_at: Date | null }[]
    >`select id, identity_id, is_current, delete_at from key_packages`;
    const end = Date.now();
    this.polls++;
    const present = new Set<number>();
    for (const r of rows) {
      const id = Number(r.id);
      present.add(id);
      this.seen.set(id, {
        deleteAt: r.delete_at?.getTime() ?? null,
        current: r.is_current,
        identityId: r.identity_id,
      });
    }
    for (const [id, last] of this.seen) {
      if (present.has(id)) continue;
      this.seen.delete(id);
      this.disappeared++;
      if (last.deleteAt === null) this.vanishedUnseenSuperseded++;
      else if (end < last.deleteAt)
        this.early.push({ id, deleteAt: last.deleteAt, seenGoneAt: end });
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }
}

export interface StateVerdict {
  badState: number;
  liveIdentities: number;
  /** Live identities without exactly one current key package. */
  notOneCurrent: string[];
  morePending: string[];
  noDeadline: string[];
}

/** Every key package current, pending or superseded; each live identity exactly one current. */
export async function judgeStates(sql: postgres.Sql): Promise<StateVerdict> {
  const [bad] = await sql<{ n: number }[]>`
    select count(*)::int as n from key_packages where not (
      (is_current and delete_at is null and published_at is not null)
      or (not is_current and delete_at is not null)
      or (not is_current and delete_at is null and published_at is null))`;
  const rows = await sql<{ id: string; current: number; pending: number; has_deadline: boolean }[]>`
    select i.id,
      (select count(*)::int from key_packages k where k.identity_id = i.id and k.is_current) as current,
      (select count(*)::int from key_packages k where k.identity_id = i.id and not k.is_current
         and k.delete_at is null) as pending,
      i.rotation_deadline is not null as has_deadline
    from identities i where i.deregistered_at is null`;
  return {
    badState: bad?.n ?? -1,
    liveIdentities: rows.length,
    notOneCurrent: rows.filter((r) => r.current !== 1).map((r) => r.id),
    morePending: rows.filter((r) => r.pending > 1).map((r) => r.id),
    noDeadline: rows.filter((r) => !r.has_deadline).map((r) => r.id),
  };
}

type JobState = "delayed" | "wait" | "active" | "prioritized" | "paused" | "completed" | "failed";

interface JobFacts {
  exists: boolean;
  states: JobState[];
  fireAt?: number;
  failures: number;
}

export interface ArmProblem {
  identityId: string;
  kind: "rotation" | "deletion";
  deadline: number;
  problem: string;
}

export interface ArmVerdict {
  checked: number;
  problems: ArmProblem[];
  /** Delayed past an overdue deadline, but within the design's backoff allowance (failures > 0). */
  backingOff: number;
}

/** Where the queues are: the scenario's QUEUE_SHARDS and whether it runs on a cluster. */
export interface QueueLayout {
  shards: number;
  cluster: boolean;
}

/** jobFacts per queue shard: on a cluster a pipeline must stay within one slot. */
async function shardedJobFacts(
  redis: Redis | Cluster,
  prefix: string,
  layout: QueueLayout,
  queue: string,
  ids: string[],
): Promise<Map<string, JobFacts>> {
  const groups = new Map<string, string[]>();
  for (const id of ids) {
    const at = shardPrefix({ prefix, ...layout }, shardOf(id, layout.shards));
    groups.set(at, [...(groups.get(at) ?? []), id]);
  }
  const facts = new Map<string, JobFacts>();
  for (const [at, group] of groups) {
    for (const [id, f] of await jobFacts(redis, at, queue, group)) facts.set(id, f);
  }
  return facts;
}

async function jobFacts(redis: Redis | Cluster, prefix: string, queue: string, ids: string[]) {
  const base = `${prefix}:${queue}`;
  const pipeline = redis.pipeline();
  for (const id of ids) {
    const jobId = `id-${id}`;
    pipeline.exists(`${base}:${jobId}`);
    pipeline.zscore(`${base}:delayed`, jobId);
    pipeline.lpos(`${base}:wait`, jobId);
    pipeline.lpos(`${base}:active`, jobId);
    pipeline.zscore(`${base}:prioritized`, jobId);
    pipeline.lpos(`${base}:paused`, jobId);
    pipeline.zscore(`${base}:completed`, jobId);
    pipeline.zscore(`${base}:failed`, jobId);
    pipeline.hget(`${base}:${jobId}`, "data");
  }
  const replies = (await pipeline.exec()) ?? [];
  const facts = new Map<string, JobFacts>();
  ids.forEach((id, i) => {
    const at = (k: number) => {
      const [err, value] = replies[i * 9 + k] ?? [];
      if (err) throw err;
      return value;
    };
    const states: JobState[] = [];
    const score = at(1);
    if (score !== null) states.push("delayed");
    if (at(2) !== null) states.push("wait");
    if (at(3) !== null) states.push("active");
    if (at(4) !== null) states.push("prioritized");
    if (at(5) !== null) states.push("paused");
    if (at(6) !== null) states.push("completed");
    if (at(7) !== null) states.push("failed");
    let failures = 0;
    try {
      failures = (JSON.parse(String(at(8) ?? "{}")) as { failures?: number }).failures ?? 0;
    } catch {
      failures = 0;
    }
    facts.set(id, {
      exists: at(0) === 1,
      states,
      fireAt: typeof score === "string" ? Math.floor(Number(score) / 4096) : undefined,
      failures,
    });
  });
  return facts;
}

/**
 * The arm invariant, checked the way the service itself arms: holding the row locks of all live
 * identities (SELECT ... FOR UPDATE, in id order), so no arm of theirs is in flight. Each live
 * identity has a rotation deadline and exactly one rotation wake-up, in exactly one BullMQ state:
 * delayed with fire time <= deadline, or waiting/active (a worker has it or will take it now).
 * Where it has superseded key packages, the same for its deletion wake-up and the earliest
 * delete_at. The one allowed exception is the design's: an overdue deadline whose job is backing
 * off after failures (failures > 0) and fires within the maximum backoff (60 s).
 */
export async function judgeArms(
  sql: postgres.Sql,
  redis: Redis | Cluster,
  prefix: string,
  layout: QueueLayout = { shards: 1, cluster: false },
): Promise<ArmVerdict> {
  return sql.begin(async (tx) => {
    const rows = await tx<{ id: string; deadline: Date | null }[]>`
      select id, rotation_deadline as deadline from identities
      where deregistered_at is null order by id for update`;
    const deletes = await tx<{ id: string; at: Date }[]>`
      select identity_id as id, min(delete_at) as at from key_packages
      where delete_at is not null group by identity_id`;
    const deleteAt = new Map(deletes.map((d) => [d.id, d.at.getTime()]));
    const ids = rows.map((r) => r.id);
    const [rotation, deletion] = await Promise.all([
      shardedJobFacts(redis, prefix, layout, "rotation", ids),
      shardedJobFacts(redis, prefix, layout, "deletion", ids),
    ]);
    const now = Date.now();
    const verdict: ArmVerdict = { checked: ids.length, problems: [], backingOff: 0 };
    const judge = (
      kind: "rotation" | "deletion",
      id: string,
      deadline: number,
      job: JobFacts | undefined,
    ) => {
      const problem = (text: string) =>
        verdict.problems.push({ identityId: id, kind, deadline, problem: text });
      if (job === undefined || !job.exists) return problem("no wake-up job");
      if (job.states.length !== 1) return problem(`job in states [${job.states.join(",")}]`);
      const state = job.states[0];
      if (state === "wait" || state === "active" || state === "prioritized") return;
      if (state !== "delayed" || job.fireAt === undefined) return problem(`job ${state}`);
      if (job.fireAt <= deadline) return;
      if (deadline <= now && job.failures > 0 && job.fireAt <= now + 60_000) {
        verdict.backingOff++;
        return;
      }
      problem(`fires at ${job.fireAt}, ${job.fireAt - deadline} ms after the deadline`);
    };
    for (const r of rows) {
      if (r.deadline === null) {
        verdict.problems.push({
          identityId: r.id,
          kind: "rotation",
          deadline: 0,
          problem: "no deadline",
        });
        continue;
      }
      judge("rotation", r.id, r.deadline.getTime(), rotation.get(r.id));
      const d = deleteAt.get(r.id);
      if (d !== undefined) judge("deletion", r.id, d, deletion.get(r.id));
    }
    return verdict;
  });
}
