/**
 * Gradient graphs pruned to a layer set (the maps a loss reads): on every reference UNet variant and both VJP
 * designs, the pruned forward returns the same maps as the full graph, and the pruned VJP with a case's golden
 * cotangents gives the full VJP's gradient (same cotangents, zeros elsewhere) and the PyTorch golden dL/dsample.
 * The layer sets are the ones the golden cases' losses read: [2, 4, 5] (tv, max, tv_max) and every layer but the
 * mid block (tv_bind with attributes).
 */
import test from 'ava';
import type * as ort from 'onnxruntime-node';
import { createSessionFromModel } from '../../lib/onnx/model-io';
import { makeValueInfo, type ModelProto } from '../../lib/onnx/proto';
import { buildVjp, gradName, pruneToOutputs } from '../../lib/onnx/vjp';
import { runVjpGraphs } from '../../lib/onnx/vjp/runner';
import { relativeL2 } from '../helpers/assert-close';
import { cotangentsFor, goldenGradSample, lossCases, setUpVariant, variants, type LossCase } from './unet-golden';

type Feeds = Record<string, ort.Tensor>;
type Design = 'recompute' | 'residuals';

/** The distinct layer sets of the golden cases, each with its cases. */
function casesBySet(): Map<string, { layers: number[]; cases: LossCase[] }> {
  const sets = new Map<string, { layers: number[]; cases: LossCase[] }>();
  for (const c of lossCases()) {
    const layers = c.gradMaps.map((g) => g.layer).sort((a, b) => a - b);
    const entry = sets.get(layers.join()) ?? { layers, cases: [] };
    entry.cases.push(c);
    sets.set(layers.join(), entry);
  }
  return sets;
}

async function run(model: ModelProto, baseDir: string, feeds: Feeds): Promise<Record<string, ort.Tensor>> {
  const s = await createSessionFromModel(model, {}, baseDir);
  try {
    const inputs: Feeds = {};
    for (const n of s.inputNames) inputs[n] = feeds[n]!;
    return await s.run(inputs);
  } finally {
    await s.release();
  }
}

/** The variant with its maps as graph outputs (what prepare's instrumentation gives the VJP builder). */
async function instrumentedVariant(name: string) {
  const v = await setUpVariant(variants.find((x) => x.name === name)!);
  const graph = v.model.graph!;
  const exposed = v.maps.map((m) => makeValueInfo(m, v.shapes.get(m)!.elemType, v.shapes.get(m)!.dims));
  return { ...v, model: { ...v.model, graph: { ...graph, output: [...graph.output, ...exposed] } } as ModelProto };
}

/** The pruned graphs of `outputs`: a forward cut to them (and the residuals) and the backward / VJP graph. */
function prunedGraphs(model: ModelProto, outputs: string[], shapes: Map<string, { elemType: number; dims: number[] }>, design: Design) {
  const built = buildVjp(model, { wrt: 'sample', outputs, shapes, design });
  const forward = design === 'residuals' ? pruneToOutputs(built.forward!, [...outputs, ...built.stats.residualNames]) : pruneToOutputs(model, outputs);
  return { forward, backward: (built.backward ?? built.vjp)!, built };
}

for (const v of variants) {
  test.serial(`${v.name}: VJPs pruned to a loss's layers match the full VJP and the PyTorch golden (both designs)`, async (t) => {
    const { model, loaded, feeds, shapes, maps } = await instrumentedVariant(v.name);
    const fullForward = await run(model, loaded.dir, feeds);
    const full = await runVjpGraphs(buildVjp(model, { wrt: 'sample', outputs: maps, shapes, design: 'residuals' }), { baseDir: loaded.dir });
    try {
      for (const { layers, cases } of casesBySet().values()) {
        const outputs = layers.map((k) => maps[k]!);
        for (const design of ['recompute', 'residuals'] as const) {
          const { forward, backward } = prunedGraphs(model, outputs, shapes, design);
          const label = `layers [${layers.join(',')}] (${design})`;
          t.deepEqual(
            forward.graph!.output.slice(0, outputs.length).map((o) => o.name),
            outputs,
            label,
          );
          const fwd = await run(forward, loaded.dir, feeds);
          for (const o of outputs) t.true(relativeL2(fwd[o]!.data as Float32Array, fullForward[o]!.data as Float32Array) <= 1e-6, `${label}: map ${o}`);
          for (const c of cases) {
            const cot: Feeds = {};
            for (const [name, value] of Object.entries(cotangentsFor(c, maps, shapes, true))) cot[gradName(name)] = value;
            const grad = (await run(backward, loaded.dir, { ...feeds, ...fwd, ...cot })).grad_sample!.data as Float32Array;
            const wantFull = (await full.run(cotangentsFor(c, maps, shapes), feeds)).data as Float32Array;
            const vsFull = relativeL2(grad, wantFull);
            const vsGolden = relativeL2(grad, goldenGradSample(c));
            t.log(`${c.name} ${label}: rel L2 vs full VJP ${vsFull.toExponential(2)}, vs float64 golden ${vsGolden.toExponential(2)}`);
            t.true(vsFull <= 1e-5, `${c.name} ${label}: vs full ${vsFull}`);
            t.true(vsGolden <= 1e-4, `${c.name} ${label}: vs golden ${vsGolden}`);
          }
        }
      }
    } finally {
      await full.release();
    }
  });
}

test.serial('a forward pruned to the object layers stops after the last of them; weights stay shared by reference', async (t) => {
  const { model, shapes, maps } = await instrumentedVariant('opset17-int64-external-onnxdata');
  const objects = [2, 4, 5].map((k) => maps[k]!);
  const { forward, built } = prunedGraphs(model, objects, shapes, 'residuals');
  const graph = model.graph!;
  t.true(forward.graph!.node.length < graph.node.length * 0.8, `${forward.graph!.node.length} of ${graph.node.length} nodes`);
  // Nothing downstream of the last object map (up_blocks.2/3, the output convolution) is left.
  t.false(forward.graph!.node.some((n) => /up_blocks\.[23]|conv_out/.test(n.name ?? '')));
  t.deepEqual(
    forward.graph!.output.map((o) => o.name),
    [...objects, ...built.stats.residualNames],
  );
  const source = new Set(graph.initializer);
  t.true(
    forward.graph!.initializer.every((i) => source.has(i)),
    'initializers are the source TensorProtos',
  );
  t.true(
    forward.graph!.initializer.some((i) => i.data_location === 1),
    'external weights keep their location',
  );
  t.true(forward.graph!.initializer.length < graph.initializer.length);
  const all = buildVjp(model, { wrt: 'sample', outputs: maps, shapes, design: 'residuals' });
  t.true(built.stats.differentiatedNodes < all.stats.differentiatedNodes, 'fewer nodes differentiated');
  t.true(built.stats.residualBytes < all.stats.residualBytes, 'fewer residual bytes');
});

test('pruneToOutputs refuses names that are not graph outputs, and an empty list', async (t) => {
  const { model } = await setUpVariant(variants[0]!);
  t.throws(() => pruneToOutputs(model, ['nope']), { instanceOf: RangeError, message: /'nope' is not an output of the graph \(outputs: out_sample\)/ });
  t.throws(() => pruneToOutputs(model, []), { instanceOf: RangeError, message: /at least one output/ });
});
