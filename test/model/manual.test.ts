import { it } from "vitest";
import { type Command, runScenario } from "./commands.js";
import type { KnownIssue } from "./sim.js";

it("manual", () => {
  const cmds = JSON.parse(process.env.CMDS ?? "[]") as Command[];
  const patches = (process.env.PATCH ?? "").split(",").filter(Boolean) as KnownIssue[];
  const trace: string[] = [];
  try {
    runScenario(cmds, { variant: JSON.parse(process.env.VARIANT ?? "{}"), armExemption: (process.env.EX as "lock") ?? "lock", trace, patches });
    console.log(trace.slice(trace.findIndex((l) => l.includes("--- commands"))).join("\n"));
    console.log("PASSED");
  } catch (e) {
    console.log(trace.slice(trace.findIndex((l) => l.includes("--- commands"))).join("\n"));
    console.log(String((e as Error).message));
  }
});
