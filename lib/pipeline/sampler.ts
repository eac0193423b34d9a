/**
 * The Divide & Bind / Attend-and-Excite sampling loop (spec §3), independent of how the UNet is run: the
 * pipeline plugs in a GuidedUnet (instrumented UNet + VJP graph on onnxruntime) and a NoisePredictor (the CFG
 * UNet call). One denoising iteration i with timestep t:
 *   1. gradient pass: maps ← UNet(z, t, cond) at batch 1; (L, θ) from the loss core;
 *   2. iterative refinement when i is a threshold key and θ < threshold: repeat { forward, loss, z ← z − α_i ∇L
 *      (when L ≠ 0); stop when θ of that forward ≥ threshold or at the cap }, then one more forward for a fresh L;
 *   3. if i < maxIterToAlter and L ≠ 0: z ← z − α_i ∇L;
 *   4. CFG step on z, scheduler step.
 * The UNet always sees scheduler.scaleModelInput(z, t) (identity for PNDM/DDIM, as in the reference code).
 * Passes that cannot change the result are skipped: no gradient pass after the last guided index, the gradient
 * (VJP) is only computed when an update will use it, and only the layers the loss reads are run and differentiated.
 */
import { DivbindError } from '../errors';
import { attentionLoss } from '../loss/index';
import { layersRead } from '../model/layer-sets';
import type { AttentionLayer, LayerPlace, LossBackend, LossCallOptions, LossOptions, LossResult, TokenDiagnostics } from '../loss/types';
import type { Scheduler } from '../schedulers/scheduler';
import { lastGuidedIndex, type GuidanceMode, type RefinementCaps } from './guidance';

export interface GuidedLayerInfo {
  name: string;
  heads: number;
  resolution: number;
  place: LayerPlace;
}

export interface GuidedForward {
  /** One Float32Array per layer (heads, HW, T), batch 1. */
  maps: Float32Array[];
  /** Whatever the backward needs (inputs, residuals). */
  state: unknown;
}

export interface GuidedUnet {
  readonly layers: readonly GuidedLayerInfo[];
  /** T of the text embeddings (and of every map). */
  readonly textLength: number;
  forward(sample: Float32Array, timestep: number, cond: Float32Array): Promise<GuidedForward>;
  /**
   * ∂L/∂sample for the forward `fwd`, given ∂L/∂maps (one per layer; null = zero). An implementation may reuse a
   * forward's state for the next forward: vjp() then takes only the latest forward (and throws for an older one).
   */
  vjp(fwd: GuidedForward, cotangents: Array<Float32Array | null>): Promise<Float32Array>;
  /**
   * A guided UNet over fewer layers that holds every layer of `layers` (indices into `layers`): its forward stops
   * after the last of them and its VJP differentiates only them. Optional; without it every layer is run.
   */
  forLayers?(layers: readonly number[]): Promise<GuidedUnet>;
}

export interface NoisePredictor {
  /** ε̂ with classifier-free guidance: ε_u + s·(ε_c − ε_u), from one batch-2 call when the model allows it. */
  predict(latents: Float32Array, timestep: number, guidanceScale: number): Promise<Float32Array>;
}

export interface GuidanceSettings {
  mode: GuidanceMode;
  /** Loss options (tokenIndices etc.); stepIndex is set per step by the loop. */
  loss: LossOptions;
  lossBackend?: LossBackend;
  maxIterToAlter: number;
  thresholds: Record<number, number>;
  caps: RefinementCaps;
  /** α_i per loop index (length = number of timesteps). */
  stepSizes: Float64Array;
}

export interface StepEvent {
  /** Loop index i (0-based) and total number of timesteps. */
  index: number;
  total: number;
  timestep: number;
  /** Loss and indicator of the last gradient pass of this step (null when none ran). */
  loss: number | null;
  indicator: number | null;
  tokens: TokenDiagnostics[] | null;
  /** Refinement iterations run at this step. */
  refinementIterations: number;
  /** Latent updates applied at this step. */
  updates: number;
  ms: { guidance: number; unetForward: number; vjp: number; loss: number; cfg: number; scheduler: number; total: number };
}

export interface SamplerHooks {
  signal?: AbortSignal;
  onStep?: (event: StepEvent) => void;
  /** Called with the smoothed maps of the first gradient pass of the given loop indices. */
  captureMapsAt?: ReadonlySet<number>;
  onMaps?: (index: number, maps: NonNullable<LossResult['maps']>, tokens: TokenDiagnostics[]) => void;
}

export interface SamplerResult {
  latents: Float32Array;
  steps: StepEvent[];
}

function abortIfNeeded(signal?: AbortSignal): void {
  if (signal?.aborted) {
    // signal.reason may be a DOMException, which is not an Error in Node 20: keep it as the cause.
    const reason: unknown = signal.reason;
    const detail =
      reason instanceof Error || (typeof reason === 'object' && reason !== null && 'message' in reason) ? `: ${(reason as { message: string }).message}` : '';
    throw new DivbindError('ABORTED', `generation aborted${detail}`, { cause: reason });
  }
}

/** Index of the first NaN/±Inf, or -1. */
export function firstNonFinite(values: Float32Array): number {
  for (let k = 0; k < values.length; k++) if (!Number.isFinite(values[k])) return k;
  return -1;
}

function maxAbs(values: Float32Array): number {
  let m = 0;
  for (let k = 0; k < values.length; k++) m = Math.max(m, Math.abs(values[k]));
  return m;
}

/**
 * Stops a diverged run where it diverged, instead of letting NaN reach the loss (which would blame the
 * attention probabilities) or the decoder (a black image).
 */
function checkFinite(values: Float32Array, what: string, i: number, t: number, fix: string): void {
  const bad = firstNonFinite(values);
  if (bad < 0) return;
  throw new DivbindError('NUMERIC', `${what} became non-finite at loop index ${i} (timestep ${t}): ${values[bad]} at index ${bad}`, { fix });
}

/** Runs the denoising loop from `latents` (already scaled by initNoiseSigma); returns the final latents. */
export async function sampleLatents(
  initialLatents: Float32Array,
  scheduler: Scheduler,
  unet: NoisePredictor,
  guidanceScale: number,
  guided: { unet: GuidedUnet; cond: Float32Array; settings: GuidanceSettings } | null,
  hooks: SamplerHooks = {},
): Promise<SamplerResult> {
  let latents: Float32Array = Float32Array.from(initialLatents);
  const timesteps = scheduler.timesteps;
  const total = timesteps.length;
  const steps: StepEvent[] = [];
  const lastGuided = guided && guided.settings.mode !== 'none' ? lastGuidedIndex(guided.settings.maxIterToAlter, guided.settings.thresholds) : -1;
  if (guided && guided.settings.stepSizes.length < Math.min(total, lastGuided + 1)) {
    throw new RangeError(`stepSizes has ${guided.settings.stepSizes.length} entries but the scheduler has ${total} timesteps`);
  }

  const guidedRun = guided && lastGuided >= 0 ? { ...guided, unet: await unetForLoss(guided.unet, guided.settings) } : null;
  for (let i = 0; i < total; i++) {
    abortIfNeeded(hooks.signal);
    const t = timesteps[i];
    const t0 = performance.now();
    const ms = { guidance: 0, unetForward: 0, vjp: 0, loss: 0, cfg: 0, scheduler: 0, total: 0 };
    let event: Pick<StepEvent, 'loss' | 'indicator' | 'tokens' | 'refinementIterations' | 'updates'> = {
      loss: null,
      indicator: null,
      tokens: null,
      refinementIterations: 0,
      updates: 0,
    };

    if (guidedRun && i <= lastGuided) {
      // The gradient pass sees the scaled model input too (Euler: x = z/√(σ²+1); identity for PNDM/DDIM), so
      // ∂L/∂z = c·∂L/∂x with the scalar c read off the scheduler.
      const inputScale = scheduler.scaleModelInput(Float32Array.of(1), t)[0];
      const g = await guideStep(latents, t, i, inputScale, guidedRun, ms, hooks);
      latents = g.latents;
      checkFinite(latents, 'the latents after the guidance update', i, t, `lower scaleFactor (step size α here ${guidedRun.settings.stepSizes[i]})`);
      event = g.event;
      ms.guidance = performance.now() - t0;
    }

    abortIfNeeded(hooks.signal);
    const tc = performance.now();
    const eps = await unet.predict(scheduler.scaleModelInput(latents, t), t, guidanceScale);
    checkFinite(
      eps,
      `the noise prediction (latents max |z| ${maxAbs(latents).toExponential(2)})`,
      i,
      t,
      `lower guidanceScale (${guidanceScale}) or check the initial latents (randn values are within ±6)`,
    );
    const ts = performance.now();
    ms.cfg = ts - tc;
    latents = scheduler.step(eps, t, latents).prevSample;
    checkFinite(latents, 'the latents after the scheduler step', i, t, 'lower guidanceScale or scaleFactor');
    ms.scheduler = performance.now() - ts;
    ms.total = performance.now() - t0;
    const stepEvent: StepEvent = { index: i, total, timestep: t, ...event, ms };
    steps.push(stepEvent);
    hooks.onStep?.(stepEvent);
  }
  return { latents, steps };
}

/**
 * The guided UNet over the layers this loss reads (lib/model/layer-sets.ts asks lib/loss/plan.ts which), when
 * the UNet offers a smaller one: the loss reads the same maps, so L, θ and ∂L/∂z are those of the full set.
 */
async function unetForLoss(unet: GuidedUnet, settings: GuidanceSettings): Promise<GuidedUnet> {
  if (unet.forLayers === undefined) return unet;
  const loss: LossOptions = { ...settings.loss, mode: settings.mode as LossOptions['mode'] };
  return unet.forLayers(layersRead(unet.layers, unet.textLength, loss));
}

interface Evaluation {
  fwd: GuidedForward;
  result: LossResult;
}

/**
 * L, θ and ∂L/∂maps of one forward. Non-finite maps come from non-finite UNet activations: that becomes a NUMERIC
 * error saying so, rather than the loss core's complaint about the attention probabilities.
 */
function lossOf(
  fwd: GuidedForward,
  info: readonly GuidedLayerInfo[],
  options: LossOptions,
  call: LossCallOptions,
  at: { i: number; t: number; sample: Float32Array },
): LossResult {
  const layers: AttentionLayer[] = fwd.maps.map((data, k) => ({
    data,
    heads: info[k].heads,
    resolution: info[k].resolution,
    place: info[k].place,
    name: info[k].name,
  }));
  try {
    return attentionLoss(layers, options, call);
  } catch (err) {
    const k = fwd.maps.findIndex((m) => firstNonFinite(m) >= 0);
    if (k < 0) throw err;
    throw new DivbindError(
      'NUMERIC',
      `the UNet's attention maps (layer ${info[k].name}) became non-finite at loop index ${at.i} (timestep ${at.t}); the latents entering it have max |z| ${maxAbs(at.sample).toExponential(2)}`,
      {
        fix: 'lower scaleFactor or guidanceScale, or check the initial latents (randn values are within ±6)',
        cause: err,
      },
    );
  }
}

async function guideStep(
  start: Float32Array,
  t: number,
  i: number,
  inputScale: number,
  guided: { unet: GuidedUnet; cond: Float32Array; settings: GuidanceSettings },
  ms: StepEvent['ms'],
  hooks: SamplerHooks,
): Promise<{ latents: Float32Array; event: Pick<StepEvent, 'loss' | 'indicator' | 'tokens' | 'refinementIterations' | 'updates'> }> {
  const { unet, cond, settings } = guided;
  const alpha = settings.stepSizes[i];
  const lossOptions: LossOptions = { ...settings.loss, mode: settings.mode as LossOptions['mode'], stepIndex: i };
  const layerInfo = unet.layers;
  let z = start;

  const evaluate = async (sample: Float32Array, wantMaps: boolean): Promise<Evaluation> => {
    const a = performance.now();
    const x = inputScale === 1 ? sample : sample.map((v) => v * inputScale);
    const fwd = await unet.forward(x, t, cond);
    const b = performance.now();
    const result = lossOf(fwd, layerInfo, lossOptions, { backend: settings.lossBackend, computeGrad: true, returnMaps: wantMaps }, { i, t, sample });
    ms.unetForward += b - a;
    ms.loss += performance.now() - b;
    return { fwd, result };
  };
  const gradient = async (ev: Evaluation): Promise<Float32Array> => {
    const a = performance.now();
    const g = await unet.vjp(ev.fwd, ev.result.grads ?? []);
    if (inputScale !== 1) for (let k = 0; k < g.length; k++) g[k] *= inputScale;
    ms.vjp += performance.now() - a;
    return g;
  };
  const descend = (sample: Float32Array, grad: Float32Array): Float32Array => {
    const out = new Float32Array(sample.length);
    for (let k = 0; k < sample.length; k++) out[k] = sample[k] - alpha * grad[k];
    return out;
  };

  // 1. Gradient pass.
  let ev = await evaluate(z, hooks.captureMapsAt?.has(i) ?? false);
  if (ev.result.maps && hooks.onMaps) hooks.onMaps(i, ev.result.maps, ev.result.tokens);
  let updates = 0;
  let iterations = 0;

  // 2. Iterative refinement. Its first forward is at the same z as step 1, so step 1's evaluation is reused.
  const threshold = settings.thresholds[i];
  if (threshold !== undefined && ev.result.indicator < threshold) {
    const cap = i === 0 ? settings.caps.initStep : settings.caps.other;
    let current = ev;
    for (;;) {
      if (hooks.signal?.aborted) abortIfNeeded(hooks.signal);
      iterations++;
      if (iterations > 1) current = await evaluate(z, false);
      if (current.result.loss !== 0) {
        z = descend(z, await gradient(current));
        updates++;
      }
      // θ of this iteration's forward (before its update) decides, as in the reference loop.
      if (current.result.indicator >= threshold || iterations >= cap) break;
    }
    // One more forward on the final z for a fresh loss.
    ev = await evaluate(z, false);
  }

  // 3. The regular update.
  if (i < settings.maxIterToAlter && ev.result.loss !== 0) {
    z = descend(z, await gradient(ev));
    updates++;
  }
  return {
    latents: z,
    event: { loss: ev.result.loss, indicator: ev.result.indicator, tokens: ev.result.tokens, refinementIterations: iterations, updates },
  };
}
