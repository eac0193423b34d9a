/**
 * The VJP graph of the reference tiny SD UNets against PyTorch golden gradients.
 * Golden set (test/fixtures/golden/losses, tools/make_model_golden.py): for each loss case, dL/dprobs of the
 * cross-attention maps that reach L (float32, `gradMaps`) and dL/dsample through a float64 copy of the UNet
 * (`gradSample`). The VJP with those cotangents must reproduce dL/dsample: ‖VJP − golden‖₂ ≤ 1e-4 · ‖golden‖₂
 * (float32 graph vs float64 reference; PyTorch's own float32 UNet is at ~1e-6).
 */
import test from 'ava';
import { relativeL2 } from '../helpers/assert-close';
import * as ort from 'onnxruntime-node';
import { buildVjp } from '../../lib/onnx/vjp';
import { runVjpGraphs } from '../../lib/onnx/vjp/runner';
import { cotangentsFor, goldenGradSample, lossCases, setUpVariant as setUp, variants } from './unet-golden';

for (const v of variants) {
  test.serial(`${v.name}: VJP w.r.t. sample matches the PyTorch golden for every loss case (both designs)`, async (t) => {
    const { model, loaded, feeds, shapes, maps, layers } = await setUp(v);
    t.is(maps.length, layers.length, 'one attn2 Softmax per golden attention layer');
    maps.forEach((m, i) => {
      t.deepEqual(shapes.get(m)!.dims.slice(-2), layers[i].shape.slice(-2), `layer ${i} shape`);
    });
    const built = {
      recompute: buildVjp(model, { wrt: 'sample', outputs: maps, shapes, design: 'recompute' }),
      residuals: buildVjp(model, { wrt: 'sample', outputs: maps, shapes, design: 'residuals' }),
    };
    const runners = {
      recompute: await runVjpGraphs(built.recompute, { baseDir: loaded.dir }),
      residuals: await runVjpGraphs(built.residuals, { baseDir: loaded.dir }),
    };
    try {
      for (const c of lossCases()) {
        const golden = goldenGradSample(c);
        const cot = cotangentsFor(c, maps, shapes);
        for (const design of ['recompute', 'residuals'] as const) {
          const grad = await runners[design].run(cot, feeds);
          const err = relativeL2(grad.data as Float32Array, golden);
          t.log(`${c.name} (${design}): rel L2 vs float64 golden ${err.toExponential(2)}`);
          t.true(err <= 1e-4, `${c.name} (${design}): rel L2 ${err.toExponential(3)}`);
        }
      }
    } finally {
      await runners.recompute.release();
      await runners.residuals.release();
    }
  });
}

test.serial('only the path from sample to the maps is differentiated; weights are shared by reference', async (t) => {
  const v = variants.find((x) => x.name === 'opset14-int64-weightspb')!;
  const { model, shapes, maps } = await setUp(v);
  const all = buildVjp(model, { wrt: 'sample', outputs: maps, shapes });
  const first = buildVjp(model, { wrt: 'sample', outputs: [maps[0]], shapes });
  // Shape arithmetic and the timestep/text paths are constants of the backward.
  const constantOps = ['Shape', 'Gather', 'ConstantOfShape', 'Cast', 'Equal', 'Where', 'Expand', 'Cos', 'Sin', 'Unsqueeze', 'Concat', 'Gemm'];
  for (const op of constantOps.filter((o) => o !== 'Concat')) t.false(op in all.stats.opCounts, `${op} differentiated`);
  t.true(first.stats.differentiatedNodes < all.stats.differentiatedNodes / 4, 'the first map needs only the first blocks');
  t.true(first.stats.forwardNodes < all.stats.forwardNodes, 'recompute keeps only the forward nodes the backward reads');
  // Every source initializer in the VJP graph is the very same object (no weight copies), external refs intact.
  const src = new Set(model.graph!.initializer);
  const vjpInits = all.vjp!.graph!.initializer;
  const shared = vjpInits.filter((i) => src.has(i));
  t.true(shared.length > 100);
  t.true(shared.some((i) => i.data_location === 1 && (i.external_data ?? []).some((e) => e.key === 'location' && e.value === 'weights.pb')));
  const newInitBytes = vjpInits.filter((i) => !src.has(i)).reduce((s, i) => s + (i.raw_data?.byteLength ?? 0), 0);
  t.true(newInitBytes < 1 << 20, `new constants total ${newInitBytes} bytes`);
  // Nor a copy made at session creation: onnxruntime constant-folds any node that reads only initializers, so a
  // Transpose of a weight (ga = gy·Wᵀ) would become a private transposed copy; Gemm(transB) reads W in place.
  const weightNames = new Set(model.graph!.initializer.filter((i) => (i.dims ?? []).length >= 2).map((i) => i.name));
  const residuals = buildVjp(model, { wrt: 'sample', outputs: maps, shapes, design: 'residuals' });
  for (const g of [all.vjp!, residuals.backward!]) {
    const folded = g.graph!.node.filter((n) => n.op_type === 'Transpose' && n.input.some((i) => weightNames.has(i)));
    t.deepEqual(
      folded.map((n) => n.name),
      [],
      'no Transpose of a weight in the backward',
    );
    t.true(g.graph!.node.some((n) => n.op_type === 'Gemm' && weightNames.has(n.input[1]!)));
  }
  t.deepEqual(
    all.vjp!.graph!.output.map((o) => o.name),
    ['grad_sample'],
  );
  t.deepEqual(
    all.vjp!.graph!.input.map((o) => o.name),
    ['sample', 'timestep', 'encoder_hidden_states', ...maps.map((m) => `grad_${m}`)],
  );
});

test.serial('an output that does not depend on wrt gives an exactly zero gradient', async (t) => {
  const v = variants.find((x) => x.name === 'opset17-int64-static')!;
  const { model, shapes, feeds, loaded } = await setUp(v);
  // The text-side key projection of the first cross-attention depends only on encoder_hidden_states.
  const textOnly = model.graph!.node.find((n) => n.op_type === 'MatMul' && /attn2\/to_k/.test(n.name ?? ''))!.output[0];
  const built = buildVjp(model, { wrt: 'sample', outputs: [textOnly], shapes });
  t.deepEqual(built.stats.unreachableOutputs, [textOnly]);
  const runner = await runVjpGraphs(built, { baseDir: loaded.dir });
  try {
    const d = shapes.get(textOnly)!.dims;
    const g = await runner.run({ [textOnly]: new ort.Tensor('float32', new Float32Array(d.reduce((a, b) => a * b, 1)).fill(1), d) }, feeds);
    t.deepEqual(g.dims, [1, 4, 32, 32]);
    t.true((g.data as Float32Array).every((x) => x === 0));
  } finally {
    await runner.release();
  }
});

test.serial('residuals: nothing the backward can rebuild from other residuals by elementwise or layout ops is passed', async (t) => {
  const v = variants.find((x) => x.name === 'opset17-int64-static')!;
  const { model, shapes, maps } = await setUp(v);
  const built = buildVjp(model, { wrt: 'sample', outputs: maps, shapes, design: 'residuals' });
  const residuals = new Set(built.stats.residualNames);
  const producer = new Map(model.graph!.node.flatMap((n) => n.output.map((o) => [o, n] as const)));
  const inputs = new Set(model.graph!.input.map((i) => i.name));
  const constants = new Set(model.graph!.initializer.map((i) => i.name));
  const isFloat = (name: string) => [1, 11].includes(shapes.get(name)?.elemType ?? 0);
  // GEGLU's x/√2, 1 + erf(·) and products of the kept halves; a Reshape of a kept tensor.
  const rebuildable = [...residuals].filter((r) => {
    const p = producer.get(r);
    if (p === undefined || !['Div', 'Add', 'Mul', 'Erf', 'Reshape', 'Transpose'].includes(p.op_type!)) return false;
    return p.input.every((i) => !i || residuals.has(i) || inputs.has(i) || constants.has(i) || !isFloat(i));
  });
  t.deepEqual(rebuildable, []);
  // The backward rebuilds them: its Erf nodes are the forward's own, recomputed.
  t.true(built.backward!.graph!.node.some((n) => n.op_type === 'Erf'));
});
