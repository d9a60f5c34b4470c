import { fileURLToPath } from "node:url";
import { drizzle, type PostgresJsDatabase } from "drizzle-orm/postgres-js";
import { migrate } from "drizzle-orm/postgres-js/migrator";
import postgres from "postgres";
import * as schema from "./schema.js";

export type Db = PostgresJsDatabase<typeof schema>;
/** A transaction handle; repository functions that must run under a row lock take one. */
export type Tx = Parameters<Parameters<Db["transaction"]>[0]>[0];

export interface Database {
  db: Db;
  /** The raw driver, for health checks and the few statements drizzle cannot express. */
  sql: postgres.Sql;
  /** The URL the pool connects to (a session of its own, for the migration lock). */
  url: string;
  /** One round trip (readiness). */
  ping(): Promise<boolean>;
  close(): Promise<void>;
}

export const MIGRATIONS_FOLDER = fileURLToPath(new URL("../../drizzle", import.meta.url));

/** Opens a connection pool. Timestamps come back as JavaScript Dates in UTC. */
export function createDatabase(url: string, options: { max?: number } = {}): Database {
  const sql = postgres(url, {
    max: options.max ?? 10,
    onnotice: () => {},
    connect_timeout: 10,
    connection: {
      application_name: "kp-rotor",
      // A slow Postgres fails a request (503) instead of holding it, and a transaction whose
      // process stalled (waiting on Redis while holding a row lock) cannot block an identity
      // for longer than this.
      statement_timeout: 15_000,
      lock_timeout: 10_000,
      idle_in_transaction_session_timeout: 30_000,
    },
  });
  const db = drizzle(sql, { schema });
  return {
    db,
    sql,
    url,
    ping: () => sql`select 1`.then(() => true),
    close: () => sql.end({ timeout: 5 }),
  };
}

/**
 * Applies the committed migrations in drizzle/. Several processes may start at once (one per
 * pod), so runs are serialised by a session advisory lock, held on a connection of its own while
 * the migrator works on the pool. Not a connection reserved from the pool: the driver's reserve()
 * (postgres 3.4.9) can stay pending forever when a pooled connection closes while it waits.
 */
export async function runMigrations(database: Database): Promise<void> {
  const lock = postgres(database.url, { max: 1, onnotice: () => {}, connect_timeout: 10 });
  try {
    await lock`select pg_advisory_lock(hashtext('kp-rotor:migrate'))`;
    try {
      await migrate(database.db, { migrationsFolder: MIGRATIONS_FOLDER });
    } finally {
      await lock`select pg_advisory_unlock(hashtext('kp-rotor:migrate'))`.catch(() => {});
    }
  } finally {
    await lock.end({ timeout: 5 });
  }
}
