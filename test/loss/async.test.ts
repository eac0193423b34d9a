/**
 * attentionLossAsync: same numbers as the sync call (bit for bit: same code on the same inputs), concurrent
 * calls stay independent, caller gradient buffers are written in place, bad input rejects the promise, and
 * the js path yields to the event loop during an SD-sized call.
 */
import test from 'ava';
import { attentionLoss, attentionLossAsync, availableBackends } from '../../lib/loss/index';
import type { LossBackend, LossResult } from '../../lib/loss/types';
import { makeLayers, makeUniformLayers, sdLayerSpecs } from '../helpers/attention';
import { LOSS_CASES } from './cases';

const BACKENDS = availableBackends().filter((b): b is LossBackend => b !== 'cuda');

function same(t: import('ava').ExecutionContext, a: LossResult, b: LossResult, label: string): void {
  t.is(a.loss, b.loss, `${label} loss`);
  t.is(a.indicator, b.indicator, `${label} indicator`);
  t.deepEqual(a.tokens, b.tokens, `${label} tokens`);
  // Manual loop: ava's deepEqual is far too slow on SD-sized typed arrays.
  t.is(a.grads?.length, b.grads?.length, `${label} grads count`);
  a.grads?.forEach((g, l) => {
    const h = b.grads![l];
    let firstDiff = g.length === h.length ? -1 : 0;
    for (let i = 0; i < g.length && firstDiff < 0; i++) if (!Object.is(g[i], h[i])) firstDiff = i;
    t.is(firstDiff, -1, `${label} grads[${l}] differ at ${firstDiff}`);
  });
  t.deepEqual(a.maps, b.maps, `${label} maps`);
}

for (const backend of BACKENDS) {
  test(`async equals sync for every case [${backend}]`, async (t) => {
    for (const c of LOSS_CASES) {
      const layers = makeLayers(c.seed, c.specs, c.T);
      const sync = attentionLoss(layers, c.options, { backend, returnMaps: true });
      const async = await attentionLossAsync(layers, c.options, { backend, returnMaps: true });
      same(t, async, sync, `${c.name}`);
    }
  });

  test(`concurrent async calls with caller buffers stay independent [${backend}]`, async (t) => {
    const inputs = LOSS_CASES.slice(0, 8).map((c) => ({ c, layers: makeLayers(c.seed + 100, c.specs, c.T) }));
    const gradOuts = inputs.map(({ layers }) => layers.map((l) => new Float32Array(l.data.length).fill(NaN)));
    const results = await Promise.all(inputs.map(({ c, layers }, i) => attentionLossAsync(layers, c.options, { backend, gradOut: gradOuts[i] })));
    results.forEach((r, i) => {
      const { c, layers } = inputs[i];
      r.grads!.forEach((g, l) => t.is(g, gradOuts[i][l], 'the caller buffer itself is returned'));
      same(t, r, attentionLoss(layers, c.options, { backend }), c.name);
    });
  });

  test(`bad input rejects the promise instead of throwing [${backend}]`, async (t) => {
    const layers = makeLayers(1, [{ resolution: 4, heads: 1 }], 10);
    let promise: Promise<LossResult> | undefined;
    t.notThrows(() => {
      promise = attentionLossAsync(layers, { attentionResolution: 4, tokenIndices: [9] }, { backend });
    });
    await t.throwsAsync(promise!, { instanceOf: RangeError, message: /^Expected integer between 1 and 8 for tokenIndices\[0\]/ });
  });
}

test('js async yields to the event loop during an SD-sized tv_bind call', async (t) => {
  const layers = makeUniformLayers(3, sdLayerSpecs(8), 77);
  const options = { mode: 'tv_bind' as const, tokenIndices: [3, 7], attributeIndices: [2, 6] };
  let ticks = 0;
  let running = true;
  const spin = () => {
    ticks++;
    if (running) setImmediate(spin);
  };
  setImmediate(spin);
  const start = process.hrtime.bigint();
  const result = await attentionLossAsync(layers, options, { backend: 'js' });
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  running = false;
  // ~16.5 M floats are scanned and ~16.5 M gradient floats written in slices of 1 M: at least 20 turns.
  t.true(ticks >= 20, `only ${ticks} event-loop turns ran during the call`);
  t.log(`SD-size js async call: ${ms.toFixed(1)} ms, ${ticks} event-loop turns`);
  same(t, result, attentionLoss(layers, options, { backend: 'js' }), 'SD');
});
