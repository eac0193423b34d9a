/**
 * Public types of the attention-loss core (Divide & Bind / Attend-and-Excite).
 * The spec is docs/divide-and-bind.md (§1 extraction, §2 losses, §9 parameters).
 * Both backends ('native' C++ addon, 'js' pure TypeScript twin, later 'cuda') compute exactly this.
 */

/** Loss modes of §2: A&E/D&B max, D&B attendance (TV), attendance + binding (JSD), TV + 0.3·max. */
export type LossMode = 'max' | 'tv' | 'tv_bind' | 'tv_max';

/** Where a cross-attention layer sits in the UNet. */
export type LayerPlace = 'down' | 'mid' | 'up';

/** Which backend computes the loss. */
export type LossBackend = 'native' | 'js' | 'cuda';

/**
 * One cross-attention layer of one image: post-softmax probabilities, row-major [heads, HW, T],
 * HW = resolution², T = text length (77 for SD). heads may be 1 when the graph already averaged heads.
 */
export interface AttentionLayer {
  data: Float32Array;
  heads: number;
  resolution: number;
  place: LayerPlace;
  /** Optional diagnostic name, e.g. "down_blocks.2.attentions.0.transformer_blocks.0.attn2". */
  name?: string;
}

/** How the token axis is sliced before the temperature softmax (§1). */
export type TokenSlice =
  /** Positions 1..T-2 (Python `1:-1`): drops SOT and the last padded position. Official D&B default. */
  | 'all-but-last'
  /** Positions 1..eotIndex-1 (A&E's SD 2.1 `1:last_idx`); needs `eotIndex`. */
  | 'until-eot';

/** Vertical TV term (§2.2). */
export type TvVertical =
  /** Each row 1..r-1 against the LAST row (official code's broadcasting quirk; default, for parity). */
  | 'official'
  /** True neighbour differences, rows 0..r-2 against rows 1..r-1. */
  | 'neighbor';

/** `max` mode flavour (§2.1). */
export type MaxVariant =
  /** D&B: per-token value v = m, loss = max_s(-v_s) = -min_s m_s. */
  | 'divbind'
  /** A&E: loss = max_s max(0, 1 - m_s) (the hinge; no gradient once m_s >= 1). */
  | 'attend-excite';

export interface LossOptions {
  /** Loss mode. Default 'tv'. */
  mode?: LossMode;
  /** Object ("subject") token positions in prompt coordinates (SOT = 0). Required, non-empty, distinct. */
  tokenIndices: number[];
  /**
   * Attribute token per object, aligned with tokenIndices (same length). `null` or a value <= 0 means
   * "no attribute" (official convention). Only used by 'tv_bind'. Default: no attributes.
   */
  attributeIndices?: Array<number | null>;
  /** Denoising-loop index i (0-based), selects the binding coefficient. Default 0. */
  stepIndex?: number;
  /** Resolution r of the object maps (HW = r²). Default 16. */
  attentionResolution?: number;
  /** Resolutions whose layers make the attribute map (nearest-subsampled to attentionResolution). Default [64, 32]. */
  attributeResolutions?: number[];
  /** Softmax temperature multiplier. Default 100. */
  temperature?: number;
  /** Token slice. Default 'all-but-last'. */
  tokenSlice?: TokenSlice;
  /** Index of the EOT token (required for tokenSlice 'until-eot'). */
  eotIndex?: number;
  /** Gaussian smoothing on/off. Default true. */
  smoothing?: boolean;
  /** Gaussian σ (with the official (2σ)² exponent, 3×3 kernel, reflect padding of 1). Default 0.5. */
  smoothingSigma?: number;
  /** Vertical TV term. Default 'official'. */
  tvVertical?: TvVertical;
  /** Flavour of 'max' mode. Default 'divbind'. */
  maxVariant?: MaxVariant;
  /** Binding threshold factor ρ used when TV < bindingTvSwitch. Default 0.3. */
  bindingRhoLowTv?: number;
  /** Binding threshold factor ρ used when TV >= bindingTvSwitch. Default 0.2. */
  bindingRhoHighTv?: number;
  /** TV value at which ρ switches. Default 0.1. */
  bindingTvSwitch?: number;
  /** ε added after relu. Default 1e-5. */
  bindingEpsilon?: number;
  /**
   * Binding coefficient schedule as [fromStepIndex, coefficient] pairs, ascending.
   * Default [[0, 1], [10, 5], [20, 10]].
   */
  bindingCoefficients?: Array<[number, number]>;
  /** tv_max weights [wTv, wMax]: v = wTv·TV + wMax·m. Default [1, 0.3]. */
  tvMaxWeights?: [number, number];
}

/** Per object token diagnostics. */
export interface TokenDiagnostics {
  tokenIndex: number;
  /** Attribute token or null. */
  attributeIndex: number | null;
  /** m_s: max of the smoothed object map. */
  maxAttention: number;
  /** TV_s of the smoothed object map (computed in every mode). */
  tv: number;
  /** JSD_s with the attribute map ('tv_bind' with an attribute), else null. */
  jsd: number | null;
  /** Binding coefficient in force (tv_bind), else 0. */
  coefficient: number;
  /** Per-token value v_s that enters L = max_s(-v_s) (or the A&E hinge 1 - m_s for maxVariant 'attend-excite'). */
  value: number;
}

export interface LossResult {
  /** L. */
  loss: number;
  /** Threshold indicator θ of the mode (min max-attention for max/tv_max, min TV for tv/tv_bind). */
  indicator: number;
  /** One entry per object token, in tokenIndices order. */
  tokens: TokenDiagnostics[];
  /**
   * Gradient dL/d(layer data), one Float32Array per input layer, same length as that layer's data.
   * Present when `computeGrad` (default true). Layers that do not influence L get zeros.
   */
  grads?: Float32Array[];
  /** Smoothed object maps [tokens, r, r] (and attribute maps) when `returnMaps` is set. */
  maps?: { objects: Float32Array; attributes: Float32Array | null; resolution: number };
}

export interface LossCallOptions {
  /** Backend. Default: 'native' when the addon loads, else 'js'. */
  backend?: LossBackend;
  /** Compute gradients. Default true. */
  computeGrad?: boolean;
  /** Caller-owned gradient buffers (one per layer, same lengths): written in place, no allocation per call. */
  gradOut?: Float32Array[];
  /** Also return the smoothed maps (for visualisation). Default false. */
  returnMaps?: boolean;
}
