/**
 * JS backend: analytic gradient vs float64 central finite differences of the JS forward itself, for every
 * case in cases.ts. Tolerances: directional derivatives and sampled coordinates within
 * 1e-4·|analytic| + 1e-7·max(1, ‖g‖∞) (FD step 1e-6 on probabilities; truncation + rounding error ≪ 1e-7).
 */
import test from 'ava';
import { jsAttentionLoss, mapMaxBackward } from '../../lib/loss/js-backend';
import { normalizeLossOptions } from '../../lib/loss/validate';
import type { NormalizedLossOptions } from '../../lib/loss/native-types';
import { makeLayers, toFloat64 } from '../helpers/attention';
import { Rng } from '../helpers/random';
import { LOSS_CASES } from './cases';

const H = 1e-6;
const RTOL = 1e-4;
const ATOL_SCALE = 1e-7;

function lossAt(layers: ReturnType<typeof toFloat64>, o: NormalizedLossOptions): number {
  return jsAttentionLoss(layers, o, null, null, null).loss;
}

for (const c of LOSS_CASES) {
  test(`finite differences: ${c.name}`, (t) => {
    const layers = makeLayers(c.seed, c.specs, c.T);
    const o = normalizeLossOptions(layers, c.options);
    const grads = layers.map((l) => new Float32Array(l.data.length));
    const result = jsAttentionLoss(layers, o, grads, null, null);
    t.true(Number.isFinite(result.loss), `loss ${result.loss}`);
    let gInf = 0;
    for (const g of grads) for (const v of g) gInf = Math.max(gInf, Math.abs(v));
    t.true(gInf > 0, 'gradient is not all zero');
    const atol = ATOL_SCALE * Math.max(1, gInf);
    const x = toFloat64(layers);
    t.is(lossAt(x, o), result.loss, 'float64 copy gives the same loss (float32 values are exact in float64)');
    const rng = new Rng(1000 + c.seed);

    // Directional derivatives along 3 random directions with entries in [-1, 1].
    for (let d = 0; d < 3; d++) {
      const u = x.map((l) => Float64Array.from(l.data, () => 2 * rng.next() - 1));
      let analytic = 0;
      for (let l = 0; l < x.length; l++) for (let i = 0; i < u[l].length; i++) analytic += grads[l][i] * u[l][i];
      const plus = x.map((l, li) => ({ ...l, data: l.data.map((v, i) => v + H * u[li][i]) }));
      const minus = x.map((l, li) => ({ ...l, data: l.data.map((v, i) => v - H * u[li][i]) }));
      const fd = (lossAt(plus, o) - lossAt(minus, o)) / (2 * H);
      t.true(Math.abs(fd - analytic) <= RTOL * Math.abs(analytic) + atol, `direction ${d}: finite difference ${fd} vs analytic ${analytic}`);
    }

    // Sampled coordinates: 40 random + the 10 largest |g| (zeros included: entries the loss never reads).
    const coords: Array<[number, number]> = [];
    for (let k = 0; k < 40; k++) {
      const l = rng.int(0, x.length - 1);
      coords.push([l, rng.int(0, x[l].data.length - 1)]);
    }
    const all: Array<[number, number, number]> = [];
    grads.forEach((g, l) => g.forEach((v, i) => all.push([Math.abs(v), l, i])));
    all.sort((a, b) => b[0] - a[0]);
    for (const [, l, i] of all.slice(0, 10)) coords.push([l, i]);
    let failures = 0;
    const lines: string[] = [];
    for (const [l, i] of coords) {
      const saved = x[l].data[i];
      x[l].data[i] = saved + H;
      const up = lossAt(x, o);
      x[l].data[i] = saved - H;
      const down = lossAt(x, o);
      x[l].data[i] = saved;
      const fd = (up - down) / (2 * H);
      const analytic = grads[l][i];
      if (!(Math.abs(fd - analytic) <= RTOL * Math.abs(analytic) + atol)) {
        failures++;
        if (lines.length < 10) lines.push(`layers[${l}][${i}]: fd ${fd} vs analytic ${analytic}`);
      }
    }
    t.is(failures, 0, lines.join('\n'));
  });
}

test('tied map maxima share the gradient evenly (torch full-reduction max)', (t) => {
  const a = Float64Array.from([0.1, 0.7, 0.3, 0.7, 0.7]);
  const da = new Float64Array(5);
  mapMaxBackward(da, a, 0.7, 3);
  t.deepEqual(Array.from(da), [0, 1, 0, 1, 1]);
});

test('tied token values: the FIRST maximal token takes the whole gradient (Python max)', (t) => {
  // Token 2 and token 5 get identical columns, so their values tie exactly.
  const layers = makeLayers(21, [{ resolution: 4, heads: 2 }], 10);
  const { data } = layers[0];
  for (let row = 0; row < data.length / 10; row++) data[row * 10 + 5] = data[row * 10 + 2];
  const run = (tokens: number[]) => {
    const o = normalizeLossOptions(layers, { attentionResolution: 4, tokenIndices: tokens });
    const g = [new Float32Array(data.length)];
    const r = jsAttentionLoss(layers, o, g, null, null);
    return { r, g: g[0] };
  };
  const both = run([5, 2]);
  t.is(both.r.tokens[0].value, both.r.tokens[1].value);
  t.deepEqual(both.g, run([5]).g);
  t.notDeepEqual(both.g, run([2]).g);
});

test('layers that do not feed the loss get zero gradients, and the SOT / dropped positions too', (t) => {
  const layers = makeLayers(
    22,
    [
      { resolution: 4, heads: 2 },
      { resolution: 8, heads: 1 },
      { resolution: 2, heads: 1 },
    ],
    10,
  );
  const o = normalizeLossOptions(layers, {
    attentionResolution: 4,
    mode: 'tv_bind',
    tokenIndices: [2, 5],
    attributeIndices: [3, 0],
    attributeResolutions: [8],
  });
  const grads = layers.map((l) => new Float32Array(l.data.length).fill(7)); // overwritten, not accumulated
  jsAttentionLoss(layers, o, grads, null, null);
  t.true(grads[2].every((v) => v === 0));
  for (const g of grads.slice(0, 2)) {
    for (let row = 0; row < g.length / 10; row++) {
      t.is(g[row * 10], 0);
      t.is(g[row * 10 + 9], 0);
    }
  }
});
