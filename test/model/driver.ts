import type fc from "fast-check";
import { vi } from "vitest";
import { pullInMany, deregister, register } from "../../src/services/identities.service.js";
import { uploadKeyPackage } from "../../src/services/device.service.js";
import { reconcile } from "../../src/services/reconcile.service.js";
import { buildPackage, type DeviceKeys, deviceKeys } from "../helpers/device-packages.js";
import { Invariants } from "./invariants.js";
import { killProcess, type ModelProcess, pumpWorkers, startProcess, TIMING } from "./processes.js";
import type { Scenario } from "./scenarios.js";
import { copyRedis, emptyRedis, type RedisState, World } from "./world.js";

/**
 * A scenario: commands (requests, time, Redis losses, crashes, publish failures, late writes)
 * run against the real services on the in-memory ports, with a fault schedule on the port calls
 * and fast-check's scheduler choosing the order in which every pending port call completes.
 */

const T0 = Date.UTC(2027, 0, 1);

/** Lets every promise chain that is ready run (setImmediate is not faked). */
const flushMicrotasks = () => new Promise<void>((resolve) => setImmediate(resolve));
/** Longest time step while nothing is due: keeps the healer's 15 s mark checks in order. */
const MAX_STEP_MS = Number(process.env.MODEL_STEP ?? 15_000);

/** Runs one scenario; returns the violations found and the number of scheduled steps. */
export async function runScenario(
  s: fc.Scheduler,
  scenario: Scenario,
  trace: string[] = [],
): Promise<{
  violations: string[];
  steps: number;
  rotations: number;
  faults: number;
  notifications: World["notifications"];
  deviceRotations: Record<string, number>;
}> {
  vi.useFakeTimers({
    now: T0,
    toFake: ["Date", "setTimeout", "clearTimeout", "setInterval", "clearInterval"],
  });
  const world = new World(s, scenario.faults, trace);
  world.blindArms = scenario.blindArms === true;
  const failing = new Set<string>();
  const inv = new Invariants(world);
  const names = ["api", "w0", "w1"];
  let generation = 0;
  const spawn = (i: number) =>
    startProcess(world, `${names[i]}${generation > 0 ? `.${generation}` : ""}`, {
      skew: scenario.skews[i] ?? 0,
      worker: i > 0,
      publisher: scenario.publishers[i] ?? "webhook",
      failing,
    });
  const procs: ModelProcess[] = [0, 1, 2].map(spawn);
  world.onCrash = (proc) => {
    for (const p of procs) if (p.proc === proc) void p.healer?.close();
  };
  const snapshots: RedisState[] = [];
  const background = new Set<Promise<unknown>>();
  const launch = (label: string, p: Promise<unknown>) => {
    const tracked = p.then(
      () => trace.push(`  ${label}: ok`),
      (e: unknown) => trace.push(`  ${label}: ${e instanceof Error ? e.message : String(e)}`),
    );
    background.add(tracked);
    void tracked.finally(() => background.delete(tracked));
  };
  const api = () => procs[0] as ModelProcess;
  const devices = new Map<string, Promise<DeviceKeys>>();
  const keysOf = (id: string) => {
    let keys = devices.get(id);
    if (keys === undefined) {
      keys = deviceKeys();
      devices.set(id, keys);
    }
    return keys;
  };

  const settle = async () => {
    for (let i = 0; i < 50; i++) {
      pumpWorkers(world, procs);
      await s.waitIdle();
      if (s.count() === 0 && !inv.workPending(procs)) break;
    }
  };
  const advance = async (ms: number, failingNow: ReadonlySet<string>) => {
    const target = Date.now() + ms;
    while (Date.now() < target) {
      const next = Math.min(target, inv.nextDue(procs), Date.now() + MAX_STEP_MS);
      vi.advanceTimersByTime(Math.max(1, next - Date.now()));
      await settle();
      // Nothing can be on time while every worker is dead; restarts count as faults.
      if (procs.some((p) => p.worker && !p.proc.dead)) inv.check(failingNow);
    }
  };

  try {
    for (const command of scenario.commands) {
      trace.push(`@${Date.now() - T0} ${JSON.stringify(command)}`);
      switch (command.c) {
        case "register":
          launch(`register ${command.id}`, register(api().rotor, command.id));
          break;
        case "registerDevice":
          inv.devices.add(command.id);
          launch(
            `registerDevice ${command.id}`,
            register(api().rotor, command.id, {
              custody: "device",
              notifyUrl: `https://device.example/${command.id}`,
            }),
          );
          break;
        case "upload": {
          const rotor = api().rotor;
          const identity = new TextEncoder().encode(command.id);
          const reqSeq = world.seq;
          // The device builds its package before it calls (real ts-mls crypto, real time).
          const keys = await keysOf(command.id);
          const bytes = await buildPackage(keys, { identity, now: Date.now() });
          let uploadSettled = false;
          launch(
            `upload ${command.id}`,
            uploadKeyPackage(rotor, command.id, bytes)
              .then(() => inv.uploaded(command.id, reqSeq))
              .finally(() => {
                uploadSettled = true;
              }),
          );
          // The upload verifies signatures under the lock with WebCrypto, which completes on the
          // real event loop, not on a scheduled step: let real time pass while the scheduler
          // releases port calls, until the upload ends (5 s of real time at most).
          // performance.now() is real time (vitest fakes Date and timers only).
          const started = performance.now();
          while (!uploadSettled && performance.now() - started < 5_000) {
            await new Promise<void>((resolve) => setImmediate(resolve));
            pumpWorkers(world, procs);
            if (s.count() > 0) await s.waitNext(1);
          }
          break;
        }
        case "welcome":
        case "rotateNow": {
          const list = command.c === "welcome" ? command.ids : [command.id];
          const delay = command.c === "welcome" ? TIMING.welcomeRotationDelayMs : 0;
          const reqSeq = world.seq;
          launch(
            `${command.c} ${list.join(",")}`,
            pullInMany(api().rotor, list, delay).then(({ results }) =>
              inv.acknowledged(results, reqSeq),
            ),
          );
          break;
        }
        case "deregister":
          launch(`deregister ${command.id}`, deregister(api().rotor, command.id));
          break;
        case "advance":
          if (command.ms <= 5_000) {
            // Requests in flight stay in flight while a little time passes.
            vi.advanceTimersByTime(command.ms);
            pumpWorkers(world, procs);
          } else {
            await settle();
            await advance(command.ms, failing);
          }
          break;
        case "flushAll":
          world.redis = emptyRedis();
          inv.fault("full loss");
          break;
        case "loseJobs":
          for (const lost of command.ids) world.redis.queues[command.kind].delete(lost);
          inv.fault("partial loss");
          break;
        case "tailLoss": {
          const snapshot = snapshots[snapshots.length - command.back];
          if (snapshot) world.redis = copyRedis(snapshot);
          inv.fault("tail loss");
          break;
        }
        case "land":
          for (const write of world.late.splice(0)) write();
          inv.fault("late write");
          break;
        case "crash":
          killProcess(world, procs[command.proc] as ModelProcess);
          inv.fault("crash");
          break;
        case "restart":
          if (procs.some((p) => p.proc.dead)) inv.fault("restart");
          generation++;
          procs.forEach((p, i) => {
            if (p.proc.dead) procs[i] = spawn(i);
          });
          break;
        case "publishFails":
          failing.add(command.id);
          if (command.forever) inv.foreverFailing.add(command.id);
          break;
        case "publishHeals":
          if (!inv.foreverFailing.has(command.id) && failing.delete(command.id))
            inv.fault("publish healed");
          break;
        case "reconcile":
          launch(
            "reconcile",
            reconcile(api().rotor, {
              pageSize: command.pageSize ?? 2,
              pagesInFlight: command.pagesInFlight ?? 2,
            }),
          );
          break;
        case "faultNext":
          world.faultNext(command.on, command.k, command.kind);
          break;
        case "run":
          // A few port calls complete, leaving the rest in flight for the next commands.
          pumpWorkers(world, procs);
          for (let i = 0; i < command.steps; i++) {
            await flushMicrotasks();
            if (s.count() === 0) break;
            await s.waitNext(1);
          }
          break;
      }
      snapshots.push(copyRedis(world.redis));
      if (snapshots.length > 4) snapshots.shift();
    }
    // Liveness: the faults stop, late writes land, dead processes are replaced, transient
    // publish failures end; then time runs on until every bound has passed.
    world.faultsOff = true;
    await settle();
    for (const write of world.late.splice(0)) write();
    inv.fault("late write");
    generation++;
    procs.forEach((p, i) => {
      if (p.proc.dead) procs[i] = spawn(i);
    });
    for (const f of [...failing]) if (!inv.foreverFailing.has(f)) failing.delete(f);
    inv.fault("quiet phase");
    await advance(inv.quietPhaseMs(), failing);
    inv.final(failing);
  } finally {
    for (const p of procs) killProcess(world, p);
    await s.waitIdle();
    vi.useRealTimers();
  }
  return {
    violations: world.violations,
    steps: world.steps,
    rotations: world.rotations.length,
    faults: trace.filter((l) => l.startsWith("  fault")).length,
    notifications: world.notifications,
    deviceRotations: Object.fromEntries(
      [...inv.devices].map((id) => [id, world.rotations.filter((r) => r.id === id).length]),
    ),
  };
}
