import { describe, expect, it } from "vitest";
// @ts-expect-error: a plain ES module script without types
import { backArrows, importGraph, layerOf, loops } from "../../scripts/import-graph.mjs";

type Edge = [string, string];

describe("import graph (scripts/import-graph.mjs)", () => {
  const { files, edges } = importGraph() as { files: string[]; edges: Edge[] };

  it("places every file of src and workers in a layer", () => {
    expect(files.length).toBeGreaterThan(50);
    expect(files.filter((f) => layerOf(f).name === "unknown")).toEqual([]);
  });

  it("has no arrow running back up a layer and no loop", () => {
    expect(backArrows(edges)).toEqual([]);
    expect(loops(files, edges)).toEqual([]);
  });

  it("would see an arrow back up and a loop", () => {
    const bad: Edge[] = [
      ["src/core/timers.ts", "src/services/rotor.ts"],
      ["src/services/a.ts", "src/services/b.ts"],
      ["src/services/b.ts", "src/services/a.ts"],
      ["src/client/index.ts", "src/db/store.ts"],
    ];
    expect(backArrows(bad)).toEqual([bad[0], bad[3]]);
    expect(loops(["src/services/a.ts", "src/services/b.ts"], bad)).toEqual([
      ["src/services/a.ts", "src/services/b.ts"],
    ]);
  });
});
