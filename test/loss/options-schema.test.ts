/**
 * The loss options are defined once per side of the boundary: lib/loss/options.ts (TS) and
 * native/core/loss_options.h (C++, exported by the addon as lossOptionSchema). These tests compare the real
 * tables: same keys, same entry types, defaults, ranges and enum spellings, same GRAD_STATE values; and check
 * that each side applies its own table (defaults reach the backends; a value just outside a range is refused by
 * the TS checks and, bypassing them, by the C++ checks).
 */
import test from 'ava';
import { attentionLoss } from '../../lib/loss/index';
import { tryLoadNativeBinding } from '../../lib/loss/binding';
import { GRAD_STATE, type NormalizedLossOptions } from '../../lib/loss/native-types';
import { LOSS_DEFAULTS, LOSS_OPTIONS, LOSS_OPTION_KEYS, MAX_DIM, MAX_RESOLUTION, MAX_STEP } from '../../lib/loss/options';
import { normalizeLossOptions } from '../../lib/loss/validate';
import { makeLayers } from '../helpers/attention';

const { binding } = tryLoadNativeBinding();

/** A plain, key-sorted copy (entry order is not part of the contract). */
function sorted(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sorted);
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(
    Object.keys(value)
      .sort()
      .map((k) => [k, sorted((value as Record<string, unknown>)[k])]),
  );
}

test('the addon exports the same option table as lib/loss/options.ts', (t) => {
  if (!binding) return t.pass('addon not built: nothing to compare');
  const schema = binding.lossOptionSchema;
  t.deepEqual(Object.keys(schema.options).sort(), [...LOSS_OPTION_KEYS].sort(), 'keys');
  for (const key of LOSS_OPTION_KEYS) t.deepEqual(sorted(schema.options[key]), sorted(LOSS_OPTIONS[key]), key);
  t.deepEqual(sorted(schema.gradStates), sorted(GRAD_STATE), 'GRAD_STATE values');
  t.deepEqual(schema.limits, { maxResolution: MAX_RESOLUTION, maxDim: MAX_DIM, maxStep: MAX_STEP }, 'limits');
});

test('LOSS_DEFAULTS is read from the table and reaches both backends', (t) => {
  for (const [key, value] of Object.entries(LOSS_DEFAULTS)) {
    t.deepEqual(value, (LOSS_OPTIONS as Record<string, { default?: unknown }>)[key].default, key);
  }
  const layers = makeLayers(
    3,
    [
      { resolution: 16, heads: 1 },
      { resolution: 64, heads: 1 },
      { resolution: 32, heads: 1 },
    ],
    12,
  );
  const normalized = normalizeLossOptions(layers, { tokenIndices: [2, 4], attributeIndices: [1, null] });
  const { textLength, tokenIndices, attributeIndices, eotIndex, ...rest } = normalized;
  t.deepEqual({ textLength, tokenIndices, attributeIndices, eotIndex }, { textLength: 12, tokenIndices: [2, 4], attributeIndices: [1, -1], eotIndex: -1 });
  t.deepEqual(sorted(rest), sorted(LOSS_DEFAULTS));
  // The same call with every default spelled out gives the same numbers (the backends use what they are given).
  const spelled = { ...structuredClone(LOSS_DEFAULTS), tokenIndices: [2, 4], attributeIndices: [1, null] } as unknown as Parameters<typeof attentionLoss>[1];
  for (const backend of binding ? (['js', 'native'] as const) : (['js'] as const)) {
    t.is(
      attentionLoss(layers, { tokenIndices: [2, 4], attributeIndices: [1, null] }, { backend }).loss,
      attentionLoss(layers, spelled, { backend }).loss,
      backend,
    );
  }
});

/** Every numeric entry: the bounds are accepted, a value just outside is refused by TS and by C++. */
test('each side enforces its table: bounds accepted, just outside refused', (t) => {
  const layers = makeLayers(
    4,
    [
      { resolution: 2, heads: 1 },
      { resolution: 4, heads: 1 },
    ],
    6,
  );
  const base = { attentionResolution: 2, attributeResolutions: [4], tokenIndices: [2] };
  const numeric = LOSS_OPTION_KEYS.filter((k) => {
    const type = LOSS_OPTIONS[k].type;
    return (type === 'integer' || type === 'number') && k !== 'attentionResolution';
  });
  for (const key of numeric) {
    const e = LOSS_OPTIONS[key] as { type: string; min: number; max: number; minExclusive?: boolean };
    const step = e.type === 'integer' ? 1 : Math.max(1e-9, Math.abs(e.min) * 1e-9);
    const inside = [e.minExclusive ? e.min + step : e.min, e.max].filter(Number.isFinite);
    const outside = [e.minExclusive ? e.min : e.min - step, e.max + (e.type === 'integer' ? 1 : Math.abs(e.max) || 1)].filter(Number.isFinite);
    for (const v of inside) t.notThrows(() => normalizeLossOptions(layers, { ...base, [key]: v }), `${key} = ${v}`);
    for (const v of outside) {
      t.throws(() => normalizeLossOptions(layers, { ...base, [key]: v }), { instanceOf: RangeError }, `TS ${key} = ${v}`);
      if (!binding || (e.type === 'integer' && Math.abs(v) > 2 ** 31 - 1)) continue; // int32 on the way in
      const raw = { ...normalizeLossOptions(layers, base), [key]: v } as NormalizedLossOptions;
      const error = t.throws(() => binding.attentionLoss(layers, raw, null, null, null), { instanceOf: RangeError }, `C++ ${key} = ${v}`);
      t.true(error?.message.startsWith(`${key}: `), error?.message);
    }
  }
});
