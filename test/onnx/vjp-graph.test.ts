/**
 * A small UNet-shaped graph (conv, GroupNorm as Reshape+InstanceNormalization, SiLU, LayerNorm, cross-attention
 * with the scale after the matmul, Resize ×2, skip Concat, GEGLU via Slice, strided conv) whose reshape targets
 * come from Shape → Gather → Unsqueeze → Concat chains, as torch exports write them. The VJP w.r.t. `x` of two
 * outputs (the attention map and the final conv) is checked against central finite differences through ORT.
 * float32 graph (Conv/Resize have no float64 CPU kernel), step 1e-2 on O(1) inputs:
 * ‖VJP − FD‖₂ ≤ 3e-3 · ‖FD‖₂, max |VJP − FD| ≤ 1e-2 · max(1, max|FD|).
 */
import test from 'ava';
import * as ort from 'onnxruntime-node';
import { type ModelProto, type NodeProto, type TensorProto, attr, makeNode, makeTensor, makeValueInfo } from '../../lib/onnx/proto';
import { gradCheck, rng } from '../../lib/onnx/vjp/gradcheck';
import { DataType } from '../../lib/onnx/vjp/ir';

function unetLike(): { model: ModelProto; feeds: Record<string, ort.Tensor> } {
  const r = rng(99);
  const nodes: NodeProto[] = [];
  const inits: TensorProto[] = [];
  const f32 = (name: string, dims: number[], fill?: number, scale = 0.5) => {
    const n = dims.reduce((a, b) => a * b, 1);
    inits.push(
      makeTensor(
        name,
        DataType.FLOAT,
        dims,
        Float32Array.from({ length: n }, () => fill ?? scale * (2 * r() - 1)),
      ),
    );
    return name;
  };
  const i64 = (name: string, values: number[], dims = [values.length]) => {
    inits.push(
      makeTensor(
        name,
        DataType.INT64,
        dims,
        BigInt64Array.from(values, (v) => BigInt(v)),
      ),
    );
    return name;
  };
  let k = 0;
  const op = (type: string, inputs: string[], attrs: ReturnType<typeof attr.int>[] = []) => {
    const out = `${type.toLowerCase()}_${k++}`;
    nodes.push(makeNode(type, inputs, [out], { name: `/blk/${type}_${k}`, attributes: attrs }));
    return out;
  };
  const c1 = op('Conv', ['x', f32('w1', [8, 4, 3, 3]), f32('b1', [8])], [attr.ints('pads', [1, 1, 1, 1])]);
  // GroupNorm(2 groups) as exported: Reshape → InstanceNormalization(ones, zeros) → Reshape(Shape) → affine
  const shp = op('Shape', [c1]);
  const grouped = op('Reshape', [c1, i64('g_shape', [1, 2, -1])]);
  const inorm = op('InstanceNormalization', [grouped, f32('in_s', [2], 1), f32('in_b', [2], 0)], [attr.float('epsilon', 1e-5)]);
  const gn = op('Add', [op('Mul', [op('Reshape', [inorm, shp]), f32('gamma', [8, 1, 1], undefined, 1)]), f32('beta', [8, 1, 1])]);
  const silu = op('Mul', [gn, op('Sigmoid', [gn])]);
  const tokens = op('Transpose', [op('Reshape', [silu, i64('tok_shape', [1, 8, 36])])], [attr.ints('perm', [0, 2, 1])]);
  const ln = op('LayerNormalization', [tokens, f32('ln_s', [8], undefined, 1), f32('ln_b', [8])], [attr.int('axis', -1)]);
  const q = op('MatMul', [ln, f32('wq', [8, 8])]);
  const kT = op('Transpose', [op('MatMul', ['ctx', f32('wk', [8, 8])])], [attr.ints('perm', [0, 2, 1])]);
  const v = op('MatMul', ['ctx', f32('wv', [8, 8])]);
  const probs = op('Softmax', [op('Mul', [op('MatMul', [q, kT]), f32('scale', [], 0.35)])], [attr.int('axis', -1)]);
  const attnOut = op('Add', [op('MatMul', [probs, v]), tokens]);
  // Back to [1, 8, 6, 6] with a target computed from Shape(silu): [d0, d1] ++ [6, 6]
  const s2 = op('Shape', [silu]);
  const d0 = op('Unsqueeze', [op('Gather', [s2, i64('i0', [0], [])]), i64('ax0', [0])]);
  const d1 = op('Unsqueeze', [op('Gather', [s2, i64('i1', [1], [])]), i64('ax0b', [0])]);
  const target = op('Concat', [d0, d1, i64('hw', [6, 6])], [attr.int('axis', 0)]);
  const back = op('Reshape', [op('Transpose', [attnOut], [attr.ints('perm', [0, 2, 1])]), target]);
  const nearest = [attr.string('mode', 'nearest'), attr.string('coordinate_transformation_mode', 'asymmetric'), attr.string('nearest_mode', 'floor')];
  inits.push(makeTensor('sc', DataType.FLOAT, [4], Float32Array.of(1, 1, 2, 2)));
  const up = op('Resize', [back, '', 'sc'], nearest);
  const xUp = op('Resize', ['x', '', 'sc'], nearest);
  const skip = op('Concat', [up, xUp], [attr.int('axis', 1)]); // [1, 12, 12, 12]
  const a = op('Slice', [skip, i64('s0', [0]), i64('e0', [6]), i64('ax1', [1])]);
  const b = op('Slice', [skip, i64('s1', [6]), i64('e1', [12]), i64('ax1b', [1])]);
  const gelu = op('Mul', [op('Mul', [b, op('Add', [op('Erf', [op('Div', [b, f32('sqrt2', [], Math.SQRT2)])]), f32('one', [], 1)])]), f32('half', [], 0.5)]);
  const out = op('Conv', [op('Mul', [a, gelu]), f32('w2', [2, 6, 3, 3])], [attr.ints('strides', [2, 2]), attr.ints('pads', [1, 1, 1, 1])]);
  const model: ModelProto = {
    ir_version: 8,
    opset_import: [{ domain: '', version: 17 }],
    graph: {
      name: 'unet_like',
      node: nodes,
      initializer: inits,
      value_info: [],
      input: [makeValueInfo('x', DataType.FLOAT, [1, 4, 6, 6]), makeValueInfo('ctx', DataType.FLOAT, [1, 5, 8])],
      output: [makeValueInfo(probs), makeValueInfo(out)],
    },
  };
  const rand = (n: number) => Float32Array.from({ length: n }, () => 2 * r() - 1);
  return {
    model,
    feeds: {
      x: new ort.Tensor('float32', rand(144), [1, 4, 6, 6]),
      ctx: new ort.Tensor('float32', rand(40), [1, 5, 8]),
    },
  };
}

for (const design of ['recompute', 'residuals'] as const) {
  test(`UNet-shaped graph: VJP w.r.t. x of the attention map and the output (${design})`, async (t) => {
    const { model, feeds } = unetLike();
    const outputs = model.graph!.output.map((o) => o.name!);
    const res = await gradCheck({ model, feeds, wrt: 'x', outputs, design, step: 1e-2 });
    t.log(`rel L2 ${res.relL2.toExponential(2)}, max abs err ${res.maxAbsErr.toExponential(2)}, max |FD| ${res.maxAbs.toFixed(3)}`);
    t.true(res.relL2 <= 3e-3);
    t.true(res.maxAbsErr <= 1e-2 * Math.max(1, res.maxAbs));
    // Shape/Gather/Unsqueeze/Concat-of-shapes and the text path (ctx → k, v) are not differentiated.
    for (const o of ['Shape', 'Gather', 'Unsqueeze']) t.false(o in res.stats.opCounts);
    t.is(res.stats.opCounts.MatMul, 3, 'q·kᵀ, probs·v and the q projection only');
    t.is(res.stats.opCounts.Concat, 1, 'only the skip concatenation');
  });
}
