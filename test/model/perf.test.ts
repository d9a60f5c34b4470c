import fc from "fast-check";
import { it } from "vitest";
import { commandsArb, runScenario } from "./commands.js";
import { DAY, type KnownIssue } from "./sim.js";

it("perf", () => {
  const patches: KnownIssue[] = ["deregister-unarms-revived", "rotate-now-waits-for-later-wakeup", "deletion-armed-only-after-rotation"];
  const samples = fc.sample(commandsArb({ faults: true }, 25), 3000);
  let steps = 0; let span = 0; let maxSteps = 0; const t = Date.now(); let long = 0;
  for (const cmds of samples) {
    const sim = runScenario(cmds, { variant: {}, armExemption: "lock", patches });
    steps += sim.seq; maxSteps = Math.max(maxSteps, sim.seq);
    span += (sim.now - sim.finalStart) / DAY;
    if (sim.now - sim.finalStart > 100 * DAY) long++;
  }
  console.log({ ms: Date.now() - t, avgSteps: steps / samples.length, maxSteps, avgFinalDays: span / samples.length, long });
});
