/**
 * graphile-worker 0.18: one job per identity with job_key = identity id and run_at = deadline;
 * adding a job with an existing job_key replaces its run_at (jobKeyMode "replace", the default),
 * which is the reschedule.
 */
import { Logger, makeWorkerUtils, type Runner, run } from "graphile-worker";

const silent = new Logger(() => () => {});
import { defer, round } from "../lib.js";
import {
  dueTimes,
  farTimes,
  idOf,
  type Infra,
  type LatenessResult,
  type Params,
  type Peer,
  summarize,
  waitFor,
} from "./common.js";

export async function graphileWorker(infra: Infra): Promise<Peer> {
  const database = await infra.newDatabase();
  const utils = await makeWorkerUtils({ connectionString: database.url, logger: silent });
  defer("graphile utils", () => utils.release());
  await utils.migrate();
  let runner: Runner | undefined;
  let onJob: ((payload: { due: number }) => void) | undefined;

  const addPage = (specs: { key: string; at: number }[]) =>
    utils.addJobs(
      specs.map((s) => ({
        identifier: "rotate",
        payload: { due: s.at },
        jobKey: s.key,
        runAt: new Date(s.at),
      })),
    );

  return {
    name: "graphile-worker",
    settings: {
      "graphile-worker": "0.18.0 (declares Node >= 22; runs on Node 20)",
      job: "addJobs() with jobKey = identity id, runAt = deadline (job_key replace semantics)",
      runner:
        "run({ connectionString, concurrency, taskList, noHandleSignals: true }), concurrency as the run sets it (default 1; the idle windows and the lateness test say which); pollInterval default 2000 ms, useNodeTime false",
      processor: "no-op (records start time)",
      note: "with localQueue off (default) each of the `concurrency` workers polls on its own every 2 s, so the idle query rate grows with concurrency (about concurrency x 0.5/s); hence the idle cost is measured at concurrency 1 and at 16; localQueue (off by default: one pool-wide fetch of a batch for the workers) is not used",
      reschedule: "addJobs() again with the same jobKey and runAt = now + 5 s, pages of 1,000",
    },
    database,
    concurrencyKnob: "run({ concurrency }): that many workers, each polling on its own",
    async schedule(p: Params) {
      const times = farTimes(p.identities, Date.now());
      const started = performance.now();
      for (let i = 0; i < p.identities; i += 1000) {
        await addPage(times.slice(i, i + 1000).map((at, j) => ({ key: idOf(i + j), at })));
      }
      const ms = performance.now() - started;
      return {
        what: "utils.addJobs() with jobKey + runAt, pages of 1,000: one committed job row per identity (graphile_worker jobs table and its indexes), which is both the record and the timer; nothing else to arm",
        count: p.identities,
        ms: Math.round(ms),
        perS: Math.round((p.identities / ms) * 1000),
        rowsPerIdentity: 1,
        rows: "one graphile_worker job row per identity",
      };
    },
    async startWorkers(concurrency: number) {
      runner = await run({
        connectionString: database.url,
        concurrency,
        noHandleSignals: true,
        taskList: {
          rotate: async (payload) => {
            onJob?.(payload as { due: number });
          },
        },
        logger: silent,
      });
      defer("graphile runner", () => runner?.stop());
    },
    async lateness(p: Params): Promise<LatenessResult> {
      const late: number[] = [];
      onJob = (payload) => {
        late.push(Date.now() - payload.due);
      };
      const t0 = Date.now() + p.leadMs;
      const times = dueTimes(p, t0);
      for (let i = 0; i < times.length; i += 1000) {
        await addPage(times.slice(i, i + 1000).map((at, j) => ({ key: `due-${i + j}`, at })));
      }
      await waitFor(() => late.length, times.length, Math.max(...times) + 15_000);
      onJob = undefined;
      return {
        what: "no-op task start - run_at",
        count: late.length,
        expected: times.length,
        lateness: summarize(late.map((x) => round(x, 1))),
      };
    },
    async stopWorkers() {
      await runner?.stop();
      runner = undefined;
    },
    async reschedule(p: Params) {
      const n = Math.min(p.reschedules, p.identities);
      const started = performance.now();
      for (let i = 0; i < n; i += 1000) {
        const at = Date.now() + 5_000;
        await addPage(
          Array.from({ length: Math.min(1000, n - i) }, (_, j) => ({ key: idOf(i + j), at })),
        );
      }
      const ms = performance.now() - started;
      return {
        what: "addJobs() with the same jobKeys, runAt = now + 5 s, pages of 1,000",
        count: n,
        ms: Math.round(ms),
        perS: Math.round((n / ms) * 1000),
      };
    },
    async close() {},
  };
}
