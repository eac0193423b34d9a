/**
 * The loss options on the TypeScript side of the boundary, in one place: their names, defaults and ranges
 * (spec docs/divide-and-bind.md §9). LossOptions (types.ts) and NormalizedLossOptions (native-types.ts)
 * are derived from LOSS_OPTIONS, validate.ts checks against it, and test/loss/options-schema.test.ts checks that
 * it equals the C++ side's one place (native/core/loss_options.h, exported by the addon as lossOptionSchema).
 *
 * Entry types: 'enum' (one of `values`), 'integer' / 'number' (finite, in [min, max], (min, max] when
 * minExclusive), 'boolean', 'integers' (a list of distinct integers in [min, max]), 'tokens' / 'attributes' /
 * 'index' (text positions, checked against the text length and the token slice), 'schedule' ([fromStep,
 * coefficient] pairs), 'pair' (two finite numbers).
 */

/** Loss modes of §2: A&E/D&B max, D&B attendance (TV), attendance + binding (JSD), TV + 0.3·max. */
export const LOSS_MODES = ['max', 'tv', 'tv_bind', 'tv_max'] as const;
/** Where a cross-attention layer sits in the UNet. */
export const LAYER_PLACES = ['down', 'mid', 'up'] as const;
/**
 * How the token axis is sliced before the temperature softmax (§1).
 * 'all-but-last': positions 1..T-2 (Python `1:-1`), drops SOT and the last padded position (official D&B);
 * 'until-eot': positions 1..eotIndex-1 (A&E's SD 2.1 `1:last_idx`), needs `eotIndex`.
 */
export const TOKEN_SLICES = ['all-but-last', 'until-eot'] as const;
/**
 * Vertical TV term (§2.2). 'official': each row 1..r-1 against the LAST row (the official code's broadcasting
 * quirk, kept for parity); 'neighbor': true neighbour differences, rows 0..r-2 against rows 1..r-1.
 */
export const TV_VERTICALS = ['official', 'neighbor'] as const;
/**
 * `max` mode flavour (§2.1). 'divbind': v = m, loss = max_s(-v_s) = -min_s m_s; 'attend-excite': loss =
 * max_s max(0, 1 - m_s) (the hinge; no gradient once m_s >= 1).
 */
export const MAX_VARIANTS = ['divbind', 'attend-excite'] as const;

/** Bound on resolutions (both backends). */
export const MAX_RESOLUTION = 4096;
/** Bound on heads and text length: far above any UNet, low enough that products stay exact. */
export const MAX_DIM = 1 << 16;
/** Step indices travel to C++ as int32. */
export const MAX_STEP = 2 ** 31 - 1;

export const LOSS_OPTIONS = {
  /** Loss mode (LOSS_MODES). */
  mode: { type: 'enum', values: LOSS_MODES, default: 'tv' },
  /** Object ("subject") token positions in prompt coordinates (SOT = 0). Required, non-empty, distinct. */
  tokenIndices: { type: 'tokens', required: true },
  /**
   * Attribute token per object, aligned with tokenIndices (same length). `null` or a value <= 0 means "no
   * attribute" (official convention). Only used by 'tv_bind'. Default: no attributes.
   */
  attributeIndices: { type: 'attributes' },
  /** Denoising-loop index i (0-based); selects the binding coefficient. */
  stepIndex: { type: 'integer', min: 0, max: MAX_STEP, default: 0 },
  /** Resolution r of the object maps (HW = r²). */
  attentionResolution: { type: 'integer', min: 2, max: MAX_RESOLUTION, default: 16 },
  /** Resolutions whose layers make the attribute map (nearest-subsampled to attentionResolution). */
  attributeResolutions: { type: 'integers', min: 1, max: MAX_RESOLUTION, default: [64, 32] },
  /** Softmax temperature multiplier. */
  temperature: { type: 'number', min: 0, minExclusive: true, max: 1e6, default: 100 },
  /** Token slice (TOKEN_SLICES). */
  tokenSlice: { type: 'enum', values: TOKEN_SLICES, default: 'all-but-last' },
  /** Index of the EOT token (required for tokenSlice 'until-eot'). */
  eotIndex: { type: 'index' },
  /** Gaussian smoothing on/off. */
  smoothing: { type: 'boolean', default: true },
  /** Gaussian σ (with the official (2σ)² exponent, 3×3 kernel, reflect padding of 1). */
  smoothingSigma: { type: 'number', min: 0, minExclusive: true, max: Infinity, default: 0.5 },
  /** Vertical TV term (TV_VERTICALS). */
  tvVertical: { type: 'enum', values: TV_VERTICALS, default: 'official' },
  /** Flavour of 'max' mode (MAX_VARIANTS). */
  maxVariant: { type: 'enum', values: MAX_VARIANTS, default: 'divbind' },
  /** Binding threshold factor ρ used when TV < bindingTvSwitch. */
  bindingRhoLowTv: { type: 'number', min: 0, max: 1, default: 0.3 },
  /** Binding threshold factor ρ used when TV >= bindingTvSwitch. */
  bindingRhoHighTv: { type: 'number', min: 0, max: 1, default: 0.2 },
  /** TV value at which ρ switches. */
  bindingTvSwitch: { type: 'number', min: -Infinity, max: Infinity, default: 0.1 },
  /** ε added after relu (keeps the JSD logarithms finite). */
  bindingEpsilon: { type: 'number', min: 0, minExclusive: true, max: Infinity, default: 1e-5 },
  /** Binding coefficient schedule as [fromStepIndex, coefficient] pairs, ascending, starting at step 0. */
  bindingCoefficients: {
    type: 'schedule',
    default: [
      [0, 1],
      [10, 5],
      [20, 10],
    ],
  },
  /** tv_max weights [wTv, wMax]: v = wTv·TV + wMax·m. */
  tvMaxWeights: { type: 'pair', default: [1, 0.3] },
} as const;

type Schema = typeof LOSS_OPTIONS;
export type LossOptionKey = keyof Schema;

/** The value a user passes for an option of this entry type. */
type OptionValue<E> = E extends { type: 'enum'; values: readonly (infer V)[] }
  ? V
  : E extends { type: 'integer' | 'number' | 'index' }
    ? number
    : E extends { type: 'boolean' }
      ? boolean
      : E extends { type: 'tokens' | 'integers' }
        ? number[]
        : E extends { type: 'attributes' }
          ? Array<number | null>
          : E extends { type: 'schedule' }
            ? Array<[number, number]>
            : E extends { type: 'pair' }
              ? [number, number]
              : never;

/** The value after validation: attributes are plain numbers (-1 = none), eotIndex -1 when unused. */
type NormalizedValue<E> = E extends { type: 'attributes' } ? number[] : OptionValue<E>;

type RequiredKey = { [K in LossOptionKey]: Schema[K] extends { required: true } ? K : never }[LossOptionKey];
type DefaultedKey = { [K in LossOptionKey]: Schema[K] extends { default: unknown } ? K : never }[LossOptionKey];

/** Options of one loss call: tokenIndices is required, every other option has a default (LOSS_OPTIONS). */
export type LossOptions = { [K in Extract<LossOptionKey, RequiredKey>]: OptionValue<Schema[K]> } & {
  [K in Exclude<LossOptionKey, RequiredKey>]?: OptionValue<Schema[K]>;
};

/** Fully resolved options as the backends receive them: every field present, plus T. */
export type NormalizedLossOptions = { [K in LossOptionKey]: NormalizedValue<Schema[K]> } & {
  /** T, identical for every layer (derived from data.length / (heads·r²)). */
  textLength: number;
};

/** Every option's key, in table order. */
export const LOSS_OPTION_KEYS = Object.keys(LOSS_OPTIONS) as LossOptionKey[];

/** The defaults of §9, read from the table. */
export const LOSS_DEFAULTS = Object.fromEntries(
  Object.entries(LOSS_OPTIONS)
    .filter(([, e]) => 'default' in e)
    .map(([k, e]) => [k, (e as { default: unknown }).default]),
) as { readonly [K in DefaultedKey]: Schema[K] extends { default: infer D } ? D : never };
