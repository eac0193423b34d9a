/**
 * Per-op gradient rules of the VJP builder against central finite differences run through onnxruntime.
 * Each case is a one-op graph; each differentiable input is checked in turn as `wrt` (the other inputs are then
 * constants of the backward), with both designs.
 * Tolerances: float64 cases (step 1e-6): max |VJP − FD| ≤ 1e-6 · max(1, max|FD|).
 * float32 cases (ops without a float64 CPU kernel; step 1e-2 on O(1) inputs, FD truncation O(step²)):
 * ‖VJP − FD‖₂ ≤ 3e-3 · ‖FD‖₂ and max |VJP − FD| ≤ 1e-2 · max(1, max|FD|).
 */
import test from 'ava';
import * as ort from 'onnxruntime-node';
import { type ModelProto, type TensorProto, attr, makeNode, makeTensor, makeValueInfo } from '../../lib/onnx/proto';
import { buildVjp } from '../../lib/onnx/vjp';
import { gradCheck, rng, shapesByRunning } from '../../lib/onnx/vjp/gradcheck';
import { DataType } from '../../lib/onnx/vjp/ir';

type DT = 'float32' | 'float64';
interface In {
  name: string;
  dims: number[];
  /** 'input' = graph input fed at run time; 'const' = initializer. */
  kind?: 'input' | 'const';
  type?: 'int64' | 'bool' | DT;
  /** Explicit values; otherwise uniform in [lo, hi). */
  values?: number[];
  lo?: number;
  hi?: number;
}
interface Case {
  title: string;
  op: string;
  inputs: (In | '')[];
  attrs?: ReturnType<typeof attr.int>[];
  opset?: number;
  dtype?: DT;
  nOut?: number;
  /** Outputs given a cotangent (indices); default all. */
  use?: number[];
  wrt: string[];
}

function build(c: Case, seed: number): { model: ModelProto; feeds: Record<string, ort.Tensor>; outputs: string[] } {
  const r = rng(seed);
  const dtype = c.dtype ?? 'float64';
  const onnxType = (t: string) => ({ float32: DataType.FLOAT, float64: DataType.DOUBLE, int64: DataType.INT64, bool: DataType.BOOL })[t]!;
  const feeds: Record<string, ort.Tensor> = {};
  const inits: TensorProto[] = [];
  const graphInputs = [];
  const seen = new Set<string>();
  for (const inp of c.inputs) {
    if (inp === '' || seen.has(inp.name)) continue; // an input may feed several slots (x·x)
    seen.add(inp.name);
    const type = inp.type ?? dtype;
    const n = inp.dims.reduce((a, b) => a * b, 1);
    const lo = inp.lo ?? -1;
    const hi = inp.hi ?? 1;
    const values = inp.values ?? Array.from({ length: n }, () => lo + (hi - lo) * r());
    const data =
      type === 'float32'
        ? Float32Array.from(values)
        : type === 'float64'
          ? Float64Array.from(values)
          : type === 'int64'
            ? BigInt64Array.from(values, (v) => BigInt(v))
            : Uint8Array.from(values);
    if ((inp.kind ?? 'input') === 'input') {
      feeds[inp.name] = new ort.Tensor(type, data as Float32Array, inp.dims);
      graphInputs.push(makeValueInfo(inp.name, onnxType(type), inp.dims));
    } else {
      inits.push(makeTensor(inp.name, onnxType(type), inp.dims, data));
    }
  }
  const outputs = Array.from({ length: c.nOut ?? 1 }, (_, i) => `y${i}`);
  const node = makeNode(
    c.op,
    c.inputs.map((i) => (i === '' ? '' : i.name)),
    outputs,
    { name: `the_${c.op}`, attributes: c.attrs ?? [] },
  );
  const model: ModelProto = {
    ir_version: 8,
    opset_import: [{ domain: '', version: c.opset ?? 17 }],
    graph: {
      name: 'one_op',
      node: [node],
      initializer: inits,
      input: graphInputs,
      output: outputs.map((o) => makeValueInfo(o)),
      value_info: [],
    },
  };
  return { model, feeds, outputs: (c.use ?? outputs.map((_, i) => i)).map((i) => outputs[i]) };
}

const x = (dims: number[], extra: Partial<In> = {}): In => ({ name: 'x', dims, ...extra });
const b = (dims: number[], extra: Partial<In> = {}): In => ({ name: 'b', dims, ...extra });
const i64 = (name: string, values: number[], dims = [values.length]): In => ({
  name,
  dims,
  kind: 'const',
  type: 'int64',
  values,
});
const pos = { lo: 0.5, hi: 2 };

const CASES: Case[] = [
  { title: 'Add broadcasting both ways', op: 'Add', inputs: [x([3, 1, 5]), b([4, 5])], wrt: ['x', 'b'] },
  { title: 'Sub with a row vector', op: 'Sub', inputs: [x([2, 3]), b([3])], wrt: ['x', 'b'] },
  { title: 'Mul with a [1,3,1] factor', op: 'Mul', inputs: [x([2, 3, 4]), b([1, 3, 1])], wrt: ['x', 'b'] },
  { title: 'Mul of a tensor by itself', op: 'Mul', inputs: [x([3, 5]), x([3, 5])], wrt: ['x'] },
  { title: 'Div by a positive vector', op: 'Div', inputs: [x([3, 4]), b([4], pos)], wrt: ['x', 'b'] },
  { title: 'Div by a scalar', op: 'Div', inputs: [x([2, 3]), b([], pos)], wrt: ['x', 'b'] },
  {
    title: 'Pow with a constant exponent 3',
    op: 'Pow',
    inputs: [x([2, 5]), { name: 'p', dims: [], kind: 'const', values: [3] }],
    wrt: ['x'],
  },
  {
    title: 'Pow with a constant exponent 2',
    op: 'Pow',
    inputs: [x([7]), { name: 'p', dims: [], kind: 'const', values: [2] }],
    wrt: ['x'],
  },
  {
    title: 'Pow with an int64 exponent',
    op: 'Pow',
    inputs: [x([4, 3]), { name: 'p', dims: [], kind: 'const', type: 'int64', values: [3] }],
    wrt: ['x'],
  },
  { title: 'Pow with a tensor exponent', op: 'Pow', inputs: [x([2, 3], pos), b([3])], wrt: ['x', 'b'] },
  { title: 'Sqrt', op: 'Sqrt', inputs: [x([3, 4], pos)], wrt: ['x'] },
  { title: 'Neg', op: 'Neg', inputs: [x([5])], wrt: ['x'] },
  { title: 'Exp', op: 'Exp', inputs: [x([2, 3])], wrt: ['x'] },
  { title: 'Log', op: 'Log', inputs: [x([2, 3], pos)], wrt: ['x'] },
  { title: 'Erf', op: 'Erf', dtype: 'float32', inputs: [x([3, 5])], wrt: ['x'] },
  { title: 'Sigmoid', op: 'Sigmoid', inputs: [x([3, 5], { lo: -3, hi: 3 })], wrt: ['x'] },
  { title: 'Tanh', op: 'Tanh', inputs: [x([3, 5], { lo: -2, hi: 2 })], wrt: ['x'] },
  { title: 'Relu', op: 'Relu', inputs: [x([4, 5])], wrt: ['x'] },
  { title: 'LeakyRelu', op: 'LeakyRelu', inputs: [x([4, 5])], attrs: [attr.float('alpha', 0.2)], wrt: ['x'] },
  { title: 'Reciprocal', op: 'Reciprocal', inputs: [x([6], pos)], wrt: ['x'] },
  { title: 'Sin', op: 'Sin', inputs: [x([6])], wrt: ['x'] },
  { title: 'Identity', op: 'Identity', inputs: [x([2, 2])], wrt: ['x'] },
  { title: 'Softmax last axis', op: 'Softmax', inputs: [x([2, 3, 5], { lo: -2, hi: 2 })], wrt: ['x'] },
  {
    title: 'Softmax axis 1',
    op: 'Softmax',
    inputs: [x([2, 3, 5], { lo: -2, hi: 2 })],
    attrs: [attr.int('axis', 1)],
    wrt: ['x'],
  },
  {
    title: 'Softmax opset 11 (flattened trailing axes)',
    op: 'Softmax',
    opset: 11,
    inputs: [x([2, 3, 4], { lo: -2, hi: 2 })],
    attrs: [attr.int('axis', 1)],
    wrt: ['x'],
  },
  { title: 'LogSoftmax', op: 'LogSoftmax', inputs: [x([3, 4])], wrt: ['x'] },
  { title: 'MatMul batched @ 2-D', op: 'MatMul', inputs: [x([2, 3, 4]), b([4, 5])], wrt: ['x', 'b'] },
  { title: 'MatMul broadcast batch dims', op: 'MatMul', inputs: [x([2, 1, 3, 4]), b([3, 4, 2])], wrt: ['x', 'b'] },
  { title: 'MatMul 1-D @ batched', op: 'MatMul', inputs: [x([4]), b([2, 4, 3])], wrt: ['x', 'b'] },
  { title: 'MatMul batched @ 1-D', op: 'MatMul', inputs: [x([2, 3, 4]), b([4])], wrt: ['x', 'b'] },
  { title: 'MatMul 1-D @ 1-D', op: 'MatMul', inputs: [x([5]), b([5])], wrt: ['x', 'b'] },
  {
    title: 'Gemm alpha/beta with a row bias',
    op: 'Gemm',
    inputs: [x([3, 4]), b([4, 5]), { name: 'c', dims: [5] }],
    attrs: [attr.float('alpha', 0.7), attr.float('beta', 1.3)],
    wrt: ['x', 'b', 'c'],
  },
  {
    title: 'Gemm transA transB with a column bias',
    op: 'Gemm',
    inputs: [x([4, 3]), b([5, 4]), { name: 'c', dims: [3, 1] }],
    attrs: [attr.int('transA', 1), attr.int('transB', 1), attr.float('alpha', -1.5)],
    wrt: ['x', 'b', 'c'],
  },
  {
    title: 'Gemm transB without bias',
    op: 'Gemm',
    inputs: [x([2, 3]), b([4, 3])],
    attrs: [attr.int('transB', 1)],
    wrt: ['x', 'b'],
  },
  {
    title: 'Conv stride 2, pad 1, bias (odd sizes)',
    op: 'Conv',
    dtype: 'float32',
    inputs: [x([2, 3, 7, 6]), { name: 'w', dims: [4, 3, 3, 3] }, { name: 'bias', dims: [4] }],
    attrs: [attr.ints('pads', [1, 1, 1, 1]), attr.ints('strides', [2, 2]), attr.ints('kernel_shape', [3, 3])],
    wrt: ['x', 'w', 'bias'],
  },
  {
    title: 'Conv groups 3, dilation 2, asymmetric pads',
    op: 'Conv',
    dtype: 'float32',
    inputs: [x([1, 3, 8, 7]), { name: 'w', dims: [6, 1, 3, 2] }],
    attrs: [attr.int('group', 3), attr.ints('dilations', [2, 1]), attr.ints('pads', [2, 0, 1, 1])],
    wrt: ['x', 'w'],
  },
  {
    title: 'Conv 1-D SAME_UPPER stride 3',
    op: 'Conv',
    dtype: 'float32',
    inputs: [x([2, 2, 10]), { name: 'w', dims: [3, 2, 4] }, { name: 'bias', dims: [3] }],
    attrs: [attr.string('auto_pad', 'SAME_UPPER'), attr.ints('strides', [3])],
    wrt: ['x', 'w', 'bias'],
  },
  {
    title: 'Conv 1x1',
    op: 'Conv',
    dtype: 'float32',
    inputs: [x([1, 4, 3, 5]), { name: 'w', dims: [2, 4, 1, 1], kind: 'const' }],
    wrt: ['x'],
  },
  {
    title: 'InstanceNormalization',
    op: 'InstanceNormalization',
    dtype: 'float32',
    inputs: [x([2, 3, 5, 4]), { name: 's', dims: [3] }, { name: 'bias', dims: [3] }],
    attrs: [attr.float('epsilon', 1e-3)],
    wrt: ['x', 's', 'bias'],
  },
  {
    title: 'InstanceNormalization opset 14 (decomposed backward), scale of ones',
    op: 'InstanceNormalization',
    dtype: 'float32',
    opset: 14,
    inputs: [x([1, 2, 3, 5]), { name: 's', dims: [2], kind: 'const', values: [1, 1] }, { name: 'bias', dims: [2] }],
    wrt: ['x', 'bias'],
  },
  {
    title: 'LayerNormalization float64 (decomposed backward)',
    op: 'LayerNormalization',
    inputs: [x([2, 5]), { name: 's', dims: [5] }, { name: 'bias', dims: [5] }],
    wrt: ['x', 's', 'bias'],
  },
  {
    title: 'LayerNormalization last axis',
    op: 'LayerNormalization',
    dtype: 'float32',
    inputs: [x([2, 3, 6]), { name: 's', dims: [6] }, { name: 'bias', dims: [6] }],
    wrt: ['x', 's', 'bias'],
  },
  {
    title: 'LayerNormalization axis 1, no bias',
    op: 'LayerNormalization',
    dtype: 'float32',
    inputs: [x([2, 3, 4]), { name: 's', dims: [3, 4] }],
    attrs: [attr.int('axis', 1), attr.float('epsilon', 1e-2)],
    wrt: ['x', 's'],
  },
  {
    title: 'ReduceMean axes attribute (opset 17)',
    op: 'ReduceMean',
    inputs: [x([2, 3, 4])],
    attrs: [attr.ints('axes', [1]), attr.int('keepdims', 0)],
    wrt: ['x'],
  },
  {
    title: 'ReduceMean axes input (opset 18)',
    op: 'ReduceMean',
    opset: 18,
    inputs: [x([2, 3, 4]), i64('axes', [-1, 0])],
    wrt: ['x'],
  },
  {
    title: 'ReduceSum axes input (opset 13)',
    op: 'ReduceSum',
    opset: 13,
    inputs: [x([2, 3, 4]), i64('axes', [0, 2])],
    attrs: [attr.int('keepdims', 0)],
    wrt: ['x'],
  },
  {
    title: 'ReduceSum axes attribute (opset 11)',
    op: 'ReduceSum',
    opset: 11,
    inputs: [x([2, 3, 4])],
    attrs: [attr.ints('axes', [1])],
    wrt: ['x'],
  },
  { title: 'ReduceSum all axes', op: 'ReduceSum', inputs: [x([3, 4])], wrt: ['x'] },
  { title: 'Reshape with -1', op: 'Reshape', inputs: [x([2, 3, 4]), i64('shape', [4, -1])], wrt: ['x'] },
  { title: 'Flatten', op: 'Flatten', inputs: [x([2, 3, 4])], attrs: [attr.int('axis', 2)], wrt: ['x'] },
  { title: 'Transpose', op: 'Transpose', inputs: [x([2, 3, 4])], attrs: [attr.ints('perm', [2, 0, 1])], wrt: ['x'] },
  {
    title: 'Concat of three',
    op: 'Concat',
    inputs: [x([2, 1, 3]), b([2, 4, 3]), { name: 'c', dims: [2, 2, 3] }],
    attrs: [attr.int('axis', -2)],
    wrt: ['x', 'b', 'c'],
  },
  {
    title: 'Split with sizes input (opset 13)',
    op: 'Split',
    opset: 13,
    nOut: 2,
    inputs: [x([2, 5]), i64('split', [2, 3])],
    attrs: [attr.int('axis', 1)],
    wrt: ['x'],
  },
  {
    title: 'Split, one output used (opset 11 attribute)',
    op: 'Split',
    opset: 11,
    nOut: 3,
    use: [1],
    inputs: [x([6, 2])],
    attrs: [attr.ints('split', [1, 2, 3])],
    wrt: ['x'],
  },
  {
    title: 'Split with num_outputs (opset 18)',
    op: 'Split',
    opset: 18,
    nOut: 3,
    inputs: [x([7, 2])],
    attrs: [attr.int('num_outputs', 3)],
    wrt: ['x'],
  },
  {
    title: 'Sum of three with broadcasting',
    op: 'Sum',
    inputs: [x([2, 3]), b([3]), { name: 'c', dims: [2, 1] }],
    wrt: ['x', 'b', 'c'],
  },
  {
    title: 'Slice negative starts/ends, unit steps',
    op: 'Slice',
    inputs: [x([5, 6, 4]), i64('st', [-4, 1]), i64('en', [1000, -1]), i64('ax', [0, 2])],
    wrt: ['x'],
  },
  {
    title: 'Slice with steps 2 and -1',
    op: 'Slice',
    inputs: [x([5, 6, 4]), i64('st', [0, -1]), i64('en', [5, -1000]), i64('ax', [1, 2]), i64('sp', [2, -1])],
    wrt: ['x'],
  },
  {
    title: 'Slice with run-time starts',
    op: 'Slice',
    inputs: [x([4, 6]), { name: 'st', dims: [1], type: 'int64', values: [2] }, i64('en', [5]), i64('ax', [1])],
    wrt: ['x'],
  },
  {
    title: 'Gather repeated and negative indices',
    op: 'Gather',
    inputs: [x([3, 4, 2]), i64('idx', [0, 2, 3, -1], [2, 2])],
    attrs: [attr.int('axis', 1)],
    wrt: ['x'],
  },
  { title: 'Gather scalar index axis 0', op: 'Gather', inputs: [x([3, 4]), i64('idx', [1], [])], wrt: ['x'] },
  { title: 'Squeeze axes input', op: 'Squeeze', inputs: [x([2, 1, 3, 1]), i64('axes', [1, -1])], wrt: ['x'] },
  {
    title: 'Unsqueeze axes attribute (opset 11)',
    op: 'Unsqueeze',
    opset: 11,
    inputs: [x([2, 3])],
    attrs: [attr.ints('axes', [0, 3])],
    wrt: ['x'],
  },
  { title: 'Expand', op: 'Expand', inputs: [x([3, 1]), i64('shape', [2, 3, 4])], wrt: ['x'] },
  {
    title: 'Where with a constant condition',
    op: 'Where',
    inputs: [{ name: 'c', dims: [3, 1], kind: 'const', type: 'bool', values: [1, 0, 1] }, x([3, 4]), b([4])],
    wrt: ['x', 'b'],
  },
  {
    title: 'Cast float32 → float64',
    op: 'Cast',
    dtype: 'float32',
    inputs: [x([3, 2])],
    attrs: [attr.int('to', DataType.DOUBLE)],
    wrt: ['x'],
  },
  {
    title: 'Resize nearest ×2 (asymmetric, floor)',
    op: 'Resize',
    dtype: 'float32',
    inputs: [x([1, 2, 3, 4]), '', { name: 'sc', dims: [4], kind: 'const', type: 'float32', values: [1, 1, 2, 2] }],
    attrs: [attr.string('mode', 'nearest'), attr.string('coordinate_transformation_mode', 'asymmetric'), attr.string('nearest_mode', 'floor')],
    wrt: ['x'],
  },
  {
    title: 'Resize nearest ×3/×2 by sizes',
    op: 'Resize',
    dtype: 'float32',
    inputs: [x([1, 2, 3, 4]), '', '', i64('sz', [1, 2, 9, 8])],
    attrs: [attr.string('mode', 'nearest'), attr.string('coordinate_transformation_mode', 'asymmetric'), attr.string('nearest_mode', 'floor')],
    wrt: ['x'],
  },
];

for (const c of CASES) {
  for (const wrt of c.wrt) {
    for (const design of ['recompute', 'residuals'] as const) {
      test(`${c.title}: ∂/∂${wrt} (${design})`, async (t) => {
        const { model, feeds, outputs } = build(c, 17 + c.title.length);
        const dtype = c.dtype ?? 'float64';
        const res = await gradCheck({ model, feeds, wrt, outputs, design, step: dtype === 'float64' ? 1e-6 : 1e-2 });
        const scale = Math.max(1, res.maxAbs);
        if (dtype === 'float64') {
          t.true(res.maxAbsErr <= 1e-6 * scale, `max abs err ${res.maxAbsErr} (scale ${scale})`);
        } else {
          t.true(res.relL2 <= 3e-3, `rel L2 err ${res.relL2}`);
          t.true(res.maxAbsErr <= 1e-2 * scale, `max abs err ${res.maxAbsErr} (scale ${scale})`);
        }
        t.true(res.stats.differentiatedNodes === 1);
      });
    }
  }
}

test('an op without a rule on the path is an Error naming the op and the node', async (t) => {
  const { model, feeds, outputs } = build({ title: 'x', op: 'Atan', dtype: 'float32', inputs: [x([3])], wrt: ['x'] }, 1);
  const shapes = await shapesByRunning(model, feeds);
  t.throws(() => buildVjp(model, { wrt: 'x', outputs, shapes }), {
    message: /cannot differentiate Atan node 'the_Atan'.*no gradient rule for Atan/,
  });
});

test('Resize other than nearest/asymmetric/floor is refused with the reason', async (t) => {
  const c: Case = {
    title: 'r',
    op: 'Resize',
    dtype: 'float32',
    wrt: ['x'],
    inputs: [x([1, 1, 2, 2]), '', { name: 'sc', dims: [4], kind: 'const', type: 'float32', values: [1, 1, 2, 2] }],
    attrs: [attr.string('mode', 'linear')],
  };
  const { model, feeds, outputs } = build(c, 1);
  const shapes = await shapesByRunning(model, feeds);
  t.throws(() => buildVjp(model, { wrt: 'x', outputs, shapes }), {
    message: /Resize node 'the_Resize' is not supported.*found mode 'linear'/,
  });
});

test('an op type spelt like an Object.prototype member is an op without a rule, not a crash', (t) => {
  for (const op of ['constructor', 'toString', 'hasOwnProperty', '__proto__']) {
    const model: ModelProto = {
      ir_version: 8,
      opset_import: [{ domain: '', version: 17 }],
      graph: {
        name: 'g',
        node: [makeNode(op, ['x'], ['y'], { name: `the_${op}` })],
        initializer: [],
        value_info: [],
        input: [makeValueInfo('x', DataType.FLOAT, [3])],
        output: [makeValueInfo('y')],
      },
    };
    const shapes = new Map([
      ['x', { elemType: DataType.FLOAT, dims: [3] }],
      ['y', { elemType: DataType.FLOAT, dims: [3] }],
    ]);
    t.throws(() => buildVjp(model, { wrt: 'x', outputs: ['y'], shapes }), {
      instanceOf: Error,
      message: new RegExp(`cannot differentiate ${op} node 'the_${op}'.*no gradient rule for ${op}`),
    });
  }
});

test('float16 models are refused with a clear message', (t) => {
  const model: ModelProto = {
    ir_version: 8,
    opset_import: [{ domain: '', version: 17 }],
    graph: {
      name: 'g',
      node: [makeNode('Neg', ['x'], ['y'])],
      initializer: [],
      value_info: [],
      input: [makeValueInfo('x', DataType.FLOAT16, [2])],
      output: [makeValueInfo('y')],
    },
  };
  const shapes = new Map([
    ['x', { elemType: DataType.FLOAT16, dims: [2] }],
    ['y', { elemType: DataType.FLOAT16, dims: [2] }],
  ]);
  t.throws(() => buildVjp(model, { wrt: 'x', outputs: ['y'], shapes }), {
    instanceOf: RangeError,
    message: /'x' is float16; only float32/,
  });
});

test('bad options are TypeError/RangeError naming the field', async (t) => {
  const { model, feeds, outputs } = build({ title: 'x', op: 'Neg', inputs: [x([3])], wrt: ['x'] }, 1);
  const shapes = await shapesByRunning(model, feeds);
  t.throws(() => buildVjp(model, { wrt: 'nope', outputs, shapes }), {
    instanceOf: RangeError,
    message: /options.wrt 'nope' is not an input/,
  });
  t.throws(() => buildVjp(model, { wrt: 'x', outputs: [], shapes }), {
    instanceOf: TypeError,
    message: /options.outputs/,
  });
  t.throws(() => buildVjp(model, { wrt: 'x', outputs: ['zz'], shapes }), {
    instanceOf: RangeError,
    message: /'zz', which no node produces/,
  });
  t.throws(() => buildVjp(model, { wrt: 'x', outputs, shapes: {} as never }), {
    instanceOf: TypeError,
    message: /options.shapes/,
  });
  t.throws(() => buildVjp(model, { wrt: 'x', outputs, shapes, design: 'fast' as never }), {
    instanceOf: RangeError,
    message: /options.design/,
  });
});
