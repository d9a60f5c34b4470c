import fc from "fast-check";
import { it } from "vitest";
import { commandsArb, runScenario } from "./commands.js";
import type { KnownIssue } from "./sim.js";

it("stats", () => {
  const patches: KnownIssue[] = ["deregister-unarms-revived", "rotate-now-waits-for-later-wakeup"];
  const counts = new Map<string, number>();
  const bump = (k: string) => counts.set(k, (counts.get(k) ?? 0) + 1);
  const samples = fc.sample(commandsArb({ faults: true }, Number(process.env.LEN ?? 25)), 5000);
  for (const cmds of samples) {
    const trace: string[] = [];
    try { runScenario(cmds, { variant: {}, armExemption: "lock", patches, trace }); } catch { bump("failed"); }
    const fin = trace.findIndex((l) => l.includes("--- final phase"));
    const pre = trace.slice(0, fin);
    const seen = new Set<string>();
    for (const l of pre) {
      const m = l.match(/(rotation|deletion)-wake\(\w\)@w\d#\d+: (\w+)/); if (l.includes("-wake(")) seen.add("anywake");
      if (m) seen.add(`${m[1]}:${m[2]}`);
      if (l.includes("[fails")) { const m2 = l.match(/: (\w+)[^[]*\[fails/); seen.add(`fault:${m && m[1] ? m[1] + ":" : ""}${m2?.[1]}`); }
      if (l.includes("FLUSHALL")) seen.add("flush");
      if (l.includes("CRASH w")) seen.add("crash");
    }
    for (const k of seen) bump(k);
  }
  console.log([...counts].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}: ${v}`).join("\n"));
});
