import test from 'ava';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { createSessionFromModel, loadModel } from '../../lib/onnx/model-io';
import { makeValueInfo, ortTypeOf, type ModelProto } from '../../lib/onnx/proto';
import { cloneModelShallow, copyGraphFields, inferStaticShapes, resolveInputDims, withFixedInputDims, type ShapeMap } from '../../lib/onnx/shapes';

const ROOT = path.resolve(__dirname, '../../..');
const VARIANTS = path.join(ROOT, 'test/fixtures/models/unet-variants');
const TINY_UNET = path.join(ROOT, 'test/fixtures/models/tiny-sd/unet/model.onnx');

function pseudo(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    out[i] = x / 1073741824 - 1;
  }
  return out;
}

/**
 * The oracle: every node output made a graph output (name-only ValueInfo) and the model run once; the dims and
 * element type ORT returns at runtime must equal the inferred ones, for every tensor.
 */
async function checkAgainstRuntime(
  t: import('ava').ExecutionContext,
  model: ModelProto,
  dims: Record<string, number[]>,
  shapes: ShapeMap,
  baseDir: string,
): Promise<number> {
  const g = copyGraphFields(model.graph!);
  const names = new Set<string>();
  for (const n of g.node) for (const o of n.output) if (o) names.add(o);
  for (const o of g.output) names.delete(o.name ?? '');
  g.output = [...g.output, ...[...names].map((n) => makeValueInfo(n))];
  const session = await createSessionFromModel(
    withFixedInputDims(cloneModelShallow(model, g), new Map(Object.entries(dims))),
    { graphOptimizationLevel: 'disabled' },
    baseDir,
  );
  const feeds: Record<string, ort.Tensor> = {};
  for (const [name, d] of Object.entries(dims)) {
    const s = shapes.get(name)!;
    const n = d.reduce((a, b) => a * b, 1);
    const type = ortTypeOf(s.elemType);
    feeds[name] =
      type === 'int64'
        ? new ort.Tensor(
            'int64',
            BigInt64Array.from({ length: n }, () => 801n),
            d,
          )
        : new ort.Tensor('float32', name === 'timestep' ? Float32Array.from({ length: n }, () => 801) : pseudo(n, 7), d);
  }
  const out = await session.run(feeds);
  let checked = 0;
  let mismatches = 0;
  for (const name of [...names, ...model.graph!.output.map((o) => o.name ?? '')]) {
    const got = out[name];
    const want = shapes.get(name);
    if (got === undefined || want === undefined || got.dims.join(',') !== want.dims.join(',') || got.type !== ortTypeOf(want.elemType)) {
      if (mismatches++ < 5)
        t.log(`${name}: runtime ${got?.type}[${got?.dims.join(', ')}] vs inferred ${want ? `${ortTypeOf(want.elemType)}[${want.dims.join(', ')}]` : 'none'}`);
      continue;
    }
    checked++;
  }
  t.is(mismatches, 0);
  await session.release();
  return checked;
}

const cases: Array<[string, string, Record<string, number[]>]> = [
  ['tiny-sd UNet (dynamic batch), batch 2', TINY_UNET, { sample: [2, 4, 32, 32], encoder_hidden_states: [2, 77, 32] }],
  [
    'opset 14 (decomposed LayerNorm), batch 1',
    path.join(VARIANTS, 'opset14-int64-dynbatch/model.onnx'),
    { sample: [1, 4, 32, 32], encoder_hidden_states: [1, 77, 32] },
  ],
  ['SDPA pattern, float timestep', path.join(VARIANTS, 'opset17-float32-sdpa/model.onnx'), { sample: [1, 4, 32, 32], encoder_hidden_states: [1, 77, 32] }],
  [
    'dynamic H/W at a non-square 32×48 latent',
    path.join(VARIANTS, 'opset17-int64-dynhw/model.onnx'),
    { sample: [1, 4, 32, 48], encoder_hidden_states: [1, 77, 32] },
  ],
  ['external data (weights.pb)', path.join(VARIANTS, 'opset14-int64-weightspb/model.onnx'), { sample: [1, 4, 32, 32], encoder_hidden_states: [1, 77, 32] }],
  ['static export, no dims given', path.join(VARIANTS, 'opset17-int64-static/model.onnx'), {}],
];

for (const [title, file, dims] of cases) {
  test(`every inferred shape equals the runtime shape: ${title}`, async (t) => {
    const loaded = loadModel(file);
    const shapes = await inferStaticShapes(loaded.model, dims);
    const nodeOutputs = loaded.model.graph!.node.flatMap((n) => n.output).filter((o) => o !== '');
    for (const o of nodeOutputs) t.true(shapes.has(o), `no shape for ${o}`);
    const fixed = Object.fromEntries(resolveInputDims(loaded.model.graph!, dims));
    const checked = await checkAgainstRuntime(t, loaded.model, fixed, shapes, loaded.dir);
    t.true(checked >= nodeOutputs.length, `${checked} checked of ${nodeOutputs.length} node outputs`);
  });
}

test('inferStaticShapes leaves the input model untouched', async (t) => {
  const loaded = loadModel(TINY_UNET);
  const before = loaded.model.graph!.node.length;
  const vi = loaded.model.graph!.value_info.length;
  await inferStaticShapes(loaded.model, { sample: [1, 4, 32, 32], encoder_hidden_states: [1, 77, 32] });
  t.is(loaded.model.graph!.node.length, before);
  t.is(loaded.model.graph!.value_info.length, vi);
  t.deepEqual(
    loaded.model.graph!.input.map((v) => v.type?.tensor_type?.shape?.dim.length),
    [4, 1, 3],
  );
});

test('input dims are validated with messages that name the input', async (t) => {
  const g = loadModel(TINY_UNET).model.graph!;
  t.throws(() => resolveInputDims(g, { sample: [1, 4, 32, 32] }), {
    instanceOf: RangeError,
    message: "Input 'encoder_hidden_states' has dynamic dims [batch, 77, 32]: give its dims in inputDims.encoder_hidden_states",
  });
  t.throws(() => resolveInputDims(g, { sample: [1, 4, 32], encoder_hidden_states: [1, 77, 32] }), {
    instanceOf: RangeError,
    message: 'inputDims.sample has rank 3 but the model declares rank 4 ([batch, 4, 32, 32])',
  });
  t.throws(() => resolveInputDims(g, { sample: [1, 4, 64, 64], encoder_hidden_states: [1, 77, 32] }), {
    instanceOf: RangeError,
    message: 'inputDims.sample[2] is 64 but the model fixes that dim to 32',
  });
  t.throws(() => resolveInputDims(g, { latents: [1], sample: [1, 4, 32, 32], encoder_hidden_states: [1, 77, 32] }), {
    instanceOf: RangeError,
    message: "inputDims names 'latents', which is not an input of the graph (inputs: sample, timestep, encoder_hidden_states)",
  });
  t.throws(() => resolveInputDims(g, { sample: [1, 4, 32.5, 32], encoder_hidden_states: [1, 77, 32] }), {
    instanceOf: TypeError,
  });
  t.deepEqual(resolveInputDims(g, { sample: [3, 4, 32, 32], encoder_hidden_states: [3, 77, 32] }).get('timestep'), [1]);
});
