/**
 * The raw surface of the C++ addon (native/addon). lib/loss/validate.ts turns user options into
 * NormalizedLossOptions; lib/loss/binding.ts loads the addon; lib/loss/index.ts adapts results.
 */
import type { LayerPlace } from './types';

export type { NormalizedLossOptions } from './options';
import type { NormalizedLossOptions } from './options';

/** A layer as the addon receives it (already validated). */
export interface NativeLayer {
  data: Float32Array;
  heads: number;
  resolution: number;
  place: LayerPlace;
}

/**
 * What a gradient buffer holds between calls (native/core/attention_loss.h GradState; the addon exports the
 * same values in lossOptionSchema.gradStates). unknown: anything (the next write covers the whole buffer);
 * zero: all zeros; sampled: zeros except, possibly, the pixel rows the loss samples for that call's
 * attentionResolution.
 */
export const GRAD_STATE = { unknown: 0, zero: 1, sampled: 2 } as const;
export type GradStateValue = (typeof GRAD_STATE)[keyof typeof GRAD_STATE];

export interface NativeTokenResult {
  tokenIndex: number;
  /** -1 = none. */
  attributeIndex: number;
  maxAttention: number;
  tv: number;
  /** NaN when the token has no JSD term. */
  jsd: number;
  coefficient: number;
  value: number;
}

export interface NativeLossResult {
  loss: number;
  indicator: number;
  tokens: NativeTokenResult[];
  /** When grads were written: the GRAD_STATE each buffer is left in. */
  gradStates?: GradStateValue[];
}

/**
 * grads: null, or one Float32Array per layer (same lengths), overwritten.
 * objectMaps: null or Float32Array(K·r0²); attributeMaps: null or Float32Array(K·r0²) (zeros for tokens without attribute).
 * gradState: null (write every gradient buffer in full), or one GRAD_STATE per layer saying what each grads
 * buffer holds now (the caller vouches for it); buffers known to be zero outside the sampled rows are then
 * written only there.
 * Errors: TypeError / RangeError whose message starts with the field name.
 */
export type NativeLossFn = (
  layers: NativeLayer[],
  options: NormalizedLossOptions,
  grads: Float32Array[] | null,
  objectMaps: Float32Array | null,
  attributeMaps: Float32Array | null,
  gradState?: Uint8Array | null,
) => NativeLossResult;

/**
 * The same as a Promise. Inputs are read before it returns; outputs are written on the JS thread when the work
 * is done: an output detached or resized meanwhile rejects it with a TypeError naming the buffer.
 */
export type NativeLossAsyncFn = (...args: Parameters<NativeLossFn>) => Promise<NativeLossResult>;

export interface NativeFeatures {
  /** The addon was built with CUDA kernels. */
  cuda: boolean;
  /** Version of the addon (package version). */
  version: string;
  /** Compiler / SIMD info, for `divbind-native info`. */
  build: string;
}

/** The addon's option table (native/core/loss_options.h), in the shape of options.ts LOSS_OPTIONS. */
export interface NativeOptionSchema {
  options: Record<string, Record<string, unknown>>;
  gradStates: Record<string, number>;
  limits: { maxResolution: number; maxDim: number; maxStep: number };
}

export interface NativeBinding {
  attentionLoss: NativeLossFn;
  attentionLossAsync: NativeLossAsyncFn;
  /** Present when built with CUDA (features.cuda): same semantics, computed on the GPU from host buffers. */
  attentionLossCuda?: NativeLossFn;
  attentionLossCudaAsync?: NativeLossAsyncFn;
  /** Present when built with CUDA: number of usable devices (0 when no driver/device), and why not. */
  cudaDevices?: () => { count: number; error: string | null };
  features: NativeFeatures;
  lossOptionSchema: NativeOptionSchema;
  /**
   * Makes glibc keep freed memory for the next run (native/addon/allocator.cc); { applied: false } elsewhere.
   * Absent in addons built before it existed.
   */
  retainFreedMemory?: () => { applied: boolean; allocator: string };
  /**
   * Restarts this process in place (same pid and argv) under `environment` ("NAME=value" strings); returns only
   * when it could not, with the reason (native/addon/allocator.cc).
   */
  execSelf?: (environment: string[]) => string;
}
