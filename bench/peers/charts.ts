/**
 * PNG charts of bench/results/latest.json: vega-lite -> vega toSVG -> @resvg/resvg-js (no native
 * build). Optional: skipped with a message when those packages are not installed.
 *
 *   npx tsx bench/peers/charts.ts [results-dir]
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../lib.js";
import type { RunResult } from "./report.js";

type Row = Record<string, string | number>;

export async function renderCharts(dir: string): Promise<string[]> {
  let vega: typeof import("vega");
  let vl: typeof import("vega-lite");
  let Resvg: typeof import("@resvg/resvg-js").Resvg;
  try {
    vega = await import("vega");
    vl = await import("vega-lite");
    ({ Resvg } = await import("@resvg/resvg-js"));
  } catch {
    console.error("charts skipped: npm i -D -E vega vega-lite @resvg/resvg-js");
    return [];
  }
  const r = JSON.parse(readFileSync(join(dir, "latest.json"), "utf8")) as RunResult;
  const N = Number(r.params.identities);
  const written: string[] = [];

  async function chart(file: string, title: string, values: Row[], spec: object) {
    if (values.length === 0) return;
    const full = {
      $schema: "https://vega.github.io/schema/vega-lite/v6.json",
      title: { text: title, fontSize: 14 },
      width: 520,
      height: 260,
      background: "white",
      data: { values },
      ...spec,
    };
    const compiled = vl.compile(full as never).spec;
    const view = new vega.View(vega.parse(compiled), { renderer: "none" });
    const svg = await view.toSVG(2);
    const png = new Resvg(svg, { font: { loadSystemFonts: true } }).render().asPng();
    const path = join(dir, file);
    writeFileSync(path, png);
    written.push(path);
  }

  const idle: Row[] = [];
  for (const s of r.systems) {
    if (s.idle?.pgXactCommitPerS != null)
      idle.push({
        system: s.name,
        what: "Postgres transactions/s",
        value: s.idle.pgXactCommitPerS,
      });
    if (s.idle?.redisCommandsPerS != null)
      idle.push({ system: s.name, what: "Redis commands/s", value: s.idle.redisCommandsPerS });
  }
  await chart(
    `idle-N${N}.png`,
    `Idle cost with ${N.toLocaleString("en-US")} identities, nothing due`,
    idle,
    {
      mark: { type: "bar", tooltip: true },
      encoding: {
        y: { field: "system", type: "nominal", title: null },
        x: { field: "value", type: "quantitative", title: "per second (lower is better)" },
        color: {
          field: "what",
          type: "nominal",
          title: null,
          legend: { orient: "bottom", labelLimit: 300 },
        },
        yOffset: { field: "what" },
      },
    },
  );

  const late: Row[] = [];
  for (const s of r.systems) {
    if (!s.lateness) continue;
    late.push({ system: s.name, pct: "p50", ms: Math.max(1, s.lateness.lateness.p50) });
    late.push({ system: s.name, pct: "p99", ms: Math.max(1, s.lateness.lateness.p99) });
  }
  await chart(
    `lateness-N${N}.png`,
    `Wake-up lateness, ${r.params.due} timers over ${r.params.spreadSeconds} s, ${N.toLocaleString("en-US")} pending (goal p99 <= 5 ms)`,
    late,
    {
      mark: { type: "bar", tooltip: true },
      encoding: {
        y: { field: "system", type: "nominal", title: null },
        x: {
          field: "ms",
          type: "quantitative",
          scale: { type: "log", domain: [1, 10_000] },
          title: "ms after due (log scale; goal: p99 <= 5 ms)",
        },
        x2: { datum: 1 },
        color: {
          field: "pct",
          type: "nominal",
          title: null,
          legend: { orient: "bottom", labelLimit: 300 },
        },
        yOffset: { field: "pct" },
      },
    },
  );

  const thr: Row[] = [];
  for (const s of r.systems) {
    if (s.schedule)
      thr.push({ system: s.name, what: "schedule N timers/s", value: s.schedule.perS });
    if (s.reschedule) thr.push({ system: s.name, what: "reschedule/s", value: s.reschedule.perS });
  }
  await chart(
    `throughput-N${N}.png`,
    "Schedule and reschedule throughput (higher is better)",
    thr,
    {
      mark: { type: "bar", tooltip: true },
      encoding: {
        y: { field: "system", type: "nominal", title: null },
        x: {
          field: "value",
          type: "quantitative",
          scale: { type: "log", domain: [10, 100_000] },
          title: "per second (log scale)",
        },
        x2: { datum: 10 },
        color: {
          field: "what",
          type: "nominal",
          title: null,
          legend: { orient: "bottom", labelLimit: 300 },
        },
        yOffset: { field: "what" },
      },
    },
  );
  return written;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const dir = process.argv[2] ?? join(ROOT, "bench", "results");
  for (const f of await renderCharts(dir)) console.log(`wrote ${f}`);
}
