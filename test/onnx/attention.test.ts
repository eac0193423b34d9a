import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { assertUnfusedExport, findCrossAttention, instrumentUnet, type CrossAttentionLayer } from '../../lib/onnx/attention';
import { createSessionFromModel, loadModel } from '../../lib/onnx/model-io';
import { DataType, attr, makeNode, makeTensor, makeValueInfo, valueInfoDims, valueInfoElemType, type ModelProto, type NodeProto } from '../../lib/onnx/proto';
import { cloneModelShallow, copyGraphFields, inferStaticShapes } from '../../lib/onnx/shapes';
import { readNpy } from '../../lib/util/npy';

const ROOT = path.resolve(__dirname, '../../..');
const FIX = path.join(ROOT, 'test/fixtures');
const VARIANTS = path.join(FIX, 'models/unet-variants');
const GOLDEN = path.join(FIX, 'golden/unet');

/** The UNet exports: tiny-sd's own and every unet-variants/<name>/ (all compute the same function). */
interface Variant {
  name: string;
  file: string;
}
const variants: Variant[] = [
  { name: 'tiny-sd', file: path.join(FIX, 'models/tiny-sd/unet/model.onnx') },
  ...fs
    .readdirSync(VARIANTS, { withFileTypes: true })
    .filter((e) => e.isDirectory())
    .map((e) => ({ name: e.name, file: path.join(VARIANTS, e.name, 'model.onnx') })),
].filter((v) => fs.existsSync(v.file));
const golden = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'manifest.json'), 'utf8')) as {
  timestep: number;
  attention: {
    layers: Array<{ index: number; place: string; resolution: number; heads: number; shape: number[]; file: string }>;
  };
};
const BATCH1 = { sample: [1, 4, 32, 32], encoder_hidden_states: [1, 77, 32] };

/** Golden batch-1 inputs; the timestep's dtype and rank are read from the model, as the pipeline does. */
function goldenFeeds(model: ModelProto): Record<string, ort.Tensor> {
  const sample = readNpy(path.join(GOLDEN, 'sample.npy'));
  const ehs = readNpy(path.join(GOLDEN, 'encoder_hidden_states.npy'));
  const tvi = model.graph!.input.find((x) => x.name === 'timestep')!;
  const tdims = (valueInfoDims(tvi) ?? []).map(() => 1);
  const ts =
    valueInfoElemType(tvi) === DataType.INT64
      ? new ort.Tensor('int64', BigInt64Array.of(BigInt(golden.timestep)), tdims)
      : new ort.Tensor('float32', Float32Array.of(golden.timestep), tdims);
  return {
    sample: new ort.Tensor('float32', sample.data as Float32Array, sample.shape),
    timestep: ts,
    encoder_hidden_states: new ort.Tensor('float32', ehs.data as Float32Array, ehs.shape),
  };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Mean over heads of a (heads, HW, T) golden map → (HW, T). */
function headMean(data: Float32Array, heads: number): Float64Array {
  const n = data.length / heads;
  const out = new Float64Array(n);
  for (let h = 0; h < heads; h++) for (let i = 0; i < n; i++) out[i]! += data[h * n + i]! / heads;
  return out;
}

test('the fixture exports are all there', (t) => {
  t.true(variants.length >= 9, variants.map((v) => v.name).join(', '));
});

for (const v of variants) {
  test(`variant ${v.name}: ${golden.attention.layers.length} layers found; exposed maps equal the PyTorch golden maps (≤ 2e-5)`, async (t) => {
    const loaded = loadModel(v.file);
    const shapes = await inferStaticShapes(loaded.model, BATCH1);
    const layers = findCrossAttention(loaded.model, shapes);
    t.is(layers.length, golden.attention.layers.length);
    layers.forEach((L, i) => {
      const g = golden.attention.layers[i]!;
      t.is(L.index, i);
      t.is(L.heads, g.heads);
      t.is(L.resolution, g.resolution);
      t.is(L.hw, g.resolution * g.resolution);
      t.is(L.place, g.place as CrossAttentionLayer['place']);
      t.is(L.detectedBy, 'structure');
      t.is(L.textLength, 77);
    });
    t.is(layers[0]!.pattern, v.name.includes('sdpa') ? 'sdpa' : 'matmul-mul');
    t.is(layers[0]!.layout, v.name.includes('sdpa') ? 'B-H-N-T' : 'BH-N-T');

    for (const headAverage of [false, true]) {
      const inst = instrumentUnet(loaded.model, shapes, { layers, headAverage });
      t.deepEqual(
        inst.outputs,
        layers.map((L) => `attn_${L.index}`),
      );
      const session = await createSessionFromModel(inst.model, { graphOptimizationLevel: 'all' }, loaded.dir);
      const out = await session.run(goldenFeeds(loaded.model));
      for (const m of inst.layers) {
        const g = golden.attention.layers[m.index]!;
        const ref = readNpy(path.join(GOLDEN, g.file)).data as Float32Array;
        const got = out[m.output]!;
        t.deepEqual(got.dims, m.dims);
        const diff = headAverage ? maxAbsDiff(got.data as Float32Array, headMean(ref, g.heads)) : maxAbsDiff(got.data as Float32Array, ref); // (B=1)·heads·HW·T in both layouts is (heads, HW, T) order
        // Tolerance 2e-5: PyTorch vs ORT fp32 on these peaky maps (values up to 1.0) differ by up to 1.3e-5 even
        // with ORT optimisations disabled; a wrong layer or head order differs by O(0.1).
        t.true(diff <= 2e-5, `${v.name} ${m.output} headAverage=${headAverage}: max |diff| ${diff}`);
      }
      await session.release();
    }
  });
}

test('the raw output is exactly the Softmax tensor; the averaged one is its head mean (≤ 1e-7)', async (t) => {
  for (const dir of ['opset17-int64-static', 'opset17-float32-sdpa']) {
    const loaded = loadModel(path.join(VARIANTS, dir, 'model.onnx'));
    const v = loaded.model;
    const shapes = await inferStaticShapes(loaded.model, BATCH1);
    const layers = findCrossAttention(loaded.model, shapes);
    // Oracle: the untouched graph with the Softmax tensors merely declared as outputs.
    const g = copyGraphFields(loaded.model.graph!);
    g.output = [...g.output, ...layers.map((L) => makeValueInfo(L.softmaxOutput))];
    const opts = { graphOptimizationLevel: 'disabled' as const };
    const ref = await (await createSessionFromModel(cloneModelShallow(loaded.model, g), opts)).run(goldenFeeds(v));
    const raw = await (await createSessionFromModel(instrumentUnet(loaded.model, shapes, { layers, headAverage: false }).model, opts)).run(goldenFeeds(v));
    const avg = await (await createSessionFromModel(instrumentUnet(loaded.model, shapes, { layers, headAverage: true }).model, opts)).run(goldenFeeds(v));
    for (const L of layers) {
      const r = ref[L.softmaxOutput]!.data as Float32Array;
      t.is(maxAbsDiff(raw[`attn_${L.index}`]!.data as Float32Array, r), 0);
      t.true(maxAbsDiff(avg[`attn_${L.index}`]!.data as Float32Array, headMean(r, L.heads)) <= 1e-7);
    }
  }
});

test('detection does not depend on node names; places then come from order and resolution', async (t) => {
  const loaded = loadModel(path.join(ROOT, 'test/fixtures/models/tiny-sd/unet/model.onnx'));
  const shapes = await inferStaticShapes(loaded.model, BATCH1);
  const named = findCrossAttention(loaded.model, shapes);
  const g = copyGraphFields(loaded.model.graph!);
  g.node = g.node.map((n, i) => ({ ...(n as object), name: `n${i}` }) as NodeProto);
  const anonymous = findCrossAttention(cloneModelShallow(loaded.model, g), shapes);
  t.deepEqual(
    anonymous.map((l) => l.softmaxOutput),
    named.map((l) => l.softmaxOutput),
  );
  t.deepEqual(
    anonymous.map((l) => l.place),
    named.map((l) => l.place),
  );
  t.true(anonymous.every((l) => l.placeFrom === 'order' && l.scope === ''));
  t.true(named.every((l) => l.placeFrom === 'names' && /\/attn2$/.test(l.scope)));
});

test('non-square latent: layers store h and w, resolution null', async (t) => {
  const loaded = loadModel(path.join(VARIANTS, 'opset17-int64-dynhw/model.onnx'));
  const shapes = await inferStaticShapes(loaded.model, { sample: [1, 4, 32, 48], encoder_hidden_states: [1, 77, 32] });
  const layers = findCrossAttention(loaded.model, shapes);
  t.deepEqual(
    layers.map((l) => [l.h, l.w]),
    golden.attention.layers.map((g) => [g.resolution, g.resolution * 1.5]),
  );
  t.true(layers.every((l) => l.resolution === null && l.hw === l.h * l.w));
  t.deepEqual(
    layers.map((l) => l.place),
    golden.attention.layers.map((g) => g.place as CrossAttentionLayer['place']),
  );
});

// ---- small hand-built graphs: patterns not in the fixtures, and the errors

/**
 * sample [1,4,4,4] → tokens [1,16,4] → q; ehs [1,77,8] → k; MatMul(q, kᵀ) → Div(2) → Softmax (cross, 'matmul-div');
 * plus a self-attention MatMul(q, qᵀ) → Softmax over 16 positions that must be ignored.
 */
function tinyGraph(opset: number, extra: NodeProto[] = []): ModelProto {
  const f = (name: string, dims: number[], seed: number) =>
    makeTensor(
      name,
      DataType.FLOAT,
      dims,
      Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, (_, i) => Math.sin(seed + i)),
    );
  const nodes: NodeProto[] = [
    makeNode('Reshape', ['sample', 'tok_shape'], ['tok'], { name: '/blk/Reshape' }),
    makeNode('Transpose', ['tok'], ['tokT'], { name: '/blk/T0', attributes: [attr.ints('perm', [0, 2, 1])] }),
    makeNode('MatMul', ['tokT', 'Wq'], ['q'], { name: '/blk/to_q' }),
    makeNode('MatMul', ['ehs', 'Wk'], ['k'], { name: '/blk/to_k' }),
    makeNode('Transpose', ['k'], ['kT'], { name: '/blk/T1', attributes: [attr.ints('perm', [0, 2, 1])] }),
    makeNode('MatMul', ['q', 'kT'], ['scores'], { name: '/blk/MatMul' }),
    makeNode('Div', ['scores', 'two'], ['scaled'], { name: '/blk/Div' }),
    makeNode('Softmax', ['scaled'], ['probs'], { name: '/blk/Softmax', attributes: [attr.int('axis', -1)] }),
    makeNode('Sigmoid', ['q'], ['qn'], { name: '/blk/act' }),
    makeNode('Transpose', ['qn'], ['qnT'], { name: '/blk/T2', attributes: [attr.ints('perm', [0, 2, 1])] }),
    makeNode('MatMul', ['q', 'qnT'], ['self_scores'], { name: '/blk/MatMul_self' }),
    makeNode('Softmax', ['self_scores'], ['self_probs'], {
      name: '/blk/Softmax_self',
      attributes: [attr.int('axis', -1)],
    }),
    makeNode('MatMul', ['probs', 'v_dummy'], ['y'], { name: '/blk/out' }),
    ...extra,
  ];
  return {
    ir_version: 8,
    opset_import: [{ domain: '', version: opset }],
    graph: {
      name: 'tiny',
      node: nodes,
      initializer: [
        makeTensor('tok_shape', DataType.INT64, [3], BigInt64Array.of(1n, 4n, 16n)),
        f('Wq', [4, 4], 1),
        f('Wk', [8, 4], 2),
        f('v_dummy', [77, 4], 4),
        makeTensor('two', DataType.FLOAT, [], Float32Array.of(2)),
      ],
      input: [makeValueInfo('sample', DataType.FLOAT, [1, 4, 4, 4]), makeValueInfo('encoder_hidden_states', DataType.FLOAT, [1, 77, 8])],
      output: [makeValueInfo('y', DataType.FLOAT, [1, 16, 4]), makeValueInfo('self_probs', DataType.FLOAT, [1, 16, 16])],
      value_info: [],
    },
  };
}

function renameEhs(m: ModelProto): ModelProto {
  for (const n of m.graph!.node) n.input = n.input.map((i) => (i === 'ehs' ? 'encoder_hidden_states' : i));
  return m;
}

for (const opset of [14, 18]) {
  test(`hand-built MatMul → Div → Softmax graph at opset ${opset}: one layer; head-average via ReduceMean works`, async (t) => {
    const model = renameEhs(tinyGraph(opset));
    const shapes = await inferStaticShapes(model, {});
    const layers = findCrossAttention(model, shapes);
    t.is(layers.length, 1);
    t.like(layers[0], {
      softmaxOutput: 'probs',
      pattern: 'matmul-div',
      layout: 'BH-N-T',
      heads: 1,
      hw: 16,
      h: 4,
      w: 4,
      place: 'mid',
      placeFrom: 'order',
    }); // a lone layer is at the lowest resolution
    for (const headAverage of [false, true]) {
      const inst = instrumentUnet(model, shapes, { headAverage });
      const s = await createSessionFromModel(inst.model);
      const x = Float32Array.from({ length: 64 }, (_, i) => Math.cos(i));
      const e = Float32Array.from({ length: 77 * 8 }, (_, i) => Math.sin(i * 0.3));
      const out = await s.run({
        sample: new ort.Tensor('float32', x, [1, 4, 4, 4]),
        encoder_hidden_states: new ort.Tensor('float32', e, [1, 77, 8]),
      });
      t.deepEqual(out.attn_0!.dims, [1, 16, 77]); // heads = 1: same dims either way
      // heads = 1: the mean over one head is the map itself; rows sum to 1.
      const d = out.attn_0!.data as Float32Array;
      let s0 = 0;
      for (let k = 0; k < 77; k++) s0 += d[k]!;
      t.true(Math.abs(s0 - 1) < 1e-6);
    }
  });
}

test('refuses fused exports with a message that says which exports work', (t) => {
  const mha = makeNode('MultiHeadAttention', ['q', 'k', 'k'], ['o'], { name: 'mha', domain: 'com.microsoft' });
  t.throws(() => assertUnfusedExport(renameEhs(tinyGraph(17, [mha]))), {
    message:
      /^Unsupported UNet export: node 'mha' is the fused op com\.microsoft\.MultiHeadAttention, so the attention probabilities are not in the graph\. divbind-native works with plain PyTorch\/Optimum ONNX exports at opset 14-17, fp32 .*Olive\/ORT-transformers-optimised graphs hide the attention maps/,
  });
  const gn = makeNode('GroupNorm', ['q'], ['o'], { name: 'gn', domain: 'com.microsoft' });
  t.throws(() => assertUnfusedExport(renameEhs(tinyGraph(17, [gn]))), { message: /com\.microsoft\.GroupNorm/ });
  const att23 = makeNode('Attention', ['q', 'k', 'k'], ['o'], { name: 'att' });
  t.throws(() => assertUnfusedExport(renameEhs(tinyGraph(23, [att23]))), { message: /fused op Attention/ });
});

test('no cross-attention: keys not from the text input are rejected', async (t) => {
  const model = tinyGraph(17);
  // The key projection reads a second, unrelated rank-3 input instead of encoder_hidden_states.
  model.graph!.input.push(makeValueInfo('other', DataType.FLOAT, [1, 77, 8]));
  model.graph!.node = model.graph!.node.map((n) => (n.name === '/blk/to_k' ? { ...n, input: ['other', 'Wk'] } : n));
  const shapes = await inferStaticShapes(model, {});
  t.throws(() => findCrossAttention(model, shapes), {
    message:
      /^No cross-attention Softmax found in the UNet \(no Softmax over 77 text positions whose keys come from 'encoder_hidden_states'\)\. divbind-native works with/,
  });
});
