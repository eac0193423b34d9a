/**
 * Public types of the attention-loss core (Divide & Bind / Attend-and-Excite).
 * The spec is docs/divide-and-bind.md (§1 extraction, §2 losses, §9 parameters).
 * Both backends ('native' C++ addon, 'js' pure TypeScript twin, 'cuda') compute exactly this.
 * The options themselves (names, defaults, ranges, meaning) are defined once, in options.ts.
 */
import type { LAYER_PLACES, LOSS_MODES, MAX_VARIANTS, TOKEN_SLICES, TV_VERTICALS } from './options';

export type { LossOptions } from './options';

/** Loss modes of §2 (LOSS_MODES). */
export type LossMode = (typeof LOSS_MODES)[number];

/** Where a cross-attention layer sits in the UNet. */
export type LayerPlace = (typeof LAYER_PLACES)[number];

/** How the token axis is sliced before the temperature softmax (§1; TOKEN_SLICES). */
export type TokenSlice = (typeof TOKEN_SLICES)[number];

/** Vertical TV term (§2.2; TV_VERTICALS). */
export type TvVertical = (typeof TV_VERTICALS)[number];

/** `max` mode flavour (§2.1; MAX_VARIANTS). */
export type MaxVariant = (typeof MAX_VARIANTS)[number];

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
  /**
   * Keep gradOut between calls and write only where a gradient can be non-zero: the pixels the loss samples on
   * the layers that receive a gradient now or received one from the previous call with that buffer. The rest of
   * each buffer already holds the zeros an earlier call wrote (the first call with a buffer writes all of it).
   * Results are identical to full writes. Default false.
   *
   * Contract: between calls, nothing but attentionLoss / attentionLossAsync writes to these buffers (reading,
   * e.g. feeding them to a VJP, is fine). Detected and refused: a buffer still being written by a pending
   * attentionLossAsync call. Detected and handled by a full write: a buffer first seen, one whose layer shape
   * or attentionResolution changed, one written through a differently placed view of the same memory, and one
   * whose last call failed.
   */
  gradOutReuse?: boolean;
  /** Also return the smoothed maps (for visualisation). Default false. */
  returnMaps?: boolean;
}
