/**
 * PNDM with skip_prk_steps (PLMS), as diffusers' PNDMScheduler: the default scheduler of Stable Diffusion 1.x and
 * the one Divide & Bind and Attend-and-Excite use (spec §3).
 */
import { type Scheduler, type SchedulerConfig, type StepResult, checkArrays, checkNumSteps, makeAlphasCumprod, makeBetas, spacedTimesteps } from './scheduler';

const f32 = Math.fround;

export class PndmScheduler implements Scheduler {
  readonly name = 'pndm' as const;
  readonly config: Readonly<SchedulerConfig>;
  readonly initNoiseSigma = 1;
  readonly order = 1;
  readonly alphasCumprod: Float32Array;
  readonly finalAlphaCumprod: number;
  timesteps: number[] = [];
  numInferenceSteps: number | null = null;
  /** ε history (at most 4), the sample stored at counter 0, and the step counter. */
  private ets: Float32Array[] = [];
  private curSample: Float32Array | null = null;
  private counter = 0;

  constructor(config: Readonly<SchedulerConfig>) {
    if (!config.skip_prk_steps) {
      throw new RangeError(
        'PNDM with scheduler config "skip_prk_steps" = false (Runge-Kutta warm-up) is not implemented; set it to true as every Stable Diffusion checkpoint does',
      );
    }
    this.config = Object.freeze({ ...config });
    this.alphasCumprod = makeAlphasCumprod(makeBetas(config));
    this.finalAlphaCumprod = config.set_alpha_to_one ? 1 : this.alphasCumprod[0];
  }

  setTimesteps(numInferenceSteps: number): void {
    const n = checkNumSteps(numInferenceSteps, this.config);
    const base = spacedTimesteps(this.config, n); // descending
    // diffusers: concat(_timesteps[:-1], _timesteps[-2:-1], _timesteps[-1:])[::-1] on the ascending list, i.e. the
    // second-largest timestep is repeated, giving n + 1 entries ([981, 961, 961, 941, …, 1] for 50 steps).
    this.timesteps = n >= 2 ? [base[0], base[1], ...base.slice(1)] : [base[0]];
    this.numInferenceSteps = n;
    this.reset();
  }

  scaleModelInput(sample: Float32Array, _t: number): Float32Array {
    if (!(sample instanceof Float32Array)) throw new TypeError('pndm.scaleModelInput: Expected a Float32Array for sample');
    return Float32Array.from(sample);
  }

  step(modelOutput: Float32Array, t: number, sample: Float32Array): StepResult {
    if (this.numInferenceSteps === null) throw new Error('pndm.step: call setTimesteps(numInferenceSteps) before step()');
    checkArrays('pndm', modelOutput, sample);
    checkTimestep('pndm', t, this.config.num_train_timesteps);
    const ratio = Math.floor(this.config.num_train_timesteps / this.numInferenceSteps);
    let prevT = t - ratio;
    let curT = t;
    if (this.counter !== 1) {
      this.ets = this.ets.slice(-3);
      this.ets.push(Float32Array.from(modelOutput));
    } else {
      // The second call redoes the first step (same t → t − ratio) from the stored sample.
      prevT = t;
      curT = t + ratio;
    }
    const e = this.ets;
    const n = modelOutput.length;
    let eps: Float32Array;
    let x = sample;
    if (e.length === 1 && this.counter === 0) {
      eps = modelOutput;
      this.curSample = Float32Array.from(sample);
    } else if (e.length === 1 && this.counter === 1) {
      eps = new Float32Array(n);
      for (let i = 0; i < n; i++) eps[i] = f32(f32(modelOutput[i] + e[0][i]) / 2);
      if (this.curSample === null) throw new Error('pndm.step: internal state lost the stored sample');
      x = this.curSample;
      this.curSample = null;
    } else if (e.length === 2) {
      eps = new Float32Array(n);
      for (let i = 0; i < n; i++) eps[i] = f32(f32(f32(3 * e[1][i]) - e[0][i]) / 2);
    } else if (e.length === 3) {
      eps = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        eps[i] = f32(f32(f32(f32(23 * e[2][i]) - f32(16 * e[1][i])) + f32(5 * e[0][i])) / 12);
      }
    } else {
      eps = new Float32Array(n);
      const c = f32(1 / 24);
      for (let i = 0; i < n; i++) {
        const s = f32(f32(f32(f32(55 * e[3][i]) - f32(59 * e[2][i])) + f32(37 * e[1][i])) - f32(9 * e[0][i]));
        eps[i] = f32(c * s);
      }
    }
    const prevSample = this.prevSample(x, curT, prevT, eps);
    this.counter++;
    return { prevSample };
  }

  /** PNDM formula (9), in float32 like diffusers' `_get_prev_sample`. */
  private prevSample(sample: Float32Array, t: number, prevT: number, modelOutput: Float32Array): Float32Array {
    const aT = this.alphasCumprod[t];
    const aPrev = prevT >= 0 ? this.alphasCumprod[prevT] : this.finalAlphaCumprod;
    const bT = f32(1 - aT);
    const bPrev = f32(1 - aPrev);
    let eps = modelOutput;
    const n = sample.length;
    if (this.config.prediction_type === 'v_prediction') {
      const sa = f32(Math.sqrt(aT));
      const sb = f32(Math.sqrt(bT));
      eps = new Float32Array(n);
      for (let i = 0; i < n; i++) eps[i] = f32(f32(sa * modelOutput[i]) + f32(sb * sample[i]));
    }
    const sampleCoeff = f32(Math.sqrt(f32(aPrev / aT)));
    const denom = f32(f32(aT * f32(Math.sqrt(bPrev))) + f32(Math.sqrt(f32(f32(aT * bT) * aPrev))));
    const diff = f32(aPrev - aT);
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = f32(f32(sampleCoeff * sample[i]) - f32(f32(diff * eps[i]) / denom));
    return out;
  }

  reset(): void {
    this.ets = [];
    this.curSample = null;
    this.counter = 0;
  }

  clone(): PndmScheduler {
    const c = new PndmScheduler(this.config);
    if (this.numInferenceSteps !== null) c.setTimesteps(this.numInferenceSteps);
    return c;
  }
}

export function checkTimestep(name: string, t: unknown, numTrain: number): void {
  if (typeof t !== 'number' || !Number.isInteger(t) || t < 0 || t >= numTrain) {
    throw new RangeError(`${name}.step: Expected an integer timestep in [0, ${numTrain}) but received ${String(t)}; pass a value from scheduler.timesteps`);
  }
}
