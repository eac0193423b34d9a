/**
 * CUDA backend through the addon (attentionLossCuda / attentionLossCudaAsync) against the CPU core
 * (attentionLoss), on fresh random inputs for every mode. Runs only where the addon was built with CUDA and a
 * device is present; elsewhere one test logs "CUDA backend skipped: <reason>" and the rest are explicit skips
 * (decided at load time, as ava requires).
 *
 * Tolerances (both sides compute in double and round only the outputs to float):
 *  - scalars: |cuda - cpu| <= 1e-9 + 1e-5 |cpu|
 *  - gradients and maps, per element: |cuda - cpu| <= 1e-5 |cpu| + 1e-6 max|cpu| + 1e-13 (the 1e-13 floor covers
 *    saturated token softmaxes whose exact gradient is below double resolution: both sides return noise there).
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { tryLoadNativeBinding } from '../../lib/loss/binding';
import type { NativeBinding, NativeLayer, NativeLossResult, NormalizedLossOptions } from '../../lib/loss/native-types';
import type { LossMode } from '../../lib/loss/types';
import { LOSS_DEFAULTS } from '../../lib/loss/validate';

function skipReason(): { binding: NativeBinding | null; reason: string | null } {
  const { binding, error } = tryLoadNativeBinding();
  if (!binding) return { binding: null, reason: `the addon does not load (${(error?.message ?? '').split('\n')[0]})` };
  if (!binding.features.cuda || !binding.attentionLossCuda || !binding.cudaDevices)
    return { binding, reason: 'the addon was built without CUDA (DIVBIND_CUDA=OFF or nvcc not found at build time)' };
  const devices = binding.cudaDevices();
  if (devices.count === 0) return { binding, reason: `no CUDA device (${devices.error ?? 'unknown reason'})` };
  return { binding, reason: null };
}

const { binding, reason } = skipReason();
const cudaTest = reason === null ? test : test.skip;

test('CUDA backend availability', (t) => {
  if (reason !== null) {
    t.log(`CUDA backend skipped: ${reason}`);
    t.pass();
    return;
  }
  const devices = binding!.cudaDevices!();
  t.true(devices.count > 0);
  t.is(devices.error, null);
  t.log(`CUDA devices: ${devices.count}; addon build: ${binding!.features.build}`);
});

// ---- inputs

/** mulberry32: small deterministic PRNG; a fresh seed per test run from the clock. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/** Rows of softmaxed random logits, with spatial bumps on the "hot" tokens so maps have real peaks. */
function makeLayers(seed: number, specs: Array<[heads: number, res: number]>, T: number, hot: number[]): NativeLayer[] {
  const u = rng(seed);
  const normal = () => Math.sqrt(-2 * Math.log(u() + 1e-12)) * Math.cos(2 * Math.PI * u());
  const bumps = hot.map((k) => ({ k, cx: u(), cy: u(), amp: 2 + 6 * u() }));
  const logits = new Float64Array(T);
  return specs.map(([heads, res], i) => {
    const data = new Float32Array(heads * res * res * T);
    for (let h = 0; h < heads; h++)
      for (let p = 0; p < res * res; p++) {
        const y = (Math.floor(p / res) + 0.5) / res;
        const x = ((p % res) + 0.5) / res;
        for (let t = 0; t < T; t++) logits[t] = 1.5 * normal();
        logits[0] += 4;
        for (const b of bumps) logits[b.k] += b.amp * Math.exp(-((x - b.cx) ** 2 + (y - b.cy) ** 2) / 0.02);
        let max = -Infinity;
        for (let t = 0; t < T; t++) max = Math.max(max, logits[t]);
        let z = 0;
        for (let t = 0; t < T; t++) z += logits[t] = Math.exp(logits[t] - max);
        const row = (h * res * res + p) * T;
        for (let t = 0; t < T; t++) data[row + t] = logits[t] / z;
      }
    return { data, heads, resolution: res, place: (['down', 'mid', 'up'] as const)[i % 3] };
  });
}

/** Raw addon options: the §9 defaults of lib/loss/validate.ts with this case's mode, T and tokens. */
function options(mode: LossMode, T: number, tokenIndices: number[], attributeIndices?: number[]): NormalizedLossOptions {
  const d = LOSS_DEFAULTS;
  return {
    ...d,
    mode,
    textLength: T,
    tokenIndices,
    attributeIndices: attributeIndices ?? tokenIndices.map(() => -1),
    eotIndex: -1,
    attributeResolutions: [...d.attributeResolutions],
    bindingCoefficients: d.bindingCoefficients.map(([from, coef]) => [from, coef] as [number, number]),
    tvMaxWeights: [...d.tvMaxWeights],
  };
}

// ---- comparison

function closeScalar(t: ExecutionContext, got: number, want: number, label: string): void {
  const ok = Math.abs(got - want) <= 1e-9 + 1e-5 * Math.abs(want) || (Number.isNaN(got) && Number.isNaN(want));
  if (!ok) t.fail(`${label}: got ${got}, want ${want}`);
}

function closeArray(t: ExecutionContext, got: Float32Array, want: Float32Array, label: string): void {
  t.is(got.length, want.length, `${label}: length`);
  let amax = 0;
  for (let i = 0; i < want.length; i++) amax = Math.max(amax, Math.abs(want[i]));
  let bad = 0;
  let first = -1;
  for (let i = 0; i < want.length; i++) {
    const tol = 1e-5 * Math.abs(want[i]) + 1e-6 * amax + 1e-13;
    if (!(Math.abs(got[i] - want[i]) <= tol)) {
      // NaN (an unwritten, poisoned element) fails too
      bad++;
      if (first < 0) first = i;
    }
  }
  if (bad > 0) t.fail(`${label}: ${bad}/${want.length} elements off; first at ${first}: got ${got[first]}, want ${want[first]}`);
}

function compareResults(t: ExecutionContext, got: NativeLossResult, want: NativeLossResult, label: string): void {
  closeScalar(t, got.loss, want.loss, `${label} loss`);
  closeScalar(t, got.indicator, want.indicator, `${label} indicator`);
  t.is(got.tokens.length, want.tokens.length);
  want.tokens.forEach((w, s) => {
    const g = got.tokens[s];
    t.is(g.tokenIndex, w.tokenIndex);
    t.is(g.attributeIndex, w.attributeIndex);
    for (const key of ['maxAttention', 'tv', 'jsd', 'coefficient', 'value'] as const) closeScalar(t, g[key], w[key], `${label} tokens[${s}].${key}`);
  });
}

interface Outputs {
  result: NativeLossResult;
  grads: Float32Array[];
  objects: Float32Array;
  attributes: Float32Array;
}

function run(fn: 'cpu' | 'cuda', layers: NativeLayer[], o: NormalizedLossOptions): Outputs {
  const n = o.tokenIndices.length * o.attentionResolution ** 2;
  const grads = layers.map((l) => new Float32Array(l.data.length).fill(Number.NaN)); // poisoned
  const objects = new Float32Array(n).fill(Number.NaN);
  const attributes = new Float32Array(n).fill(Number.NaN);
  const call = fn === 'cpu' ? binding!.attentionLoss : binding!.attentionLossCuda!;
  const result = call(layers, o, grads, objects, attributes);
  return { result, grads, objects, attributes };
}

function compareCall(t: ExecutionContext, layers: NativeLayer[], o: NormalizedLossOptions): void {
  const want = run('cpu', layers, o);
  const got = run('cuda', layers, o);
  compareResults(t, got.result, want.result, o.mode);
  want.grads.forEach((g, i) => closeArray(t, got.grads[i], g, `${o.mode} grads[${i}]`));
  closeArray(t, got.objects, want.objects, `${o.mode} objectMaps`);
  closeArray(t, got.attributes, want.attributes, `${o.mode} attributeMaps`);
}

const seed = Date.now() >>> 0;
const T = 20;
const small: Array<[number, number]> = [
  [2, 16],
  [3, 64],
  [2, 16],
  [2, 32],
  [1, 8],
];

cudaTest('every mode matches the CPU core (fresh random inputs, poisoned outputs)', (t) => {
  t.log(`seed ${seed}`);
  const cases: NormalizedLossOptions[] = [
    options('max', T, [3, 7, 5]),
    { ...options('max', T, [3, 7]), maxVariant: 'attend-excite' },
    options('tv', T, [4, 9]),
    { ...options('tv', T, [4, 9, 2]), tvVertical: 'neighbor' },
    options('tv_max', T, [6, 2]),
    options('tv_bind', T, [3, 8], [2, 7]),
    { ...options('tv_bind', T, [3, 8, 11], [2, -1, 4]), stepIndex: 24 },
    { ...options('tv_bind', T, [3, 8], [2, 7]), smoothing: false, temperature: 30 },
    { ...options('tv', T, [3, 9]), tokenSlice: 'until-eot', eotIndex: 12, smoothingSigma: 1.3 },
  ];
  cases.forEach((o, i) => {
    const hot = [...o.tokenIndices, ...o.attributeIndices.filter((a) => a > 0)];
    compareCall(t, makeLayers(seed + i, small, T, hot), o);
  });
  t.pass();
});

cudaTest('SD 1.x 512 sizes, tv_bind with two attributes', (t) => {
  const specs: Array<[number, number]> = [
    [8, 64],
    [8, 64],
    [8, 32],
    [8, 32],
    [8, 16],
    [8, 16],
    [8, 8],
    [8, 16],
    [8, 16],
    [8, 16],
    [8, 32],
    [8, 32],
    [8, 32],
    [8, 64],
    [8, 64],
    [8, 64],
  ];
  compareCall(t, makeLayers(seed ^ 0x5eed, specs, 77, [2, 5, 1, 4]), options('tv_bind', 77, [2, 5], [1, 4]));
  t.pass();
});

cudaTest('async CUDA call gives the sync result', async (t) => {
  const o = options('tv_bind', T, [3, 8], [2, 7]);
  const layers = makeLayers(seed + 100, small, T, [3, 8, 2, 7]);
  const sync = run('cuda', layers, o);
  const grads = layers.map((l) => new Float32Array(l.data.length).fill(Number.NaN));
  const result = await binding!.attentionLossCudaAsync!(layers, o, grads, null, null);
  compareResults(t, result, sync.result, 'async');
  sync.grads.forEach((g, i) => t.deepEqual(grads[i], g, `async grads[${i}]`));
});

cudaTest("NaN in a value the loss reads: the CPU core's RangeError, word for word", (t) => {
  const o = options('tv', T, [3, 8]);
  const layers = makeLayers(seed + 200, small, T, [3, 8]);
  layers[2].data[(1 * 256 + 37) * T + 5] = Number.NaN;
  const cpu = t.throws(() => binding!.attentionLoss(layers, o, null, null, null), { instanceOf: RangeError });
  const cuda = t.throws(() => binding!.attentionLossCuda!(layers, o, null, null, null), { instanceOf: RangeError });
  t.regex(cpu!.message, /layers\[2\]\.data/);
  t.is(cuda!.message.replace('attentionLossCuda', 'attentionLoss'), cpu!.message);
});

cudaTest('gradState priors (gradOutReuse): kept buffers match the CPU core over a call sequence', async (t) => {
  const grads = small.map(([heads, res]) => new Float32Array(heads * res * res * T).fill(Number.NaN));
  let states: Uint8Array | null = null;
  const modes: LossMode[] = ['tv_bind', 'tv', 'max', 'tv_bind', 'tv_max', 'tv_bind'];
  for (let c = 0; c < modes.length; c++) {
    const o = modes[c] === 'tv_bind' ? options('tv_bind', T, [3, 8], c % 2 ? [-1, 7] : [2, 7]) : options(modes[c], T, [3, 8]);
    const layers = makeLayers(seed + 300 + c, small, T, [3, 8, 2, 7]);
    const want = run('cpu', layers, o);
    const result: NativeLossResult =
      c % 2 ? await binding!.attentionLossCudaAsync!(layers, o, grads, null, null, states) : binding!.attentionLossCuda!(layers, o, grads, null, null, states);
    compareResults(t, result, want.result, `call ${c}`);
    t.deepEqual(result.gradStates, want.result.gradStates, `call ${c} gradStates`);
    want.grads.forEach((g, i) => closeArray(t, grads[i], g, `call ${c} grads[${i}]`));
    states = Uint8Array.from(result.gradStates!);
  }
});
