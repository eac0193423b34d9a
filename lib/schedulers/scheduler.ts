/**
 * The scheduler surface shared by PNDM, DDIM and Euler: diffusers' API in camelCase, plus the config handling
 * (`scheduler_config.json`) and the β schedule they all build on.
 *
 * Arithmetic follows diffusers on float32 tensors: every scalar coefficient and every element-wise operation is
 * rounded to float32 (`Math.fround`) in diffusers' order; β and ᾱ reproduce torch's float32 linspace/cumprod bit for
 * bit. Steps then agree with diffusers on CPU PyTorch to a few float32 ulps (the tests state the tolerances).
 */

import { fmaf } from './float32';

export type BetaSchedule = 'linear' | 'scaled_linear' | 'squaredcos_cap_v2';
export type TimestepSpacing = 'leading' | 'trailing' | 'linspace';
export type PredictionType = 'epsilon' | 'v_prediction';

/** The keys of `scheduler_config.json` this package understands (snake_case, as in the file). */
export interface SchedulerConfig {
  num_train_timesteps: number;
  beta_start: number;
  beta_end: number;
  beta_schedule: BetaSchedule;
  /** PNDM/DDIM: use ᾱ = 1 for the step past t = 0, else ᾱ₀. */
  set_alpha_to_one: boolean;
  steps_offset: number;
  timestep_spacing: TimestepSpacing;
  prediction_type: PredictionType;
  /** PNDM: PLMS only (all SD checkpoints); false (Runge-Kutta warm-up) is not implemented. */
  skip_prk_steps: boolean;
  /** DDIM: clip the predicted x₀ to ±clip_sample_range. */
  clip_sample: boolean;
  clip_sample_range: number;
}

export interface StepResult {
  /** x_{t-1}, the sample for the next timestep. */
  prevSample: Float32Array;
  /** The model's x₀ estimate at this step, where the scheduler computes one (DDIM, Euler). */
  predOriginalSample?: Float32Array;
}

/**
 * One denoising scheduler. Instances hold per-generation state (PNDM's ε history, Euler's step index), so give
 * each concurrent generation its own `clone()`.
 */
export interface Scheduler {
  readonly name: SchedulerName;
  readonly config: Readonly<SchedulerConfig>;
  /** Timesteps of the current schedule, in sampling order (PNDM with 50 steps gives 51). */
  readonly timesteps: number[];
  /** Scale of the initial noise: latents = randn · initNoiseSigma. */
  readonly initNoiseSigma: number;
  /** Number of model evaluations per step (1 for all three). */
  readonly order: number;
  readonly numInferenceSteps: number | null;
  /** Builds the schedule for n inference steps and resets the state. */
  setTimesteps(numInferenceSteps: number): void;
  /** The UNet input for timestep t: identity for PNDM/DDIM, sample / √(σ²+1) for Euler. Returns a new array. */
  scaleModelInput(sample: Float32Array, t: number): Float32Array;
  /** One step from t with the (guided) noise prediction; advances the internal state. */
  step(modelOutput: Float32Array, t: number, sample: Float32Array): StepResult;
  /** Forgets the multistep state (keeps the schedule). */
  reset(): void;
  /** An independent scheduler with the same config and schedule and fresh state. */
  clone(): Scheduler;
}

export type SchedulerName = 'pndm' | 'ddim' | 'euler';

export const DEFAULT_CONFIG: Readonly<SchedulerConfig> = Object.freeze({
  num_train_timesteps: 1000,
  beta_start: 0.0001,
  beta_end: 0.02,
  beta_schedule: 'linear',
  set_alpha_to_one: false,
  steps_offset: 0,
  timestep_spacing: 'leading',
  prediction_type: 'epsilon',
  skip_prk_steps: false,
  clip_sample: true,
  clip_sample_range: 1.0,
});

/** Stable Diffusion 1.x's scheduler config (PNDM, as shipped in runwayml/stable-diffusion-v1-5). */
export const SD15_CONFIG: Readonly<SchedulerConfig> = Object.freeze({
  ...DEFAULT_CONFIG,
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: 'scaled_linear',
  set_alpha_to_one: false,
  steps_offset: 1,
  skip_prk_steps: true,
  clip_sample: false,
});

/** Config keys that diffusers writes but that change nothing here (bookkeeping, or options left at their no-op). */
const BOOKKEEPING_KEYS = new Set(['_class_name', '_diffusers_version']);
/**
 * Keys of other diffusers schedulers, accepted when they hold their no-op value (a model's config is often written
 * for another scheduler class). Anything else is reported.
 */
const NOOP_VALUES: Record<string, unknown[]> = {
  trained_betas: [null],
  thresholding: [false],
  dynamic_thresholding_ratio: [],
  sample_max_value: [],
  rescale_betas_zero_snr: [false],
  use_karras_sigmas: [false],
  use_exponential_sigmas: [false],
  use_beta_sigmas: [false],
  interpolation_type: ['linear'],
  timestep_type: ['discrete'],
  sigma_min: [null],
  sigma_max: [null],
  final_sigmas_type: ['zero'],
  variance_type: [],
  lower_order_final: [],
  solver_order: [],
  algorithm_type: [],
  solver_type: [],
  use_lu_lambdas: [false],
  euler_at_final: [false],
  lambda_min_clipped: [],
};

export interface FromConfigOptions {
  /** Receives one message per ignored or unknown key; default `process.emitWarning`. */
  warn?: (message: string) => void;
}

/**
 * Validates a `scheduler_config.json` object (snake_case keys) on top of `base`. Unknown keys are reported through
 * `warn` and ignored, like diffusers' "will be ignored" warning; unsupported values throw a RangeError naming the key.
 */
export function parseSchedulerConfig(
  raw: Record<string, unknown>,
  base: Readonly<SchedulerConfig> = DEFAULT_CONFIG,
  options: FromConfigOptions = {},
): SchedulerConfig {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new TypeError(
      `Expected a scheduler config object (the contents of scheduler_config.json) but received ${raw === null ? 'null' : Array.isArray(raw) ? 'an array' : typeof raw}`,
    );
  }
  const warn = options.warn ?? ((m: string) => process.emitWarning(m, 'SchedulerConfigWarning'));
  const cfg: SchedulerConfig = { ...base };
  const num = (key: keyof SchedulerConfig, v: unknown, check: (x: number) => boolean, what: string): number => {
    if (typeof v !== 'number' || !Number.isFinite(v) || !check(v)) {
      throw new RangeError(`Expected ${what} for scheduler config "${key}" but received ${JSON.stringify(v)}`);
    }
    return v;
  };
  const bool = (key: keyof SchedulerConfig, v: unknown): boolean => {
    if (typeof v !== 'boolean') throw new TypeError(`Expected true or false for scheduler config "${key}" but received ${JSON.stringify(v)}`);
    return v;
  };
  const oneOf = <T extends string>(key: keyof SchedulerConfig, v: unknown, allowed: readonly T[]): T => {
    if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) {
      throw new RangeError(`Expected one of ${allowed.map((a) => `"${a}"`).join(', ')} for scheduler config "${key}" but received ${JSON.stringify(v)}`);
    }
    return v as T;
  };
  for (const [key, v] of Object.entries(raw)) {
    switch (key) {
      case 'num_train_timesteps':
        cfg.num_train_timesteps = num(key, v, (x) => Number.isInteger(x) && x >= 2 && x <= 100000, 'an integer in [2, 100000]');
        break;
      case 'beta_start':
        cfg.beta_start = num(key, v, (x) => x > 0 && x < 1, 'a number in (0, 1)');
        break;
      case 'beta_end':
        cfg.beta_end = num(key, v, (x) => x > 0 && x < 1, 'a number in (0, 1)');
        break;
      case 'beta_schedule':
        cfg.beta_schedule = oneOf(key, v, ['linear', 'scaled_linear', 'squaredcos_cap_v2'] as const);
        break;
      case 'set_alpha_to_one':
        cfg.set_alpha_to_one = bool(key, v);
        break;
      case 'steps_offset':
        cfg.steps_offset = num(key, v, (x) => Number.isInteger(x) && x >= 0, 'a non-negative integer');
        break;
      case 'timestep_spacing':
        cfg.timestep_spacing = oneOf(key, v, ['leading', 'trailing', 'linspace'] as const);
        break;
      case 'prediction_type':
        cfg.prediction_type = oneOf(key, v, ['epsilon', 'v_prediction'] as const);
        break;
      case 'skip_prk_steps':
        cfg.skip_prk_steps = bool(key, v);
        break;
      case 'clip_sample':
        cfg.clip_sample = bool(key, v);
        break;
      case 'clip_sample_range':
        cfg.clip_sample_range = num(key, v, (x) => x > 0, 'a positive number');
        break;
      default: {
        if (BOOKKEEPING_KEYS.has(key)) break;
        const noop = NOOP_VALUES[key];
        if (noop === undefined) {
          warn(`scheduler config key "${key}" is not known and will be ignored`);
        } else if (noop.length > 0 && !noop.some((n) => n === v)) {
          throw new RangeError(`scheduler config "${key}" = ${JSON.stringify(v)} is not supported; only ${noop.map((n) => JSON.stringify(n)).join(' or ')} is`);
        }
      }
    }
  }
  if (cfg.beta_end <= cfg.beta_start && cfg.beta_schedule !== 'squaredcos_cap_v2') {
    throw new RangeError(`scheduler config "beta_end" (${cfg.beta_end}) must be larger than "beta_start" (${cfg.beta_start})`);
  }
  return cfg;
}

const f32 = Math.fround;

/**
 * `torch.linspace(start, end, n, dtype=torch.float32)` on the CPU, bit for bit: step = (end − start)/(n − 1) in
 * float32; the first half counts up from start, the second half down from end; the kernel runs in 8-wide AVX2
 * vectors (base at the vector's first index, then base + j·step) and GCC fuses each multiply-add.
 */
export function torchLinspaceF32(start: number, end: number, n: number): Float32Array {
  const out = new Float32Array(n);
  if (n === 0) return out;
  const s = f32(start);
  const e = f32(end);
  if (n === 1) {
    out[0] = s;
    return out;
  }
  const step = f32(f32(e - s) / (n - 1));
  const half = Math.floor(n / 2);
  const at = (i: number) => (i < half ? fmaf(step, i, s) : fmaf(-step, n - i - 1, e));
  const W = 8;
  const vecEnd = n - (n % W);
  for (let idx = 0; idx < vecEnd; idx += W) {
    const base = at(idx);
    for (let j = 0; j < W; j++) out[idx + j] = fmaf(j, step, base);
  }
  for (let i = vecEnd; i < n; i++) out[i] = at(i);
  return out;
}

/** β_t as float32, as diffusers builds them (`torch.linspace(..., dtype=torch.float32)`, squared for scaled_linear). */
export function makeBetas(cfg: Readonly<SchedulerConfig>): Float32Array {
  const n = cfg.num_train_timesteps;
  switch (cfg.beta_schedule) {
    case 'linear':
      return torchLinspaceF32(cfg.beta_start, cfg.beta_end, n);
    case 'scaled_linear':
      // Python computes beta_start**0.5 in double; torch rounds the bounds to float32.
      return torchLinspaceF32(Math.sqrt(cfg.beta_start), Math.sqrt(cfg.beta_end), n).map((x) => f32(x * x));
    case 'squaredcos_cap_v2': {
      // Glide's cosine schedule (betas_for_alpha_bar): computed in float64, capped at 0.999, stored as float32.
      const alphaBar = (t: number) => Math.cos((((t + 0.008) / 1.008) * Math.PI) / 2) ** 2;
      return Float32Array.from({ length: n }, (_, i) => Math.min(1 - alphaBar((i + 1) / n) / alphaBar(i / n), 0.999));
    }
  }
}

/** ᾱ_t = ∏ (1 − β_s): torch.cumprod on CPU accumulates float32 inputs in double and rounds each output. */
export function makeAlphasCumprod(betas: Float32Array): Float32Array {
  const out = new Float32Array(betas.length);
  let acc = 1;
  for (let i = 0; i < betas.length; i++) {
    acc *= f32(1 - betas[i]);
    out[i] = acc;
  }
  return out;
}

/** Integer timesteps for `n` steps, descending, as DDIM/PNDM's set_timesteps compute them. */
export function spacedTimesteps(cfg: Readonly<SchedulerConfig>, n: number): number[] {
  const N = cfg.num_train_timesteps;
  const out: number[] = [];
  switch (cfg.timestep_spacing) {
    case 'leading': {
      const ratio = Math.floor(N / n);
      for (let i = n - 1; i >= 0; i--) out.push(i * ratio + cfg.steps_offset);
      break;
    }
    case 'trailing': {
      // np.round(np.arange(N, 0, -N/n)) - 1; numpy rounds half to even.
      const ratio = N / n;
      for (let k = 0; k * ratio < N && out.length < n; k++) out.push(roundHalfEven(N - k * ratio) - 1);
      break;
    }
    case 'linspace':
      for (let i = n - 1; i >= 0; i--) out.push(roundHalfEven(n === 1 ? 0 : i === n - 1 ? N - 1 : i * ((N - 1) / (n - 1))));
      break;
  }
  return out;
}

/** numpy's round (half to even). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Validation shared by every scheduler's public methods. */
export function checkNumSteps(n: unknown, cfg: Readonly<SchedulerConfig>): number {
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > cfg.num_train_timesteps) {
    throw new RangeError(`Expected an integer between 1 and ${cfg.num_train_timesteps} (num_train_timesteps) for numInferenceSteps but received ${String(n)}`);
  }
  return n;
}

export function checkArrays(name: string, modelOutput: unknown, sample: unknown): void {
  if (!(modelOutput instanceof Float32Array))
    throw new TypeError(`${name}.step: Expected a Float32Array for modelOutput but received ${describe(modelOutput)}`);
  if (!(sample instanceof Float32Array)) throw new TypeError(`${name}.step: Expected a Float32Array for sample but received ${describe(sample)}`);
  if (modelOutput.length !== sample.length) {
    throw new RangeError(`${name}.step: modelOutput has ${modelOutput.length} values but sample has ${sample.length}; both must be the latent shape`);
  }
}

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'object') return (v as object).constructor?.name ?? 'object';
  return typeof v;
}
