/**
 * Native addon (C++ core) vs the TypeScript twin on random inputs, every case in cases.ts plus SD-shaped
 * ones. Tolerance: 1e-6 relative on loss, indicator, diagnostics (atol 1e-12); gradients and maps
 * elementwise within 1e-6·|js| + 1e-10·‖js‖∞ (both round float64 work to float32 once).
 * Runs when the addon loads; with DIVBIND_REQUIRE_NATIVE=1 a missing addon is a failure, not a skip.
 */
import test from 'ava';
import { attentionLoss, attentionLossAsync, availableBackends } from '../../lib/loss/index';
import { tryLoadNativeBinding } from '../../lib/loss/binding';
import { jsAttentionLoss } from '../../lib/loss/js-backend';
import { normalizeLossOptions } from '../../lib/loss/validate';
import type { NativeLossFn, NativeLossResult } from '../../lib/loss/native-types';
import type { LossResult } from '../../lib/loss/types';
import { makeLayers, sdLayerSpecs, smallLayerSpecs } from '../helpers/attention';
import { assertAllClose, assertClose, compareArrays } from '../helpers/assert-close';
import { LOSS_CASES, type LossCase } from './cases';

const { binding, error } = tryLoadNativeBinding();
const REQUIRED = process.env.DIVBIND_REQUIRE_NATIVE === '1';
const SCALAR = { atol: 1e-12, rtol: 1e-6 };

test('native addon availability', (t) => {
  if (REQUIRED) t.truthy(binding, `DIVBIND_REQUIRE_NATIVE=1 but the addon did not load: ${error?.message}`);
  t.is(availableBackends().includes('native'), binding !== null);
  t.true(availableBackends().includes('js'));
});

const nativeTest = binding ? test : test.skip;

const EXTRA: LossCase[] = [
  {
    name: 'SD 1.x tv_bind (2 heads), T = 77',
    seed: 41,
    T: 77,
    specs: sdLayerSpecs(2),
    options: { mode: 'tv_bind', stepIndex: 10, tokenIndices: [3, 7], attributeIndices: [2, 6] },
  },
  { name: 'SD 1.x max A&E (heads = 1)', seed: 42, T: 77, specs: sdLayerSpecs(1), options: { mode: 'max', maxVariant: 'attend-excite', tokenIndices: [2, 5] } },
  {
    name: 'small model tv_bind at 16 from 32',
    seed: 43,
    T: 77,
    specs: smallLayerSpecs(),
    options: { mode: 'tv_bind', attributeResolutions: [32], tokenIndices: [2, 5, 9], attributeIndices: [1, 0, 8] },
  },
];

function gradTol(ref: Float32Array): { atol: number; rtol: number } {
  let inf = 0;
  for (const v of ref) inf = Math.max(inf, Math.abs(v));
  return { atol: 1e-10 * inf, rtol: 1e-6 };
}

function compareResults(t: import('ava').ExecutionContext, got: NativeLossResult | LossResult, want: NativeLossResult | LossResult): void {
  assertClose(t, got.loss, want.loss, SCALAR, 'loss');
  assertClose(t, got.indicator, want.indicator, SCALAR, 'indicator');
  t.is(got.tokens.length, want.tokens.length);
  want.tokens.forEach((w, s) => {
    const g = got.tokens[s];
    t.is(g.tokenIndex, w.tokenIndex, `tokens[${s}].tokenIndex`);
    t.is(g.attributeIndex, w.attributeIndex, `tokens[${s}].attributeIndex`);
    for (const key of ['maxAttention', 'tv', 'coefficient', 'value'] as const) assertClose(t, g[key], w[key], SCALAR, `tokens[${s}].${key}`);
    assertClose(t, g.jsd ?? NaN, w.jsd ?? NaN, SCALAR, `tokens[${s}].jsd`);
  });
}

for (const c of [...LOSS_CASES, ...EXTRA]) {
  nativeTest(`raw binding matches the TS twin: ${c.name}`, (t) => {
    const layers = makeLayers(c.seed, c.specs, c.T);
    const o = normalizeLossOptions(layers, c.options);
    const n = o.attentionResolution ** 2;
    const k = o.tokenIndices.length;
    const run = (fn: NativeLossFn) => {
      const grads = layers.map((l) => new Float32Array(l.data.length).fill(NaN)); // must be overwritten
      const objectMaps = new Float32Array(k * n);
      const attributeMaps = new Float32Array(k * n);
      const result = fn(layers, o, grads, objectMaps, attributeMaps);
      return { result, grads, objectMaps, attributeMaps };
    };
    const js = run(jsAttentionLoss);
    const nat = run(binding!.attentionLoss);
    compareResults(t, nat.result, js.result);
    t.deepEqual(nat.result.gradStates, js.result.gradStates, 'gradStates: the same layers receive a gradient');
    js.grads.forEach((g, l) => {
      const report = compareArrays(nat.grads[l], g, gradTol(g), `grads[${l}]`);
      t.true(report.ok, report.text);
    });
    assertAllClose(t, nat.objectMaps, js.objectMaps, { atol: 1e-12, rtol: 1e-6 }, 'object maps');
    if (o.mode === 'tv_bind') assertAllClose(t, nat.attributeMaps, js.attributeMaps, { atol: 1e-12, rtol: 1e-6 }, 'attribute maps');
    // Forward only (no gradient buffers) gives the same values.
    compareResults(t, binding!.attentionLoss(layers, o, null, null, null), js.result);
  });
}

nativeTest('public API: native and js agree (sync, async, gradOut, returnMaps)', async (t) => {
  const c = EXTRA[0];
  const layers = makeLayers(c.seed, c.specs, c.T);
  const js = attentionLoss(layers, c.options, { backend: 'js', returnMaps: true });
  const gradOut = layers.map((l) => new Float32Array(l.data.length));
  const nat = attentionLoss(layers, c.options, { backend: 'native', returnMaps: true, gradOut });
  t.is(nat.grads![0], gradOut[0], 'gradOut buffers are returned, not copies');
  compareResults(t, nat, js);
  nat.grads!.forEach((g, l) => t.true(compareArrays(g, js.grads![l], gradTol(js.grads![l]), `grads[${l}]`).ok));
  assertAllClose(t, nat.maps!.objects, js.maps!.objects, { atol: 1e-12, rtol: 1e-6 }, 'maps.objects');
  const natAsync = await attentionLossAsync(layers, c.options, { backend: 'native' });
  compareResults(t, natAsync, js);
  natAsync.grads!.forEach((g, l) => t.true(compareArrays(g, js.grads![l], gradTol(js.grads![l]), `async grads[${l}]`).ok));
  t.deepEqual(attentionLoss(layers, c.options).tokens, nat.tokens, 'default backend is native when the addon loads');
});
