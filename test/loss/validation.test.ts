/**
 * Bad input: exact TypeError / RangeError text from the TS checks (shared by every backend, so each case is
 * run with backend 'js' and, when the addon loads, 'native', sync and async), and the C++ checks reached by
 * calling the raw binding with bad *normalized* options (message starts with the field name).
 */
import test, { type ExecutionContext } from 'ava';
import { attentionLoss, attentionLossAsync } from '../../lib/loss/index';
import { tryLoadNativeBinding } from '../../lib/loss/binding';
import { normalizeLossOptions, suggestName } from '../../lib/loss/validate';
import type { AttentionLayer, LossBackend, LossCallOptions, LossOptions } from '../../lib/loss/types';
import type { NativeLayer, NormalizedLossOptions } from '../../lib/loss/native-types';
import { makeLayers } from '../helpers/attention';

const { binding } = tryLoadNativeBinding();
const BACKENDS: LossBackend[] = binding ? ['js', 'native'] : ['js'];

/** 2 layers at 4² (2 heads), one at 8² (1 head), T = 10: the slice 1:-1 keeps 1..8. */
function layers(): AttentionLayer[] {
  return makeLayers(
    5,
    [
      { resolution: 4, heads: 2 },
      { resolution: 8, heads: 1, place: 'up' },
      { resolution: 4, heads: 2, place: 'up' },
    ],
    10,
  );
}
const OK: LossOptions = { attentionResolution: 4, attributeResolutions: [8], tokenIndices: [2, 5] };

type Ctor = typeof TypeError | typeof RangeError | typeof Error;

async function expectError(t: ExecutionContext, make: () => [unknown, unknown, unknown?], ctor: Ctor, text: string): Promise<void> {
  for (const backend of BACKENDS) {
    const [l, o, c] = make();
    const call = { ...(c as LossCallOptions | undefined), backend } as LossCallOptions;
    const sync = t.throws(() => attentionLoss(l as AttentionLayer[], o as LossOptions, call), { instanceOf: ctor }, `${backend} sync`);
    t.is(sync?.message, text, `${backend} sync`);
    t.is(sync?.constructor, ctor, `${backend} sync class`);
    const [l2, o2, c2] = make();
    const call2 = { ...(c2 as LossCallOptions | undefined), backend } as LossCallOptions;
    const async = await t.throwsAsync(attentionLossAsync(l2 as AttentionLayer[], o2 as LossOptions, call2), { instanceOf: ctor }, `${backend} async`);
    t.is(async?.message, text, `${backend} async`);
  }
}

interface Case {
  name: string;
  make: () => [unknown, unknown, unknown?];
  ctor: Ctor;
  text: string;
}

const withLayer = (i: number, patch: Record<string, unknown>) => (): [unknown, unknown] => {
  const l = layers() as unknown as Record<string, unknown>[];
  l[i] = { ...l[i], ...patch };
  return [l, OK];
};
const withOptions = (patch: Record<string, unknown>) => (): [unknown, unknown] => [layers(), { ...OK, ...patch }];

const CASES: Case[] = [
  {
    name: 'layers not an array',
    make: () => [{ data: 1 }, OK],
    ctor: TypeError,
    text: 'Expected non-empty array of attention layers { data, heads, resolution, place } for layers but received an object of type object',
  },
  {
    name: 'layers empty',
    make: () => [[], OK],
    ctor: RangeError,
    text: 'Expected non-empty array of attention layers { data, heads, resolution, place } for layers but received an array of length 0 of type object; pass every cross-attention layer of one image',
  },
  {
    name: 'layer not an object',
    make: () => [[...layers(), 7], OK],
    ctor: TypeError,
    text: 'Expected object { data, heads, resolution, place } for layers[3] but received 7 of type number',
  },
  {
    name: 'data not Float32Array',
    make: withLayer(1, { data: new Float64Array(640) }),
    ctor: TypeError,
    text: 'Expected Float32Array for layers[1].data but received Float64Array of length 640 of type object; attention probabilities are float32 [heads, resolution², textLength]; convert with Float32Array.from(...)',
  },
  {
    name: 'heads a string',
    make: withLayer(0, { heads: '2' }),
    ctor: TypeError,
    text: 'Expected integer between 1 and 65536 for layers[0].heads but received "2" of type string',
  },
  {
    name: 'heads 0',
    make: withLayer(0, { heads: 0 }),
    ctor: RangeError,
    text: 'Expected integer between 1 and 65536 for layers[0].heads but received 0 of type number',
  },
  {
    name: 'resolution fractional',
    make: withLayer(2, { resolution: 4.5 }),
    ctor: RangeError,
    text: 'Expected integer between 1 and 4096 for layers[2].resolution but received 4.5 of type number',
  },
  {
    name: 'place misspelt',
    make: withLayer(1, { place: 'Up' }),
    ctor: RangeError,
    text: "Expected one of 'down', 'mid', 'up' for layers[1].place but received \"Up\" of type string; did you mean 'up'?",
  },
  {
    name: 'name not a string',
    make: withLayer(1, { name: 3 }),
    ctor: TypeError,
    text: 'Expected string or undefined for layers[1].name but received 3 of type number',
  },
  {
    name: 'length not a multiple of heads·r² (wrong resolution)',
    make: withLayer(1, { resolution: 6 }),
    ctor: RangeError,
    text: 'Expected length a multiple of heads·resolution² = 1·6² = 36 for layers[1].data but received Float32Array of length 640 of type object; data is [heads, resolution², textLength] row-major; check heads and resolution (maps must be square)',
  },
  {
    name: 'layers disagree on T',
    make: withLayer(2, { data: new Float32Array(2 * 16 * 11) }),
    ctor: RangeError,
    text: 'Expected text length 10 (as in layers[0]) for layers[2].data but received 11 of type number; length 352 / (2·4²); every layer must come from the same text encoding',
  },
  {
    name: 'T below 3',
    make: () => [[{ data: new Float32Array(32), heads: 1, resolution: 4, place: 'down' }], OK],
    ctor: RangeError,
    text: 'Expected text length (data.length / (heads·resolution²)) between 3 and 65536 for layers[0].data but received 2 of type number; length 32 / 16; the token slice keeps positions 1..T-2, so T must be at least 3',
  },
  {
    name: 'NaN in data',
    make: () => {
      const l = layers();
      l[2].data[2 * 16 * 10 - 1 - 3] = NaN;
      return [l, OK];
    },
    ctor: RangeError,
    text: 'Expected finite attention probabilities for layers[2].data but received NaN of type number; first bad value at index 316 (head 1, pixel 15, token 6)',
  },
  {
    name: 'Infinity in data',
    make: () => {
      const l = layers();
      l[0].data[1] = -Infinity;
      return [l, OK];
    },
    ctor: RangeError,
    text: 'Expected finite attention probabilities for layers[0].data but received -Infinity of type number; first bad value at index 1 (head 0, pixel 0, token 1)',
  },
  {
    name: 'NaN in an attribute layer at a subsampled pixel (tv_bind)',
    make: () => {
      const l = layers();
      l[1].data[23] = NaN;
      return [l, { ...OK, mode: 'tv_bind', attributeIndices: [1, 4] }];
    },
    ctor: RangeError,
    text: 'Expected finite attention probabilities for layers[1].data but received NaN of type number; first bad value at index 23 (head 0, pixel 2, token 3)',
  },
  {
    name: 'options not an object',
    make: () => [layers(), 'tv'],
    ctor: TypeError,
    text: 'Expected object { tokenIndices, mode?, ... } for options but received "tv" of type string',
  },
  {
    name: 'unknown option, close misspelling',
    make: withOptions({ tokenIndex: [2] }),
    ctor: TypeError,
    text: 'Unknown option "tokenIndex" in loss options; did you mean "tokenIndices"?',
  },
  {
    name: 'unknown option, case slip',
    make: withOptions({ tvvertical: 'neighbor' }),
    ctor: TypeError,
    text: 'Unknown option "tvvertical" in loss options; did you mean "tvVertical"?',
  },
  {
    name: 'unknown option, nothing close',
    make: withOptions({ guidanceScale: 7.5 }),
    ctor: TypeError,
    text: 'Unknown option "guidanceScale" in loss options; known options: mode, tokenIndices, attributeIndices, stepIndex, attentionResolution, attributeResolutions, temperature, tokenSlice, eotIndex, smoothing, smoothingSigma, tvVertical, maxVariant, bindingRhoLowTv, bindingRhoHighTv, bindingTvSwitch, bindingEpsilon, bindingCoefficients, tvMaxWeights',
  },
  {
    name: 'bad mode',
    make: withOptions({ mode: 'tvbind' }),
    ctor: RangeError,
    text: "Expected one of 'max', 'tv', 'tv_bind', 'tv_max' for mode but received \"tvbind\" of type string; did you mean 'tv_bind'?",
  },
  {
    name: 'mode not a string',
    make: withOptions({ mode: 2 }),
    ctor: TypeError,
    text: "Expected one of 'max', 'tv', 'tv_bind', 'tv_max' for mode but received 2 of type number",
  },
  {
    name: 'tokenIndices missing',
    make: () => [layers(), { attentionResolution: 4 }],
    ctor: TypeError,
    text: 'Expected non-empty array of token indices for tokenIndices but received undefined of type undefined; e.g. [2, 5] for "a cat and a dog" (SOT = 0)',
  },
  {
    name: 'tokenIndices empty',
    make: withOptions({ tokenIndices: [] }),
    ctor: RangeError,
    text: 'Expected non-empty array of token indices for tokenIndices but received an array of length 0 of type object; e.g. [2, 5] for "a cat and a dog" (SOT = 0)',
  },
  {
    name: 'token index past the slice',
    make: withOptions({ tokenIndices: [2, 5, 9] }),
    ctor: RangeError,
    text: 'Expected integer between 1 and 8 for tokenIndices[2] but received 9 of type number; token indices count from SOT = 0 (slice 1:-1 keeps 1..8)',
  },
  {
    name: 'token index SOT',
    make: withOptions({ tokenIndices: [0] }),
    ctor: RangeError,
    text: 'Expected integer between 1 and 8 for tokenIndices[0] but received 0 of type number; token indices count from SOT = 0 (slice 1:-1 keeps 1..8)',
  },
  {
    name: 'token index a string',
    make: withOptions({ tokenIndices: [2, '5'] }),
    ctor: TypeError,
    text: 'Expected integer between 1 and 8 for tokenIndices[1] but received "5" of type string; token indices count from SOT = 0 (slice 1:-1 keeps 1..8)',
  },
  {
    name: 'token index duplicated',
    make: withOptions({ tokenIndices: [2, 5, 2] }),
    ctor: RangeError,
    text: 'Expected distinct token indices for tokenIndices[2] but received 2 of type number; already given as tokenIndices[0]',
  },
  {
    name: 'token index past EOT with until-eot',
    make: withOptions({ tokenSlice: 'until-eot', eotIndex: 5, tokenIndices: [2, 5] }),
    ctor: RangeError,
    text: 'Expected integer between 1 and 4 for tokenIndices[1] but received 5 of type number; token indices count from SOT = 0 (slice 1:5 keeps 1..4)',
  },
  {
    name: 'until-eot without eotIndex',
    make: withOptions({ tokenSlice: 'until-eot' }),
    ctor: TypeError,
    text: "Expected integer between 2 and 9 for eotIndex but received undefined of type undefined; tokenSlice 'until-eot' needs the EOT position (SOT = 0)",
  },
  {
    name: 'eotIndex out of range',
    make: withOptions({ tokenSlice: 'until-eot', eotIndex: 10 }),
    ctor: RangeError,
    text: 'Expected integer between 2 and 9 for eotIndex but received 10 of type number; the EOT position in the 10-long text encoding (SOT = 0)',
  },
  {
    name: 'attributeIndices misaligned',
    make: withOptions({ mode: 'tv_bind', attributeIndices: [1] }),
    ctor: RangeError,
    text: 'Expected array of length 2 (aligned with tokenIndices) for attributeIndices but received an array of length 1 of type object; use null (or 0) for an object without attribute',
  },
  {
    name: 'attributeIndices not an array',
    make: withOptions({ attributeIndices: 1 }),
    ctor: TypeError,
    text: 'Expected array of length 2 (aligned with tokenIndices) for attributeIndices but received 1 of type number',
  },
  {
    name: 'attribute index past the slice',
    make: withOptions({ mode: 'tv_bind', attributeIndices: [1, 9] }),
    ctor: RangeError,
    text: 'Expected null, a value <= 0 (no attribute) or an integer between 1 and 8 for attributeIndices[1] but received 9 of type number; token indices count from SOT = 0 (slice 1:-1 keeps 1..8)',
  },
  {
    name: 'attribute index equals its object',
    make: withOptions({ mode: 'tv_bind', attributeIndices: [2, null] }),
    ctor: RangeError,
    text: 'Expected an attribute token other than its object tokenIndices[0] = 2 for attributeIndices[0] but received 2 of type number',
  },
  {
    name: 'attentionResolution without layers',
    make: withOptions({ attentionResolution: 16 }),
    ctor: RangeError,
    text: 'Expected a resolution present in layers (4, 8) for attentionResolution but received 16 of type number; no layer has this resolution; pass the resolution of the object-map layers (16 for SD 1.x at 512²)',
  },
  {
    name: 'attentionResolution 1',
    make: withOptions({ attentionResolution: 1 }),
    ctor: RangeError,
    text: 'Expected integer between 2 and 4096 for attentionResolution but received 1 of type number; the object maps need at least 2×2 pixels (reflect padding, TV differences)',
  },
  {
    name: 'attribute resolution without layers (tv_bind with attributes)',
    make: withOptions({ mode: 'tv_bind', attributeIndices: [1, 4], attributeResolutions: [8, 32] }),
    ctor: RangeError,
    text: "Expected a resolution present in layers (4, 8) for attributeResolutions[1] but received 32 of type number; 'tv_bind' with attributeIndices averages every listed resolution; list only resolutions you pass layers for",
  },
  {
    name: 'attribute resolutions repeated',
    make: withOptions({ attributeResolutions: [8, 8] }),
    ctor: RangeError,
    text: 'Expected distinct resolutions for attributeResolutions[1] but received 8 of type number; listed twice',
  },
  {
    name: 'temperature 0',
    make: withOptions({ temperature: 0 }),
    ctor: RangeError,
    text: 'Expected finite number > 0 and <= 1000000 for temperature but received 0 of type number',
  },
  {
    name: 'temperature NaN',
    make: withOptions({ temperature: NaN }),
    ctor: RangeError,
    text: 'Expected finite number > 0 and <= 1000000 for temperature but received NaN of type number',
  },
  {
    name: 'smoothing not boolean',
    make: withOptions({ smoothing: 'yes' }),
    ctor: TypeError,
    text: 'Expected boolean for smoothing but received "yes" of type string',
  },
  {
    name: 'smoothingSigma negative',
    make: withOptions({ smoothingSigma: -0.5 }),
    ctor: RangeError,
    text: 'Expected finite number > 0 for smoothingSigma but received -0.5 of type number',
  },
  {
    name: 'tvVertical misspelt',
    make: withOptions({ tvVertical: 'neighbour' }),
    ctor: RangeError,
    text: "Expected one of 'official', 'neighbor' for tvVertical but received \"neighbour\" of type string; did you mean 'neighbor'?",
  },
  {
    name: 'bindingRhoLowTv above 1',
    make: withOptions({ bindingRhoLowTv: 3 }),
    ctor: RangeError,
    text: 'Expected finite number between 0 and 1 for bindingRhoLowTv but received 3 of type number',
  },
  {
    name: 'bindingEpsilon 0',
    make: withOptions({ bindingEpsilon: 0 }),
    ctor: RangeError,
    text: 'Expected finite number > 0 for bindingEpsilon but received 0 of type number',
  },
  {
    name: 'bindingCoefficients not starting at 0',
    make: withOptions({ bindingCoefficients: [[1, 1]] }),
    ctor: RangeError,
    text: 'Expected integer between 0 and 0 for bindingCoefficients[0][0] but received 1 of type number; the schedule must say which coefficient applies from step 0',
  },
  {
    name: 'bindingCoefficients not ascending',
    make: withOptions({
      bindingCoefficients: [
        [0, 1],
        [10, 5],
        [10, 7],
      ],
    }),
    ctor: RangeError,
    text: 'Expected integer between 11 and 2147483647 for bindingCoefficients[2][0] but received 10 of type number; steps must be strictly ascending',
  },
  {
    name: 'bindingCoefficients entry not a pair',
    make: withOptions({ bindingCoefficients: [[0, 1], 5] }),
    ctor: TypeError,
    text: 'Expected [fromStepIndex, coefficient] pair for bindingCoefficients[1] but received 5 of type number',
  },
  {
    name: 'tvMaxWeights wrong length',
    make: withOptions({ tvMaxWeights: [1] }),
    ctor: TypeError,
    text: 'Expected [wTv, wMax] pair of finite numbers for tvMaxWeights but received an array of length 1 of type object',
  },
  {
    name: 'stepIndex negative',
    make: withOptions({ stepIndex: -1 }),
    ctor: RangeError,
    text: 'Expected integer between 0 and 2147483647 for stepIndex but received -1 of type number',
  },
  {
    name: 'call options: unknown key',
    make: () => [layers(), OK, { gradsOut: [] }],
    ctor: TypeError,
    text: 'Unknown option "gradsOut" in call options; did you mean "gradOut"?',
  },
  {
    name: 'call options: gradOut wrong count',
    make: () => [layers(), OK, { gradOut: [new Float32Array(320)] }],
    ctor: RangeError,
    text: 'Expected array of 3 Float32Array (one per layer) for gradOut but received an array of length 1 of type object',
  },
  {
    name: 'call options: gradOut wrong length',
    make: () => [layers(), OK, { gradOut: [new Float32Array(320), new Float32Array(64), new Float32Array(320)] }],
    ctor: RangeError,
    text: 'Expected Float32Array of length 640 (as layers[1].data) for gradOut[1] but received Float32Array of length 64 of type object',
  },
  {
    name: 'call options: gradOut aliases an input',
    make: () => {
      const l = layers();
      return [l, OK, { gradOut: [new Float32Array(320), new Float32Array(640), l[0].data] }];
    },
    ctor: RangeError,
    text: 'Expected a buffer that does not overlap any layer data for gradOut[2] but received Float32Array of length 320 of type object; it overlaps layers[0].data',
  },
  {
    name: 'call options: gradOut with computeGrad false',
    make: () => [layers(), OK, { computeGrad: false, gradOut: [] }],
    ctor: TypeError,
    text: 'gradOut was given but computeGrad is false; drop one of them',
  },
];

for (const c of CASES) {
  test(`rejects: ${c.name}`, async (t) => {
    await expectError(t, c.make, c.ctor, c.text);
  });
}

test('NaN/Inf where the loss never reads is accepted (SOT, dropped position, unsampled or unused layers)', (t) => {
  for (const backend of BACKENDS) {
    const l = layers();
    l[0].data[0] = NaN; // token 0 = SOT
    l[2].data[9] = Infinity; // token T-1, dropped by the 1:-1 slice
    l[1].data[13] = NaN; // 8² layer, pixel 1 is not subsampled to 4²
    const bind = attentionLoss(l, { ...OK, mode: 'tv_bind', attributeIndices: [1, 4] }, { backend });
    t.true(Number.isFinite(bind.loss), backend);
    l[1].data[23] = NaN; // subsampled, but tv mode never reads the 8² layer
    t.true(Number.isFinite(attentionLoss(l, OK, { backend }).loss), backend);
  }
});

test('rejects an unknown backend name (before choosing a backend)', (t) => {
  const e = t.throws(() => attentionLoss(layers(), OK, { backend: 'gpu' as LossBackend }), { instanceOf: RangeError });
  t.is(e?.message, "Expected one of 'native', 'js', 'cuda' for backend but received \"gpu\" of type string");
});

test("backend 'cuda' without CUDA gives a clear Error", (t) => {
  const cudaReady = binding?.features.cuda === true && (binding.cudaDevices?.().count ?? 0) > 0;
  if (cudaReady) {
    t.notThrows(() => attentionLoss(layers(), OK, { backend: 'cuda' }));
    return;
  }
  const e = t.throws(() => attentionLoss(layers(), OK, { backend: 'cuda' }));
  t.is(e?.constructor, Error);
  const tail = binding ? "Use backend 'native' \\(CPU\\) or 'js'" : "Use backend 'js'";
  t.regex(e?.message ?? '', new RegExp(`^The 'cuda' loss backend is not available: [\\s\\S]+\\. ${tail}, or omit backend to pick the best available\\.$`));
});

test('misspelling suggestions', (t) => {
  const known = ['tokenIndices', 'attributeIndices', 'temperature', 'smoothingSigma'];
  t.is(suggestName('tokenindices', known), 'tokenIndices');
  t.is(suggestName('temprature', known), 'temperature');
  t.is(suggestName('attributeIndex', known), 'attributeIndices');
  t.is(suggestName('sigma', known), undefined);
});

test('valid input passes on every backend', (t) => {
  for (const backend of BACKENDS) t.notThrows(() => attentionLoss(layers(), OK, { backend }), backend);
});

// ---------------------------------------------------------------------------------------------------------
// C++ validation, reached through the raw binding with bad normalized options (TS checks bypassed).

const rawTest = binding ? test : test.skip;

function rawCall(patch: Partial<NormalizedLossOptions>, layerPatch?: (l: NativeLayer[]) => void, grads?: Float32Array[] | null): () => unknown {
  return () => {
    const l = layers();
    const o = { ...normalizeLossOptions(l, OK), ...patch };
    const native: NativeLayer[] = l.map(({ data, heads, resolution, place }) => ({ data, heads, resolution, place }));
    layerPatch?.(native);
    return binding!.attentionLoss(native, o, grads === undefined ? null : grads, null, null);
  };
}

const RAW_CASES: Array<{ name: string; fn: () => unknown; ctor: Ctor; field: string }> = [
  { name: 'token index past the slice', fn: rawCall({ tokenIndices: [2, 9] }), ctor: RangeError, field: 'tokenIndices[1]' },
  { name: 'duplicated token index', fn: rawCall({ tokenIndices: [2, 2] }), ctor: RangeError, field: 'tokenIndices[1]' },
  { name: 'empty token list', fn: rawCall({ tokenIndices: [], attributeIndices: [] }), ctor: RangeError, field: 'tokenIndices' },
  { name: 'misaligned attributes', fn: rawCall({ attributeIndices: [1, 3, 4] }), ctor: RangeError, field: 'attributeIndices' },
  { name: 'attentionResolution with no layers', fn: rawCall({ attentionResolution: 16 }), ctor: RangeError, field: 'attentionResolution' },
  { name: 'bindingEpsilon 0', fn: rawCall({ bindingEpsilon: 0 }), ctor: RangeError, field: 'bindingEpsilon' },
  { name: 'temperature NaN', fn: rawCall({ temperature: NaN }), ctor: RangeError, field: 'temperature' },
  { name: 'eotIndex out of range', fn: rawCall({ tokenSlice: 'until-eot', eotIndex: 12 }), ctor: RangeError, field: 'eotIndex' },
  { name: 'textLength disagrees with the data', fn: rawCall({ textLength: 9 }), ctor: RangeError, field: 'layers[0].data' },
  {
    name: 'heads 0',
    fn: rawCall({}, (l) => {
      l[1].heads = 0;
    }),
    ctor: RangeError,
    field: 'layers[1].heads',
  },
  {
    name: 'grads of the wrong length',
    fn: rawCall({}, undefined, [new Float32Array(320), new Float32Array(1), new Float32Array(320)]),
    ctor: RangeError,
    field: 'grads[1]',
  },
];

for (const c of RAW_CASES) {
  rawTest(`C++ rejects: ${c.name}`, (t) => {
    const e = t.throws(c.fn, { instanceOf: c.ctor });
    t.true(e?.message.startsWith(`${c.field}`), `message should start with ${c.field}: ${e?.message}`);
  });
}
