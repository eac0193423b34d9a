/**
 * Bridge between the ONNX protobuf objects of `../proto` and the builder's IR: reads nodes, attributes and
 * small constants; turns emitted nodes and constants back into NodeProto/TensorProto.
 */
import {
  type AttributeProto,
  AttributeType,
  DataLocation,
  type Int64,
  type NodeProto,
  type TensorProto,
  attr as pattr,
  makeNode,
  makeTensor,
  readTensor,
  tensorDims,
} from '../proto';
import { type AttrValue, type ConstTensor, DataType, type NewNode, type NewTensor, type NodeView, numel } from './ir';

/** Tensors above this size are never read as constants (weights are only referenced, never copied). */
const MAX_CONST_ELEMENTS = 1 << 16;

/** int64 → number; values beyond 2^53 (INT64_MAX as a Slice "to the end") round, which clamping absorbs. */
function lenient(v: Int64 | null | undefined): number {
  if (v == null) return 0;
  return typeof v === 'number' ? v : v.toNumber();
}

/** Reads a small inline tensor as a ConstTensor; undefined for big, external or non-numeric tensors. */
export function readConstTensor(t: TensorProto): ConstTensor | undefined {
  const dims = (t.dims ?? []).map(lenient);
  if (numel(dims) > MAX_CONST_ELEMENTS || (t.data_location ?? 0) === DataLocation.EXTERNAL) return undefined;
  const dt = t.data_type ?? 0;
  if (dt === DataType.FLOAT16 || dt === DataType.BFLOAT16 || dt === DataType.STRING) return undefined;
  try {
    const v = readTensor(t);
    const values = Array.from(v.data as ArrayLike<number | bigint>, (x) => Number(x));
    return { dataType: dt, dims, values };
  } catch {
    return undefined;
  }
}

function readAttr(a: AttributeProto): AttrValue {
  switch (a.type) {
    case AttributeType.INT:
      return { kind: 'int', value: lenient(a.i) };
    case AttributeType.INTS:
      return { kind: 'ints', value: (a.ints ?? []).map(lenient) };
    case AttributeType.FLOAT:
      return { kind: 'float', value: a.f ?? 0 };
    case AttributeType.FLOATS:
      return { kind: 'floats', value: [...(a.floats ?? [])] };
    case AttributeType.STRING:
      return { kind: 'string', value: Buffer.from(a.s ?? new Uint8Array(0)).toString('utf8') };
    case AttributeType.STRINGS:
      return { kind: 'strings', value: (a.strings ?? []).map((s) => Buffer.from(s).toString('utf8')) };
    case AttributeType.TENSOR:
      return { kind: 'tensor', value: a.t ? readConstTensor(a.t) : undefined };
    default:
      return { kind: 'other' };
  }
}

export function viewNode(n: NodeProto): NodeView {
  const attrs = new Map<string, AttrValue>();
  for (const a of n.attribute ?? []) attrs.set(a.name ?? '', readAttr(a));
  return {
    name: n.name ?? '',
    opType: n.op_type ?? '',
    domain: n.domain ?? '',
    inputs: [...(n.input ?? [])],
    outputs: [...(n.output ?? [])],
    attrs,
    source: n,
  };
}

function typed(dataType: number, values: number[]) {
  switch (dataType) {
    case DataType.FLOAT:
      return Float32Array.from(values);
    case DataType.DOUBLE:
      return Float64Array.from(values);
    case DataType.INT64:
      return BigInt64Array.from(values, (v) => BigInt(Math.trunc(v)));
    case DataType.INT32:
      return Int32Array.from(values);
    case DataType.BOOL:
      return Uint8Array.from(values);
    default:
      throw new Error(`internal: cannot build a constant of data type ${dataType}`);
  }
}

export function toTensorProto(t: NewTensor | (ConstTensor & { name: string })): TensorProto {
  return makeTensor(t.name, t.dataType, t.dims, typed(t.dataType, t.values));
}

export function toNodeProto(n: NewNode): NodeProto {
  const attributes: AttributeProto[] = [];
  for (const [name, a] of Object.entries(n.attrs)) {
    switch (a.kind) {
      case 'int':
        attributes.push(pattr.int(name, a.value));
        break;
      case 'ints':
        attributes.push(pattr.ints(name, a.value));
        break;
      case 'float':
        attributes.push(pattr.float(name, a.value));
        break;
      case 'floats':
        attributes.push(pattr.floats(name, a.value));
        break;
      case 'string':
        attributes.push(pattr.string(name, a.value));
        break;
      case 'strings':
        attributes.push(pattr.strings(name, a.value));
        break;
      case 'tensor':
        if (!a.value) throw new Error(`internal: empty tensor attribute ${name}`);
        attributes.push(pattr.tensor(name, toTensorProto({ ...a.value, name: '' })));
        break;
      default:
        throw new Error(`internal: cannot write attribute ${name}`);
    }
  }
  return makeNode(n.opType, n.inputs, n.outputs, { name: n.name, attributes });
}

export { tensorDims };
