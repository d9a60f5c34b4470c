/**
 * A year of a fleet on a virtual clock: the service's own decisions (src/core/deadlines.ts, the pure
 * logic the services call under their row locks) applied to every welcome, rotation and deletion
 * of every identity, with no Redis and no Postgres. Event-driven: a time-bucketed queue (one
 * bucket per second, intrusive doubly linked lists in typed arrays) holds at most three events per
 * identity (its rotation wake-up, its deletion wake-up, its next welcome or registration), so a
 * pull-in moves one node and nothing ever scans the fleet per second.
 */
import { afterRotation, decideRotation, pullIn, type Timing } from "../../src/core/deadlines.js";
import { createRandom, createWelcomeClock, drawRate, type WelcomeModel } from "./welcomes.js";

const DAY_S = 86_400;
const ROTATION = 0;
const WELCOME = 2; // kind 1 (deletion) is counted, not queued: see deletionsDue

export interface SimOptions {
  identities: number;
  days: number;
  timing: Timing;
  welcomes: WelcomeModel;
  /** Identities registered in the mass-registration event (part of `identities`). */
  massIdentities: number;
  /** When it starts (days from the start) and how long it lasts (hours). */
  massDay: number;
  massHours: number;
  seed: number;
  /** Called once per simulated day (progress). */
  onDay?: (day: number) => void;
}

/** What happened on one simulated day. Wake-ups are BullMQ jobs firing (kp-rotor's design). */
export interface DayStats {
  day: number;
  registrations: number;
  welcomes: number;
  /** Welcomes that moved a deadline (the rest found one within WELCOME_ROTATION_DELAY already). */
  welcomesMoved: number;
  rotationWakeups: number;
  /** Rotations due by the interval (not pulled in by a welcome). */
  intervalRotations: number;
  /** Deletion wake-ups; each deletes one superseded key package (its own delete_at). */
  deletionWakeups: number;
  /** Highest number of rotations due in one second, and of all wake-ups (rotation + deletion). */
  peakRotationsPerSecond: number;
  peakWakeupsPerSecond: number;
  /** Highest number of rotations due in one 5 s poll period (the poll designs see these at once). */
  peakRotationsPer5s: number;
  /** 5 s periods with at least one rotation or deletion due (the central poll's UPDATE turns). */
  busyPollPeriods: number;
  /** Delayed wake-up jobs in Redis at the end of the day, and the most during it. */
  timersAtEnd: number;
  timersMax: number;
  registeredAtEnd: number;
}

export interface SimResult {
  days: DayStats[];
  /** Per minute: rotations due, and the most due in one second of that minute. */
  rotationsPerMinute: Uint32Array;
  peakPerSecondByMinute: Uint16Array;
  realizedMeanWelcomesPerDay: number;
  events: number;
  /** Wall-clock seconds spent building the fleet, and in total. */
  initSeconds: number;
  seconds: number;
}

/** Runs the simulation; memory is about 90 bytes per identity plus 4 bytes per simulated second. */
export function simulate(o: SimOptions): SimResult {
  const started = performance.now();
  const N = o.identities;
  const horizon = o.days * DAY_S;
  const random = createRandom(o.seed);
  const clock = createWelcomeClock(o.welcomes);
  const timing = o.timing;
  const delayMs = timing.welcomeRotationDelayMs;

  // Per identity one 64-byte record (one cache line), because at 10M identities every event is a
  // random memory access and cache misses, not arithmetic, set the pace. Layout:
  //   f64[0] rotation deadline (ms; the row's rotation_deadline)
  //   f64[1] latest superseded package's delete_at (ms; 0: none)
  //   i32[4..6] next node in its bucket, per kind; i32[7..9] previous (-1: not queued,
  //     <= -2: head of bucket -prev - 2); i32[10] generation; i32[11] flags; f32[12] welcome rate.
  const buffer = new ArrayBuffer(N * 64);
  const f64 = new Float64Array(buffer);
  const i32 = new Int32Array(buffer);
  const f32 = new Float32Array(buffer);
  for (let i = 0; i < N; i++) i32.fill(-1, i * 16 + 4, i * 16 + 10);
  const REGISTERED = 1;
  const PULLED_IN = 2; // the deadline is a welcome's, not the interval's
  const deadlineOf = (i: number) => f64[i * 8] as number;
  const deleteAtOf = (i: number) => f64[i * 8 + 1] as number;
  const generationOf = (i: number) => i32[i * 16 + 10] as number;
  const flagsOf = (i: number) => i32[i * 16 + 11] as number;
  const setFlags = (i: number, flags: number) => {
    i32[i * 16 + 11] = flags;
  };
  const rateOf = (i: number) => f32[i * 16 + 12] as number;
  // Node n = identity * 3 + kind: its next slot is i32[i * 16 + 4 + kind], prev 3 further.
  const slot = (node: number) => {
    const i = (node / 3) | 0;
    return i * 16 + 4 + (node - i * 3);
  };

  // The bucketed event queue: one list head per simulated second.
  const heads = new Int32Array(horizon + 1).fill(-1);
  // Deletion wake-ups are not queued, they are counted: every superseded package gets its own
  // delete_at (rotation time + DELETION_GRACE), and the deletion wake-up fires at the earliest,
  // deletes it and re-arms to the next (handleDeletionWake, deletionDeadline), so each package
  // costs exactly one wake-up at its delete_at. An identity keeps a deletion job while its latest
  // delete_at is ahead: deletionJobsEnding[s] counts the jobs that finish in second s.
  const deletionsDue = new Uint32Array(horizon + 1);
  const deletionJobsEnding = new Int32Array(horizon + 1);

  const unlink = (node: number) => {
    const at = slot(node);
    const p = i32[at + 3] as number;
    if (p === -1) return;
    const n = i32[at] as number;
    if (p <= -2) heads[-p - 2] = n;
    else i32[slot(p)] = n;
    if (n !== -1) i32[slot(n) + 3] = p;
    i32[at + 3] = -1;
    i32[at] = -1;
  };
  const push = (node: number, second: number) => {
    unlink(node);
    if (second >= horizon) return; // beyond the simulated year: never fires here
    const s = Math.max(0, second);
    const at = slot(node);
    const h = heads[s] as number;
    i32[at] = h;
    if (h !== -1) i32[slot(h) + 3] = node;
    i32[at + 3] = -s - 2;
    heads[s] = node;
  };
  const msToSecond = (ms: number) => Math.floor(ms / 1000);

  const idOf = (i: number) => `id-${i}`;
  let timers = 0;

  /** A successful rotation of identity i at `nowMs` (registration inline, or its wake-up). */
  const rotate = (i: number, nowMs: number) => {
    const gen = generationOf(i) + 1;
    i32[i * 16 + 10] = gen;
    const flags = flagsOf(i) & ~PULLED_IN;
    setFlags(i, flags);
    const after = afterRotation(nowMs, timing, null, idOf(i));
    f64[i * 8] = after.rotationDeadline;
    push(i * 3 + ROTATION, msToSecond(after.rotationDeadline));
    if (gen === 1) return; // a first key package supersedes nothing
    const deleteAt = after.supersededDeleteAt;
    const second = msToSecond(deleteAt);
    if (second >= 0 && second < horizon)
      deletionsDue[second] = (deletionsDue[second] as number) + 1;
    const latest = deleteAtOf(i);
    // The deletion job (armed to the earliest delete_at) lives until the latest one.
    if (latest > nowMs) {
      const ends = msToSecond(latest);
      if (ends >= 0 && ends < horizon)
        deletionJobsEnding[ends] = (deletionJobsEnding[ends] as number) - 1;
    } else {
      timers++;
    }
    f64[i * 8 + 1] = deleteAt;
    if (second < horizon) {
      const ends = Math.max(0, second);
      deletionJobsEnding[ends] = (deletionJobsEnding[ends] as number) + 1;
    }
  };

  // The fleet at the start: everyone but the mass registration, in steady state (last rotation
  // uniformly within the last interval, so deadlines are spread as a long-running fleet's are).
  const mass = Math.min(o.massIdentities, N);
  const existing = N - mass;
  for (let i = 0; i < N; i++) f32[i * 16 + 12] = drawRate(o.welcomes, random);
  for (let i = 0; i < existing; i++) {
    i32[i * 16 + 10] = 1 + Math.floor(random() * 12);
    // Its last rotation uniformly within its own (jittered) interval before the start.
    const interval = afterRotation(0, timing, null, idOf(i)).rotationDeadline;
    setFlags(i, REGISTERED);
    timers++;
    rotate(i, -Math.floor(random() * interval));
    const r = rateOf(i);
    if (r > 0) push(i * 3 + WELCOME, clock.next(0, r, random));
  }
  // The mass registration: uniformly over its window; its welcome node carries the registration.
  const massStart = o.massDay * DAY_S;
  const massSeconds = Math.max(1, Math.round(o.massHours * 3_600));
  for (let i = existing; i < N; i++) {
    push(i * 3 + WELCOME, massStart + Math.floor(random() * massSeconds));
  }

  const initSeconds = (performance.now() - started) / 1000;
  const days: DayStats[] = [];
  const minutes = Math.ceil(horizon / 60);
  const rotationsPerMinute = new Uint32Array(minutes);
  const peakPerSecondByMinute = new Uint16Array(minutes);
  let events = 0;
  let welcomesTotal = 0;
  let registeredCount = existing;

  for (let day = 0; day < o.days; day++) {
    const stats: DayStats = {
      day,
      registrations: 0,
      welcomes: 0,
      welcomesMoved: 0,
      rotationWakeups: 0,
      intervalRotations: 0,
      deletionWakeups: 0,
      peakRotationsPerSecond: 0,
      peakWakeupsPerSecond: 0,
      peakRotationsPer5s: 0,
      busyPollPeriods: 0,
      timersAtEnd: 0,
      timersMax: timers,
      registeredAtEnd: 0,
    };
    let rotations5s = 0;
    let busy5s = false;
    for (let s = day * DAY_S; s < (day + 1) * DAY_S; s++) {
      let rotations = 0;
      const deletions = deletionsDue[s] as number;
      let wakeups = deletions;
      stats.deletionWakeups += deletions;
      timers -= deletionJobsEnding[s] as number;
      for (let node = heads[s] as number; node !== -1; node = heads[s] as number) {
        unlink(node);
        events++;
        const i = (node / 3) | 0;
        const kind = node - i * 3;
        if (kind === WELCOME) {
          const nowMs = s * 1000;
          if ((flagsOf(i) & REGISTERED) === 0) {
            // Registration: first deadline now + delay, armed, then rotated inline (register()).
            setFlags(i, REGISTERED);
            registeredCount++;
            timers++;
            stats.registrations++;
            rotate(i, nowMs);
          } else {
            stats.welcomes++;
            welcomesTotal++;
            const pulled = pullIn(deadlineOf(i), nowMs, delayMs);
            if (pulled.changed) {
              stats.welcomesMoved++;
              setFlags(i, flagsOf(i) | PULLED_IN);
              f64[i * 8] = pulled.deadline;
              push(i * 3 + ROTATION, msToSecond(pulled.deadline));
            }
          }
          const r = rateOf(i);
          if (r > 0) push(node, clock.next(s, r, random));
        } else if (kind === ROTATION) {
          const deadline = deadlineOf(i);
          // The wake-up fires at its deadline; the core decides by the row's deadline.
          const decision = decideRotation(
            { rotationDeadline: deadline, deregistered: false },
            deadline,
          );
          if (decision.kind !== "rotate") throw new Error(`wake-up not due: ${decision.kind}`);
          stats.rotationWakeups++;
          rotations++;
          wakeups++;
          if ((flagsOf(i) & PULLED_IN) === 0) stats.intervalRotations++;
          rotate(i, deadline);
        }
        if (timers > stats.timersMax) stats.timersMax = timers;
      }
      if (rotations > stats.peakRotationsPerSecond) stats.peakRotationsPerSecond = rotations;
      if (wakeups > stats.peakWakeupsPerSecond) stats.peakWakeupsPerSecond = wakeups;
      const minute = (s / 60) | 0;
      rotationsPerMinute[minute] = (rotationsPerMinute[minute] as number) + rotations;
      if (rotations > (peakPerSecondByMinute[minute] as number)) {
        peakPerSecondByMinute[minute] = Math.min(65_535, rotations);
      }
      rotations5s += rotations;
      if (wakeups > 0) busy5s = true;
      if (s % 5 === 4) {
        if (rotations5s > stats.peakRotationsPer5s) stats.peakRotationsPer5s = rotations5s;
        if (busy5s) stats.busyPollPeriods++;
        rotations5s = 0;
        busy5s = false;
      }
    }
    stats.timersAtEnd = timers;
    stats.registeredAtEnd = registeredCount;
    days.push(stats);
    o.onDay?.(day);
  }
  return {
    days,
    rotationsPerMinute,
    peakPerSecondByMinute,
    realizedMeanWelcomesPerDay: welcomesTotal / Math.max(1, registeredCount) / o.days,
    events,
    initSeconds,
    seconds: (performance.now() - started) / 1000,
  };
}
