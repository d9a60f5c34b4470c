import fc from "fast-check";
import { it } from "vitest";
import { commandsArb, runScenario, showCommand } from "./commands.js";
import type { KnownIssue } from "./sim.js";

it("explore", () => {
  const faults = process.env.FAULTS !== "0";
  const patches = (process.env.PATCH ?? "").split(",").filter(Boolean) as KnownIssue[];
  const opts = { variant: {}, armExemption: (process.env.EX as "lock") ?? "lock", patches };
  const t = Date.now();
  const out = fc.check(
    fc.property(commandsArb({ faults }, Number(process.env.LEN ?? 40)), (cmds) => {
      runScenario(cmds, opts);
    }),
    { numRuns: Number(process.env.RUNS ?? 500), seed: process.env.SEED ? Number(process.env.SEED) : undefined },
  );
  console.log("ms", Date.now() - t, "failed", out.failed, "runs", out.numRuns, "seed", out.seed);
  if (out.failed && out.counterexample) {
    const cmds = out.counterexample[0];
    console.log(cmds.map(showCommand).join("\n"));
    const trace: string[] = [];
    try { runScenario(cmds, { ...opts, trace }); } catch (e) { console.log(trace.join("\n")); console.log(String((e as Error).message)); }
  }
});
