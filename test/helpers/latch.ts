import type postgres from "postgres";
import type { Context } from "../../src/context.js";

/** A one-shot gate: `open()` resolves `promise`; tests await it instead of sleeping. */
export interface Latch {
  promise: Promise<void>;
  open(): void;
  readonly isOpen: boolean;
}

export function latch(): Latch {
  let open!: () => void;
  let isOpen = false;
  const promise = new Promise<void>((resolve) => {
    open = () => {
      isOpen = true;
      resolve();
    };
  });
  return {
    promise,
    open: () => open(),
    get isOpen() {
      return isOpen;
    },
  };
}

/**
 * Resolves once at least `n` backends of the test database wait for a lock (a row lock, or a
 * speculative insert waiting for the transaction that inserted the same key). Polls
 * pg_stat_activity every 10 ms; stops early (returning false) once `until` resolves.
 */
export async function lockWaiters(
  ctx: Context,
  n: number,
  until: Promise<unknown> = new Promise(() => {}),
  timeoutMs = 20_000,
): Promise<boolean> {
  let stopped = false;
  void until.then(() => {
    stopped = true;
  });
  const end = Date.now() + timeoutMs;
  while (!stopped) {
    const [row] = await ctx.database.sql<{ n: number }[]>`
      select count(*)::int as n from pg_stat_activity
      where datname = current_database() and wait_event_type = 'Lock'`;
    if ((row?.n ?? 0) >= n) return true;
    if (Date.now() > end) throw new Error(`no ${n} lock waiter(s) within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return false;
}

/** The key packages of an identity as stored: generation, state and delete_at (epoch ms). */
export async function keyPackageRows(ctx: Context, id: string) {
  return ctx.database.sql<
    { generation: number; is_current: boolean; delete_at: number | null; ref: string }[]
  >`
    select generation, is_current, ref,
      round(extract(epoch from delete_at) * 1000)::float8 as delete_at
    from key_packages where identity_id = ${id} order by generation`;
}

/** `promise`, or a rejection naming `what` after `timeoutMs` (a failing test ends in time). */
export async function within<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Holds one identity's row lock (`SELECT ... FOR UPDATE`) in a transaction on `sql` until
 * `release()`, as another client would: whatever needs that row waits, up to its lock_timeout.
 */
export async function holdRowLock(
  sql: postgres.Sql,
  id: string,
): Promise<{ release(): Promise<void> }> {
  const released = latch();
  const locked = latch();
  const done = sql.begin(async (tx) => {
    await tx`select id from identities where id = ${id} for update`;
    locked.open();
    await released.promise;
  });
  await locked.promise;
  return {
    async release() {
      released.open();
      await done;
    },
  };
}
