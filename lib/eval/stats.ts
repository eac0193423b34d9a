/**
 * Confidence intervals of the benchmark: a paired percentile bootstrap over prompt × seed pairs. Every replicate
 * draws n pairs with replacement and evaluates every method on the same draw, so the interval of a difference
 * between two methods (e.g. tv_bind − none) accounts for the pairing: both saw the same prompts and noise.
 * The generator is seeded, so the same outcomes always give the same intervals.
 */

export const BOOTSTRAP_REPLICATES = 2000;
export const BOOTSTRAP_SEED = 0x5eed2307;

/** mulberry32: a small, well-mixed 32-bit generator; uniform doubles in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** FNV-1a of a string: a per-category stream of the one bootstrap seed. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** Quantile q of ascending values with linear interpolation between order statistics (numpy's default). */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) throw new RangeError('quantile of no values');
  if (!(q >= 0 && q <= 1)) throw new RangeError(`Expected a quantile in [0, 1] but received ${q}`);
  const pos = q * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (pos - lo) * (sorted[hi] - sorted[lo]);
}

export interface Interval {
  estimate: number;
  ci95: [number, number];
}

export interface PairedBootstrapResult {
  /** Pairs per method. */
  n: number;
  methods: Record<string, Interval>;
  /** Keyed "a-b" for each requested pair [a, b]: mean(a) − mean(b). */
  differences: Record<string, Interval>;
}

export interface BootstrapOptions {
  replicates?: number;
  seed?: number;
}

function interval(estimate: number, draws: Float64Array): Interval {
  draws.sort();
  return { estimate, ci95: [quantile(draws, 0.025), quantile(draws, 0.975)] };
}

/**
 * outcomes: per method, one value per unit (1 success / 0 failure), aligned across methods (unit u of every
 * method is the same prompt × seed pair). differences: method pairs [a, b] whose difference a − b to report.
 */
export function pairedBootstrap(
  outcomes: Record<string, ArrayLike<number>>,
  differences: Array<[string, string]> = [],
  options: BootstrapOptions = {},
): PairedBootstrapResult {
  const names = Object.keys(outcomes);
  if (names.length === 0) throw new RangeError('pairedBootstrap: no methods');
  const n = outcomes[names[0]].length;
  if (n === 0) throw new RangeError('pairedBootstrap: no units');
  for (const m of names)
    if (outcomes[m].length !== n)
      throw new RangeError(`pairedBootstrap: method ${m} has ${outcomes[m].length} units, ${names[0]} has ${n}; the units must be aligned`);
  for (const [a, b] of differences)
    if (!(a in outcomes) || !(b in outcomes)) throw new RangeError(`pairedBootstrap: difference ${a}-${b} names a method without outcomes`);
  const B = options.replicates ?? BOOTSTRAP_REPLICATES;
  if (!Number.isInteger(B) || B < 1) throw new RangeError(`Expected a positive integer number of replicates but received ${B}`);
  const rng = mulberry32(options.seed ?? BOOTSTRAP_SEED);
  const draws = Object.fromEntries(names.map((m) => [m, new Float64Array(B)]));
  const sums = new Float64Array(names.length);
  for (let b = 0; b < B; b++) {
    sums.fill(0);
    for (let k = 0; k < n; k++) {
      const u = Math.floor(rng() * n);
      for (let m = 0; m < names.length; m++) sums[m] += outcomes[names[m]][u];
    }
    names.forEach((m, i) => (draws[m][b] = sums[i] / n));
  }
  const mean = (m: string) => Array.from(outcomes[m]).reduce((a, v) => a + v, 0) / n;
  const result: PairedBootstrapResult = { n, methods: {}, differences: {} };
  // Differences first: interval() sorts its draws in place, which would break the replicate pairing.
  for (const [a, b] of differences) {
    result.differences[`${a}-${b}`] = interval(
      mean(a) - mean(b),
      draws[a].map((v, i) => v - draws[b][i]),
    );
  }
  for (const m of names) result.methods[m] = interval(mean(m), draws[m]);
  return result;
}
