/**
 * The plans of the statements the service really sends, with their buffers, from Postgres'
 * auto_explain: switched on for one database (new sessions only), every statement's
 * EXPLAIN (ANALYZE, BUFFERS) is written to the server log, which is read back from where it
 * stood when a step began. Nothing is re-typed: the statements are the repositories' own, with
 * their real parameters, as drizzle sent them.
 */
import { open, stat } from "node:fs/promises";
import type postgres from "postgres";

/** Debian's server log (pg_ctlcluster sends stderr there). */
export const SERVER_LOG = "/var/log/postgresql/postgresql-15-main.log";

export interface LoggedPlan {
  step: string;
  durationMs: number;
  query: string;
  /** The plan text, as auto_explain wrote it (ANALYZE, BUFFERS). */
  plan: string;
  /** shared hit / read / dirtied / written of the top plan node (what the statement touched). */
  buffers: { hit: number; read: number; dirtied: number; written: number };
  rows: number | undefined;
}

interface PlanNode {
  "Node Type": string;
  "Relation Name"?: string;
  "Index Name"?: string;
  "Index Cond"?: string;
  Filter?: string;
  "Actual Rows"?: number;
  "Actual Loops"?: number;
  "Actual Total Time"?: number;
  "Shared Hit Blocks"?: number;
  "Shared Read Blocks"?: number;
  "Shared Dirtied Blocks"?: number;
  "Shared Written Blocks"?: number;
  Plans?: PlanNode[];
}

/** One line per node: what it is, on what, rows × loops, time and the buffers it touched. */
function render(node: PlanNode, depth = 0): string {
  const on = [
    node["Relation Name"] ? ` on ${node["Relation Name"]}` : "",
    node["Index Name"] ? ` using ${node["Index Name"]}` : "",
  ].join("");
  const clip = (text: string) => (text.length > 160 ? `${text.slice(0, 160)}…` : text);
  const cond = node["Index Cond"] ? ` [${clip(node["Index Cond"])}]` : "";
  const filter = node.Filter ? ` filter ${clip(node.Filter)}` : "";
  const line =
    `${"  ".repeat(depth)}${node["Node Type"]}${on}${cond}${filter}` +
    ` rows=${node["Actual Rows"] ?? "?"} loops=${node["Actual Loops"] ?? "?"}` +
    ` time=${node["Actual Total Time"] ?? "?"} ms` +
    ` shared hit=${node["Shared Hit Blocks"] ?? 0} read=${node["Shared Read Blocks"] ?? 0}`;
  return [line, ...(node.Plans ?? []).map((child) => render(child, depth + 1))].join("\n");
}

/** The driver's own type lookup on a new connection (postgres.js), not a statement of the service. */
export const isDriverQuery = (query: string): boolean =>
  query.replace(/\s+/g, " ").startsWith("select b.oid, b.typarray from pg_catalog.pg_type");

/** auto_explain on for new sessions of `database` (every statement, nested ones too). */
export async function enableAutoExplain(admin: postgres.Sql, database: string): Promise<void> {
  const db = admin(database);
  await admin`alter database ${db} set session_preload_libraries = 'auto_explain'`;
  await admin`alter database ${db} set auto_explain.log_min_duration = 0`;
  await admin`alter database ${db} set auto_explain.log_analyze = on`;
  await admin`alter database ${db} set auto_explain.log_buffers = on`;
  await admin`alter database ${db} set auto_explain.log_timing = on`;
  await admin`alter database ${db} set auto_explain.log_nested_statements = on`;
  await admin`alter database ${db} set auto_explain.log_level = 'log'`;
  await admin`alter database ${db} set auto_explain.log_format = 'json'`;
}

export async function disableAutoExplain(admin: postgres.Sql, database: string): Promise<void> {
  await admin`alter database ${admin(database)} reset all`;
}

export const logSize = async (): Promise<number> => (await stat(SERVER_LOG)).size;

/** The log written since `from`. */
async function logSince(from: number): Promise<string> {
  const file = await open(SERVER_LOG, "r");
  try {
    const size = (await file.stat()).size;
    const buffer = Buffer.alloc(Math.max(0, size - from));
    await file.read(buffer, 0, buffer.length, from);
    return buffer.toString("utf8");
  } finally {
    await file.close();
  }
}

/**
 * The plans logged since `from` by sessions of `database` (log_line_prefix `%m [%p] %q%u@%d `),
 * except statements carrying the marker comment `skip` (the benchmark's own setup).
 */
export async function plansSince(
  from: number,
  database: string,
  step: string,
  skip = "/* bench */",
): Promise<LoggedPlan[]> {
  const text = await logSince(from);
  // An entry starts with the timestamp; continuation lines start with a tab.
  const entries = text.split(/\n(?=\d{4}-\d\d-\d\d )/);
  const plans: LoggedPlan[] = [];
  for (const entry of entries) {
    if (!entry.includes(`@${database} `)) continue;
    const m = /LOG: {2}duration: ([\d.]+) ms {2}plan:\n([\s\S]*)$/.exec(entry);
    if (!m) continue;
    let parsed: { "Query Text"?: string; Plan?: PlanNode };
    try {
      parsed = JSON.parse((m[2] ?? "").replace(/^\t/gm, ""));
    } catch {
      continue; // a truncated entry (the log rotated, or a line over the log's limit)
    }
    const query = (parsed["Query Text"] ?? "").trim();
    // The driver's own type lookup on a new connection is not the service's statement.
    const driver = isDriverQuery(query);
    if (query.includes(skip) || driver || parsed.Plan === undefined) continue;
    const top = parsed.Plan;
    plans.push({
      step,
      durationMs: Number(m[1]),
      query,
      plan: render(top),
      buffers: {
        hit: top["Shared Hit Blocks"] ?? 0,
        read: top["Shared Read Blocks"] ?? 0,
        dirtied: top["Shared Dirtied Blocks"] ?? 0,
        written: top["Shared Written Blocks"] ?? 0,
      },
      rows: top["Actual Rows"],
    });
  }
  return plans;
}
