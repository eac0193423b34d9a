import test from 'ava';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ONNX_PROTO_SHA256, ONNX_PROTO_TEXT } from '../../lib/onnx/onnx-proto';
import {
  AttributeType,
  DataType,
  attr,
  attrFloat,
  attrInt,
  attrInts,
  attrString,
  constantNodeTensor,
  dataTypeName,
  decodeMessage,
  decodeModel,
  decodeTensor,
  encodeModel,
  encodeTensor,
  externalDataOf,
  indexGraph,
  int64ToNumber,
  makeNode,
  makeTensor,
  makeValueInfo,
  messageType,
  onnxRoot,
  opsetVersion,
  readConstant,
  readTensor,
  valueInfoDims,
  type LongLike,
  type TensorProto,
} from '../../lib/onnx/proto';

const ROOT = path.resolve(__dirname, '../../..');
const FIX = path.join(ROOT, 'test/fixtures/models');

/** Every .onnx under the fixture models (tiny-sd components and all UNet variants). */
function fixtureModels(): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    if (!fs.existsSync(d)) return;
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory() && e.name !== 'divbind') walk(p);
      else if (e.name.endsWith('.onnx')) out.push(p);
    }
  };
  walk(FIX);
  return out.sort();
}

test('vendored onnx.proto is intact and parses (IR version 14 schema)', (t) => {
  t.is(crypto.createHash('sha256').update(ONNX_PROTO_TEXT).digest('hex'), ONNX_PROTO_SHA256);
  t.true(ONNX_PROTO_TEXT.includes('SPDX-License-Identifier: Apache-2.0'));
  const version = onnxRoot().lookupEnum('onnx.Version');
  t.is(version.values.IR_VERSION, 14);
  // Fields newer than IR 8 that an old schema would drop: node metadata_props (IR 10), TensorProto FLOAT4E2M1.
  t.truthy(messageType('NodeProto').fields.metadata_props);
  t.is(onnxRoot().lookupEnum('onnx.TensorProto.DataType').values.FLOAT4E2M1, DataType.FLOAT4E2M1);
});

test('decode → encode is byte-identical on every fixture model', (t) => {
  const files = fixtureModels();
  t.true(files.length >= 10, `expected the fixture models, found ${files.length}`);
  for (const f of files) {
    const bytes = fs.readFileSync(f);
    const back = Buffer.from(encodeModel(decodeModel(bytes, f)));
    t.true(back.equals(bytes), `${path.relative(ROOT, f)}: ${back.length} bytes re-encoded vs ${bytes.length}`);
  }
});

test('unknown fields survive a round trip (top level and inside a node)', (t) => {
  const model = decodeModel(fs.readFileSync(path.join(FIX, 'tiny-sd/unet/model.onnx')));
  // Field 1000, varint 7 (tag = 1000 << 3 | 0): a field no onnx.proto defines.
  const unknown = Buffer.from([0xc0, 0x3e, 0x07]);
  const node = model.graph!.node[0]!;
  const nodeBytes = Buffer.concat([
    Buffer.from(
      messageType('NodeProto')
        .encode(node as never)
        .finish(),
    ),
    unknown,
  ]);
  const node2 = decodeMessage('NodeProto', nodeBytes);
  t.true(Buffer.from(messageType('NodeProto').encode(node2).finish()).equals(nodeBytes));
  const modelBytes = Buffer.concat([Buffer.from(encodeModel(model)), unknown]);
  t.true(Buffer.from(encodeModel(decodeModel(modelBytes))).equals(modelBytes));
});

test('decodeModel names the source when the bytes are not a model', (t) => {
  t.throws(() => decodeModel(Buffer.from('not a model at all'), 'junk.onnx'), { message: /junk\.onnx/ });
  t.throws(() => decodeModel(new Uint8Array(0), 'empty.onnx'), {
    message: 'empty.onnx is not an ONNX model: it has no graph (ModelProto.graph is empty)',
  });
});

test('int64 values become numbers with a range check', (t) => {
  const model = decodeModel(fs.readFileSync(path.join(FIX, 'tiny-sd/unet/model.onnx')));
  t.is(opsetVersion(model), 17);
  const softmax = model.graph!.node.find((n) => n.op_type === 'Softmax')!;
  // Softmax axis -1 is a Long with low = high = -1 in the file.
  t.is(attrInt(softmax, 'axis'), -1);
  const big: LongLike = {
    low: 0,
    high: 0x00400000,
    unsigned: false,
    toNumber: () => 2 ** 54,
    toString: () => String(2n ** 54n),
  };
  t.throws(() => int64ToNumber(big, 'dims[0]'), {
    instanceOf: RangeError,
    message: 'dims[0] is 18014398509481984, outside the safe integer range of JavaScript numbers (±2^53-1)',
  });
  t.is(int64ToNumber(7, 'x'), 7);
  t.throws(() => int64ToNumber(0.5, 'x'), { instanceOf: RangeError });
});

test('attribute readers: values, defaults and type errors name node and attribute', (t) => {
  const n = makeNode('Foo', ['a'], ['b'], {
    name: 'foo',
    attributes: [attr.int('k', 3), attr.ints('perm', [0, 2, 1]), attr.float('alpha', 0.5), attr.string('mode', 'nearest')],
  });
  t.is(attrInt(n, 'k'), 3);
  t.deepEqual(attrInts(n, 'perm'), [0, 2, 1]);
  t.is(attrFloat(n, 'alpha'), 0.5);
  t.is(attrString(n, 'mode'), 'nearest');
  t.is(attrInt(n, 'missing', 9), 9);
  t.throws(() => attrInt(n, 'missing'), {
    instanceOf: TypeError,
    message: "Foo node 'foo' has no attribute 'missing'",
  });
  t.throws(() => attrInt(n, 'alpha'), {
    instanceOf: TypeError,
    message: `Attribute 'alpha' of Foo node 'foo' has type ${AttributeType.FLOAT}, expected INT`,
  });
  t.throws(() => attr.int('x', 1.5), { instanceOf: TypeError });
});

test('makeTensor / readTensor round trip every readable type, through encode/decode', (t) => {
  const cases: Array<[number, ArrayLike<number | bigint> & { length: number }]> = [
    [DataType.FLOAT, Float32Array.of(1.5, -2, 3.25)],
    [DataType.DOUBLE, Float64Array.of(Math.PI, -1e300)],
    [DataType.INT64, BigInt64Array.of(-1n, 2n ** 40n, 0n)],
    [DataType.INT32, Int32Array.of(-7, 8)],
    [DataType.UINT8, Uint8Array.of(0, 255)],
    [DataType.FLOAT16, Uint16Array.of(0x3c00, 0xc000)],
    [DataType.BOOL, Uint8Array.of(1, 0, 1)],
  ];
  for (const [dt, data] of cases) {
    const tensor = makeTensor('x', dt, [data.length], data as never);
    const back = readTensor(decodeTensor(encodeTensor(tensor)));
    t.is(back.dataType, dt);
    t.deepEqual(back.dims, [data.length]);
    t.deepEqual([...(back.data as ArrayLike<number | bigint> as never[])], [...(data as never[])], dataTypeName(dt));
  }
  t.throws(() => makeTensor('x', DataType.FLOAT, [2, 2], Float32Array.of(1, 2, 3)), {
    instanceOf: RangeError,
    message: "makeTensor('x'): dims [2, 2] hold 4 elements but data has 3",
  });
  t.throws(() => makeTensor('x', DataType.INT64, [1], Int32Array.of(1)), { instanceOf: TypeError });
});

test('readTensor copies misaligned raw_data before making 8-byte views', (t) => {
  // raw_data at an odd offset into a larger buffer, as a decoded file gives it.
  const backing = new Uint8Array(8 * 3 + 1);
  const view = new Uint8Array(backing.buffer, 1, 24);
  new DataView(view.buffer, 1).setBigInt64(8, -5n, true);
  const tensor: TensorProto = { name: 'i', data_type: DataType.INT64, dims: [3], raw_data: view };
  t.deepEqual([...(readTensor(tensor).data as BigInt64Array)], [0n, -5n, 0n]);
});

test('readTensor reads the typed *_data fields', (t) => {
  t.deepEqual([...readTensor({ name: 'f', data_type: DataType.FLOAT, dims: [2], float_data: [1, 2] }).data], [1, 2]);
  t.deepEqual([...(readTensor({ name: 'i', data_type: DataType.INT64, dims: [2], int64_data: [3, -4] }).data as BigInt64Array)], [3n, -4n]);
  t.deepEqual([...readTensor({ name: 'h', data_type: DataType.FLOAT16, dims: [1], int32_data: [0x3c00] }).data], [0x3c00]);
  t.throws(() => readTensor({ name: 'f', data_type: DataType.FLOAT, dims: [3], float_data: [1, 2] }), {
    instanceOf: RangeError,
    message: "Tensor 'f': dims [3] need 3 elements but the data holds 2",
  });
});

test('external initializers read exactly the bytes of the inline model (both data-file names)', (t) => {
  const inline = decodeModel(fs.readFileSync(path.join(FIX, 'unet-variants/opset17-int64-static/model.onnx')));
  const byName = new Map(inline.graph!.initializer.map((x) => [x.name, x]));
  for (const variant of ['opset17-int64-external-onnxdata', 'opset14-int64-weightspb']) {
    const dir = path.join(FIX, 'unet-variants', variant);
    const model = decodeModel(fs.readFileSync(path.join(dir, 'model.onnx')));
    const external = model.graph!.initializer.filter((x) => externalDataOf(x) !== undefined);
    t.true(external.length > 10, variant);
    t.throws(() => readTensor(external[0]!), { instanceOf: TypeError, message: /pass baseDir/ });
    let compared = 0;
    for (const x of external) {
      // Module-path names are stable across exports; torch's generated 'onnx::…' names are not.
      const ref = x.name?.startsWith('onnx::') ? undefined : byName.get(x.name);
      if (ref === undefined) continue;
      t.deepEqual(readTensor(x, { baseDir: dir }).data, readTensor(ref).data, `${variant}: ${x.name}`);
      compared++;
    }
    t.true(compared > 10, `${variant}: compared ${compared}`);
  }
});

test('Constant nodes and initializers are found by readConstant', (t) => {
  const model = decodeModel(fs.readFileSync(path.join(FIX, 'tiny-sd/unet/model.onnx')));
  const g = model.graph!;
  const c = g.node.find((n) => n.op_type === 'Constant')!;
  const v = readConstant(g, c.output[0]!);
  t.truthy(v);
  t.deepEqual(v!.dims, readTensor(constantNodeTensor(c)!).dims);
  t.is(readConstant(g, g.node.find((n) => n.op_type === 'Softmax')!.output[0]!), undefined);
  const valueInts = makeNode('Constant', [], ['k'], {
    attributes: [{ ...attr.ints('value_ints', [2, 3]), name: 'value_ints' }],
  });
  t.deepEqual([...(readTensor(constantNodeTensor(valueInts)!).data as BigInt64Array)], [2n, 3n]);
});

test('makeValueInfo: name-only, type without shape, and dims with dim_params', (t) => {
  t.deepEqual(makeValueInfo('a'), { name: 'a' });
  t.is(valueInfoDims(makeValueInfo('b', DataType.FLOAT)), undefined);
  t.deepEqual(valueInfoDims(makeValueInfo('c', DataType.FLOAT, ['batch', 4, null])), ['batch', 4, null]);
  const model = decodeModel(fs.readFileSync(path.join(FIX, 'tiny-sd/unet/model.onnx')));
  t.deepEqual(valueInfoDims(model.graph!.input.find((v) => v.name === 'sample')!), ['batch', 4, 32, 32]);
});

test('indexGraph maps producers and consumers', (t) => {
  const model = decodeModel(fs.readFileSync(path.join(FIX, 'tiny-sd/unet/model.onnx')));
  const ix = indexGraph(model.graph!);
  for (const n of model.graph!.node) for (const o of n.output) if (o) t.is(ix.producer.get(o)!.node, n);
  t.true((ix.consumers.get('sample') ?? []).length >= 1);
});
