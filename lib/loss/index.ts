/**
 * Public attention-loss API: validation (validate.ts) → backend (C++ addon, its CUDA twin, or the
 * TypeScript twin js-backend.ts) → LossResult. Spec: docs/divide-and-bind.md §1, §2, §9.
 *
 *   attentionLoss(layers, options, call?)        [sync]
 *   attentionLossAsync(layers, options, call?)   [async] native: reads the layers before returning, computes on
 *                                                 the libuv pool (UV_THREADPOOL_SIZE threads shared with
 *                                                 fs/dns/zlib), writes the outputs back on the JS thread in
 *                                                 ~4 MB slices (native/addon/loss_call.h says why);
 *                                                 js: the same computation sliced between event-loop turns
 *   availableBackends()
 *
 * Both async paths touch the caller's buffers only on the JS thread and check them between slices: a buffer
 * transferred, detached or resized while a call runs rejects it with a TypeError naming the buffer.
 *
 * Why the js async path does not use a worker thread: the loss reads the layers only through two small
 * (r0², T) aggregates, so the only large work is O(data) memory passes (aggregation reads, gradient
 * writes into the caller's buffers). A worker would first need those buffers copied to it (structured
 * clone = a synchronous memcpy of every layer on this thread, plus the gradients back), which costs more
 * main-thread time than the passes themselves. Slicing the passes (one layer / ≈ 1 M floats per turn)
 * keeps each event-loop block short; bench/loss.bench.ts measures the longest block.
 *
 * gradOutReuse (LossCallOptions): grad-reuse.ts remembers what each kept gradOut buffer holds and tells the
 * backend, which then writes only where this or the previous gradient can be non-zero.
 */
import { loadNativeBinding, tryLoadNativeBinding } from './binding';
import { acquireGradOut, type GradOutLease } from './grad-reuse';
import { jsAttentionLoss, jsAttentionLossAsync, makePlan } from './js-backend';
import type { NativeBinding, NativeLayer, NativeLossFn, NativeLossResult, NormalizedLossOptions } from './native-types';
import type { AttentionLayer, LossBackend, LossCallOptions, LossOptions, LossResult } from './types';
import { normalizeCallOptions, normalizeOptionsFor, throwFirstNonFinite, validateLayers, type NormalizedCallOptions } from './validate';

export type { AttentionLayer, LossBackend, LossCallOptions, LossOptions, LossResult } from './types';
export { normalizeLossOptions } from './validate';

type RawFn = NativeLossFn;
type RawAsyncFn = (...args: Parameters<RawFn>) => Promise<NativeLossResult>;

interface Backend {
  name: LossBackend;
  run: RawFn;
  runAsync: RawAsyncFn;
}

let nativeState: { binding: NativeBinding | null; error: Error | null } | undefined;

/** The addon, loaded once; null (with the loader's error kept) when it does not load. */
function native(): { binding: NativeBinding | null; error: Error | null } {
  nativeState ??= tryLoadNativeBinding();
  return nativeState;
}

const JS_BACKEND: Backend = { name: 'js', run: jsAttentionLoss, runAsync: jsAttentionLossAsync };

function cudaUnavailable(reason: string, nativeLoads = true): Error {
  const alternatives = nativeLoads ? "backend 'native' (CPU) or 'js'" : "backend 'js'";
  return new Error(`The 'cuda' loss backend is not available: ${reason}. Use ${alternatives}, or omit backend to pick the best available.`);
}

let cudaState: { backend: Backend | null; error: Error | null } | undefined;

/** The CUDA backend, probed once per process (the first device query initialises the CUDA runtime). */
function cudaBackend(binding: NativeBinding): Backend {
  if (!cudaState) {
    try {
      cudaState = { backend: probeCuda(binding), error: null };
    } catch (error) {
      cudaState = { backend: null, error: error as Error };
    }
  }
  if (!cudaState.backend) throw cudaState.error;
  return cudaState.backend;
}

function probeCuda(binding: NativeBinding): Backend {
  const { attentionLossCuda, attentionLossCudaAsync, cudaDevices } = binding;
  if (!binding.features.cuda || !attentionLossCuda || !attentionLossCudaAsync || !cudaDevices) {
    throw cudaUnavailable('the addon was built without CUDA (features.cuda is false); rebuild it with DIVBIND_CUDA=ON on a machine with nvcc');
  }
  const devices = cudaDevices();
  if (devices.count <= 0) throw cudaUnavailable(`no usable CUDA device (${devices.error ?? 'cudaGetDeviceCount returned 0'})`);
  return { name: 'cuda', run: attentionLossCuda, runAsync: attentionLossCudaAsync };
}

function selectBackend(requested: NormalizedCallOptions['backend']): Backend {
  switch (requested) {
    case 'js':
      return JS_BACKEND;
    case 'native': {
      // Throws the loader's diagnostic (paths tried, platform, fixes) when the addon does not load.
      const binding = native().binding ?? loadNativeBinding();
      return { name: 'native', run: binding.attentionLoss, runAsync: binding.attentionLossAsync };
    }
    case 'cuda': {
      const { binding, error } = native();
      if (!binding) throw cudaUnavailable(`the native addon did not load (${error?.message ?? 'unknown error'})`, false);
      return cudaBackend(binding);
    }
    case 'auto': {
      const { binding } = native();
      return binding ? { name: 'native', run: binding.attentionLoss, runAsync: binding.attentionLossAsync } : JS_BACKEND;
    }
  }
}

/**
 * Backends usable in this process: 'native' when the addon loads, 'cuda' when it was built with CUDA and
 * sees a device, 'js' always (in that order of preference).
 */
export function availableBackends(): LossBackend[] {
  const out: LossBackend[] = [];
  const { binding } = native();
  if (binding) {
    out.push('native');
    try {
      cudaBackend(binding);
      out.push('cuda');
    } catch {
      // Not built with CUDA or no device: simply not listed.
    }
  }
  out.push('js');
  return out;
}

// ---------------------------------------------------------------------------------------------------------

interface Prepared {
  layers: NativeLayer[];
  options: NormalizedLossOptions;
  call: NormalizedCallOptions;
  backend: Backend;
  grads: Float32Array[] | null;
  objectMaps: Float32Array | null;
  attributeMaps: Float32Array | null;
  /** The caller's gradOut while the call runs (gradOutReuse bookkeeping), or null. */
  lease: GradOutLease | null;
}

/**
 * Validation, backend choice, output buffers. The NaN/Inf check of the probabilities is left to the
 * backends, which see every value they read while aggregating (see canonicalError).
 */
function prepare(layers: unknown, options: unknown, call: unknown): Prepared {
  const summary = validateLayers(layers);
  const normalized = normalizeOptionsFor(summary, options);
  const input = layers as AttentionLayer[];
  const callOptions = normalizeCallOptions(input, call);
  const backend = selectBackend(callOptions.backend);
  // Fresh plain objects: the backend reads exactly the values that were validated (no getters, no extras).
  const plain: NativeLayer[] = input.map(({ data, heads, resolution, place }) => ({ data, heads, resolution, place }));
  const grads = !callOptions.computeGrad ? null : (callOptions.gradOut ?? plain.map((l) => new Float32Array(l.data.length)));
  let objectMaps: Float32Array | null = null;
  let attributeMaps: Float32Array | null = null;
  if (callOptions.returnMaps) {
    const plan = makePlan(plain, normalized);
    objectMaps = new Float32Array(normalized.tokenIndices.length * plan.n);
    if (plan.useAttributes) attributeMaps = new Float32Array(normalized.tokenIndices.length * plan.n);
  }
  // Last: nothing may throw after the buffers are marked as in use.
  const lease = callOptions.gradOut ? acquireGradOut(callOptions.gradOut, plain, normalized.attentionResolution, callOptions.gradOutReuse) : null;
  return { layers: plain, options: normalized, call: callOptions, backend, grads, objectMaps, attributeMaps, lease };
}

/** The backend's arguments for a prepared call. */
function rawArgs(p: Prepared): Parameters<RawFn> {
  return [p.layers, p.options, p.grads, p.objectMaps, p.attributeMaps, p.lease?.priors ?? null];
}

function toResult(p: Prepared, raw: NativeLossResult): LossResult {
  const o = p.options;
  const result: LossResult = {
    loss: raw.loss,
    indicator: raw.indicator,
    tokens: raw.tokens.map((t, s) => {
      const attribute = o.attributeIndices[s];
      return {
        tokenIndex: t.tokenIndex,
        attributeIndex: attribute > 0 ? attribute : null,
        maxAttention: t.maxAttention,
        tv: t.tv,
        jsd: o.mode === 'tv_bind' && attribute > 0 ? t.jsd : null,
        coefficient: t.coefficient,
        value: t.value,
      };
    }),
  };
  if (p.grads) result.grads = p.grads;
  if (p.objectMaps) result.maps = { objects: p.objectMaps, attributes: p.attributeMaps, resolution: o.attentionResolution };
  return result;
}

/**
 * A native RangeError about a layer may be its non-finite-data check (it scans what it reads while
 * aggregating, at no extra cost): rerun the TS scan so every backend reports the same message. The backends
 * call the gradient buffers `grads`; the caller knows its own as `gradOut`.
 */
function canonicalError(p: Prepared, error: unknown): unknown {
  if (p.backend.name !== 'js' && error instanceof RangeError && error.message.startsWith('layers[')) {
    try {
      throwFirstNonFinite(p.layers, p.options);
    } catch (canonical) {
      return canonical;
    }
  }
  if (p.call.gradOut && error instanceof TypeError && error.message.startsWith('grads[')) {
    return new TypeError(`gradOut${error.message.slice('grads'.length)}`);
  }
  return error;
}

/**
 * [sync] Loss L, threshold indicator θ, per-token diagnostics and dL/d(layer data) for one image.
 * Throws TypeError / RangeError for bad input (message names the field and the fix); Error when the
 * requested backend is unavailable.
 */
export function attentionLoss(layers: AttentionLayer[], options: LossOptions, call?: LossCallOptions): LossResult {
  const p = prepare(layers, options, call);
  let raw: NativeLossResult;
  try {
    raw = p.backend.run(...rawArgs(p));
  } catch (error) {
    p.lease?.settle(null);
    throw canonicalError(p, error);
  }
  p.lease?.settle(raw.gradStates ?? null);
  return toResult(p, raw);
}

/** Re-creates a native error at the caller's stack, keeping class and message (sharp's nativeError). */
function relocate(error: unknown, site: Error): unknown {
  if (!(error instanceof Error)) return error;
  const Ctor = error instanceof RangeError ? RangeError : error instanceof TypeError ? TypeError : Error;
  const moved = new Ctor(error.message);
  moved.stack = `${Ctor.name}: ${error.message}\n${(site.stack ?? '').split('\n').slice(1).join('\n')}`;
  return moved;
}

/**
 * [async] Same result as attentionLoss without blocking the event loop. Argument errors reject the
 * promise (they are not thrown). Do not mutate the layers or gradOut buffers until it settles; transferring,
 * detaching or resizing them meanwhile rejects it with a TypeError naming the buffer (never a crash).
 */
export async function attentionLossAsync(layers: AttentionLayer[], options: LossOptions, call?: LossCallOptions): Promise<LossResult> {
  const site = new Error('attentionLossAsync');
  const p = prepare(layers, options, call);
  let raw: NativeLossResult;
  try {
    raw = await p.backend.runAsync(...rawArgs(p));
  } catch (error) {
    p.lease?.settle(null);
    throw relocate(canonicalError(p, error), site);
  }
  p.lease?.settle(raw.gradStates ?? null);
  return toResult(p, raw);
}

/** Which backend a call with these call options would use (for logs and `divbind-native info`). */
export function resolveBackend(backend?: LossBackend): LossBackend {
  return selectBackend(normalizeCallOptions([], backend === undefined ? {} : { backend }).backend).name;
}
