/**
 * The model test (issue 10, item 8): the real services (src/services, the workers/*.ts
 * handlers and the healer) on in-memory ports (test/model/), with fast-check choosing the
 * order in which every pending port call completes (fc.scheduler) and faults on the port
 * calls: failures before or after the effect (a lost commit answer included), Redis writes that
 * time out on the client and land later, process crashes between any two steps; and, as
 * commands, full Redis loss, partial loss (jobs removed; a tail loss that reverts Redis to an
 * earlier state), a reconcile failing part-way, an operator's reconcile, worker clocks 30 s
 * ahead or behind, publishes failing for a while or forever. Invariants:
 * test/model/invariants.ts and World.applyCommit. Two command mixes: the general one, and a
 * healing one where losses, failing heals and retrying identities meet more often.
 *
 * MODEL_RUNS (default 1500 per mix) and MODEL_SEED override the number of runs and the seed.
 * The default seed is fixed (20261205) so that `npm test` explores the same schedules on every
 * run and a failure in CI always replays; MODEL_SEED=random explores anew (print the seed it
 * reports to replay), and counterexamples found that way become scenarios in regressions.ts.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { runScenario } from "../model/driver.js";
import { REGRESSIONS } from "../model/regressions.js";
import { type Mix, type Scenario, scenarioArb } from "../model/scenarios.js";

const RUNS = Number(process.env.MODEL_RUNS ?? 1500);
const SEED_ENV = process.env.MODEL_SEED ?? "20261205";
const SEED = SEED_ENV === "random" ? undefined : Number(SEED_ENV);
const MAX_COMMANDS = 24;
/** Interleavings per regression scenario. */
const REPLAYS = 30;

async function explore(mix: Mix, numRuns = RUNS): Promise<void> {
  let runs = 0;
  let steps = 0;
  let rotations = 0;
  let faults = 0;
  let failure: string[] = [];
  const started = Date.now();
  await fc
    .assert(
      fc.asyncProperty(fc.scheduler(), scenarioArb(MAX_COMMANDS, mix), async (s, scenario) => {
        const trace: string[] = [];
        const result = await runScenario(s, scenario, trace);
        runs++;
        steps += result.steps;
        rotations += result.rotations;
        faults += result.faults;
        if (result.violations.length > 0) {
          failure = [
            `scenario: ${JSON.stringify(scenario)}`,
            ...result.violations.map((v) => `VIOLATION: ${v}`),
            ...trace,
          ];
          throw new Error(result.violations.join("\n"));
        }
      }),
      { numRuns, seed: SEED },
    )
    .catch((err: unknown) => {
      throw new Error(`${String(err)}\n\nthe last failing run:\n${failure.join("\n")}`);
    });
  console.log(
    `model (${mix}): ${runs} runs, ${steps} scheduled port calls (${Math.round(steps / Math.max(1, runs))} per run), ${faults} injected faults, ${rotations} rotations, ${Date.now() - started} ms`,
  );
}

describe("model: the real services on in-memory ports", () => {
  it("a welcome is honoured and deadlines are kept without faults (sanity)", async () => {
    const scenario: Scenario = {
      publishers: ["webhook", "webhook", "directory"],
      skews: [0, 0, 30_000],
      commands: [
        { c: "register", id: "a" },
        { c: "advance", ms: 30_000 },
        { c: "welcome", ids: ["a"] },
        { c: "advance", ms: 900_000 },
      ],
      faults: [],
    };
    await fc.assert(
      fc.asyncProperty(fc.scheduler(), async (s) => {
        const { violations, rotations } = await runScenario(s, scenario);
        expect(violations).toEqual([]);
        expect(rotations).toBeGreaterThanOrEqual(2);
      }),
      { numRuns: 5 },
    );
  });

  it("device identities: one never answers and is asked forever, one uploads twice", async () => {
    const scenario: Scenario = {
      publishers: ["directory", "webhook", "directory"],
      skews: [0, 30_000, 0],
      commands: [
        { c: "registerDevice", id: "p" },
        { c: "registerDevice", id: "q" },
        { c: "advance", ms: 30_000 },
        { c: "upload", id: "q" },
        { c: "advance", ms: 30_000 },
        { c: "welcome", ids: ["p", "q"] },
        { c: "advance", ms: 30_000 },
        { c: "upload", id: "q" },
        { c: "advance", ms: 900_000 },
      ],
      faults: [],
    };
    await fc.assert(
      fc.asyncProperty(fc.scheduler(), async (s) => {
        const trace: string[] = [];
        const result = await runScenario(s, scenario, trace);
        expect(result.violations, trace.join("\n")).toEqual([]);
        const told = result.notifications;
        // p never uploads: asked again and again (every 60 s at most, once the backoff is capped).
        expect(
          told.filter((n) => n.type === "rotate" && n.identityId === "p").length,
        ).toBeGreaterThan(10);
        // q uploaded twice: two device rotations, and its first package's deletion was announced.
        expect(
          result.deviceRotations.q,
          trace.filter((l) => !l.startsWith("    ")).join("\n"),
        ).toBe(2);
        expect(told.some((n) => n.type === "delete" && n.identityId === "q")).toBe(true);
        expect(told.some((n) => n.identityId === "p" && n.type === "delete")).toBe(false);
      }),
      { numRuns: 3 },
    );
  });

  for (const [name, scenario] of Object.entries(REGRESSIONS)) {
    it(`issue 10, ${name}`, async () => {
      let failure: string[] = [];
      await fc
        .assert(
          fc.asyncProperty(fc.scheduler(), async (s) => {
            const trace: string[] = [];
            const result = await runScenario(s, scenario, trace);
            if (result.violations.length > 0) failure = [...result.violations, ...trace];
            expect(result.violations).toEqual([]);
          }),
          { numRuns: REPLAYS, seed: SEED },
        )
        .catch((err: unknown) => {
          throw new Error(`${String(err)}\n${failure.join("\n")}`);
        });
    });
  }

  it(
    "keeps every invariant under interleavings and faults (general mix)",
    () => explore("general"),
    600_000,
  );

  it(
    "keeps every invariant under interleavings and faults (healing mix)",
    () => explore("healing"),
    600_000,
  );

  it(
    "keeps every invariant with device identities under interleavings and faults (device mix)",
    () => explore("device", Math.ceil(RUNS / 5)),
    600_000,
  );
});
