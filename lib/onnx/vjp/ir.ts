/**
 * Internal graph view used by the VJP builder. The builder reads the model through this small IR (so the
 * gradient rules do not depend on protobuf field spelling) and emits new nodes as plain records that the
 * adapter (`proto-adapter.ts`) turns back into NodeProto/TensorProto objects.
 */

/** ONNX TensorProto.DataType values used here. */
export const DataType = {
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
  BFLOAT16: 16,
} as const;

export function isFloatType(t: number): boolean {
  return t === DataType.FLOAT || t === DataType.DOUBLE || t === DataType.FLOAT16 || t === DataType.BFLOAT16;
}

export function dataTypeName(t: number): string {
  const entry = Object.entries(DataType).find(([, v]) => v === t);
  return entry ? entry[0].toLowerCase() : `dtype ${t}`;
}

/** A small constant tensor (shape arithmetic, axes, Slice parameters) with values as JS numbers. */
export interface ConstTensor {
  dataType: number;
  dims: number[];
  values: number[];
}

/** Attribute values, tagged so that an integer-valued float stays a FLOAT attribute. */
export type AttrValue =
  | { kind: 'int'; value: number }
  | { kind: 'ints'; value: number[] }
  | { kind: 'float'; value: number }
  | { kind: 'floats'; value: number[] }
  | { kind: 'string'; value: string }
  | { kind: 'strings'; value: string[] }
  | { kind: 'tensor'; value: ConstTensor | undefined }
  | { kind: 'other' };

export const attr = {
  int: (value: number): AttrValue => ({ kind: 'int', value }),
  ints: (value: number[]): AttrValue => ({ kind: 'ints', value }),
  float: (value: number): AttrValue => ({ kind: 'float', value }),
  floats: (value: number[]): AttrValue => ({ kind: 'floats', value }),
  string: (value: string): AttrValue => ({ kind: 'string', value }),
};

/** A node of the source model as the builder sees it; `source` is the untouched original NodeProto. */
export interface NodeView {
  name: string;
  opType: string;
  domain: string;
  inputs: string[];
  outputs: string[];
  attrs: Map<string, AttrValue>;
  source: unknown;
}

/** A node created by the builder. */
export interface NewNode {
  name: string;
  opType: string;
  inputs: string[];
  outputs: string[];
  attrs: Record<string, AttrValue>;
}

/** An initializer created by the builder (small constants only: shapes, axes, scalars, index tables). */
export interface NewTensor {
  name: string;
  dataType: number;
  dims: number[];
  values: number[];
}

export interface TensorInfo {
  elemType: number;
  dims: number[];
}

export function numel(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

export function sameDims(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** Readers for a NodeView's attributes with ONNX defaults. */
export function attrInt(n: NodeView, name: string, dflt: number): number {
  const a = n.attrs.get(name);
  if (a === undefined) return dflt;
  if (a.kind !== 'int') throw new Error(`${describe(n)}: attribute ${name} should be an int, found ${a.kind}`);
  return a.value;
}
export function attrInts(n: NodeView, name: string): number[] | undefined {
  const a = n.attrs.get(name);
  if (a === undefined) return undefined;
  if (a.kind !== 'ints') throw new Error(`${describe(n)}: attribute ${name} should be ints, found ${a.kind}`);
  return a.value;
}
export function attrFloat(n: NodeView, name: string, dflt: number): number {
  const a = n.attrs.get(name);
  if (a === undefined) return dflt;
  if (a.kind !== 'float') throw new Error(`${describe(n)}: attribute ${name} should be a float, found ${a.kind}`);
  return a.value;
}
export function attrString(n: NodeView, name: string, dflt: string): string {
  const a = n.attrs.get(name);
  if (a === undefined) return dflt;
  if (a.kind !== 'string') throw new Error(`${describe(n)}: attribute ${name} should be a string, found ${a.kind}`);
  return a.value;
}

export function describe(n: NodeView): string {
  return `${n.opType} node '${n.name || '(unnamed)'}'`;
}
