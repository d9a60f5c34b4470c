/**
 * The simulation's PNG charts, drawn as bench/peers/charts.ts draws the benchmarks': vega-lite
 * compiled to vega, rendered to SVG, rasterised by @resvg/resvg-js (no native build).
 */
import { writeFileSync } from "node:fs";

type Row = Record<string, string | number>;

/** Renders one vega-lite spec over `values` to a PNG at `path`; false when the tools are missing. */
export async function drawPng(
  path: string,
  title: string,
  subtitle: string[],
  values: Row[],
  spec: object,
): Promise<boolean> {
  let vega: typeof import("vega");
  let vl: typeof import("vega-lite");
  let Resvg: typeof import("@resvg/resvg-js").Resvg;
  try {
    vega = await import("vega");
    vl = await import("vega-lite");
    ({ Resvg } = await import("@resvg/resvg-js"));
  } catch {
    console.error(
      "charts skipped: the bench workspace's vega, vega-lite and @resvg/resvg-js are missing",
    );
    return false;
  }
  const full = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: { text: title, subtitle, fontSize: 14, subtitleFontSize: 11 },
    width: 620,
    height: 260,
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
  writeFileSync(path, resvg.render().asPng());
  return true;
}
