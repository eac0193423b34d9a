/**
 * JS backend forward vs the independent spec-style oracle (reference.ts), every case in cases.ts plus an
 * SD-shaped case; and the constants the spec prints. Tolerance: atol 1e-12 + rtol 1e-10 (both float64,
 * only summation order differs).
 */
import test from 'ava';
import { gaussianWeights, jsAttentionLoss, tvForward } from '../../lib/loss/js-backend';
import { normalizeLossOptions } from '../../lib/loss/validate';
import { makeLayers, sdLayerSpecs } from '../helpers/attention';
import { assertAllClose, assertClose } from '../helpers/assert-close';
import { LOSS_CASES, type LossCase } from './cases';
import { referenceForward } from './reference';

const TOL = { atol: 1e-12, rtol: 1e-10 };

const SD_CASE: LossCase = {
  name: 'SD 1.x tv_bind, T = 77',
  seed: 31,
  T: 77,
  specs: sdLayerSpecs(2),
  options: { mode: 'tv_bind', tokenIndices: [3, 7], attributeIndices: [2, 6] },
};

for (const c of [...LOSS_CASES, SD_CASE]) {
  test(`forward matches the spec oracle: ${c.name}`, (t) => {
    const layers = makeLayers(c.seed, c.specs, c.T);
    const o = normalizeLossOptions(layers, c.options);
    const n = o.attentionResolution ** 2;
    const maps = new Float32Array(o.tokenIndices.length * n);
    const got = jsAttentionLoss(layers, o, null, maps, null);
    const ref = referenceForward(layers, o);
    assertClose(t, got.loss, ref.loss, TOL, 'loss');
    assertClose(t, got.indicator, ref.indicator, TOL, 'indicator');
    ref.tokens.forEach((r, s) => {
      const g = got.tokens[s];
      assertClose(t, g.maxAttention, r.maxAttention, TOL, `tokens[${s}].maxAttention`);
      assertClose(t, g.tv, r.tv, TOL, `tokens[${s}].tv`);
      assertClose(t, g.jsd, r.jsd ?? NaN, TOL, `tokens[${s}].jsd`);
      assertClose(t, g.value, r.value, TOL, `tokens[${s}].value`);
    });
    // Maps are float32 outputs: compare at float32 precision.
    assertAllClose(
      t,
      maps,
      ref.objectMaps.flatMap((m) => m.flat()),
      { atol: 1e-9, rtol: 1e-6 },
      'object maps',
    );
  });
}

test('Gaussian weights equal the spec constants for σ = 0.5 ((2σ)² exponent)', (t) => {
  const g = gaussianWeights(0.5);
  assertAllClose(t, g, [0.21194156, 0.57611688, 0.21194156], { atol: 5e-9, rtol: 0 }, '1-D');
  assertAllClose(t, [g[0] * g[0], g[0] * g[1], g[1] * g[1]], [0.04491922, 0.12210311, 0.33191066], { atol: 5e-9, rtol: 0 }, '2-D');
});

test('official TV compares rows with the LAST row and divides by r·(r-1)', (t) => {
  // 3×3 map with rows [0,0,0], [1,1,1], [5,5,5]: H = 0; official V = (|5-1|·3 + 0)/6 = 2; neighbour V = (1·3 + 4·3)/6 = 2.5.
  const a = Float64Array.from([0, 0, 0, 1, 1, 1, 5, 5, 5]);
  t.is(tvForward(a, 3, 'official'), 2);
  t.is(tvForward(a, 3, 'neighbor'), 2.5);
  // Columns [0, 2, 3] in every row: H = (2 + 1)·3/6 = 1.5, V = 0.
  t.is(tvForward(Float64Array.from([0, 2, 3, 0, 2, 3, 0, 2, 3]), 3, 'official'), 1.5);
});
