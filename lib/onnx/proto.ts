// ONNX protobuf access through protobufjs reflection over the vendored onnx.proto (onnx-proto.ts).
//
// Why reflection and not generated code: protobufjs 8 keeps fields it does not know in `$unknowns` and writes them
// back, and with keepCase the decoded messages use the proto's snake_case names, so a decode → encode round trip of
// an unmodified model is byte-identical (tested on the fixture models).
//
// Decoded messages are protobufjs Message instances: absent optional scalars read their proto default from the
// prototype (strings '', numbers 0, int64 a Long zero) and are not re-encoded. Objects created here are plain
// objects with the same field names; protobufjs encodes both alike.

import * as protobuf from 'protobufjs';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ONNX_PROTO_TEXT } from './onnx-proto';

// ---------------------------------------------------------------------------------------------------------------
// Types (the parts of the schema this project reads or writes; every other field still round-trips)

/** What protobufjs gives for int64 fields: a `long` Long (when the value came from a decoded file) or a number. */
export interface LongLike {
  low: number;
  high: number;
  unsigned: boolean;
  toNumber(): number;
  toString(radix?: number): string;
}
export type Int64 = number | LongLike;

export interface StringStringEntryProto {
  key?: string;
  value?: string;
}

export interface OperatorSetIdProto {
  domain?: string;
  version?: Int64;
}

export interface TensorShapeDimension {
  dim_value?: Int64;
  dim_param?: string;
  denotation?: string;
}

export interface TensorShapeProto {
  dim: TensorShapeDimension[];
}

export interface TypeProtoTensor {
  elem_type?: number;
  shape?: TensorShapeProto | null;
}

export interface TypeProto {
  tensor_type?: TypeProtoTensor | null;
  sparse_tensor_type?: TypeProtoTensor | null;
  sequence_type?: unknown;
  map_type?: unknown;
  optional_type?: unknown;
  opaque_type?: unknown;
  denotation?: string;
}

export interface ValueInfoProto {
  name?: string;
  type?: TypeProto | null;
  doc_string?: string;
  metadata_props?: StringStringEntryProto[];
}

/** TensorProto.DataLocation */
export const DataLocation = { DEFAULT: 0, EXTERNAL: 1 } as const;

export interface TensorProto {
  dims: Int64[];
  data_type?: number;
  float_data?: number[];
  int32_data?: number[];
  string_data?: Uint8Array[];
  int64_data?: Int64[];
  name?: string;
  doc_string?: string;
  raw_data?: Uint8Array;
  external_data?: StringStringEntryProto[];
  data_location?: number;
  double_data?: number[];
  uint64_data?: Int64[];
  metadata_props?: StringStringEntryProto[];
}

/** AttributeProto.AttributeType */
export const AttributeType = {
  UNDEFINED: 0,
  FLOAT: 1,
  INT: 2,
  STRING: 3,
  TENSOR: 4,
  GRAPH: 5,
  FLOATS: 6,
  INTS: 7,
  STRINGS: 8,
  TENSORS: 9,
  GRAPHS: 10,
  SPARSE_TENSOR: 11,
  SPARSE_TENSORS: 12,
  TYPE_PROTO: 13,
  TYPE_PROTOS: 14,
} as const;

export interface AttributeProto {
  name?: string;
  ref_attr_name?: string;
  doc_string?: string;
  type?: number;
  f?: number;
  i?: Int64;
  s?: Uint8Array;
  t?: TensorProto | null;
  g?: GraphProto | null;
  floats?: number[];
  ints?: Int64[];
  strings?: Uint8Array[];
  tensors?: TensorProto[];
  graphs?: GraphProto[];
}

export interface NodeProto {
  input: string[];
  output: string[];
  name?: string;
  op_type?: string;
  domain?: string;
  overload?: string;
  attribute: AttributeProto[];
  doc_string?: string;
  metadata_props?: StringStringEntryProto[];
}

export interface GraphProto {
  node: NodeProto[];
  name?: string;
  initializer: TensorProto[];
  sparse_initializer?: unknown[];
  doc_string?: string;
  input: ValueInfoProto[];
  output: ValueInfoProto[];
  value_info: ValueInfoProto[];
  quantization_annotation?: unknown[];
  metadata_props?: StringStringEntryProto[];
}

export interface ModelProto {
  ir_version?: Int64;
  opset_import: OperatorSetIdProto[];
  producer_name?: string;
  producer_version?: string;
  domain?: string;
  model_version?: Int64;
  doc_string?: string;
  graph?: GraphProto | null;
  metadata_props?: StringStringEntryProto[];
  training_info?: unknown[];
  functions?: unknown[];
  configuration?: unknown[];
}

// ---------------------------------------------------------------------------------------------------------------
// Data types

/** TensorProto.DataType (values of the vendored onnx.proto). */
export const DataType = {
  UNDEFINED: 0,
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  UINT16: 4,
  INT16: 5,
  INT32: 6,
  INT64: 7,
  STRING: 8,
  BOOL: 9,
  FLOAT16: 10,
  DOUBLE: 11,
  UINT32: 12,
  UINT64: 13,
  COMPLEX64: 14,
  COMPLEX128: 15,
  BFLOAT16: 16,
  FLOAT8E4M3FN: 17,
  FLOAT8E4M3FNUZ: 18,
  FLOAT8E5M2: 19,
  FLOAT8E5M2FNUZ: 20,
  UINT4: 21,
  INT4: 22,
  FLOAT4E2M1: 23,
  FLOAT8E8M0: 24,
  UINT2: 25,
  INT2: 26,
  FLOAT6E2M3: 27,
  FLOAT6E3M2: 28,
} as const;
export type DataTypeName = keyof typeof DataType;

const DATA_TYPE_NAMES: Record<number, DataTypeName> = Object.fromEntries(Object.entries(DataType).map(([k, v]) => [v, k as DataTypeName]));

/** 'FLOAT' for 1, …; 'DataType(99)' for values the schema does not know. */
export function dataTypeName(dataType: number): string {
  return DATA_TYPE_NAMES[dataType] ?? `DataType(${dataType})`;
}

/** onnxruntime-node tensor type string for an ONNX data type ('float32', 'int64', …), or undefined. */
export function ortTypeOf(dataType: number): string | undefined {
  switch (dataType) {
    case DataType.FLOAT:
      return 'float32';
    case DataType.DOUBLE:
      return 'float64';
    case DataType.FLOAT16:
      return 'float16';
    case DataType.INT8:
      return 'int8';
    case DataType.UINT8:
      return 'uint8';
    case DataType.INT16:
      return 'int16';
    case DataType.UINT16:
      return 'uint16';
    case DataType.INT32:
      return 'int32';
    case DataType.UINT32:
      return 'uint32';
    case DataType.INT64:
      return 'int64';
    case DataType.UINT64:
      return 'uint64';
    case DataType.BOOL:
      return 'bool';
    case DataType.STRING:
      return 'string';
    default:
      return undefined;
  }
}

/** Bytes per element of the fixed-size types readable as typed arrays; undefined for the others. */
export function bytesPerElement(dataType: number): number | undefined {
  switch (dataType) {
    case DataType.FLOAT:
    case DataType.INT32:
    case DataType.UINT32:
      return 4;
    case DataType.DOUBLE:
    case DataType.INT64:
    case DataType.UINT64:
      return 8;
    case DataType.FLOAT16:
    case DataType.BFLOAT16:
    case DataType.INT16:
    case DataType.UINT16:
      return 2;
    case DataType.INT8:
    case DataType.UINT8:
    case DataType.BOOL:
      return 1;
    default:
      return undefined;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Schema, decode, encode

let cachedRoot: protobuf.Root | undefined;

/** The protobufjs Root of the vendored onnx.proto (parsed once, keepCase so fields keep their proto names). */
export function onnxRoot(): protobuf.Root {
  if (cachedRoot === undefined) {
    cachedRoot = protobuf.parse(ONNX_PROTO_TEXT, { keepCase: true }).root;
    cachedRoot.resolveAll();
  }
  return cachedRoot;
}

/** A message type of the onnx package, e.g. messageType('ModelProto'). */
export function messageType(name: string): protobuf.Type {
  return onnxRoot().lookupType(`onnx.${name}`);
}

/**
 * Decodes a message of the onnx package, keeping fields the schema does not know (protobufjs readers discard them
 * unless told otherwise) so that they are written back by encode.
 */
export function decodeMessage(typeName: string, bytes: Uint8Array): protobuf.Message {
  const reader = protobuf.Reader.create(bytes) as protobuf.Reader & { discardUnknown: boolean };
  reader.discardUnknown = false;
  return messageType(typeName).decode(reader);
}

/** Decodes a serialised ModelProto. Throws an Error naming `what` when the bytes are not a ModelProto. */
export function decodeModel(bytes: Uint8Array, what = 'model'): ModelProto {
  let model: ModelProto;
  try {
    model = decodeMessage('ModelProto', bytes) as unknown as ModelProto;
  } catch (err) {
    throw new Error(`Cannot decode ${what} as an ONNX ModelProto: ${(err as Error).message}`);
  }
  if (model.graph == null) throw new Error(`${what} is not an ONNX model: it has no graph (ModelProto.graph is empty)`);
  return model;
}

/** Serialises a ModelProto (decoded or built from plain objects). Byte-identical for an unmodified decoded model. */
export function encodeModel(model: ModelProto): Uint8Array {
  return messageType('ModelProto')
    .encode(model as unknown as protobuf.Message)
    .finish();
}

/** Decodes a serialised TensorProto (for tests and tools). */
export function decodeTensor(bytes: Uint8Array): TensorProto {
  return decodeMessage('TensorProto', bytes) as unknown as TensorProto;
}

/** Serialises a TensorProto. */
export function encodeTensor(tensor: TensorProto): Uint8Array {
  return messageType('TensorProto')
    .encode(tensor as unknown as protobuf.Message)
    .finish();
}

// ---------------------------------------------------------------------------------------------------------------
// int64 at the boundary

/** int64 (Long or number) → number, RangeError when it is not a safe integer. `what` names the field. */
export function int64ToNumber(v: Int64 | null | undefined, what: string): number {
  if (v == null) return 0;
  const n = typeof v === 'number' ? v : v.toNumber();
  if (typeof v !== 'number') {
    // toNumber() rounds silently above 2^53; compare against the exact decimal text.
    const exact = BigInt(v.toString(10));
    if (exact > BigInt(Number.MAX_SAFE_INTEGER) || exact < BigInt(Number.MIN_SAFE_INTEGER)) {
      throw new RangeError(`${what} is ${exact}, outside the safe integer range of JavaScript numbers (±2^53-1)`);
    }
  } else if (!Number.isSafeInteger(n)) {
    throw new RangeError(`${what} is ${n}, not a safe integer`);
  }
  return n;
}

/** int64 (Long or number) → bigint, exact. */
export function int64ToBigInt(v: Int64 | null | undefined): bigint {
  if (v == null) return 0n;
  return typeof v === 'number' ? BigInt(v) : BigInt(v.toString(10));
}

/** The model's opset for a domain ('' = ai.onnx); undefined when not imported. */
export function opsetVersion(model: ModelProto, domain = ''): number | undefined {
  for (const o of model.opset_import ?? []) {
    const d = o.domain ?? '';
    if (d === domain || (domain === '' && d === 'ai.onnx')) return int64ToNumber(o.version, `opset_import[${d}].version`);
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// Attributes

export function getAttribute(node: NodeProto, name: string): AttributeProto | undefined {
  return (node.attribute ?? []).find((a) => a.name === name);
}

function nodeLabel(node: NodeProto): string {
  return `${node.op_type ?? '?'} node '${node.name || (node.output ?? [])[0] || '?'}'`;
}

function attrOfType(node: NodeProto, name: string, type: number, typeName: string): AttributeProto | undefined {
  const a = getAttribute(node, name);
  if (a === undefined) return undefined;
  // IR < 2 files carry no discriminator (type = 0); accept those and trust the field.
  if (a.type && a.type !== type) {
    throw new TypeError(`Attribute '${name}' of ${nodeLabel(node)} has type ${a.type}, expected ${typeName}`);
  }
  return a;
}

/** Integer attribute (range-checked); `fallback` when absent, else a TypeError naming node and attribute. */
export function attrInt(node: NodeProto, name: string, fallback?: number): number {
  const a = attrOfType(node, name, AttributeType.INT, 'INT');
  if (a === undefined) {
    if (fallback !== undefined) return fallback;
    throw new TypeError(`${nodeLabel(node)} has no attribute '${name}'`);
  }
  return int64ToNumber(a.i, `attribute '${name}' of ${nodeLabel(node)}`);
}

export function attrInts(node: NodeProto, name: string, fallback?: number[]): number[] {
  const a = attrOfType(node, name, AttributeType.INTS, 'INTS');
  if (a === undefined) {
    if (fallback !== undefined) return fallback;
    throw new TypeError(`${nodeLabel(node)} has no attribute '${name}'`);
  }
  return (a.ints ?? []).map((v, k) => int64ToNumber(v, `attribute '${name}'[${k}] of ${nodeLabel(node)}`));
}

export function attrFloat(node: NodeProto, name: string, fallback?: number): number {
  const a = attrOfType(node, name, AttributeType.FLOAT, 'FLOAT');
  if (a === undefined) {
    if (fallback !== undefined) return fallback;
    throw new TypeError(`${nodeLabel(node)} has no attribute '${name}'`);
  }
  return a.f ?? 0;
}

export function attrFloats(node: NodeProto, name: string, fallback?: number[]): number[] {
  const a = attrOfType(node, name, AttributeType.FLOATS, 'FLOATS');
  if (a === undefined) {
    if (fallback !== undefined) return fallback;
    throw new TypeError(`${nodeLabel(node)} has no attribute '${name}'`);
  }
  return [...(a.floats ?? [])];
}

export function attrString(node: NodeProto, name: string, fallback?: string): string {
  const a = attrOfType(node, name, AttributeType.STRING, 'STRING');
  if (a === undefined) {
    if (fallback !== undefined) return fallback;
    throw new TypeError(`${nodeLabel(node)} has no attribute '${name}'`);
  }
  return Buffer.from(a.s ?? new Uint8Array(0)).toString('utf8');
}

export function attrStrings(node: NodeProto, name: string, fallback?: string[]): string[] {
  const a = attrOfType(node, name, AttributeType.STRINGS, 'STRINGS');
  if (a === undefined) {
    if (fallback !== undefined) return fallback;
    throw new TypeError(`${nodeLabel(node)} has no attribute '${name}'`);
  }
  return (a.strings ?? []).map((s) => Buffer.from(s).toString('utf8'));
}

export function attrTensor(node: NodeProto, name: string): TensorProto | undefined {
  const a = attrOfType(node, name, AttributeType.TENSOR, 'TENSOR');
  return a?.t ?? undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// Builders (plain objects; only set fields are encoded)

/** Attribute builders: attr.int('axis', -1), attr.floats('scales', [1, 1, 2, 2]), … */
export const attr = {
  int: (name: string, v: number | bigint): AttributeProto => ({ name, type: AttributeType.INT, i: toInt64(v, name) }),
  ints: (name: string, v: ReadonlyArray<number | bigint>): AttributeProto => ({
    name,
    type: AttributeType.INTS,
    ints: v.map((x) => toInt64(x, name)),
  }),
  float: (name: string, v: number): AttributeProto => ({ name, type: AttributeType.FLOAT, f: v }),
  floats: (name: string, v: ReadonlyArray<number>): AttributeProto => ({
    name,
    type: AttributeType.FLOATS,
    floats: [...v],
  }),
  string: (name: string, v: string): AttributeProto => ({
    name,
    type: AttributeType.STRING,
    s: new Uint8Array(Buffer.from(v, 'utf8')),
  }),
  strings: (name: string, v: ReadonlyArray<string>): AttributeProto => ({
    name,
    type: AttributeType.STRINGS,
    strings: v.map((s) => new Uint8Array(Buffer.from(s, 'utf8'))),
  }),
  tensor: (name: string, t: TensorProto): AttributeProto => ({ name, type: AttributeType.TENSOR, t }),
};

function toInt64(v: number | bigint, what: string): Int64 {
  if (typeof v === 'bigint') {
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
      const L = protobuf.util.Long as unknown as { fromString(s: string): LongLike };
      return L.fromString(v.toString());
    }
    return Number(v);
  }
  if (!Number.isInteger(v)) throw new TypeError(`Expected an integer for '${what}' but received ${v}`);
  return v;
}

export interface MakeNodeOptions {
  name?: string;
  domain?: string;
  attributes?: AttributeProto[];
  docString?: string;
}

/** A NodeProto. Empty strings in `inputs` mean "optional input omitted", as in ONNX. */
export function makeNode(opType: string, inputs: readonly string[], outputs: readonly string[], opts: MakeNodeOptions = {}): NodeProto {
  const node: NodeProto = {
    input: [...inputs],
    output: [...outputs],
    op_type: opType,
    attribute: opts.attributes ?? [],
  };
  if (opts.name !== undefined) node.name = opts.name;
  if (opts.domain !== undefined && opts.domain !== '') node.domain = opts.domain;
  if (opts.docString !== undefined) node.doc_string = opts.docString;
  return node;
}

/**
 * A ValueInfoProto. Without `elemType` it is name-only (no `type`: ORT fills it in, and a type with elem_type 0
 * would not load). Without `dims` it has no `shape` (an empty shape would declare a scalar). A string dim is a
 * dim_param, null an unknown dim.
 */
export function makeValueInfo(name: string, elemType?: number, dims?: ReadonlyArray<number | string | null>): ValueInfoProto {
  const vi: ValueInfoProto = { name };
  if (elemType === undefined) return vi;
  const tt: TypeProtoTensor = { elem_type: elemType };
  if (dims !== undefined) {
    tt.shape = {
      dim: dims.map((d) => (d === null ? {} : typeof d === 'string' ? { dim_param: d } : { dim_value: d })),
    };
  }
  vi.type = { tensor_type: tt };
  return vi;
}

/** Typed arrays accepted by makeTensor, by data type. */
export type TensorData =
  | Float32Array
  | Float64Array
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | BigInt64Array
  | BigUint64Array;

/**
 * A TensorProto holding `data` in raw_data (little-endian, as ONNX requires). The element count must match dims.
 * For FLOAT16/BFLOAT16 pass the bit patterns as a Uint16Array; for BOOL a Uint8Array of 0/1.
 */
export function makeTensor(name: string, dataType: number, dims: readonly number[], data: TensorData): TensorProto {
  const bpe = bytesPerElement(dataType);
  if (bpe === undefined) throw new RangeError(`makeTensor: data type ${dataTypeName(dataType)} is not supported`);
  const n = dims.reduce((a, b) => a * b, 1);
  if (data.length !== n) {
    throw new RangeError(`makeTensor('${name}'): dims [${dims.join(', ')}] hold ${n} elements but data has ${data.length}`);
  }
  if (data.BYTES_PER_ELEMENT !== bpe) {
    throw new TypeError(`makeTensor('${name}'): ${dataTypeName(dataType)} needs ${bpe}-byte elements but received ` + `${data.constructor.name}`);
  }
  // Copy: raw_data must not alias caller memory the caller may change later.
  const raw = new Uint8Array(data.byteLength);
  raw.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return { name, data_type: dataType, dims: [...dims], raw_data: raw };
}

// ---------------------------------------------------------------------------------------------------------------
// Reading tensor data

export interface TensorValue {
  dataType: number;
  dims: number[];
  /** FLOAT → Float32Array, DOUBLE → Float64Array, INT64 → BigInt64Array, UINT64 → BigUint64Array,
   *  INT32 → Int32Array, UINT32 → Uint32Array, INT16 → Int16Array, UINT16/FLOAT16/BFLOAT16 → Uint16Array (bits),
   *  INT8 → Int8Array, UINT8/BOOL → Uint8Array. */
  data: TensorData;
}

export interface ExternalDataRef {
  location: string;
  offset: number;
  /** Byte length; undefined when the entry omits it (then the tensor runs to its computed size). */
  length?: number;
  checksum?: string;
}

/** The external-data entry of a tensor stored outside the model file, or undefined for inline tensors. */
export function externalDataOf(t: TensorProto): ExternalDataRef | undefined {
  if ((t.data_location ?? 0) !== DataLocation.EXTERNAL) return undefined;
  const kv = new Map((t.external_data ?? []).map((e) => [e.key ?? '', e.value ?? '']));
  const location = kv.get('location');
  if (!location) throw new Error(`Tensor '${t.name}' is marked external but has no 'location' entry`);
  const num = (k: string): number | undefined => {
    const v = kv.get(k);
    if (v === undefined || v === '') return undefined;
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < 0) throw new Error(`Tensor '${t.name}': external_data ${k} = '${v}' is not a byte count`);
    return n;
  };
  const ref: ExternalDataRef = { location, offset: num('offset') ?? 0 };
  const length = num('length');
  if (length !== undefined) ref.length = length;
  const checksum = kv.get('checksum');
  if (checksum !== undefined) ref.checksum = checksum;
  return ref;
}

/** Dims of a tensor as numbers. */
export function tensorDims(t: TensorProto): number[] {
  return (t.dims ?? []).map((d, k) => int64ToNumber(d, `dims[${k}] of tensor '${t.name}'`));
}

function typedFromBytes(dataType: number, bytes: Uint8Array, name: string): TensorData {
  const bpe = bytesPerElement(dataType);
  if (bpe === undefined) throw new RangeError(`Tensor '${name}': data type ${dataTypeName(dataType)} cannot be read as a typed array`);
  if (bytes.byteLength % bpe !== 0) throw new RangeError(`Tensor '${name}': ${bytes.byteLength} bytes is not a multiple of ${bpe}`);
  // Copy into a fresh, aligned buffer: raw_data is a view at an arbitrary offset into the file buffer.
  const buf = new ArrayBuffer(bytes.byteLength);
  new Uint8Array(buf).set(bytes);
  switch (dataType) {
    case DataType.FLOAT:
      return new Float32Array(buf);
    case DataType.DOUBLE:
      return new Float64Array(buf);
    case DataType.INT64:
      return new BigInt64Array(buf);
    case DataType.UINT64:
      return new BigUint64Array(buf);
    case DataType.INT32:
      return new Int32Array(buf);
    case DataType.UINT32:
      return new Uint32Array(buf);
    case DataType.INT16:
      return new Int16Array(buf);
    case DataType.UINT16:
    case DataType.FLOAT16:
    case DataType.BFLOAT16:
      return new Uint16Array(buf);
    case DataType.INT8:
      return new Int8Array(buf);
    default:
      return new Uint8Array(buf);
  }
}

export interface ReadTensorOptions {
  /** Directory that external-data locations are relative to (the model's directory). */
  baseDir?: string;
}

/**
 * The values of a TensorProto (initializer or Constant value) as a typed array. Handles raw_data, the typed
 * *_data fields and external data (reads only this tensor's byte range from the data file).
 */
export function readTensor(t: TensorProto, opts: ReadTensorOptions = {}): TensorValue {
  const dataType = t.data_type ?? 0;
  const name = t.name || '(unnamed)';
  const dims = tensorDims(t);
  const count = dims.reduce((a, b) => a * b, 1);
  const bpe = bytesPerElement(dataType);
  if (bpe === undefined) throw new RangeError(`Tensor '${name}': data type ${dataTypeName(dataType)} cannot be read as a typed array`);
  const ext = externalDataOf(t);
  let data: TensorData;
  if (ext !== undefined) {
    if (opts.baseDir === undefined) {
      throw new TypeError(`Tensor '${name}' is stored in external file '${ext.location}': pass baseDir (the model's directory)`);
    }
    const file = path.resolve(opts.baseDir, ext.location);
    const length = ext.length ?? count * bpe;
    const bytes = Buffer.alloc(length);
    const fd = fs.openSync(file, 'r');
    try {
      let got = 0;
      while (got < length) {
        const n = fs.readSync(fd, bytes, got, length - got, ext.offset + got);
        if (n === 0) throw new RangeError(`Tensor '${name}': external file '${file}' ends before offset ${ext.offset} + length ${length}`);
        got += n;
      }
    } finally {
      fs.closeSync(fd);
    }
    data = typedFromBytes(dataType, bytes, name);
  } else if (t.raw_data != null && t.raw_data.byteLength > 0) {
    data = typedFromBytes(dataType, t.raw_data, name);
  } else {
    data = fromTypedFields(t, dataType, count, name);
  }
  if (data.length !== count) {
    throw new RangeError(`Tensor '${name}': dims [${dims.join(', ')}] need ${count} elements but the data holds ${data.length}`);
  }
  return { dataType, dims, data };
}

function fromTypedFields(t: TensorProto, dataType: number, count: number, name: string): TensorData {
  switch (dataType) {
    case DataType.FLOAT:
      return Float32Array.from(t.float_data ?? []);
    case DataType.DOUBLE:
      return Float64Array.from(t.double_data ?? []);
    case DataType.INT64:
      return BigInt64Array.from((t.int64_data ?? []).map((v) => int64ToBigInt(v)));
    case DataType.UINT64:
      return BigUint64Array.from((t.uint64_data ?? []).map((v) => BigInt.asUintN(64, int64ToBigInt(v))));
    case DataType.UINT32:
      return Uint32Array.from((t.uint64_data ?? []).map((v) => Number(int64ToBigInt(v))));
    // int32_data carries INT32, INT16, INT8, UINT16, UINT8, BOOL and the FLOAT16/BFLOAT16 bit patterns.
    case DataType.INT32:
      return Int32Array.from(t.int32_data ?? []);
    case DataType.INT16:
      return Int16Array.from(t.int32_data ?? []);
    case DataType.INT8:
      return Int8Array.from(t.int32_data ?? []);
    case DataType.UINT16:
    case DataType.FLOAT16:
    case DataType.BFLOAT16:
      return Uint16Array.from(t.int32_data ?? []);
    case DataType.UINT8:
    case DataType.BOOL:
      return Uint8Array.from(t.int32_data ?? []);
    default:
      throw new RangeError(`Tensor '${name}': cannot read ${count} elements of ${dataTypeName(dataType)}`);
  }
}

/** The TensorProto held by a Constant node, converting value_float(s)/value_int(s) forms; undefined otherwise. */
export function constantNodeTensor(node: NodeProto): TensorProto | undefined {
  if (node.op_type !== 'Constant' || (node.domain ?? '') !== '') return undefined;
  const a = (node.attribute ?? [])[0];
  if (a === undefined) return undefined;
  const name = node.output[0] ?? '';
  switch (a.name) {
    case 'value':
      return a.t ? ({ ...a.t, name } as TensorProto) : undefined;
    case 'value_float':
      return makeTensor(name, DataType.FLOAT, [], Float32Array.of(a.f ?? 0));
    case 'value_floats':
      return makeTensor(name, DataType.FLOAT, [(a.floats ?? []).length], Float32Array.from(a.floats ?? []));
    case 'value_int':
      return makeTensor(name, DataType.INT64, [], BigInt64Array.of(int64ToBigInt(a.i)));
    case 'value_ints':
      return makeTensor(name, DataType.INT64, [(a.ints ?? []).length], BigInt64Array.from((a.ints ?? []).map((v) => int64ToBigInt(v))));
    default:
      return undefined; // sparse_value / string forms: not used by SD exports
  }
}

/**
 * The constant value named `name`: an initializer of `graph` or the output of a Constant node, or undefined when
 * `name` is computed at runtime.
 */
export function readConstant(graph: GraphProto, name: string, opts: ReadTensorOptions = {}): TensorValue | undefined {
  const init = graph.initializer.find((t) => t.name === name);
  if (init !== undefined) return readTensor(init, opts);
  const node = graph.node.find((n) => n.op_type === 'Constant' && n.output[0] === name);
  if (node === undefined) return undefined;
  const t = constantNodeTensor(node);
  return t === undefined ? undefined : readTensor(t, opts);
}

// ---------------------------------------------------------------------------------------------------------------
// Value info helpers

/** elem_type of a tensor ValueInfo, or undefined when it has no tensor type. */
export function valueInfoElemType(vi: ValueInfoProto): number | undefined {
  const et = vi.type?.tensor_type?.elem_type;
  return et ? et : undefined;
}

/**
 * Dims of a tensor ValueInfo: numbers for dim_value, strings for dim_param, null for unknown dims; undefined when
 * the ValueInfo has no shape at all (rank unknown).
 */
export function valueInfoDims(vi: ValueInfoProto): Array<number | string | null> | undefined {
  const shape = vi.type?.tensor_type?.shape;
  if (shape == null) return undefined;
  return (shape.dim ?? []).map((d, k) => {
    // A decoded Dimension reads prototype defaults for the oneof member it does not have; check ownership.
    if (Object.hasOwn(d, 'dim_value') && d.dim_value != null) {
      return int64ToNumber(d.dim_value, `dim ${k} of '${vi.name}'`);
    }
    if (Object.hasOwn(d, 'dim_param') && d.dim_param) return d.dim_param;
    return null;
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Graph index

export interface GraphIndex {
  /** tensor name → the node producing it (and its output slot) */
  producer: Map<string, { node: NodeProto; index: number; slot: number }>;
  /** tensor name → nodes reading it */
  consumers: Map<string, NodeProto[]>;
  initializers: Map<string, TensorProto>;
  inputs: Map<string, ValueInfoProto>;
  outputs: Map<string, ValueInfoProto>;
}

/** Producer/consumer maps of a graph (top level only; subgraphs are not indexed). */
export function indexGraph(graph: GraphProto): GraphIndex {
  const producer: GraphIndex['producer'] = new Map();
  const consumers: GraphIndex['consumers'] = new Map();
  graph.node.forEach((node, index) => {
    node.output.forEach((o, slot) => {
      if (o) producer.set(o, { node, index, slot });
    });
    for (const i of node.input) {
      if (!i) continue;
      let list = consumers.get(i);
      if (list === undefined) {
        list = [];
        consumers.set(i, list);
      }
      if (!list.includes(node)) list.push(node);
    }
  });
  return {
    producer,
    consumers,
    initializers: new Map(graph.initializer.map((t) => [t.name ?? '', t])),
    inputs: new Map(graph.input.map((v) => [v.name ?? '', v])),
    outputs: new Map(graph.output.map((v) => [v.name ?? '', v])),
  };
}
