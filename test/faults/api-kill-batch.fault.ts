/**
 * Scenario 6: the API process SIGKILLed in the middle of POST /v1/welcomes with 1,000 identity
 * ids. A batch is one transaction: afterwards each id's deadline is unchanged or pulled in, and
 * either every id the batch could pull in was pulled in (to the one deadline the batch computed)
 * or none was.
 *
 * To see every attempt's effect, each attempt must be able to pull every deadline in again: the
 * API is restarted after each kill anyway, and each restart gets a WELCOME_ROTATION_DELAY 40 s
 * shorter than the one before (from 10 min), so an attempt's deadline (now + delay) is always
 * earlier than the last committed one. Deadlines stay minutes away: no rotation interferes.
 */
import { afterEach, expect, it } from "vitest";
import { sleep } from "./harness.js";
import { Recorder } from "./load.js";
import { Scenario } from "./scenario.js";

let scenario: Scenario | undefined;
afterEach(async (ctx) => {
  await scenario?.dispose(ctx.task.result?.state === "fail");
  scenario = undefined;
});

const IDS = Number(process.env.FAULTS_BATCH_IDS ?? 1_000);
const ATTEMPTS = Number(process.env.FAULTS_BATCH_KILLS ?? 8);

async function deadlines(s: Scenario): Promise<Map<string, number>> {
  const rows = await s.h.sql<{ id: string; d: Date }[]>`
    select id, rotation_deadline as d from identities where deregistered_at is null`;
  return new Map(rows.map((r) => [r.id, r.d.getTime()]));
}

interface Attempt {
  delayS: number;
  killAfterMs: number;
  outcome: "committed" | "rolled back";
  answered: number;
  changed: number;
  eligible: number;
  txids: number;
}

it("the API SIGKILLed mid-batch of 1,000 welcomes: each batch all-or-nothing", async () => {
  scenario = await Scenario.start({
    name: "6 API SIGKILL mid-batch",
    identities: IDS,
    workers: 1,
    registerConcurrency: 6,
    env: { ROTATION_INTERVAL: "1h" },
  });
  const s = scenario;
  const batches = new Recorder(() => s.h.apiUrl);
  const problems: string[] = [];
  const attempts: Attempt[] = [];
  let batchMs = 0;

  for (let k = 0; k <= ATTEMPTS; k++) {
    const delayS = 600 - 40 * k;
    await s.h.api()?.kill("SIGKILL");
    await s.h.startApi({ WELCOME_ROTATION_DELAY: `${delayS}s` });
    const before = await deadlines(s);
    const sent = batches.batch(s.ids, 60_000);
    const sentAt = Date.now();
    // Attempt 0 runs to completion and measures a batch; the others are killed somewhere in it.
    const killAfterMs = k === 0 ? -1 : Math.floor(batchMs * (0.05 + Math.random() * 0.95));
    let killedAt = Number.POSITIVE_INFINITY;
    if (k > 0) {
      await sleep(killAfterMs);
      killedAt = Date.now();
      await s.h.api()?.kill("SIGKILL");
      s.faults++;
    }
    const record = await sent;
    if (k === 0) batchMs = record.answeredAt - sentAt;
    const after = await deadlines(s);
    const until = Math.min(killedAt, record.answeredAt);

    const changed = s.ids.filter((id) => after.get(id) !== before.get(id));
    const values = new Set(changed.map((id) => after.get(id)));
    const eligible = s.ids.filter((id) => (before.get(id) ?? 0) > until + delayS * 1000);
    for (const id of changed) {
      if ((after.get(id) ?? 0) > (before.get(id) ?? 0)) problems.push(`${k}: ${id} pushed later`);
    }
    if (values.size > 1) problems.push(`${k}: ${values.size} different new deadlines in one batch`);
    const [value] = [...values];
    if (value !== undefined && (value < sentAt + delayS * 1000 || value > until + delayS * 1000)) {
      problems.push(`${k}: new deadline ${value} outside [sent, end] + delay`);
    }
    if (changed.length !== 0 && changed.length !== eligible.length) {
      problems.push(`${k}: ${changed.length} of ${eligible.length} eligible ids pulled in`);
    }
    if (record.status === 202 && changed.length !== eligible.length) {
      problems.push(`${k}: answered 202 but ${changed.length} of ${eligible.length} pulled in`);
    }
    const [tx] = await s.h.sql<{ n: number }[]>`
      select count(distinct txid)::int as n from fault_audit_identity
      where op = 'U' and old_gen = new_gen and at >= ${new Date(sentAt)}`;
    attempts.push({
      delayS,
      killAfterMs,
      outcome: changed.length > 0 ? "committed" : "rolled back",
      answered: record.status,
      changed: changed.length,
      eligible: eligible.length,
      txids: tx?.n ?? -1,
    });
    if ((tx?.n ?? 0) > 1) problems.push(`${k}: pull-ins of one batch in ${tx?.n} transactions`);
  }
  await s.h.api()?.kill("SIGKILL");
  await s.h.startApi();

  const stats = batches.stats();
  s.extra.batchMs = batchMs;
  s.extra.attempts = attempts;
  s.extra.batchRequests = stats;
  s.extra.batchProblems = problems;
  // No steady load here; the batches' deadlines are minutes away (checked for arming, not served).
  const report = await s.settle(0, { judgeAcks: false });
  report.requests = stats.requests;
  report.accepted = stats.accepted;
  report.refused5xx = stats.refused5xx;
  report.connectionErrors = stats.connectionErrors;
  console.log(`[faults] 6 attempts\n${JSON.stringify(attempts)}`);
  expect(attempts.filter((a) => a.killAfterMs >= 0)).toHaveLength(ATTEMPTS);
  expect(problems).toEqual([]);
  expect(report.violations).toEqual([]);
});
