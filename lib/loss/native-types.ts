/**
 * The raw surface of the C++ addon (native/addon). lib/loss/validate.ts turns user options into
 * NormalizedLossOptions; lib/loss/binding.ts loads the addon; lib/loss/index.ts adapts results.
 */
import type { LayerPlace, LossMode, MaxVariant, TokenSlice, TvVertical } from './types';

/** A layer as the addon receives it (already validated). */
export interface NativeLayer {
  data: Float32Array;
  heads: number;
  resolution: number;
  place: LayerPlace;
}

/** Fully resolved options: every field present, defaults applied, indices checked. */
export interface NormalizedLossOptions {
  mode: LossMode;
  /** T, identical for every layer (derived from data.length / (heads·r²)). */
  textLength: number;
  tokenIndices: number[];
  /** Aligned with tokenIndices; -1 = no attribute. */
  attributeIndices: number[];
  stepIndex: number;
  attentionResolution: number;
  attributeResolutions: number[];
  temperature: number;
  tokenSlice: TokenSlice;
  /** -1 unless tokenSlice is 'until-eot'. */
  eotIndex: number;
  smoothing: boolean;
  smoothingSigma: number;
  tvVertical: TvVertical;
  maxVariant: MaxVariant;
  bindingRhoLowTv: number;
  bindingRhoHighTv: number;
  bindingTvSwitch: number;
  bindingEpsilon: number;
  bindingCoefficients: Array<[number, number]>;
  tvMaxWeights: [number, number];
}

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
}

/**
 * grads: null, or one Float32Array per layer (same lengths), overwritten.
 * objectMaps: null or Float32Array(K·r0²); attributeMaps: null or Float32Array(K·r0²) (zeros for tokens without attribute).
 * Errors: TypeError / RangeError whose message starts with the field name.
 */
export type NativeLossFn = (
  layers: NativeLayer[],
  options: NormalizedLossOptions,
  grads: Float32Array[] | null,
  objectMaps: Float32Array | null,
  attributeMaps: Float32Array | null,
) => NativeLossResult;

export type NativeLossAsyncFn = (
  layers: NativeLayer[],
  options: NormalizedLossOptions,
  grads: Float32Array[] | null,
  objectMaps: Float32Array | null,
  attributeMaps: Float32Array | null,
) => Promise<NativeLossResult>;

export interface NativeFeatures {
  /** The addon was built with CUDA kernels. */
  cuda: boolean;
  /** Version of the addon (package version). */
  version: string;
  /** Compiler / SIMD info, for `divbind-native info`. */
  build: string;
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
}
