/**
 * Input checks for the attention losses (spec docs/divide-and-bind.md §1, §2, §9).
 *
 * Every check runs before any backend sees the data. Messages follow one shape (sharp style):
 *   "Expected <what> for <field> but received <value> of type <type>[; <how to fix>]"
 * TypeError = wrong JavaScript type (or a missing field); RangeError = right type, value out of range.
 */
import type { AttentionLayer, LayerPlace, LossCallOptions, LossOptions } from './types';
import type { NormalizedLossOptions } from './native-types';
import { makePlan, readPixels, type Layer } from './plan';

// ---------------------------------------------------------------------------------------------------------
// Message helpers

/** Short rendering of any value for an error message (never throws, never dumps big arrays). */
export function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  switch (typeof value) {
    case 'number':
      return Object.is(value, -0) ? '-0' : String(value);
    case 'bigint':
      return `${value}n`;
    case 'string': {
      const s = value.length > 40 ? `${value.slice(0, 37)}...` : value;
      return JSON.stringify(s);
    }
    case 'boolean':
      return String(value);
    case 'function':
      return 'a function';
    case 'symbol':
      return value.toString();
    default:
      break;
  }
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  if (ArrayBuffer.isView(value)) {
    const name = value.constructor?.name ?? 'TypedArray';
    const length = (value as unknown as { length?: number }).length ?? value.byteLength;
    return `${name} of length ${length}`;
  }
  const ctor = (value as object).constructor?.name;
  return ctor && ctor !== 'Object' ? `a ${ctor}` : 'an object';
}

function typeName(value: unknown): string {
  return value === null ? 'null' : typeof value;
}

function message(field: string, expected: string, value: unknown, hint?: string): string {
  const base = `Expected ${expected} for ${field} but received ${describeValue(value)} of type ${typeName(value)}`;
  return hint ? `${base}; ${hint}` : base;
}

/** Wrong JavaScript type (or missing). */
export function typeError(field: string, expected: string, value: unknown, hint?: string): TypeError {
  return new TypeError(message(field, expected, value, hint));
}

/** Right type, value out of range. */
export function rangeError(field: string, expected: string, value: unknown, hint?: string): RangeError {
  return new RangeError(message(field, expected, value, hint));
}

/** Levenshtein distance, small strings only (option names). */
function editDistance(a: string, b: string): number {
  const prev = new Array<number>(b.length + 1);
  for (let j = 0; j <= b.length; j++) prev[j] = j;
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0];
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j];
      prev[j] = Math.min(prev[j] + 1, prev[j - 1] + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length];
}

/** The closest known name when it is plausibly a misspelling, else undefined. */
export function suggestName(name: string, known: readonly string[]): string | undefined {
  const lower = name.toLowerCase();
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of known) {
    const c = candidate.toLowerCase();
    // Case-insensitive: "tvvertical" is a slip of "tvVertical".
    const d = editDistance(lower, c);
    if (d < bestDistance) {
      bestDistance = d;
      best = candidate;
    }
  }
  const limit = Math.max(2, Math.floor(name.length / 3));
  return bestDistance <= limit ? best : undefined;
}

function checkUnknownKeys(obj: object, known: readonly string[], where: string): void {
  for (const key of Object.keys(obj)) {
    if (known.includes(key)) continue;
    const guess = suggestName(key, known);
    const hint = guess ? `did you mean "${guess}"?` : `known options: ${known.join(', ')}`;
    throw new TypeError(`Unknown option "${key}" in ${where}; ${hint}`);
  }
}

function enumText(values: readonly string[]): string {
  return `one of ${values.map((v) => `'${v}'`).join(', ')}`;
}

function checkEnum<T extends string>(field: string, value: unknown, values: readonly T[]): T {
  if (typeof value !== 'string') throw typeError(field, enumText(values), value);
  if (!(values as readonly string[]).includes(value)) {
    const guess = suggestName(value, values);
    throw rangeError(field, enumText(values), value, guess ? `did you mean '${guess}'?` : undefined);
  }
  return value as T;
}

function checkBoolean(field: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw typeError(field, 'boolean', value);
  return value;
}

/** Integer in [min, max]; TypeError for non-numbers, RangeError otherwise. */
function checkInteger(field: string, value: unknown, min: number, max: number, hint?: string): number {
  const expected = max === Infinity ? `integer >= ${min}` : `integer between ${min} and ${max}`;
  if (typeof value !== 'number') throw typeError(field, expected, value, hint);
  if (!Number.isInteger(value) || value < min || value > max) throw rangeError(field, expected, value, hint);
  return value;
}

/** Finite number in [min, max] (exclusive lower bound when minExclusive). */
function checkNumber(field: string, value: unknown, min: number, max: number, minExclusive = false): number {
  let expected: string;
  if (min === -Infinity && max === Infinity) expected = 'finite number';
  else if (max === Infinity) expected = minExclusive ? `finite number > ${min}` : `finite number >= ${min}`;
  else expected = minExclusive ? `finite number > ${min} and <= ${max}` : `finite number between ${min} and ${max}`;
  if (typeof value !== 'number') throw typeError(field, expected, value);
  const low = minExclusive ? value <= min : value < min;
  if (!Number.isFinite(value) || low || value > max) throw rangeError(field, expected, value);
  return value;
}

// ---------------------------------------------------------------------------------------------------------
// Layers

export const LAYER_PLACES: readonly LayerPlace[] = ['down', 'mid', 'up'];
/** Bounds on heads and text length: far above any UNet, low enough that products stay exact. */
const MAX_DIM = 1 << 16;
/** Bound on resolutions (the C++ core's limit too). */
const MAX_RESOLUTION = 4096;
/** Step indices travel to C++ as int32. */
const MAX_STEP = 2 ** 31 - 1;

/** What the layer checks learnt about the layer list. */
export interface LayerSummary {
  /** T, identical for every layer. */
  textLength: number;
  /** Distinct resolutions present, in first-seen order. */
  resolutions: number[];
}

/**
 * Structural checks of the layer list (types, shapes, T agreement); O(layers), does not read the data.
 * Throws TypeError / RangeError naming `layers[i].<field>`.
 */
export function validateLayers(layers: unknown): LayerSummary {
  const expected = 'non-empty array of attention layers { data, heads, resolution, place }';
  if (!Array.isArray(layers)) throw typeError('layers', expected, layers);
  if (layers.length === 0) throw rangeError('layers', expected, layers, 'pass every cross-attention layer of one image');
  let textLength = -1;
  const resolutions: number[] = [];
  for (let i = 0; i < layers.length; i++) {
    const layer: unknown = layers[i];
    const at = `layers[${i}]`;
    if (typeof layer !== 'object' || layer === null || Array.isArray(layer)) {
      throw typeError(at, 'object { data, heads, resolution, place }', layer);
    }
    const l = layer as Record<string, unknown>;
    if (!(l.data instanceof Float32Array)) {
      throw typeError(`${at}.data`, 'Float32Array', l.data, 'attention probabilities are float32 [heads, resolution², textLength]; convert with Float32Array.from(...)');
    }
    const heads = checkInteger(`${at}.heads`, l.heads, 1, MAX_DIM);
    const resolution = checkInteger(`${at}.resolution`, l.resolution, 1, MAX_RESOLUTION);
    checkEnum(`${at}.place`, l.place, LAYER_PLACES);
    if (l.name !== undefined && typeof l.name !== 'string') throw typeError(`${at}.name`, 'string or undefined', l.name);
    const data = l.data;
    const perToken = heads * resolution * resolution;
    if (data.length % perToken !== 0) {
      throw rangeError(`${at}.data`, `length a multiple of heads·resolution² = ${heads}·${resolution}² = ${perToken}`, data,
        'data is [heads, resolution², textLength] row-major; check heads and resolution (maps must be square)');
    }
    const t = data.length / perToken;
    if (textLength < 0) {
      if (t < 3 || t > MAX_DIM) {
        throw rangeError(`${at}.data`, `text length (data.length / (heads·resolution²)) between 3 and ${MAX_DIM}`, t,
          `length ${data.length} / ${perToken}; the token slice keeps positions 1..T-2, so T must be at least 3`);
      }
      textLength = t;
    } else if (t !== textLength) {
      throw rangeError(`${at}.data`, `text length ${textLength} (as in layers[0])`, t,
        `length ${data.length} / (${heads}·${resolution}²); every layer must come from the same text encoding`);
    }
    if (!resolutions.includes(resolution)) resolutions.push(resolution);
  }
  return { textLength, resolutions };
}

/**
 * Throws a RangeError naming the first NaN/±Inf among the values the loss reads: the kept token positions
 * at every pixel of the object layers and at the subsampled pixels of the attribute layers (layer, head,
 * pixel, token order). Values the loss never reads (SOT, dropped positions, unused layers) cannot reach
 * the result and are not checked: a full scan of an SD-sized input (16.6 M floats) costs more than the
 * whole native loss, while this region is 2.4 M floats. The backends also detect a non-finite value for
 * free while aggregating (a float sum in float64 cannot overflow) and then call this for the message.
 */
export function throwFirstNonFinite(layers: Layer[], o: NormalizedLossOptions): void {
  const plan = makePlan(layers, o);
  const { T, start, K } = plan;
  for (let li = 0; li < layers.length; li++) {
    const { data, heads, resolution } = layers[li];
    const pixels = readPixels(plan, li, resolution);
    if (pixels.length === 0) continue;
    const hw = resolution * resolution;
    for (let h = 0; h < heads; h++) {
      for (const p of pixels) {
        const row = (h * hw + p) * T;
        // x·0 is NaN exactly when x is NaN or ±Inf: one branch-free pass per row, a search only on failure.
        let acc = 0;
        for (let k = start; k < start + K; k++) acc += data[row + k] * 0;
        if (acc === 0) continue;
        for (let k = start; k < start + K; k++) {
          if (!Number.isFinite(data[row + k])) {
            throw rangeError(`layers[${li}].data`, 'finite attention probabilities', data[row + k],
              `first bad value at index ${row + k} (head ${h}, pixel ${p}, token ${k})`);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Loss options

export const LOSS_OPTION_KEYS: readonly (keyof LossOptions)[] = [
  'mode', 'tokenIndices', 'attributeIndices', 'stepIndex', 'attentionResolution', 'attributeResolutions',
  'temperature', 'tokenSlice', 'eotIndex', 'smoothing', 'smoothingSigma', 'tvVertical', 'maxVariant',
  'bindingRhoLowTv', 'bindingRhoHighTv', 'bindingTvSwitch', 'bindingEpsilon', 'bindingCoefficients', 'tvMaxWeights',
];

/** Defaults of §9 (the official D&B values). */
export const LOSS_DEFAULTS = {
  mode: 'tv',
  stepIndex: 0,
  attentionResolution: 16,
  attributeResolutions: [64, 32],
  temperature: 100,
  tokenSlice: 'all-but-last',
  smoothing: true,
  smoothingSigma: 0.5,
  tvVertical: 'official',
  maxVariant: 'divbind',
  bindingRhoLowTv: 0.3,
  bindingRhoHighTv: 0.2,
  bindingTvSwitch: 0.1,
  bindingEpsilon: 1e-5,
  bindingCoefficients: [[0, 1], [10, 5], [20, 10]],
  tvMaxWeights: [1, 0.3],
} as const;

function resolutionList(resolutions: number[]): string {
  return resolutions.join(', ');
}

/**
 * Validates layers (structure; and, unless scanData is false, that every value the loss reads is finite)
 * and options, applies defaults. Throws TypeError / RangeError naming the field, the value and the fix.
 */
export function normalizeLossOptions(layers: unknown, options: unknown, scanData = true): NormalizedLossOptions {
  const summary = validateLayers(layers);
  const normalized = normalizeOptionsFor(summary, options);
  if (scanData) throwFirstNonFinite(layers as AttentionLayer[], normalized);
  return normalized;
}

/** Option checks against an already validated layer summary. */
export function normalizeOptionsFor(summary: LayerSummary, options: unknown): NormalizedLossOptions {
  const T = summary.textLength;
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw typeError('options', 'object { tokenIndices, mode?, ... }', options);
  }
  checkUnknownKeys(options, LOSS_OPTION_KEYS, 'loss options');
  const o = options as Record<string, unknown>;
  const pick = <T>(key: keyof LossOptions, fallback: T): unknown => (o[key] === undefined ? fallback : o[key]);

  const mode = checkEnum('mode', pick('mode', LOSS_DEFAULTS.mode), ['max', 'tv', 'tv_bind', 'tv_max'] as const);
  const tokenSlice = checkEnum('tokenSlice', pick('tokenSlice', LOSS_DEFAULTS.tokenSlice), ['all-but-last', 'until-eot'] as const);

  // Kept token positions are 1..end-1 (end = T-1 for 1:-1, eotIndex for 1:eot).
  let eotIndex = -1;
  if (o.eotIndex !== undefined) {
    const eot = checkInteger('eotIndex', o.eotIndex, 2, T - 1, `the EOT position in the ${T}-long text encoding (SOT = 0)`);
    if (tokenSlice === 'until-eot') eotIndex = eot;
  } else if (tokenSlice === 'until-eot') {
    throw typeError('eotIndex', `integer between 2 and ${T - 1}`, undefined, "tokenSlice 'until-eot' needs the EOT position (SOT = 0)");
  }
  const end = tokenSlice === 'until-eot' ? eotIndex : T - 1;
  const sliceHint = tokenSlice === 'until-eot'
    ? `token indices count from SOT = 0 (slice 1:${eotIndex} keeps 1..${end - 1})`
    : `token indices count from SOT = 0 (slice 1:-1 keeps 1..${end - 1})`;

  const tokenExpected = 'non-empty array of token indices';
  const rawTokens = o.tokenIndices;
  if (!Array.isArray(rawTokens)) throw typeError('tokenIndices', tokenExpected, rawTokens, 'e.g. [2, 5] for "a cat and a dog" (SOT = 0)');
  if (rawTokens.length === 0) throw rangeError('tokenIndices', tokenExpected, rawTokens, 'e.g. [2, 5] for "a cat and a dog" (SOT = 0)');
  const tokenIndices: number[] = [];
  for (let i = 0; i < rawTokens.length; i++) {
    const k = checkInteger(`tokenIndices[${i}]`, rawTokens[i], 1, end - 1, sliceHint);
    const previous = tokenIndices.indexOf(k);
    if (previous >= 0) throw rangeError(`tokenIndices[${i}]`, 'distinct token indices', k, `already given as tokenIndices[${previous}]`);
    tokenIndices.push(k);
  }

  const attributeIndices: number[] = tokenIndices.map(() => -1);
  const rawAttributes = o.attributeIndices;
  if (rawAttributes !== undefined && rawAttributes !== null) {
    const expected = `array of length ${tokenIndices.length} (aligned with tokenIndices)`;
    if (!Array.isArray(rawAttributes)) throw typeError('attributeIndices', expected, rawAttributes);
    if (rawAttributes.length !== tokenIndices.length) {
      throw rangeError('attributeIndices', expected, rawAttributes, 'use null (or 0) for an object without attribute');
    }
    for (let i = 0; i < rawAttributes.length; i++) {
      const a: unknown = rawAttributes[i];
      const field = `attributeIndices[${i}]`;
      if (a === null) continue;
      const expectedAttr = `null, a value <= 0 (no attribute) or an integer between 1 and ${end - 1}`;
      if (typeof a !== 'number') throw typeError(field, expectedAttr, a, sliceHint);
      if (!Number.isInteger(a) || a > end - 1) throw rangeError(field, expectedAttr, a, sliceHint);
      if (a <= 0) continue;
      if (a === tokenIndices[i]) {
        throw rangeError(field, `an attribute token other than its object tokenIndices[${i}] = ${tokenIndices[i]}`, a);
      }
      attributeIndices[i] = a;
    }
  }

  const stepIndex = checkInteger('stepIndex', pick('stepIndex', LOSS_DEFAULTS.stepIndex), 0, MAX_STEP);

  const attentionResolution = checkInteger('attentionResolution', pick('attentionResolution', LOSS_DEFAULTS.attentionResolution), 2, MAX_RESOLUTION,
    'the object maps need at least 2×2 pixels (reflect padding, TV differences)');
  if (!summary.resolutions.includes(attentionResolution)) {
    throw rangeError('attentionResolution', `a resolution present in layers (${resolutionList(summary.resolutions)})`, attentionResolution,
      'no layer has this resolution; pass the resolution of the object-map layers (16 for SD 1.x at 512²)');
  }

  const rawAttrRes = pick('attributeResolutions', LOSS_DEFAULTS.attributeResolutions);
  const attrResExpected = 'array of distinct positive integer resolutions';
  if (!Array.isArray(rawAttrRes)) throw typeError('attributeResolutions', attrResExpected, rawAttrRes);
  const attributeResolutions: number[] = [];
  for (let i = 0; i < rawAttrRes.length; i++) {
    const r = checkInteger(`attributeResolutions[${i}]`, rawAttrRes[i], 1, MAX_RESOLUTION);
    if (attributeResolutions.includes(r)) throw rangeError(`attributeResolutions[${i}]`, 'distinct resolutions', r, 'listed twice');
    attributeResolutions.push(r);
  }
  const usesAttributes = mode === 'tv_bind' && attributeIndices.some((a) => a > 0);
  if (usesAttributes) {
    if (attributeResolutions.length === 0) {
      throw rangeError('attributeResolutions', 'non-empty array of resolutions', rawAttrRes, "'tv_bind' with attributeIndices builds attribute maps from these layers");
    }
    for (let i = 0; i < attributeResolutions.length; i++) {
      if (!summary.resolutions.includes(attributeResolutions[i])) {
        throw rangeError(`attributeResolutions[${i}]`, `a resolution present in layers (${resolutionList(summary.resolutions)})`, attributeResolutions[i],
          "'tv_bind' with attributeIndices averages every listed resolution; list only resolutions you pass layers for");
      }
    }
  }

  const temperature = checkNumber('temperature', pick('temperature', LOSS_DEFAULTS.temperature), 0, 1e6, true);
  const smoothing = checkBoolean('smoothing', pick('smoothing', LOSS_DEFAULTS.smoothing));
  const smoothingSigma = checkNumber('smoothingSigma', pick('smoothingSigma', LOSS_DEFAULTS.smoothingSigma), 0, Infinity, true);
  const tvVertical = checkEnum('tvVertical', pick('tvVertical', LOSS_DEFAULTS.tvVertical), ['official', 'neighbor'] as const);
  const maxVariant = checkEnum('maxVariant', pick('maxVariant', LOSS_DEFAULTS.maxVariant), ['divbind', 'attend-excite'] as const);
  const bindingRhoLowTv = checkNumber('bindingRhoLowTv', pick('bindingRhoLowTv', LOSS_DEFAULTS.bindingRhoLowTv), 0, 1);
  const bindingRhoHighTv = checkNumber('bindingRhoHighTv', pick('bindingRhoHighTv', LOSS_DEFAULTS.bindingRhoHighTv), 0, 1);
  const bindingTvSwitch = checkNumber('bindingTvSwitch', pick('bindingTvSwitch', LOSS_DEFAULTS.bindingTvSwitch), -Infinity, Infinity);
  const bindingEpsilon = checkNumber('bindingEpsilon', pick('bindingEpsilon', LOSS_DEFAULTS.bindingEpsilon), 0, Infinity, true);

  const rawCoefficients = pick('bindingCoefficients', LOSS_DEFAULTS.bindingCoefficients);
  const coefExpected = 'non-empty array of [fromStepIndex, coefficient] pairs starting at step 0';
  if (!Array.isArray(rawCoefficients)) throw typeError('bindingCoefficients', coefExpected, rawCoefficients);
  if (rawCoefficients.length === 0) throw rangeError('bindingCoefficients', coefExpected, rawCoefficients);
  const bindingCoefficients: Array<[number, number]> = [];
  for (let i = 0; i < rawCoefficients.length; i++) {
    const pair: unknown = rawCoefficients[i];
    const field = `bindingCoefficients[${i}]`;
    if (!Array.isArray(pair) || pair.length !== 2) throw typeError(field, '[fromStepIndex, coefficient] pair', pair);
    const previous = i === 0 ? -1 : bindingCoefficients[i - 1][0];
    let from: number;
    if (i === 0) {
      from = checkInteger(`${field}[0]`, pair[0], 0, 0, 'the schedule must say which coefficient applies from step 0');
    } else {
      from = checkInteger(`${field}[0]`, pair[0], previous + 1, MAX_STEP, 'steps must be strictly ascending');
    }
    const coefficient = checkNumber(`${field}[1]`, pair[1], -Infinity, Infinity);
    bindingCoefficients.push([from, coefficient]);
  }

  const rawWeights = pick('tvMaxWeights', LOSS_DEFAULTS.tvMaxWeights);
  if (!Array.isArray(rawWeights) || rawWeights.length !== 2) throw typeError('tvMaxWeights', '[wTv, wMax] pair of finite numbers', rawWeights);
  const tvMaxWeights: [number, number] = [
    checkNumber('tvMaxWeights[0]', rawWeights[0], -Infinity, Infinity),
    checkNumber('tvMaxWeights[1]', rawWeights[1], -Infinity, Infinity),
  ];

  return {
    mode, textLength: T, tokenIndices, attributeIndices, stepIndex, attentionResolution, attributeResolutions,
    temperature, tokenSlice, eotIndex, smoothing, smoothingSigma, tvVertical, maxVariant, bindingRhoLowTv,
    bindingRhoHighTv, bindingTvSwitch, bindingEpsilon, bindingCoefficients, tvMaxWeights,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Call options

export const CALL_OPTION_KEYS: readonly (keyof LossCallOptions)[] = ['backend', 'computeGrad', 'gradOut', 'returnMaps'];

export interface NormalizedCallOptions {
  backend: 'native' | 'js' | 'cuda' | 'auto';
  computeGrad: boolean;
  gradOut: Float32Array[] | null;
  returnMaps: boolean;
}

function overlaps(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

/** Checks call options against validated layers. */
export function normalizeCallOptions(layers: AttentionLayer[], call: unknown): NormalizedCallOptions {
  if (call === undefined) return { backend: 'auto', computeGrad: true, gradOut: null, returnMaps: false };
  if (typeof call !== 'object' || call === null || Array.isArray(call)) {
    throw typeError('call', 'object { backend?, computeGrad?, gradOut?, returnMaps? } or undefined', call);
  }
  checkUnknownKeys(call, CALL_OPTION_KEYS, 'call options');
  const c = call as Record<string, unknown>;
  const backend = c.backend === undefined ? 'auto' : checkEnum('backend', c.backend, ['native', 'js', 'cuda'] as const);
  const computeGrad = c.computeGrad === undefined ? true : checkBoolean('computeGrad', c.computeGrad);
  const returnMaps = c.returnMaps === undefined ? false : checkBoolean('returnMaps', c.returnMaps);
  let gradOut: Float32Array[] | null = null;
  if (c.gradOut !== undefined) {
    if (!computeGrad) throw new TypeError('gradOut was given but computeGrad is false; drop one of them');
    const expected = `array of ${layers.length} Float32Array (one per layer)`;
    if (!Array.isArray(c.gradOut)) throw typeError('gradOut', expected, c.gradOut);
    if (c.gradOut.length !== layers.length) throw rangeError('gradOut', expected, c.gradOut);
    gradOut = [];
    for (let i = 0; i < layers.length; i++) {
      const g: unknown = c.gradOut[i];
      const field = `gradOut[${i}]`;
      if (!(g instanceof Float32Array)) throw typeError(field, `Float32Array of length ${layers[i].data.length}`, g);
      if (g.length !== layers[i].data.length) {
        throw rangeError(field, `Float32Array of length ${layers[i].data.length} (as layers[${i}].data)`, g);
      }
      // Backends may read a layer after writing another layer's gradient, so no buffer may alias an input.
      for (let j = 0; j < layers.length; j++) {
        if (overlaps(g, layers[j].data)) throw rangeError(field, 'a buffer that does not overlap any layer data', g, `it overlaps layers[${j}].data`);
      }
      for (let j = 0; j < gradOut.length; j++) {
        if (overlaps(g, gradOut[j])) throw rangeError(field, 'a buffer that does not overlap another gradient buffer', g, `it overlaps gradOut[${j}]`);
      }
      gradOut.push(g);
    }
  }
  return { backend, computeGrad, gradOut, returnMaps };
}
