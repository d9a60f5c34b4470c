/**
 * The poll baseline, as its users wrote it: a plain table with an index on the deadline, and a
 * loop that every 5 s asks Postgres which identities are due and "rotates" them (a no-op, then
 * the deadline moved 30 days on).
 */
import pg from "pg";
import { defer, round } from "../lib.js";
import {
  dueTimes,
  farTimes,
  type Infra,
  type LatenessResult,
  type Params,
  type Peer,
  sleep,
  summarize,
  waitFor,
} from "./common.js";

export const POLL_INTERVAL_MS = 5_000;

export async function pollBaseline(infra: Infra): Promise<Peer> {
  const database = await infra.newDatabase();
  const pool = new pg.Pool({ connectionString: database.url, max: 4 });
  const endPool = defer("poll pool", () => pool.end());
  await pool.query(`create table installations (
    id text primary key,
    next_rotation timestamptz not null)`);
  await pool.query("create index installations_next_rotation_idx on installations (next_rotation)");
  let running = false;
  let loop: Promise<void> | undefined;
  let queries = 0;
  let onRotated: ((id: string, due: number, at: number) => void) | undefined;

  async function tick() {
    queries++;
    const { rows } = await pool.query<{ id: string; due: number }>(
      "select id, (extract(epoch from next_rotation) * 1000)::float8 as due from installations where next_rotation <= now()",
    );
    if (rows.length === 0) return;
    const at = Date.now();
    for (const r of rows) onRotated?.(r.id, Number(r.due), at);
    queries++;
    await pool.query(
      "update installations set next_rotation = now() + interval '30 days' where id = any($1)",
      [rows.map((r) => r.id)],
    );
  }

  return {
    name: "poll baseline",
    settings: {
      table:
        "installations(id text primary key, next_rotation timestamptz) + btree index on next_rotation",
      loop: "every 5 s: select id from installations where next_rotation <= now(); update the due ones to now() + 30 days",
      driver: "pg 8.23 Pool(max 4)",
      reschedule:
        "update … set next_rotation = least(next_rotation, now() + 5 s) where id = any($1), batches of 1,000",
    },
    database,
    ownQueries: () => queries,
    async schedule(p: Params) {
      const times = farTimes(p.identities, Date.now());
      const started = performance.now();
      for (let i = 0; i < p.identities; i += 1000) {
        const slice = times.slice(i, i + 1000);
        await pool.query(
          `insert into installations (id, next_rotation)
           select 'id-' || lpad(g::text, 8, '0'), to_timestamp(t / 1000.0)
           from unnest($1::int[], $2::float8[]) as u(g, t)`,
          [slice.map((_, j) => i + j), slice],
        );
      }
      const ms = performance.now() - started;
      await pool.query("vacuum analyze installations");
      return {
        what: "multi-row INSERT, pages of 1,000, each committed: one row per identity (table, primary key and deadline index), which is both the record and the timer the loop polls; nothing else to arm (VACUUM ANALYZE afterwards, not timed)",
        count: p.identities,
        ms: Math.round(ms),
        perS: Math.round((p.identities / ms) * 1000),
        rowsPerIdentity: 1,
        rows: "one installations row per identity",
      };
    },
    async startWorkers() {
      running = true;
      loop = (async () => {
        while (running) {
          const started = Date.now();
          try {
            await tick();
          } catch (err) {
            if (running) infra.log(`poll: ${(err as Error).message}`);
          }
          const wait = POLL_INTERVAL_MS - (Date.now() - started);
          for (let w = 0; running && w < wait; w += 100) await sleep(Math.min(100, wait - w));
        }
      })();
    },
    async lateness(p: Params): Promise<LatenessResult> {
      const late: number[] = [];
      onRotated = (id, due, at) => {
        if (id.startsWith("due-")) late.push(at - due);
      };
      const t0 = Date.now() + p.leadMs;
      const times = dueTimes(p, t0);
      await pool.query(
        `insert into installations (id, next_rotation)
         select 'due-' || g, to_timestamp(t / 1000.0) from unnest($1::int[], $2::float8[]) as u(g, t)`,
        [times.map((_, i) => i), times],
      );
      await waitFor(
        () => late.length,
        times.length,
        Math.max(...times) + POLL_INTERVAL_MS + 10_000,
      );
      onRotated = undefined;
      return {
        what: "loop finds it due - due (no-op rotation)",
        count: late.length,
        expected: times.length,
        lateness: summarize(late.map((x) => round(x, 1))),
      };
    },
    async stopWorkers() {
      running = false;
      await loop;
    },
    async reschedule(p: Params) {
      const n = Math.min(p.reschedules, p.identities);
      const started = performance.now();
      for (let i = 0; i < n; i += 1000) {
        const ids = Array.from(
          { length: Math.min(1000, n - i) },
          (_, j) => `id-${String(i + j).padStart(8, "0")}`,
        );
        await pool.query(
          "update installations set next_rotation = least(next_rotation, now() + interval '5 seconds') where id = any($1)",
          [ids],
        );
      }
      const ms = performance.now() - started;
      return {
        what: "UPDATE … least(next_rotation, now()+5 s) where id = any(1,000 ids)",
        count: n,
        ms: Math.round(ms),
        perS: Math.round((n / ms) * 1000),
      };
    },
    async close() {
      running = false;
      await loop;
      await endPool();
      await database.drop();
    },
  };
}
