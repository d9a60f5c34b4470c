/**
 * The welcome model of the simulation (docs/simulation.md): per identity a Poisson process whose
 * rate is the identity's own (heavy-tailed across the fleet) times one fleet-wide daily cycle.
 * Sampled by time rescaling, so an identity costs one draw per welcome, never one per second.
 */

const DAY_S = 86_400;

/** Small, fast, seedable generator (sfc32); deterministic runs for a given seed. */
export function createRandom(seed: number): () => number {
  let a = 0x9e3779b9 ^ seed;
  let b = 0x243f6a88;
  let c = 0xb7e15162;
  let d = seed | 0;
  const next = () => {
    a |= 0;
    b |= 0;
    c |= 0;
    d |= 0;
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return (t >>> 0) / 4_294_967_296;
  };
  for (let i = 0; i < 16; i++) next();
  return next;
}

export interface WelcomeModel {
  /** Share of identities that never get a welcome (installed, never added to a group). */
  dormantShare: number;
  /** Mean welcomes per day of the other identities (before the cap). */
  activeMeanPerDay: number;
  /** Pareto shape of the active identities' rates (1 < alpha; smaller is heavier-tailed). */
  paretoAlpha: number;
  /** Highest rate any identity gets, welcomes per day (bots, very large groups). */
  maxPerDay: number;
  /** Daily cycle: intensity 1 + amplitude x cos(2 pi (hour - peakHour) / 24), mean 1. */
  cycleAmplitude: number;
  peakHourUtc: number;
}

export const DEFAULT_WELCOME_MODEL: WelcomeModel = {
  dormantShare: 0.3,
  activeMeanPerDay: 0.03,
  paretoAlpha: 1.5,
  maxPerDay: 2_000,
  cycleAmplitude: 0.6,
  peakHourUtc: 20,
};

/** An identity's welcome rate (per day): 0 for dormant ones, else Pareto(x_m, alpha), capped. */
export function drawRate(model: WelcomeModel, random: () => number): number {
  if (random() < model.dormantShare) return 0;
  const alpha = model.paretoAlpha;
  const xm = (model.activeMeanPerDay * (alpha - 1)) / alpha;
  // 1 - random() is in (0, 1]: never a division by zero.
  return Math.min(model.maxPerDay, xm * (1 - random()) ** (-1 / alpha));
}

/**
 * Inverse of the daily cycle's cumulative intensity: welcome times of a rate-r identity are
 * found by drawing Exp(1)/r in "cycle days" and mapping that back to wall-clock seconds.
 */
export function createWelcomeClock(model: WelcomeModel) {
  const amp = model.cycleAmplitude;
  const phase = model.peakHourUtc / 24;
  // cumulative[s] = integral of the intensity over [0, s) seconds of a day, in days (1 at 86,400).
  const cumulative = new Float64Array(DAY_S + 1);
  const at = (x: number) =>
    x +
    (amp / (2 * Math.PI)) * (Math.sin(2 * Math.PI * (x - phase)) + Math.sin(2 * Math.PI * phase));
  for (let s = 0; s <= DAY_S; s++) cumulative[s] = at(s / DAY_S);
  cumulative[DAY_S] = 1;
  const K = 1 << 17;
  const inverse = new Int32Array(K + 1);
  let s = 0;
  for (let k = 0; k <= K; k++) {
    const f = k / K;
    while (s < DAY_S - 1 && (cumulative[s + 1] as number) <= f) s++;
    inverse[k] = s;
  }
  /** Cycle-days elapsed at wall-clock second t. */
  const toCycle = (t: number): number => {
    const day = Math.floor(t / DAY_S);
    return day + (cumulative[t - day * DAY_S] as number);
  };
  /** The wall-clock second at which `cycle` cycle-days have elapsed. */
  const fromCycle = (cycle: number): number => {
    const day = Math.floor(cycle);
    const f = cycle - day;
    let s = inverse[Math.floor(f * K)] as number;
    while (s < DAY_S - 1 && (cumulative[s + 1] as number) <= f) s++;
    return day * DAY_S + s;
  };
  return {
    /** The second of the next welcome after second `t` for an identity of `ratePerDay` (> 0). */
    next(t: number, ratePerDay: number, random: () => number): number {
      const wait = -Math.log(1 - random()) / ratePerDay;
      const at = fromCycle(toCycle(t) + wait);
      // Whole seconds: a second welcome in the same second as the first is one more welcome
      // at that second, which is what the service would see too.
      return Math.max(t, at);
    },
    intensityAt(secondOfDay: number): number {
      return 1 + amp * Math.cos(2 * Math.PI * (secondOfDay / DAY_S - phase));
    },
  };
}
