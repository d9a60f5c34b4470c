import { readFileSync } from "node:fs";
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

  it("keeps BullMQ's private structures behind src/queue/bullmq (docs/bullmq-upgrade.md)", () => {
    // The score encoding, key layout, marker and blocking wait are named nowhere else in src.
    const outside = files.filter((f) => f.startsWith("src/") && !f.startsWith("src/queue/bullmq/"));
    const leaks = outside.filter((f) =>
      /\* 4096|\/ 4096|\.toKey\(|waitForJob|"marker"/.test(readFileSync(f, "utf8")),
    );
    expect(leaks).toEqual([]);
    // And only src/queue reaches into that folder, through its index.
    const into = edges.filter(([, to]) => to.startsWith("src/queue/bullmq/"));
    for (const [from, to] of into) {
      if (from.startsWith("src/queue/bullmq/")) continue;
      expect([from, to]).toEqual([from, "src/queue/bullmq/index.ts"]);
      expect(from.startsWith("src/queue/")).toBe(true);
    }
  });

  it("pages every scan by key, never by OFFSET (a deep OFFSET reads every row it skips)", () => {
    // Drizzle's .offset(n), and OFFSET in SQL text (a number, a parameter or an interpolation).
    const offsetPaging = /\.offset\(|\boffset\s+(\d|\$|\?)/i;
    expect(offsetPaging.test("db.select().from(t).offset(5000)")).toBe(true);
    // Source text of a tagged template, interpolation included (hence the escaped `\${`).
    expect(offsetPaging.test(`order by id offset \${n} limit 500`)).toBe(true);
    expect(offsetPaging.test(`where id > \${after} order by id limit \${pageSize}`)).toBe(false);
    // Every statement the service sends is written in src/db (the Postgres adapter).
    const db = files.filter((f) => f.startsWith("src/db/"));
    expect(db.length).toBeGreaterThan(5);
    expect(db.filter((f) => offsetPaging.test(readFileSync(f, "utf8")))).toEqual([]);
  });

  it("would see an arrow back up and a loop", () => {
    const bad: Edge[] = [
      ["src/core/deadlines.ts", "src/services/rotor.ts"],
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
