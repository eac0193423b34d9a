/**
 * Input checks for the attention losses (spec docs/divide-and-bind.md §1, §2, §9).
 *
 * Every check runs before any backend sees the data. Messages follow one shape (sharp style):
 *   "Expected <what> for <field> but received <value> of type <type>[; <how to fix>]"
 * TypeError = wrong JavaScript type (or a missing field); RangeError = right type, value out of range.
 */
import type { AttentionLayer, LossCallOptions } from './types';
import { LAYER_PLACES, LOSS_OPTIONS, LOSS_OPTION_KEYS, MAX_DIM, MAX_RESOLUTION, MAX_STEP, type LossOptionKey, type NormalizedLossOptions } from './options';
import { makePlan, readPixels, type Layer } from './plan';

export { LAYER_PLACES, LOSS_DEFAULTS, LOSS_OPTION_KEYS } from './options';

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
      throw typeError(
        `${at}.data`,
        'Float32Array',
        l.data,
        'attention probabilities are float32 [heads, resolution², textLength]; convert with Float32Array.from(...)',
      );
    }
    const heads = checkInteger(`${at}.heads`, l.heads, 1, MAX_DIM);
    const resolution = checkInteger(`${at}.resolution`, l.resolution, 1, MAX_RESOLUTION);
    checkEnum(`${at}.place`, l.place, LAYER_PLACES);
    if (l.name !== undefined && typeof l.name !== 'string') throw typeError(`${at}.name`, 'string or undefined', l.name);
    const data = l.data;
    const perToken = heads * resolution * resolution;
    if (data.length % perToken !== 0) {
      throw rangeError(
        `${at}.data`,
        `length a multiple of heads·resolution² = ${heads}·${resolution}² = ${perToken}`,
        data,
        'data is [heads, resolution², textLength] row-major; check heads and resolution (maps must be square)',
      );
    }
    const t = data.length / perToken;
    if (textLength < 0) {
      if (t < 3 || t > MAX_DIM) {
        throw rangeError(
          `${at}.data`,
          `text length (data.length / (heads·resolution²)) between 3 and ${MAX_DIM}`,
          t,
          `length ${data.length} / ${perToken}; the token slice keeps positions 1..T-2, so T must be at least 3`,
        );
      }
      textLength = t;
    } else if (t !== textLength) {
      throw rangeError(
        `${at}.data`,
        `text length ${textLength} (as in layers[0])`,
        t,
        `length ${data.length} / (${heads}·${resolution}²); every layer must come from the same text encoding`,
      );
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
            throw rangeError(
              `layers[${li}].data`,
              'finite attention probabilities',
              data[row + k],
              `first bad value at index ${row + k} (head ${h}, pixel ${p}, token ${k})`,
            );
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Loss options (names, defaults and ranges: options.ts)

/** An entry of LOSS_OPTIONS that one generic check covers. */
type SimpleEntry =
  | { type: 'enum'; values: readonly string[]; default: string }
  | { type: 'integer'; min: number; max: number; default: number }
  | { type: 'number'; min: number; max: number; minExclusive?: boolean; default: number }
  | { type: 'boolean'; default: boolean };

const SIMPLE_TYPES = new Set(['enum', 'integer', 'number', 'boolean']);

/** Advice appended to an option's range error. */
const OPTION_HINTS: Partial<Record<LossOptionKey, string>> = {
  attentionResolution: 'the object maps need at least 2×2 pixels (reflect padding, TV differences)',
};

/** The value of an option of LOSS_OPTIONS, or its default when absent. */
function pick(o: Record<string, unknown>, key: LossOptionKey): unknown {
  const entry = LOSS_OPTIONS[key] as { default?: unknown };
  return o[key] === undefined ? entry.default : o[key];
}

/** Checks an enum / integer / number / boolean option against its entry. */
function checkSimpleOption(key: LossOptionKey, value: unknown): unknown {
  const e = LOSS_OPTIONS[key] as SimpleEntry;
  switch (e.type) {
    case 'enum':
      return checkEnum(key, value, e.values);
    case 'boolean':
      return checkBoolean(key, value);
    case 'integer':
      return checkInteger(key, value, e.min, e.max, OPTION_HINTS[key]);
    case 'number':
      return checkNumber(key, value, e.min, e.max, e.minExclusive === true);
  }
}

function resolutionList(resolutions: number[]): string {
  return resolutions.join(', ');
}

/** Kept token positions are 1..end-1 (end = T-1 for 1:-1, eotIndex for 1:eot); `hint` explains them. */
interface Slice {
  eotIndex: number;
  end: number;
  hint: string;
}

function normalizeSlice(o: Record<string, unknown>, T: number, tokenSlice: string): Slice {
  let eotIndex = -1;
  if (o.eotIndex !== undefined) {
    const eot = checkInteger('eotIndex', o.eotIndex, 2, T - 1, `the EOT position in the ${T}-long text encoding (SOT = 0)`);
    if (tokenSlice === 'until-eot') eotIndex = eot;
  } else if (tokenSlice === 'until-eot') {
    throw typeError('eotIndex', `integer between 2 and ${T - 1}`, undefined, "tokenSlice 'until-eot' needs the EOT position (SOT = 0)");
  }
  const end = tokenSlice === 'until-eot' ? eotIndex : T - 1;
  const hint =
    tokenSlice === 'until-eot'
      ? `token indices count from SOT = 0 (slice 1:${eotIndex} keeps 1..${end - 1})`
      : `token indices count from SOT = 0 (slice 1:-1 keeps 1..${end - 1})`;
  return { eotIndex, end, hint };
}

function normalizeTokens(raw: unknown, slice: Slice): number[] {
  const expected = 'non-empty array of token indices';
  const example = 'e.g. [2, 5] for "a cat and a dog" (SOT = 0)';
  if (!Array.isArray(raw)) throw typeError('tokenIndices', expected, raw, example);
  if (raw.length === 0) throw rangeError('tokenIndices', expected, raw, example);
  const tokenIndices: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    const k = checkInteger(`tokenIndices[${i}]`, raw[i], 1, slice.end - 1, slice.hint);
    const previous = tokenIndices.indexOf(k);
    if (previous >= 0) throw rangeError(`tokenIndices[${i}]`, 'distinct token indices', k, `already given as tokenIndices[${previous}]`);
    tokenIndices.push(k);
  }
  return tokenIndices;
}

/** Attribute per object token, -1 = none. */
function normalizeAttributes(raw: unknown, tokenIndices: number[], slice: Slice): number[] {
  const attributeIndices: number[] = tokenIndices.map(() => -1);
  if (raw === undefined || raw === null) return attributeIndices;
  const expected = `array of length ${tokenIndices.length} (aligned with tokenIndices)`;
  if (!Array.isArray(raw)) throw typeError('attributeIndices', expected, raw);
  if (raw.length !== tokenIndices.length) throw rangeError('attributeIndices', expected, raw, 'use null (or 0) for an object without attribute');
  for (let i = 0; i < raw.length; i++) {
    const a: unknown = raw[i];
    const field = `attributeIndices[${i}]`;
    if (a === null) continue;
    const expectedAttr = `null, a value <= 0 (no attribute) or an integer between 1 and ${slice.end - 1}`;
    if (typeof a !== 'number') throw typeError(field, expectedAttr, a, slice.hint);
    if (!Number.isInteger(a) || a > slice.end - 1) throw rangeError(field, expectedAttr, a, slice.hint);
    if (a <= 0) continue;
    if (a === tokenIndices[i]) throw rangeError(field, `an attribute token other than its object tokenIndices[${i}] = ${tokenIndices[i]}`, a);
    attributeIndices[i] = a;
  }
  return attributeIndices;
}

function checkResolutionPresent(attentionResolution: number, summary: LayerSummary): void {
  if (summary.resolutions.includes(attentionResolution)) return;
  throw rangeError(
    'attentionResolution',
    `a resolution present in layers (${resolutionList(summary.resolutions)})`,
    attentionResolution,
    'no layer has this resolution; pass the resolution of the object-map layers (16 for SD 1.x at 512²)',
  );
}

function normalizeAttributeResolutions(raw: unknown, usesAttributes: boolean, summary: LayerSummary): number[] {
  const { min, max } = LOSS_OPTIONS.attributeResolutions;
  const expected = 'array of distinct positive integer resolutions';
  if (!Array.isArray(raw)) throw typeError('attributeResolutions', expected, raw);
  const out: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    const r = checkInteger(`attributeResolutions[${i}]`, raw[i], min, max);
    if (out.includes(r)) throw rangeError(`attributeResolutions[${i}]`, 'distinct resolutions', r, 'listed twice');
    out.push(r);
  }
  if (!usesAttributes) return out;
  if (out.length === 0) {
    throw rangeError('attributeResolutions', 'non-empty array of resolutions', raw, "'tv_bind' with attributeIndices builds attribute maps from these layers");
  }
  out.forEach((r, i) => {
    if (summary.resolutions.includes(r)) return;
    throw rangeError(
      `attributeResolutions[${i}]`,
      `a resolution present in layers (${resolutionList(summary.resolutions)})`,
      r,
      "'tv_bind' with attributeIndices averages every listed resolution; list only resolutions you pass layers for",
    );
  });
  return out;
}

function normalizeSchedule(raw: unknown): Array<[number, number]> {
  const expected = 'non-empty array of [fromStepIndex, coefficient] pairs starting at step 0';
  if (!Array.isArray(raw)) throw typeError('bindingCoefficients', expected, raw);
  if (raw.length === 0) throw rangeError('bindingCoefficients', expected, raw);
  const out: Array<[number, number]> = [];
  for (let i = 0; i < raw.length; i++) {
    const pair: unknown = raw[i];
    const field = `bindingCoefficients[${i}]`;
    if (!Array.isArray(pair) || pair.length !== 2) throw typeError(field, '[fromStepIndex, coefficient] pair', pair);
    const from =
      i === 0
        ? checkInteger(`${field}[0]`, pair[0], 0, 0, 'the schedule must say which coefficient applies from step 0')
        : checkInteger(`${field}[0]`, pair[0], out[i - 1][0] + 1, MAX_STEP, 'steps must be strictly ascending');
    out.push([from, checkNumber(`${field}[1]`, pair[1], -Infinity, Infinity)]);
  }
  return out;
}

function normalizeWeights(raw: unknown): [number, number] {
  if (!Array.isArray(raw) || raw.length !== 2) throw typeError('tvMaxWeights', '[wTv, wMax] pair of finite numbers', raw);
  return [checkNumber('tvMaxWeights[0]', raw[0], -Infinity, Infinity), checkNumber('tvMaxWeights[1]', raw[1], -Infinity, Infinity)];
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

/** Option checks against an already validated layer summary: the scalar options, then the structured ones. */
export function normalizeOptionsFor(summary: LayerSummary, options: unknown): NormalizedLossOptions {
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw typeError('options', 'object { tokenIndices, mode?, ... }', options);
  }
  checkUnknownKeys(options, LOSS_OPTION_KEYS, 'loss options');
  const o = options as Record<string, unknown>;
  const simple: Record<string, unknown> = {};
  for (const key of LOSS_OPTION_KEYS) {
    if (SIMPLE_TYPES.has(LOSS_OPTIONS[key].type)) simple[key] = checkSimpleOption(key, pick(o, key));
  }
  const scalars = simple as Pick<NormalizedLossOptions, 'mode' | 'tokenSlice' | 'attentionResolution'>;
  const slice = normalizeSlice(o, summary.textLength, scalars.tokenSlice);
  const tokenIndices = normalizeTokens(o.tokenIndices, slice);
  const attributeIndices = normalizeAttributes(o.attributeIndices, tokenIndices, slice);
  checkResolutionPresent(scalars.attentionResolution, summary);
  const usesAttributes = scalars.mode === 'tv_bind' && attributeIndices.some((a) => a > 0);
  return {
    ...(simple as Omit<
      NormalizedLossOptions,
      'textLength' | 'tokenIndices' | 'attributeIndices' | 'eotIndex' | 'attributeResolutions' | 'bindingCoefficients' | 'tvMaxWeights'
    >),
    textLength: summary.textLength,
    tokenIndices,
    attributeIndices,
    eotIndex: slice.eotIndex,
    attributeResolutions: normalizeAttributeResolutions(pick(o, 'attributeResolutions'), usesAttributes, summary),
    bindingCoefficients: normalizeSchedule(pick(o, 'bindingCoefficients')),
    tvMaxWeights: normalizeWeights(pick(o, 'tvMaxWeights')),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Call options

export const CALL_OPTION_KEYS: readonly (keyof LossCallOptions)[] = ['backend', 'computeGrad', 'gradOut', 'gradOutReuse', 'returnMaps'];

export interface NormalizedCallOptions {
  backend: 'native' | 'js' | 'cuda' | 'auto';
  computeGrad: boolean;
  gradOut: Float32Array[] | null;
  gradOutReuse: boolean;
  returnMaps: boolean;
}

function overlaps(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

/** gradOut: one Float32Array per layer, of the layer's length, overlapping no layer data and no other buffer. */
function checkGradOut(layers: AttentionLayer[], raw: unknown): Float32Array[] {
  const expected = `array of ${layers.length} Float32Array (one per layer)`;
  if (!Array.isArray(raw)) throw typeError('gradOut', expected, raw);
  if (raw.length !== layers.length) throw rangeError('gradOut', expected, raw);
  const gradOut: Float32Array[] = [];
  for (let i = 0; i < layers.length; i++) {
    const g: unknown = raw[i];
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
  return gradOut;
}

/** Checks call options against validated layers. */
export function normalizeCallOptions(layers: AttentionLayer[], call: unknown): NormalizedCallOptions {
  if (call === undefined) return { backend: 'auto', computeGrad: true, gradOut: null, gradOutReuse: false, returnMaps: false };
  if (typeof call !== 'object' || call === null || Array.isArray(call)) {
    throw typeError('call', 'object { backend?, computeGrad?, gradOut?, gradOutReuse?, returnMaps? } or undefined', call);
  }
  checkUnknownKeys(call, CALL_OPTION_KEYS, 'call options');
  const c = call as Record<string, unknown>;
  const backend = c.backend === undefined ? 'auto' : checkEnum('backend', c.backend, ['native', 'js', 'cuda'] as const);
  const computeGrad = c.computeGrad === undefined ? true : checkBoolean('computeGrad', c.computeGrad);
  const returnMaps = c.returnMaps === undefined ? false : checkBoolean('returnMaps', c.returnMaps);
  const gradOutReuse = c.gradOutReuse === undefined ? false : checkBoolean('gradOutReuse', c.gradOutReuse);
  let gradOut: Float32Array[] | null = null;
  if (c.gradOut !== undefined) {
    if (!computeGrad) throw new TypeError('gradOut was given but computeGrad is false; drop one of them');
    gradOut = checkGradOut(layers, c.gradOut);
  }
  if (gradOutReuse && !gradOut) {
    throw new TypeError('gradOutReuse is true but no gradOut was given; it applies to caller-owned gradient buffers that are kept between calls');
  }
  return { backend, computeGrad, gradOut, gradOutReuse, returnMaps };
}
