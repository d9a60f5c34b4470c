// Temporary exploration runner (deleted before hand-off).
import fc from "fast-check";
import { runScenario, scenarioArb, showCommand } from "./commands.js";
import type { KnownIssue, SimOptions } from "./sim.js";

const patches = (process.env.PATCH ?? "").split(",").filter(Boolean) as KnownIssue[];
const opts: SimOptions = { variant: JSON.parse(process.env.VARIANT ?? "{}"), armExemption: (process.env.EX as "lock") ?? "lock", patches };
const t = Date.now();
const out = fc.check(
  fc.property(scenarioArb({ faults: process.env.FAULTS !== "0" }, Number(process.env.LEN ?? 25)), (cmds) => {
    runScenario(cmds, opts);
  }),
  { numRuns: Number(process.env.RUNS ?? 1000), seed: process.env.SEED ? Number(process.env.SEED) : undefined },
);
console.log("ms", Date.now() - t, "failed", out.failed, "runs", out.numRuns, "seed", out.seed, "shrinks", out.numShrinks);
if (out.failed && out.counterexample) {
  const cmds = out.counterexample[0];
  console.log(cmds.timing, cmds.commands.map(showCommand).join("\n"));
  const trace: string[] = [];
  try { runScenario(cmds, { ...opts, trace }); } catch (e) { console.log(trace.slice(trace.findIndex((l) => l.includes("--- commands"))).join("\n")); console.log(String((e as Error).message)); }
}
