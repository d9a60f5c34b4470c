/**
 * PNG charts of bench/results/latest.json: vega-lite -> vega toSVG -> @resvg/resvg-js (no native
 * build). Optional: skipped with a message when those packages are not installed.
 *
 *   npx tsx bench/peers/charts.ts [results-dir]
 */
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../lib.js";
import { concurrencyLabel, idleAgainstN, type RunResult } from "./report.js";

type Row = Record<string, string | number>;

/** Earlier runs at other sizes (bench/results/peers-*.json), for the idle cost against N. */
export function earlierRuns(dir: string, except: string[] = []): RunResult[] {
  const out: RunResult[] = [];
  for (const f of readdirSync(dir)) {
    if (!/^peers-.*\.json$/.test(f) || except.includes(f)) continue;
    try {
      out.push(JSON.parse(readFileSync(join(dir, f), "utf8")) as RunResult);
    } catch {
      // not ours
    }
  }
  return out;
}

/** Writes the PNGs of latest.json; `others` (earlier runs) add N to the idle-vs-N chart. */
export async function renderCharts(dir: string, others: RunResult[] = []): Promise<string[]> {
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

  async function chart(
    file: string,
    title: string | { text: string; subtitle: string[] },
    values: Row[],
    spec: object,
    sized = true,
  ) {
    if (values.length === 0) return;
    const full = {
      $schema: "https://vega.github.io/schema/vega-lite/v6.json",
      title:
        typeof title === "string"
          ? { text: title, fontSize: 14 }
          : { ...title, fontSize: 14, subtitleFontSize: 11 },
      ...(sized ? { width: 520, height: 260 } : {}),
      background: null,
      data: { values },
      ...spec,
    };
    const compiled = vl.compile(full as never).spec;
    const view = new vega.View(vega.parse(compiled), { renderer: "none" });
    const svg = await view.toSVG();
    const resvg = new Resvg(svg, {
      font: { loadSystemFonts: true },
      background: "white",
      fitTo: { mode: "zoom", value: 2 },
    });
    // Vega sizes the SVG by estimated text widths (no canvas here), too wide for long titles:
    // crop to what is drawn, with a margin.
    const box = resvg.getBBox();
    if (box) {
      const pad = 12;
      const x = Math.max(0, box.x - pad);
      const y = Math.max(0, box.y - pad);
      box.width = Math.min(resvg.width - x, box.x + box.width + pad - x);
      box.height = Math.min(resvg.height - y, box.y + box.height + pad - y);
      box.x = x;
      box.y = y;
      resvg.cropByBBox(box);
    }
    const png = resvg.render().asPng();
    const path = join(dir, file);
    writeFileSync(path, png);
    written.push(path);
  }

  // One bar group per system and idle window, labelled with the window's concurrency.
  const idle: Row[] = [];
  for (const s of r.systems) {
    const windows = s.idleWindows ?? (s.idle ? [s.idle] : []);
    windows.forEach((w, i) => {
      // The window's concurrency (the poll loop has none: named by the window's).
      const c = r.idleConcurrency?.[i];
      const system =
        w.concurrency === undefined || c === undefined
          ? s.name
          : `${s.name} @${c}${w.concurrency === null ? " (no setting)" : ""}`;
      if (w.pgXactCommitPerS != null)
        idle.push({ system, what: "Postgres transactions/s", value: w.pgXactCommitPerS });
      if (w.redisCommandsPerS != null)
        idle.push({ system, what: "Redis commands/s", value: w.redisCommandsPerS });
    });
  }
  const concs = r.idleConcurrency ?? [];
  await chart(
    `idle-N${N}.png`,
    {
      text: `Idle cost with ${N.toLocaleString("en-US")} identities, nothing due`,
      subtitle: [
        concs.length > 0
          ? `@C: the system at concurrency C (${concs.join(" and ")}), one idle window each; the poll loop has no concurrency setting`
          : `Each system at the concurrency of its settings (${concurrencyLabel(r.systems[0]?.idle)}); one concurrency for all not measured in this run`,
      ],
    },
    idle,
    {
      mark: { type: "bar", tooltip: true },
      encoding: {
        y: { field: "system", type: "nominal", title: null, axis: { labelLimit: 300 } },
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

  // Idle cost against N: every N of this run (side-by-side, scale steps) and earlier runs' other N.
  const COLORS: Record<string, string> = {
    "kp-rotor": "#1f5fbf",
    "poll baseline": "#7f7f7f",
    "raw BullMQ": "#ff7f0e",
    "pg-boss": "#2ca02c",
    "graphile-worker": "#9467bd",
  };
  const REDIS = "Redis commands/s per worker process";
  const PG = "Postgres queries per 10 min";
  const vsN: Row[] = [];
  const idlePoints = idleAgainstN(r, others);
  const windows = new Set<number>();
  for (const p of idlePoints) {
    for (const s of p.systems) {
      const idle = s.idle;
      if (!idle) continue;
      windows.add(idle.seconds);
      if (idle.redisCommandsPerS != null) {
        const v = idle.redisCommandsPerS / (idle.workers ?? 1);
        vsN.push({ n: p.n, system: s.name, what: REDIS, value: v, label: v.toFixed(2) });
      }
      if (idle.pgQueriesPer10Min != null) {
        const v = idle.pgQueriesPer10Min;
        vsN.push({
          n: p.n,
          system: s.name,
          what: PG,
          value: v,
          label: Math.round(v).toLocaleString("en-US"),
        });
      }
    }
  }
  const ns = [...new Set(vsN.map((x) => Number(x.n)))].sort((a, b) => a - b);
  const systemsVsN = [...new Set(vsN.map((x) => String(x.system)))].sort(
    (a, b) =>
      (Object.keys(COLORS).indexOf(a) + 1 || 99) - (Object.keys(COLORS).indexOf(b) + 1 || 99),
  );
  const xN = {
    field: "n",
    type: "quantitative",
    scale: { type: "log", domain: [(ns[0] ?? 1) / 2, (ns[ns.length - 1] ?? 1) * 2] },
    axis: { values: ns, format: ",", labelFontSize: 11, grid: true },
    title: "identities N (log scale)",
  };
  const color = {
    field: "system",
    type: "nominal",
    title: null,
    scale: { domain: systemsVsN, range: systemsVsN.map((x) => COLORS[x] ?? "#333333") },
    legend: { orient: "bottom", labelLimit: 300, labelFontSize: 12, symbolStrokeWidth: 3 },
  };
  const panel = (what: string, y: object, goal: number, goalText: string, below: boolean) => ({
    width: 560,
    height: 210,
    transform: [{ filter: { field: "what", equal: what } }],
    layer: [
      {
        mark: { type: "line", strokeWidth: 2.5, point: { size: 70, filled: true }, tooltip: true },
        encoding: { x: xN, y, color },
      },
      {
        mark: {
          type: "text",
          align: "left",
          baseline: below ? "top" : "bottom",
          dx: 6,
          dy: below ? 3 : -3,
          fontSize: 11,
        },
        encoding: { x: xN, y, color, text: { field: "label" } },
      },
      {
        data: { values: [{}] },
        mark: { type: "rule", color: "#d62728", strokeDash: [6, 4], strokeWidth: 1.5 },
        encoding: { y: { datum: goal } },
      },
      {
        data: { values: [{}] },
        mark: {
          type: "text",
          color: "#d62728",
          align: "right",
          baseline: "bottom",
          dy: -3,
          fontSize: 11,
        },
        encoding: { y: { datum: goal }, x: { value: 556 }, text: { value: goalText } },
      },
    ],
  });
  const redisMax = Math.max(
    1.25,
    ...vsN.filter((x) => x.what === REDIS).map((x) => Number(x.value) * 1.2),
  );
  const pgMax = Math.max(10, ...vsN.filter((x) => x.what === PG).map((x) => Number(x.value)));
  const pgTicks = [0, 1, 10, 100, 1_000, 10_000, 100_000].filter((t) => t <= pgMax * 3);
  await chart(
    "idle-vs-N.png",
    {
      text: "Idle cost against the number of identities (nothing due)",
      subtitle: [
        `Each point: one idle window of ${[...windows].join(" / ")} s after an ${r.params.settleSeconds} s settle, N timers 1 to 30 days out, one worker process per system${concs.length > 0 ? ` at concurrency ${r.params.concurrency} (this run)` : ""}.`,
        "Postgres: transactions of the system's own database, scaled to 10 min (a window < 10 min leaves out kp-rotor's watchdog scan, 1 per 10 min).",
        `N = ${ns.map((n) => n.toLocaleString("en-US")).join(", ")}; peers other than the poll baseline only where that run measured them.`,
      ],
    },
    vsN,
    {
      vconcat: [
        panel(
          REDIS,
          {
            field: "value",
            type: "quantitative",
            scale: { domain: [0, redisMax] },
            title: ["Redis commands/s", "per worker process"],
          },
          1,
          "goal: <= 1 command/s",
          true,
        ),
        panel(
          PG,
          {
            field: "value",
            type: "quantitative",
            scale: { type: "symlog", constant: 1, domain: [0, pgTicks[pgTicks.length - 1]] },
            axis: { values: pgTicks, labelExpr: "format(datum.value, ',')" },
            title: ["Postgres queries", "per 10 min (symlog)"],
          },
          1,
          "goal: <= 1 query per 10 min",
          false,
        ),
      ],
      resolve: { scale: { color: "shared" } },
    },
    false,
  );

  // Log axis from LATE_MIN ms: a bar below it (0 ms) is drawn at LATE_MIN, its label says 0.
  const LATE_MIN = 0.5;
  const late: Row[] = [];
  for (const s of r.systems) {
    if (!s.lateness) continue;
    for (const pct of ["p50", "p99"] as const) {
      const ms = s.lateness.lateness[pct];
      late.push({
        system: s.name,
        pct,
        ms,
        bar: Math.max(LATE_MIN * 1.2, ms),
        label: `${ms.toLocaleString("en-US")} ms`,
      });
    }
  }
  const lateMax = Math.max(10_000, ...late.map((x) => Number(x.bar) * 1.5));
  const lateY = { field: "system", type: "nominal", title: null, sort: null };
  await chart(
    `lateness-N${N}.png`,
    `Wake-up lateness, ${r.params.due} timers over ${r.params.spreadSeconds} s, ${N.toLocaleString("en-US")} pending (goal p99 <= 5 ms)`,
    late,
    {
      layer: [
        {
          mark: { type: "bar", tooltip: true },
          encoding: {
            y: lateY,
            yOffset: { field: "pct" },
            x: {
              field: "bar",
              type: "quantitative",
              scale: { type: "log", domain: [LATE_MIN, lateMax], nice: false },
              axis: {
                values: [
                  0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000,
                ].filter((t) => t <= lateMax),
                labelExpr: "format(datum.value, ',')",
              },
              title: "ms after due (log scale; dashed: goal p99 <= 5 ms)",
            },
            x2: { datum: LATE_MIN },
            color: {
              field: "pct",
              type: "nominal",
              title: null,
              legend: { orient: "bottom", labelLimit: 300 },
            },
          },
        },
        {
          mark: { type: "text", align: "left", baseline: "middle", dx: 4, fontSize: 11 },
          encoding: {
            y: lateY,
            yOffset: { field: "pct" },
            x: { field: "bar", type: "quantitative" },
            text: { field: "label" },
          },
        },
        {
          data: { values: [{}] },
          mark: { type: "rule", color: "#d62728", strokeDash: [6, 4], strokeWidth: 1.5 },
          encoding: { x: { datum: 5 } },
        },
      ],
    },
  );

  const thr: Row[] = [];
  const kpWrite = r.systems.find((s) => s.name === "kp-rotor")?.schedule?.writeMs !== undefined;
  const schedLabel = kpWrite
    ? "schedule/s (kp-rotor: write + arm)"
    : "schedule/s (kp-rotor: arm only)";
  for (const s of r.systems) {
    if (s.schedule)
      thr.push({
        system: s.name,
        what: schedLabel,
        value: s.schedule.perS,
      });
    if (s.reschedule) thr.push({ system: s.name, what: "reschedule/s", value: s.reschedule.perS });
  }
  await chart(
    `throughput-N${N}.png`,
    {
      text: "Schedule and reschedule throughput (higher is better)",
      subtitle: [
        kpWrite
          ? "schedule: N identities from the durable write on; kp-rotor: its rows written by SQL + armed by reconcile, summed"
          : "schedule: N identities; kp-rotor: the arm (reconcile) only, its durable write not measured in this run",
      ],
    },
    thr,
    {
      mark: { type: "bar", tooltip: true },
      encoding: {
        y: { field: "system", type: "nominal", title: null },
        x: {
          field: "value",
          type: "quantitative",
          scale: {
            type: "log",
            domain: [
              10,
              10 ** Math.ceil(Math.log10(Math.max(100_000, ...thr.map((x) => Number(x.value))))),
            ],
          },
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
  for (const f of await renderCharts(dir, earlierRuns(dir))) console.log(`wrote ${f}`);
}
