/**
 * The commands fast-check interleaves against the simulator, and one scenario run: the prelude,
 * the commands, then the final phase, with every invariant checked after every step.
 *
 * Requests (register, welcome, rotateSoon, deregister, reconcile) only start a process; `#k` in
 * step / run / runTx picks the k-th process in flight (by start order, modulo their number), and
 * a command that does not apply (nothing in flight, nothing due) does nothing, so that shrinking
 * can drop any command.
 */
import fc from "fast-check";
import {
  COMPRESSED_TIMING,
  clientOp,
  DAY,
  type Fault,
  type Id,
  PRODUCTION_TIMING,
  type PublisherMode,
  SEC,
  Sim,
  type SimOptions,
} from "./sim.js";

export type Command =
  | { t: "register" | "welcome" | "rotateSoon" | "deregister"; id: Id }
  | { t: "reconcile" }
  /** `n - 1` clean steps of one process, then one more that may fail. */
  | { t: "step"; pick: number; n: number; fault: Fault }
  | { t: "run"; pick: number }
  /** A worker fetches a due job (of either queue) and starts its processor. */
  | { t: "take"; worker: number; pick: number }
  /** One process runs up to and including its next commit (or until it ends or blocks). */
  | { t: "runTx"; pick: number }
  /** Same, but that commit fails: before it happens, or after (the answer is lost). */
  | { t: "failCommit"; pick: number; fault: "before" | "after" }
  /**
   * One process runs up to its next Redis call or publish (or until it ends or blocks), and that
   * call fails: before its effect, or after (the answer is lost).
   */
  | { t: "failRemote"; pick: number; fault: "before" | "after" }
  | { t: "advance"; ms: number }
  | { t: "advanceToNext" }
  | { t: "crashWorker"; worker: number }
  | { t: "crashApi" }
  | { t: "flush" };

export function showCommand(c: Command): string {
  switch (c.t) {
    case "register":
    case "welcome":
    case "rotateSoon":
    case "deregister":
      return `${c.t}(${c.id})`;
    case "step": {
      const n = c.n === 1 ? "" : ` x${c.n}`;
      return `step(#${c.pick}${n}${c.fault === "none" ? "" : `, last fails ${c.fault}`})`;
    }
    case "run":
      return `run(#${c.pick})`;
    case "take":
      return `take(w${c.worker}, #${c.pick})`;
    case "runTx":
      return `runTx(#${c.pick})`;
    case "failCommit":
      return `runTx(#${c.pick}, commit fails ${c.fault})`;
    case "failRemote":
      return `runToRemote(#${c.pick}, fails ${c.fault})`;
    case "advance":
      return `advance(${c.ms} ms)`;
    case "crashWorker":
      return `crashWorker(w${c.worker})`;
    default:
      return `${c.t}()`;
  }
}

const withName = (c: Command): Command =>
  Object.assign(c, { [fc.toStringMethod]: () => showCommand(c) });

const ADVANCES = [1, SEC, 5 * SEC, 30 * SEC, 61 * SEC, 3_600_000, DAY, 30 * DAY];

export interface CommandOptions {
  /** Failures, crashes and Redis flushes. */
  faults: boolean;
}

export function commandArb(options: CommandOptions): fc.Arbitrary<Command> {
  const id = fc.oneof(
    { weight: 4, arbitrary: fc.constant<Id>("a") },
    { weight: 2, arbitrary: fc.constant<Id>("b") },
    { weight: 1, arbitrary: fc.constant<Id>("c") },
  );
  const pick = fc.nat(3);
  const fault: fc.Arbitrary<Fault> = options.faults
    ? fc.oneof(
        { weight: 10, arbitrary: fc.constant<Fault>("none") },
        { weight: 1, arbitrary: fc.constant<Fault>("before") },
        { weight: 1, arbitrary: fc.constant<Fault>("after") },
      )
    : fc.constant<Fault>("none");
  const arbs: fc.WeightedArbitrary<Command>[] = [
    {
      weight: 8,
      arbitrary: fc.record({
        t: fc.constantFrom("register", "welcome", "rotateSoon", "deregister" as const),
        id,
      }),
    },
    { weight: 1, arbitrary: fc.constant({ t: "reconcile" as const }) },
    {
      weight: 16,
      arbitrary: fc.record({
        t: fc.constant("step" as const),
        pick,
        n: fc.oneof({ weight: 3, arbitrary: fc.constant(1) }, fc.integer({ min: 1, max: 16 })),
        fault,
      }),
    },
    { weight: 6, arbitrary: fc.record({ t: fc.constant("run" as const), pick }) },
    {
      weight: 10,
      arbitrary: fc.record({ t: fc.constant("take" as const), worker: fc.nat(1), pick }),
    },
    { weight: 6, arbitrary: fc.record({ t: fc.constant("runTx" as const), pick }) },
    {
      weight: 4,
      arbitrary: fc.record({
        t: fc.constant("advance" as const),
        ms: fc.constantFrom(...ADVANCES),
      }),
    },
    { weight: 6, arbitrary: fc.constant({ t: "advanceToNext" as const }) },
  ];
  if (options.faults) {
    arbs.push(
      {
        weight: 3,
        arbitrary: fc.record({
          t: fc.constant("failCommit" as const),
          pick,
          fault: fc.constantFrom("before" as const, "after" as const),
        }),
      },
      {
        weight: 1,
        arbitrary: fc.record({ t: fc.constant("crashWorker" as const), worker: fc.nat(1) }),
      },
      {
        weight: 2,
        arbitrary: fc.record({
          t: fc.constant("failRemote" as const),
          pick,
          fault: fc.constantFrom("before" as const, "after" as const),
        }),
      },
      { weight: 1, arbitrary: fc.constant({ t: "crashApi" as const }) },
      { weight: 1, arbitrary: fc.constant({ t: "flush" as const }) },
    );
  }
  return fc.oneof(...arbs).map(withName);
}

/** One run: a clock scale, the publisher ("webhook" when absent) and the commands after the prelude. */
export interface Scenario {
  timing: "production" | "compressed";
  publisher?: PublisherMode;
  commands: Command[];
}

export const PUBLISHER_MODES: readonly PublisherMode[] = ["webhook", "directory", "mixed"];

/**
 * `publisher` fixes the publisher mode (a constant draws nothing from the random stream, so a
 * fixed seed explores the same command sequences whatever mode is fixed); otherwise each run
 * picks one.
 */
export function scenarioArb(
  options: CommandOptions,
  maxLength = 25,
  publisher?: PublisherMode,
): fc.Arbitrary<Scenario> {
  return fc.record({
    timing: fc.constantFrom("production" as const, "compressed" as const),
    publisher:
      publisher === undefined ? fc.constantFrom(...PUBLISHER_MODES) : fc.constant(publisher),
    commands: fc.array(commandArb(options), { maxLength }),
  });
}

/** The labels of the simulator's Redis calls and publishes. */
const REMOTE_STEP =
  /^(view |add |getJob |changeDelay |remove |moveToDelayed |updateData\(|job\.remove |moveToCompleted |scan |publish\()/;

function pickProc(sim: Sim, pick: number) {
  const procs = [...sim.procs].sort((a, b) => a.pid - b.pid);
  return procs.length === 0 ? undefined : procs[pick % procs.length];
}

export function exec(sim: Sim, c: Command): void {
  sim.log(`> ${showCommand(c)}`);
  switch (c.t) {
    case "register":
      sim.spawn("api", `register(${c.id})`, (p) => clientOp(sim, p, sim.register(p, c.id)), {
        target: c.id,
      });
      return;
    case "welcome":
    case "rotateSoon": {
      const delay = c.t === "welcome" ? 5 * SEC : 0;
      sim.spawn(
        "api",
        `${c.t}(${c.id})`,
        (p) => clientOp(sim, p, sim.pullInOne(p, c.id, delay, c.t)),
        { target: c.id },
      );
      return;
    }
    case "deregister":
      sim.spawn("api", `deregister(${c.id})`, (p) => clientOp(sim, p, sim.deregister(p, c.id)), {
        target: c.id,
      });
      return;
    case "reconcile":
      sim.spawn("api", "reconcile", (p) => clientOp(sim, p, sim.reconcile(p)));
      return;
    case "step": {
      const p = pickProc(sim, c.pick);
      for (let i = 1; p && i < c.n; i++) if (sim.stepProc(p, "none") !== "stepped") return;
      if (p) sim.stepProc(p, c.fault);
      return;
    }
    case "run": {
      const p = pickProc(sim, c.pick);
      for (let i = 0; p && i < 200; i++) if (sim.stepProc(p, "none") !== "stepped") break;
      return;
    }
    case "take":
      sim.take(c.worker, c.pick);
      return;
    case "runTx":
    case "failCommit": {
      const p = pickProc(sim, c.pick);
      for (let i = 0; p && i < 200; i++) {
        const committing = p.pause?.label === "commit";
        const fault = committing && c.t === "failCommit" ? c.fault : "none";
        if (sim.stepProc(p, fault) !== "stepped" || committing) break;
      }
      return;
    }
    case "failRemote": {
      const p = pickProc(sim, c.pick);
      for (let i = 0; p && i < 200; i++) {
        const remote = REMOTE_STEP.test(p.pause?.label ?? "");
        if (sim.stepProc(p, remote ? c.fault : "none") !== "stepped" || remote) break;
      }
      return;
    }
    case "advance":
      sim.advance(c.ms);
      return;
    case "advanceToNext": {
      const next = sim.nextEvent();
      if (next !== undefined) sim.advance(next - sim.now);
      return;
    }
    case "crashWorker":
      sim.crash(`w${c.worker}`);
      return;
    case "crashApi":
      sim.crash("api");
      return;
    case "flush":
      sim.flush();
      return;
  }
}

/**
 * Every scenario starts from here: "a" and "b" registered (first key package out), then a welcome
 * for "a" and its rotation by a worker 5 s later, so that "a" also has a superseded key package
 * and an armed deletion wake-up (due 1 day later).
 */
export const PRELUDE: readonly Command[] = [
  { t: "register", id: "a" },
  { t: "run", pick: 0 },
  { t: "register", id: "b" },
  { t: "run", pick: 0 },
  { t: "welcome", id: "a" },
  { t: "run", pick: 0 },
  { t: "advance", ms: 5 * SEC },
  { t: "take", worker: 0, pick: 0 },
  { t: "run", pick: 0 },
];

const afterPrelude = new Map<string, Sim>();

/** One scenario: throws InvariantViolation when an invariant fails. */
export function runScenario(scenario: Scenario, options: SimOptions): Sim {
  const timing = scenario.timing === "production" ? PRODUCTION_TIMING : COMPRESSED_TIMING;
  const publisher = scenario.publisher ?? "webhook";
  // The prelude runs once per timing, publisher and options (it is checked like any other step).
  const { trace, ...rest } = options;
  const key = JSON.stringify([scenario.timing, publisher, rest]);
  let base = afterPrelude.get(key);
  if (base === undefined) {
    base = new Sim({ ...rest, timing, publisher });
    for (const c of PRELUDE) exec(base, c);
    afterPrelude.set(key, base);
  }
  const sim = base.fork({ ...options, timing, publisher });
  sim.log(`--- ${scenario.timing} timing, ${publisher} publisher, after the prelude`);
  sim.log("--- commands");
  for (const c of scenario.commands) exec(sim, c);
  sim.finalPhase();
  return sim;
}
