/** DDIM (η = 0, deterministic), as diffusers' DDIMScheduler (Song et al. 2020, eqs. 12 and 16). */
import { type Scheduler, type SchedulerConfig, type StepResult, checkArrays, checkNumSteps, makeAlphasCumprod, makeBetas, spacedTimesteps } from './scheduler';
import { checkTimestep } from './pndm';

const f32 = Math.fround;

export class DdimScheduler implements Scheduler {
  readonly name = 'ddim' as const;
  readonly config: Readonly<SchedulerConfig>;
  readonly initNoiseSigma = 1;
  readonly order = 1;
  readonly alphasCumprod: Float32Array;
  readonly finalAlphaCumprod: number;
  timesteps: number[] = [];
  numInferenceSteps: number | null = null;

  constructor(config: Readonly<SchedulerConfig>) {
    this.config = Object.freeze({ ...config });
    this.alphasCumprod = makeAlphasCumprod(makeBetas(config));
    this.finalAlphaCumprod = config.set_alpha_to_one ? 1 : this.alphasCumprod[0];
  }

  setTimesteps(numInferenceSteps: number): void {
    const n = checkNumSteps(numInferenceSteps, this.config);
    this.timesteps = spacedTimesteps(this.config, n);
    this.numInferenceSteps = n;
  }

  scaleModelInput(sample: Float32Array, _t: number): Float32Array {
    if (!(sample instanceof Float32Array)) throw new TypeError('ddim.scaleModelInput: Expected a Float32Array for sample');
    return Float32Array.from(sample);
  }

  step(modelOutput: Float32Array, t: number, sample: Float32Array): StepResult {
    if (this.numInferenceSteps === null) throw new Error('ddim.step: call setTimesteps(numInferenceSteps) before step()');
    checkArrays('ddim', modelOutput, sample);
    checkTimestep('ddim', t, this.config.num_train_timesteps);
    const prevT = t - Math.floor(this.config.num_train_timesteps / this.numInferenceSteps);
    const aT = this.alphasCumprod[t];
    const aPrev = prevT >= 0 ? this.alphasCumprod[prevT] : this.finalAlphaCumprod;
    const bT = f32(1 - aT);
    const sa = f32(Math.sqrt(aT));
    const sb = f32(Math.sqrt(bT));
    const n = sample.length;
    const x0 = new Float32Array(n);
    const eps = new Float32Array(n);
    if (this.config.prediction_type === 'epsilon') {
      for (let i = 0; i < n; i++) {
        x0[i] = f32(f32(sample[i] - f32(sb * modelOutput[i])) / sa);
        eps[i] = modelOutput[i];
      }
    } else {
      for (let i = 0; i < n; i++) {
        x0[i] = f32(f32(sa * sample[i]) - f32(sb * modelOutput[i]));
        eps[i] = f32(f32(sa * modelOutput[i]) + f32(sb * sample[i]));
      }
    }
    if (this.config.clip_sample) {
      const r = f32(this.config.clip_sample_range);
      for (let i = 0; i < n; i++) x0[i] = Math.min(r, Math.max(-r, x0[i]));
    }
    // η = 0: σ_t = 0, so x_{t-1} = √ᾱ_prev·x̂₀ + √(1 − ᾱ_prev)·ε.
    const dirCoeff = f32(Math.sqrt(f32(1 - aPrev)));
    const sPrev = f32(Math.sqrt(aPrev));
    const prevSample = new Float32Array(n);
    for (let i = 0; i < n; i++) prevSample[i] = f32(f32(sPrev * x0[i]) + f32(dirCoeff * eps[i]));
    return { prevSample, predOriginalSample: x0 };
  }

  reset(): void {
    // DDIM keeps no state between steps.
  }

  clone(): DdimScheduler {
    const c = new DdimScheduler(this.config);
    if (this.numInferenceSteps !== null) c.setTimesteps(this.numInferenceSteps);
    return c;
  }
}
