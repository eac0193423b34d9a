/**
 * Euler discrete (Karras et al. 2022, Algorithm 2 with s_churn = 0), as diffusers' EulerDiscreteScheduler: the
 * sample lives in σ-space, so the UNet input must go through scaleModelInput (sample / √(σ²+1)).
 */
import { type Scheduler, type SchedulerConfig, type StepResult, checkArrays, checkNumSteps, makeAlphasCumprod, makeBetas, roundHalfEven } from './scheduler';

const f32 = Math.fround;

export class EulerScheduler implements Scheduler {
  readonly name = 'euler' as const;
  readonly config: Readonly<SchedulerConfig>;
  readonly order = 1;
  readonly alphasCumprod: Float32Array;
  /** σ_t = √((1 − ᾱ_t)/ᾱ_t) for every training timestep (float32). */
  readonly trainSigmas: Float32Array;
  timesteps: number[] = [];
  /** σ of each timestep, plus a final 0. */
  sigmas: Float32Array = new Float32Array(0);
  numInferenceSteps: number | null = null;
  private stepIndex = 0;

  constructor(config: Readonly<SchedulerConfig>) {
    this.config = Object.freeze({ ...config });
    this.alphasCumprod = makeAlphasCumprod(makeBetas(config));
    this.trainSigmas = this.alphasCumprod.map((a) => f32(Math.sqrt(f32(f32(1 - a) / a))));
  }

  get initNoiseSigma(): number {
    // Before setTimesteps diffusers uses the training σ (max = σ at t = N − 1).
    let max = 0;
    for (const s of this.sigmas.length > 0 ? this.sigmas : this.trainSigmas) max = Math.max(max, s);
    if (this.config.timestep_spacing === 'linspace' || this.config.timestep_spacing === 'trailing') return max;
    return f32(Math.sqrt(f32(f32(max * max) + 1)));
  }

  setTimesteps(numInferenceSteps: number): void {
    const n = checkNumSteps(numInferenceSteps, this.config);
    const N = this.config.num_train_timesteps;
    const ts: number[] = [];
    switch (this.config.timestep_spacing) {
      case 'linspace':
        // np.linspace(0, N − 1, n, dtype=float32)[::-1]: fractional timesteps, σ interpolated linearly.
        // numpy: i·step + start in float64 (the last one set to stop exactly), then cast to float32.
        for (let i = n - 1; i >= 0; i--) ts.push(f32(n === 1 ? 0 : i === n - 1 ? N - 1 : i * ((N - 1) / (n - 1))));
        break;
      case 'leading': {
        const ratio = Math.floor(N / n);
        for (let i = n - 1; i >= 0; i--) ts.push(i * ratio + this.config.steps_offset);
        break;
      }
      case 'trailing': {
        const ratio = N / n;
        for (let k = 0; k * ratio < N && ts.length < n; k++) ts.push(roundHalfEven(N - k * ratio) - 1);
        break;
      }
    }
    const sig = new Float32Array(ts.length + 1);
    ts.forEach((t, i) => {
      if (t < 0 || t > N - 1) throw new RangeError(`euler.setTimesteps: timestep ${t} falls outside [0, ${N - 1}]; lower steps_offset`);
      const lo = Math.floor(t);
      const hi = Math.min(lo + 1, N - 1);
      const w = t - lo;
      sig[i] = w === 0 ? this.trainSigmas[lo] : this.trainSigmas[lo] + w * (this.trainSigmas[hi] - this.trainSigmas[lo]);
    });
    sig[ts.length] = 0;
    this.timesteps = ts;
    this.sigmas = sig;
    this.numInferenceSteps = n;
    this.reset();
  }

  private indexFor(t: number, who: string): number {
    if (this.timesteps[this.stepIndex] === t) return this.stepIndex;
    const i = this.timesteps.indexOf(t);
    if (i < 0) throw new RangeError(`euler.${who}: timestep ${t} is not in scheduler.timesteps; pass a value from that list`);
    return i;
  }

  scaleModelInput(sample: Float32Array, t: number): Float32Array {
    if (this.numInferenceSteps === null) throw new Error('euler.scaleModelInput: call setTimesteps(numInferenceSteps) first');
    if (!(sample instanceof Float32Array)) throw new TypeError('euler.scaleModelInput: Expected a Float32Array for sample');
    const s = this.sigmas[this.indexFor(t, 'scaleModelInput')];
    const d = f32(Math.sqrt(f32(f32(s * s) + 1)));
    return sample.map((x) => f32(x / d));
  }

  step(modelOutput: Float32Array, t: number, sample: Float32Array): StepResult {
    if (this.numInferenceSteps === null) throw new Error('euler.step: call setTimesteps(numInferenceSteps) before step()');
    checkArrays('euler', modelOutput, sample);
    const k = this.indexFor(t, 'step');
    const sigma = this.sigmas[k];
    const dt = f32(this.sigmas[k + 1] - sigma);
    const n = sample.length;
    const x0 = new Float32Array(n);
    if (this.config.prediction_type === 'epsilon') {
      for (let i = 0; i < n; i++) x0[i] = f32(sample[i] - f32(sigma * modelOutput[i]));
    } else {
      const c = f32(-sigma / f32(Math.sqrt(f32(f32(sigma * sigma) + 1))));
      const d = f32(f32(sigma * sigma) + 1);
      for (let i = 0; i < n; i++) x0[i] = f32(f32(modelOutput[i] * c) + f32(sample[i] / d));
    }
    const prevSample = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const derivative = f32(f32(sample[i] - x0[i]) / sigma);
      prevSample[i] = f32(sample[i] + f32(derivative * dt));
    }
    this.stepIndex = k + 1;
    return { prevSample, predOriginalSample: x0 };
  }

  reset(): void {
    this.stepIndex = 0;
  }

  clone(): EulerScheduler {
    const c = new EulerScheduler(this.config);
    if (this.numInferenceSteps !== null) c.setTimesteps(this.numInferenceSteps);
    return c;
  }
}
