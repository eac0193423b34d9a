/**
 * Attention-guidance schedule of Divide & Bind / Attend-and-Excite (spec §3, §9): thresholds, refinement caps,
 * step sizes. Pure functions, no I/O.
 */
import type { LossMode } from '../loss/types';

/** 'none' = plain Stable Diffusion. */
export type GuidanceMode = 'none' | LossMode;

export const GUIDANCE_MODES = ['none', 'max', 'tv', 'tv_bind', 'tv_max'] as const satisfies readonly GuidanceMode[];

/** Refinement-cap presets: the official "latest" pipeline (100 at i = 0, 50 later) or the paper-era code. */
export type RefinementPreset = 'official-latest' | 'paper';

export const REFINEMENT_PRESETS = ['official-latest', 'paper'] as const satisfies readonly RefinementPreset[];

export interface RefinementCaps {
  /** Cap at loop index 0. */
  initStep: number;
  /** Cap at the other threshold keys. */
  other: number;
}

/** Threshold schedule {loop index: threshold on the indicator θ} per mode (spec §3 table, §2.4). */
export function defaultThresholds(mode: GuidanceMode): Record<number, number> {
  switch (mode) {
    case 'none':
      return {};
    case 'max':
      return { 0: 0.05, 10: 0.5, 20: 0.8 };
    case 'tv':
    case 'tv_bind':
    case 'tv_max':
      return { 0: 0.05, 10: 0.2, 20: 0.3 };
  }
}

/** Refinement caps per preset and mode (spec §3: [L] 100/50 for every mode; [O] tv 50/20, max 20/20). */
export function refinementCaps(preset: RefinementPreset, mode: GuidanceMode): RefinementCaps {
  if (preset === 'official-latest') return { initStep: 100, other: 50 };
  return mode === 'max' ? { initStep: 20, other: 20 } : { initStep: 50, other: 20 };
}

/**
 * Step sizes α_i = scaleFactor · sqrt(linspace(range[0], range[1], n)[i]) (spec §3: the config calls it a linear
 * decay but the code takes the square root). n is the number of scheduler timesteps (51 for PNDM at 50 steps).
 */
export function stepSizes(scaleFactor: number, range: [number, number], n: number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    // numpy.linspace: start + i·(stop − start)/(n − 1), with the last value exactly stop.
    const v = n === 1 ? range[0] : i === n - 1 ? range[1] : range[0] + (i * (range[1] - range[0])) / (n - 1);
    out[i] = scaleFactor * Math.sqrt(v);
  }
  return out;
}

/**
 * Last loop index at which guidance can change the result: the latent update runs for i < maxIterToAlter and
 * refinement at threshold keys. Gradient passes after it are skipped (spec §3 notes).
 */
export function lastGuidedIndex(maxIterToAlter: number, thresholds: Record<number, number>): number {
  const keys = Object.keys(thresholds).map(Number);
  return Math.max(maxIterToAlter - 1, keys.length ? Math.max(...keys) : -1);
}
