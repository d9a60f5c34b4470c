/**
 * One fault scenario from start to verdict: private Postgres and Redis, migrations, the audit
 * triggers, the real API and worker processes, registered identities and a key-package poller;
 * then load, the fault (in the test), settling, and every invariant of checks.ts.
 */
import { appendFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseDuration } from "../../src/core/duration.js";
import {
  AUDIT_SQL,
  type ArmVerdict,
  judgeArms,
  judgeDeletions,
  judgeRotations,
  judgeStates,
  judgeWelcomes,
  KeyPackagePoller,
  readAudit,
} from "./checks.js";
import { Harness, type Service, sleep } from "./harness.js";
import { Recorder, registerAll, SteadyLoad, type SteadyLoadOptions } from "./load.js";

export const SUMMARY_FILE = join(tmpdir(), "kp-rotor-faults-summary.jsonl");
const BACKOFF_MAX_MS = 60_000;

export interface ScenarioOptions {
  name: string;
  identities: number;
  workers: number;
  env?: Record<string, string>;
  registerConcurrency?: number;
  /** Extra identities outside the steady load, for probing what refused welcomes wrote. */
  probes?: number;
  /** Run on a private three-primary Redis Cluster with QUEUE_SHARDS=3 (Harness.create). */
  cluster?: boolean;
}

export interface ProbeRecord {
  id: string;
  sentAt: number;
  answeredAt: number;
  status: number;
}

export interface ProbeVerdict {
  /** Probe welcomes sent while the fault lasted, and how they were answered. */
  statuses: Record<string, number>;
  /** Probes whose every welcome in the window was refused. */
  refusedOnly: number;
  /** Deadline writes (not rotations) of those probes within the window: a refusal that wrote. */
  traces: { identityId: string; at: number; newDeadline: number | null }[];
}

/**
 * About 3 to 4 welcomes a second over 100 identities: each one pulls a rotation in (200 ms), so
 * with the periodic rotations (ROTATION_INTERVAL 60 s) the workers rotate about 5 times a second,
 * which two shared cores sustain while processes are killed and restarted. Much more and the
 * backlog, not the fault, decides how late rotations are.
 */
export const DEFAULT_LOAD: SteadyLoadOptions = {
  loops: 2,
  pauseMs: 600,
  batchShare: 0.2,
  batchMax: 4,
};

export interface Report {
  scenario: string;
  faults: number;
  requests: number;
  accepted: number;
  refused5xx: number;
  status500: number;
  connectionErrors: number;
  welcomesAcked: number;
  rotations: number;
  deletions: number;
  lost: number;
  duplicated: number;
  earlyDeletions: number;
  armProblems: number;
  stateProblems: number;
  maxLateMs: number;
  p99LateMs: number;
  runtimeS: number;
  extra: Record<string, unknown>;
  violations: string[];
}

const ms = (name: string, env: Record<string, string>) => {
  const value = parseDuration(env[name] ?? "");
  if (value === undefined) throw new Error(`${name} missing from the scenario env`);
  return value;
};

export class Scenario {
  readonly recorder: Recorder;
  readonly startedAt = Date.now();
  faults = 0;
  readonly extra: Record<string, unknown> = {};
  private load: SteadyLoad | undefined;
  private poller: KeyPackagePoller | undefined;
  private readonly restarted = new Set<Service>();

  private constructor(
    readonly name: string,
    readonly h: Harness,
    readonly ids: string[],
    readonly probeIds: string[],
  ) {
    this.recorder = new Recorder(() => h.apiUrl);
  }

  get env(): Record<string, string> {
    return this.h.env;
  }

  static async start(opts: ScenarioOptions): Promise<Scenario> {
    const h = await Harness.create(opts.env, { cluster: opts.cluster === true });
    const ids = Array.from({ length: opts.identities }, (_, i) => `fault-${i}`);
    const probeIds = Array.from({ length: opts.probes ?? 0 }, (_, i) => `probe-${i}`);
    const scenario = new Scenario(opts.name, h, ids, probeIds);
    try {
      await h.cli(["migrate"]);
      await h.sql.unsafe(AUDIT_SQL);
      await h.startApi();
      for (let i = 0; i < opts.workers; i++) h.startWorker();
      await registerAll(h.apiUrl, [...ids, ...probeIds], opts.registerConcurrency ?? 4);
      scenario.poller = new KeyPackagePoller(h.sql);
    } catch (err) {
      await scenario.dispose(true);
      throw err;
    }
    return scenario;
  }

  startLoad(options: SteadyLoadOptions = DEFAULT_LOAD): void {
    this.load = new SteadyLoad(this.recorder, this.ids, options);
  }

  async stopLoad(): Promise<void> {
    await this.load?.stop();
    this.load = undefined;
  }

  /** Sends welcomes to the probe identities (round robin, every `everyMs`) while `during` runs. */
  async probeWhile(during: () => Promise<void>, everyMs = 300): Promise<ProbeRecord[]> {
    const sent: ProbeRecord[] = [];
    let running = true;
    const loop = (async () => {
      for (let i = 0; running; i++) {
        const id = this.probeIds[i % this.probeIds.length] as string;
        const record = await this.recorder.welcome(id, 10_000);
        sent.push({ id, ...record });
        await sleep(everyMs);
      }
    })();
    try {
      await during();
    } finally {
      running = false;
      await loop;
    }
    return sent;
  }

  /**
   * A probe whose every welcome was refused has no deadline write within that window: a refusal
   * acknowledged nothing and wrote nothing. (Run once Postgres answers again.)
   */
  async judgeProbes(sent: ProbeRecord[]): Promise<ProbeVerdict> {
    const audit = await readAudit(this.h.sql);
    const verdict: ProbeVerdict = { statuses: {}, refusedOnly: 0, traces: [] };
    for (const r of sent) verdict.statuses[r.status] = (verdict.statuses[r.status] ?? 0) + 1;
    for (const id of this.probeIds) {
      const mine = sent.filter((r) => r.id === id);
      if (mine.length === 0 || mine.some((r) => r.status >= 200 && r.status < 300)) continue;
      verdict.refusedOnly++;
      const from = Math.min(...mine.map((r) => r.sentAt));
      const to = Math.max(...mine.map((r) => r.answeredAt));
      for (const row of audit.get(id) ?? []) {
        if (row.at < from || row.at > to || row.op !== "U" || row.newGen !== row.oldGen) continue;
        verdict.traces.push({ identityId: id, at: row.at, newDeadline: row.newDeadline });
      }
    }
    return verdict;
  }

  /**
   * Restarts services that exited on their own (as a supervisor would) and returns their names.
   */
  async restartCrashed(): Promise<string[]> {
    const crashed = this.h.services.filter((sv) => sv.crashed() && !this.restarted.has(sv));
    for (const sv of crashed) {
      this.restarted.add(sv);
      if (sv.name.startsWith("api")) await this.h.startApi();
      else this.h.startWorker();
    }
    return crashed.map((sv) => sv.name);
  }

  /** `kp-rotor reconcile --quiet`, once; returns its JSON summary. */
  async reconcile(): Promise<Record<string, unknown>> {
    const out = await this.h.cli(["reconcile", "--quiet"]);
    return JSON.parse(out) as Record<string, unknown>;
  }

  /** SIGKILLs a worker and starts another in its place. */
  async replaceWorker(victim: Service): Promise<Service> {
    await victim.kill("SIGKILL");
    this.faults++;
    return this.h.startWorker();
  }

  /**
   * Stops the load, waits until every acknowledged welcome is served (or past its allowance),
   * waits for the arm invariant (at most max backoff + stall recovery), then judges everything.
   * `faultMs`: the longest time the fault kept the service from working (added to the allowance).
   */
  async settle(faultMs: number, options: { judgeAcks?: boolean } = {}): Promise<Report> {
    await this.stopLoad();
    const env = this.env;
    const lock = ms("WORKER_LOCK_DURATION", env);
    const stalled = ms("WORKER_STALLED_INTERVAL", env);
    const welcomeDelay = ms("WELCOME_ROTATION_DELAY", env);
    const interval = ms("ROTATION_INTERVAL", env);
    // The design's bound: the deadline, plus the fault, plus stall recovery, plus the longest
    // backoff; 10 s more for a starved machine (two cores shared with everything else).
    const allowanceMs = faultMs + lock + stalled + BACKOFF_MAX_MS + 10_000;
    const acks = options.judgeAcks === false ? [] : this.recorder.acks;

    let welcomes = judgeWelcomes(acks, await readAudit(this.h.sql), {
      allowanceMs,
      welcomeDelayMs: welcomeDelay,
      now: Date.now(),
    });
    while (welcomes.unserved.length > 0) {
      await sleep(1_000);
      welcomes = judgeWelcomes(acks, await readAudit(this.h.sql), {
        allowanceMs,
        welcomeDelayMs: welcomeDelay,
        now: Date.now(),
      });
    }

    const armUntil = Date.now() + BACKOFF_MAX_MS + lock + stalled + 15_000;
    let arms: ArmVerdict;
    for (;;) {
      arms = await judgeArms(this.h.sql, this.h.admin, this.h.prefix, {
        shards: Number(this.env.QUEUE_SHARDS ?? 1),
        cluster: this.h.cluster !== undefined,
      });
      if ((arms.problems.length === 0 && arms.backingOff === 0) || Date.now() > armUntil) break;
      await sleep(1_000);
    }
    await this.poller?.stop();
    const audit = await readAudit(this.h.sql);
    welcomes = judgeWelcomes(acks, audit, {
      allowanceMs,
      welcomeDelayMs: welcomeDelay,
      now: Date.now(),
    });
    const rotations = judgeRotations(audit, Math.min(interval, welcomeDelay));
    const deletions = await judgeDeletions(this.h.sql);
    const states = await judgeStates(this.h.sql);
    const poller = this.poller;

    const violations: string[] = [];
    const add = (what: string, items: unknown[]) => {
      if (items.length > 0) {
        violations.push(`${what}: ${items.length}, e.g. ${JSON.stringify(items.slice(0, 3))}`);
      }
    };
    add("lost welcomes", welcomes.lost);
    add("welcome deadlines later than answer + delay", welcomes.tooLate);
    add("rotations of a deadline not yet due (second rotation)", rotations.notDue);
    add("generation jumps", rotations.generationJumps);
    add("rotations closer than min(interval, welcome delay)", rotations.tooClose);
    add("key packages deleted before delete_at (audit)", deletions.early);
    add("key packages deleted before delete_at (poller)", poller?.early ?? []);
    add(
      "current key packages deleted",
      deletions.currentDeleted > 0 ? [deletions.currentDeleted] : [],
    );
    add("key packages in no state", states.badState !== 0 ? [states.badState] : []);
    add("live identities without exactly one current key package", states.notOneCurrent);
    add("live identities with two pending key packages", states.morePending);
    add("live identities without a deadline", states.noDeadline);
    add("wake-ups not armed (under row locks)", arms.problems);

    const stats = this.recorder.stats();
    const slow = new Map<string, (typeof welcomes.servedBy)[number]>();
    for (const w of welcomes.servedBy) {
      if (w.lateMs > lock + stalled + 3_000) slow.set(`${w.identityId}@${w.deadline}`, w);
    }
    const latest = [...slow.values()].sort((a, b) => b.lateMs - a.lateMs).slice(0, 5);
    const late = [...welcomes.lateness].sort((a, b) => a - b);
    const report: Report = {
      scenario: this.name,
      faults: this.faults,
      requests: stats.requests,
      accepted: stats.accepted,
      refused5xx: stats.refused5xx,
      status500: stats.status500,
      connectionErrors: stats.connectionErrors,
      welcomesAcked: stats.welcomesAcked,
      rotations: rotations.rotations,
      deletions: deletions.deleted,
      lost: welcomes.lost.length,
      duplicated:
        rotations.notDue.length + rotations.generationJumps.length + rotations.tooClose.length,
      earlyDeletions: deletions.early.length + (poller?.early.length ?? 0),
      armProblems: arms.problems.length,
      stateProblems:
        (states.badState === 0 ? 0 : 1) +
        states.notOneCurrent.length +
        states.morePending.length +
        states.noDeadline.length,
      maxLateMs: late[late.length - 1] ?? 0,
      p99LateMs: late[Math.floor(late.length * 0.99)] ?? 0,
      runtimeS: Math.round((Date.now() - this.startedAt) / 1000),
      extra: {
        ...this.extra,
        allowanceMs,
        servedLaterThanStallRecovery: welcomes.servedBy.filter(
          (w) => w.lateMs > lock + stalled + 3_000,
        ).length,
        latestServed: latest,
        firstPublishes: rotations.firstPublishes,
        backingOffAtEnd: arms.backingOff,
        pendingDeleted: deletions.pendingDeleted,
        pollerPolls: poller?.polls,
        pollerFailedPolls: poller?.failedPolls,
        pollerSawDisappear: poller?.disappeared,
        pollerVanishedUnseenSuperseded: poller?.vanishedUnseenSuperseded,
        handlerFailedLogLines: this.h.countLogLines(/wake-up handler failed/),
        wakeFailedLogLines: this.h.countLogLines(/wake-up failed; retrying/),
        internalErrorLogLines: this.h.countLogLines(/"internal error"/),
        logDir: this.h.logDir,
      },
      violations,
    };
    appendFileSync(SUMMARY_FILE, `${JSON.stringify(report)}\n`);
    console.log(`[faults] ${this.name}\n${JSON.stringify(report, null, 2)}`);
    return report;
  }

  /** Stops everything; keeps the logs (and the cluster directory) when `keep` or FAULTS_KEEP. */
  async dispose(failed = false): Promise<void> {
    await this.stopLoad().catch(() => {});
    await this.poller?.stop().catch(() => {});
    await this.h.shutdown(failed);
  }
}

/** Statuses seen in a window of requests (for the 503-not-500 checks). */
export function statusesBetween(
  recorder: Recorder,
  from: number,
  to: number,
): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const r of recorder.requests) {
    if (r.sentAt < from || r.sentAt > to) continue;
    const key = String(r.status);
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return counts;
}
