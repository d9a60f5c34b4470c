#!/usr/bin/env node
// The import graph of src/ and workers/, by layer: prints every arrow that runs back up a layer
// and every import loop, and exits 1 if there is either (`--json` prints the graph as JSON).
// Layers, top to bottom (an import may only point to the same layer or a lower one):
//   entry:    workers/, src/cli, src/runtime (the API and worker processes), src/dev
//   wiring:   src/config.ts (the only reader of the environment), src/context.ts, src/api (routes
//             and plugins), src/metrics
//   services: src/services
//   adapters: src/db, src/queue, src/keys, src/webhooks
//   core:     src/core, src/contract (the API's schemas and error codes), and the shared leaves
//             (errors, logger, settle, safe-errors)
// src/client is the typed client for other programs: it may import only src/contract (types)
// and itself.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const root = resolve(dirname(new URL(import.meta.url).pathname), "..");

const LAYERS = [
  ["entry", ["workers/", "src/cli/", "src/runtime/", "src/dev/"]],
  ["wiring", ["src/config.ts", "src/context.ts", "src/api/", "src/metrics/"]],
  ["services", ["src/services/"]],
  ["adapters", ["src/db/", "src/queue/", "src/keys/", "src/webhooks/"]],
  [
    "core",
    [
      "src/core/",
      "src/contract/",
      "src/errors.ts",
      "src/logger.ts",
      "src/settle.ts",
      "src/safe-errors.ts",
    ],
  ],
];

export function layerOf(file) {
  if (file.startsWith("src/client/")) return { name: "client", rank: -1 };
  for (const [rank, [name, prefixes]] of LAYERS.entries()) {
    if (prefixes.some((p) => file === p || file.startsWith(p))) return { name, rank };
  }
  return { name: "unknown", rank: -2 };
}

function walk(dir) {
  const out = [];
  for (const entry of readdirSync(join(root, dir))) {
    const path = join(dir, entry);
    if (statSync(join(root, path)).isDirectory()) out.push(...walk(path));
    else if (path.endsWith(".ts")) out.push(path);
  }
  return out;
}

/** Every relative import of every file: [from, to] pairs, paths relative to the root. */
export function importGraph() {
  const files = [...walk("src"), ...walk("workers")];
  const edges = [];
  const pattern = /(?:import|export)\s+(?:type\s+)?(?:[^"';]*?\sfrom\s+)?["'](\.[^"']+)["']/g;
  for (const file of files) {
    const text = readFileSync(join(root, file), "utf8");
    for (const match of text.matchAll(pattern)) {
      const target = relative(root, resolve(root, dirname(file), match[1])).replace(/\.js$/, ".ts");
      edges.push([file, target]);
    }
  }
  return { files, edges };
}

/** Arrows that point to a higher layer, or from the client to anything but core. */
export function backArrows(edges) {
  return edges.filter(([from, to]) => {
    const a = layerOf(from);
    const b = layerOf(to);
    if (a.name === "client") return !(b.name === "client" || to.startsWith("src/contract/"));
    if (b.name === "client") return false;
    return b.rank < a.rank;
  });
}

/** Strongly connected components of more than one file (Tarjan). */
export function loops(files, edges) {
  const next = new Map(files.map((f) => [f, []]));
  for (const [a, b] of edges) next.get(a)?.push(b);
  let index = 0;
  const idx = new Map();
  const low = new Map();
  const stack = [];
  const on = new Set();
  const out = [];
  const visit = (v) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of next.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
    }
    if (low.get(v) === idx.get(v)) {
      const component = [];
      let w;
      do {
        w = stack.pop();
        on.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1) out.push(component.sort());
    }
  };
  for (const f of files) if (!idx.has(f)) visit(f);
  return out;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { files, edges } = importGraph();
  const back = backArrows(edges);
  const cycles = loops(files, edges);
  if (process.argv.includes("--json")) {
    console.log(JSON.stringify({ files: files.length, edges, back, cycles }, null, 2));
  } else {
    console.log(`${files.length} files, ${edges.length} arrows`);
    console.log(`${back.length} arrows running back up a layer`);
    for (const [a, b] of back) console.log(`  ${a} -> ${b}`);
    console.log(`${cycles.length} loops`);
    for (const c of cycles) console.log(`  ${c.join(" <-> ")}`);
  }
  process.exit(back.length === 0 && cycles.length === 0 ? 0 : 1);
}
