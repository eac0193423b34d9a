/**
 * gradOutReuse (issue 14 item 4): buffers kept between calls are written only where this or the previous
 * gradient can be non-zero. The oracle is the same call without the contract (a full write into fresh buffers):
 * every gradient float must be identical, bit for bit, over long random sequences of calls that switch mode,
 * tokens, attributes (the attribute layers gain and lose their gradient), the A&E hinge (no gradient at all),
 * the object resolution and the layer shape behind a buffer; on every backend, sync and async. The buffers start
 * as NaN, so a float the first call fails to write shows up at once.
 */
import test, { type ExecutionContext } from 'ava';
import { attentionLoss, attentionLossAsync, availableBackends } from '../../lib/loss/index';
import type { AttentionLayer, LossBackend, LossOptions } from '../../lib/loss/types';
import { makeLayers, type LayerSpec } from '../helpers/attention';
import { Rng } from '../helpers/random';

const BACKENDS = availableBackends().filter((b): b is LossBackend => b !== 'cuda');
const T = 9;
/**
 * Object maps at 4² or 2² (r0 switches between them), attribute sources at 8², 4² and 2². Layers 3 (4 heads at 4²)
 * and 4 (1 head at 8²) have the same length, so their buffers can trade places.
 */
const SPECS: LayerSpec[] = [
  { resolution: 8, heads: 2, place: 'down' },
  { resolution: 4, heads: 2, place: 'down' },
  { resolution: 2, heads: 3, place: 'mid' },
  { resolution: 4, heads: 4, place: 'up' },
  { resolution: 8, heads: 1, place: 'up' },
  { resolution: 4, heads: 2, place: 'up' },
];

/**
 * Layers whose token 2 holds almost all the probability: at temperature 100 its softmax column is exactly 1, so
 * without smoothing the A&E hinge 1 - m is 0 and L has no gradient at all.
 */
function saturated(layers: AttentionLayer[]): AttentionLayer[] {
  return layers.map((l) => {
    const data = new Float32Array(l.data.length);
    for (let row = 0; row < data.length / T; row++) for (let k = 0; k < T; k++) data[row * T + k] = k === 2 ? 0.99 : 0.01 / (T - 1);
    return { ...l, data };
  });
}

function randomOptions(rng: Rng): LossOptions {
  const r0 = rng.pick([4, 4, 4, 2]);
  const attributeResolutions = rng.pick([[8, 2], [8], [4, 8], [2]]).filter((r) => r !== r0 || rng.next() < 0.5);
  const attribute = () => (rng.next() < 0.6 ? rng.pick([1, 3, 6]) : null);
  const tokenIndices = rng.pick([[2, 5], [5, 2, 7], [2]]);
  return {
    mode: rng.pick(['max', 'tv', 'tv_bind', 'tv_bind', 'tv_max'] as const),
    maxVariant: rng.pick(['divbind', 'attend-excite'] as const),
    tokenIndices,
    attributeIndices: tokenIndices.map(attribute).map((a, i) => (a === tokenIndices[i] ? null : a)),
    attentionResolution: r0,
    attributeResolutions: attributeResolutions.length ? attributeResolutions : [8],
    stepIndex: rng.int(0, 25),
    smoothing: rng.next() < 0.8,
  };
}

function firstDifference(a: Float32Array, b: Float32Array): number {
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return i;
  return -1;
}

/** One random sequence: every reused-buffer result must equal the full-write result. */
async function sequence(t: ExecutionContext, backend: LossBackend, mode: 'sync' | 'async', seed: number, calls: number): Promise<void> {
  const rng = new Rng(seed);
  const kept = makeLayers(seed, SPECS, T).map((l) => new Float32Array(l.data.length).fill(NaN));
  for (let c = 0; c < calls; c++) {
    const options = randomOptions(rng);
    let layers = makeLayers(seed * 1000 + c, SPECS, T);
    if (rng.next() < 0.15) {
      layers = saturated(layers);
      Object.assign(options, { mode: 'max', maxVariant: 'attend-excite', tokenIndices: [2], attributeIndices: [null], smoothing: false });
    }
    // Now and then buffers trade places: 3 and 4 (same length, another shape: their records do not apply) and
    // 1 and 5 (same shape: their records do).
    const gradOut = rng.next() < 0.2 ? [kept[0], kept[5], kept[2], kept[4], kept[3], kept[1]] : kept;
    const full = attentionLoss(layers, options, { backend });
    const run =
      mode === 'sync'
        ? attentionLoss(layers, options, { backend, gradOut, gradOutReuse: true })
        : await attentionLossAsync(layers, options, { backend, gradOut, gradOutReuse: true });
    t.is(run.loss, full.loss);
    for (let l = 0; l < layers.length; l++) {
      const at = firstDifference(run.grads![l], full.grads![l]);
      if (at >= 0)
        t.fail(
          `${backend} ${mode} seed ${seed} call ${c} (${JSON.stringify(options)}): grads[${l}] differ at ${at}: ${run.grads![l][at]} vs ${full.grads![l][at]}`,
        );
    }
  }
}

for (const backend of BACKENDS) {
  for (const mode of ['sync', 'async'] as const) {
    test(`reused buffers give the full-write gradients, bit for bit, over random call sequences [${backend} ${mode}]`, async (t) => {
      for (let seed = 1; seed <= 6; seed++) await sequence(t, backend, mode, seed, 40);
      t.pass();
    });
  }

  test(`reuse skips what holds zeros: an unused layer and unsampled pixels are not rewritten [${backend}]`, (t) => {
    const layers = makeLayers(9, SPECS, T);
    const gradOut = layers.map((l) => new Float32Array(l.data.length));
    const options: LossOptions = { mode: 'tv', tokenIndices: [2, 5], attentionResolution: 4, attributeResolutions: [8] };
    attentionLoss(layers, options, { backend, gradOut, gradOutReuse: true });
    // Break the contract on purpose, where a sparse write must not look: layer 0 (8², no gradient in 'tv') and a
    // pixel of layer 4 (8²) that the 4² grid does not sample. A full write would reset both to 0.
    gradOut[0][123] = 7;
    gradOut[4][(1 * 8 + 1) * T + 3] = 7;
    attentionLoss(layers, options, { backend, gradOut, gradOutReuse: true });
    t.is(gradOut[0][123], 7, 'layer without gradient left alone');
    t.is(gradOut[4][(1 * 8 + 1) * T + 3], 7, 'unsampled pixel left alone');
    attentionLoss(layers, options, { backend, gradOut });
    t.is(gradOut[0][123], 0, 'without gradOutReuse every float is written');
  });

  test(`another view of the same memory shares the record; an overlapping one forces a full write [${backend}]`, (t) => {
    const layers = makeLayers(10, SPECS, T);
    const options: LossOptions = { mode: 'tv_bind', tokenIndices: [2, 5], attributeIndices: [1, 6], attentionResolution: 4, attributeResolutions: [8, 2] };
    const memory = new ArrayBuffer(layers.reduce((a, l) => a + l.data.byteLength, 0) + 64);
    const views = (offset: number) => {
      let at = offset;
      return layers.map((l) => {
        const v = new Float32Array(memory, at, l.data.length);
        at += l.data.byteLength;
        return v;
      });
    };
    const full = attentionLoss(layers, { ...options, mode: 'max' }, { backend });
    attentionLoss(layers, options, { backend, gradOut: views(0), gradOutReuse: true });
    // Same bytes, new view objects: the record holds (sampled rows), so the sparse write is still exact.
    const again = attentionLoss(layers, { ...options, mode: 'max' }, { backend, gradOut: views(0), gradOutReuse: true });
    for (let l = 0; l < layers.length; l++) t.is(firstDifference(again.grads![l], full.grads![l]), -1, `same view, layer ${l}`);
    // Shifted by one float: every view overlaps a record without matching it, so everything is written in full.
    new Float32Array(memory).fill(NaN);
    const shifted = attentionLoss(layers, { ...options, mode: 'max' }, { backend, gradOut: views(4), gradOutReuse: true });
    for (let l = 0; l < layers.length; l++) t.is(firstDifference(shifted.grads![l], full.grads![l]), -1, `shifted view, layer ${l}`);
  });

  test(`a buffer still being written by a pending async call is refused for reuse [${backend}]`, async (t) => {
    const layers = makeLayers(11, SPECS, T);
    const options: LossOptions = { tokenIndices: [2, 5], attentionResolution: 4, attributeResolutions: [8] };
    const gradOut = layers.map((l) => new Float32Array(l.data.length));
    const pending = attentionLossAsync(layers, options, { backend, gradOut, gradOutReuse: true });
    t.throws(() => attentionLoss(layers, options, { backend, gradOut, gradOutReuse: true }), {
      instanceOf: TypeError,
      message: 'gradOut[0] is still being written by a pending attentionLossAsync call; await it before passing the buffer again with gradOutReuse',
    });
    await pending;
    const after = attentionLoss(layers, options, { backend, gradOut, gradOutReuse: true });
    const fresh = attentionLoss(layers, options, { backend });
    for (let l = 0; l < layers.length; l++) t.is(firstDifference(after.grads![l], fresh.grads![l]), -1);
  });
}

test('gradOutReuse needs gradOut', (t) => {
  const layers = makeLayers(12, SPECS, T);
  t.throws(() => attentionLoss(layers, { tokenIndices: [2], attentionResolution: 4, attributeResolutions: [8] }, { gradOutReuse: true }), {
    instanceOf: TypeError,
    message: 'gradOutReuse is true but no gradOut was given; it applies to caller-owned gradient buffers that are kept between calls',
  });
  t.throws(() => attentionLoss(layers, { tokenIndices: [2], attentionResolution: 4, attributeResolutions: [8] }, { gradOutReuse: 1 as unknown as boolean }), {
    instanceOf: TypeError,
    message: /^Expected boolean for gradOutReuse but received 1/,
  });
});
