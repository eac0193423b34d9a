/**
 * Folds the small integer side-chains of a traced graph (Shape → Gather → Unsqueeze → Concat, Constant,
 * Cast, ...) to values, so gradient rules can read Slice parameters and axes inputs. Shape reads the static
 * shapes, so this works on graphs whose shape arithmetic was left unfolded by the exporter.
 */
import { type ConstTensor, DataType, type NodeView, type TensorInfo, attrInt, attrInts, numel } from './ir';

const MAX_FOLD_ELEMENTS = 1 << 16;

export class ConstantFolder {
  private readonly memo = new Map<string, ConstTensor | null>();

  constructor(
    private readonly producer: Map<string, NodeView>,
    private readonly initializer: (name: string) => ConstTensor | undefined,
    private readonly info: (name: string) => TensorInfo | undefined,
  ) {}

  /** The value of tensor `name` if it is a foldable constant, else undefined. */
  get(name: string): ConstTensor | undefined {
    if (name === '') return undefined;
    const hit = this.memo.get(name);
    if (hit !== undefined) return hit ?? undefined;
    this.memo.set(name, null); // guards against cycles in malformed graphs
    let value: ConstTensor | undefined;
    try {
      value = this.compute(name);
    } catch {
      value = undefined;
    }
    if (value && value.values.length > MAX_FOLD_ELEMENTS) value = undefined;
    this.memo.set(name, value ?? null);
    return value;
  }

  private compute(name: string): ConstTensor | undefined {
    const init = this.initializer(name);
    if (init) return init;
    const node = this.producer.get(name);
    if (!node || (node.domain !== '' && node.domain !== 'ai.onnx')) return undefined;
    const rule = FOLD_RULES.get(node.opType);
    if (rule === undefined) return undefined;
    return rule({
      node,
      name,
      ins: (i) => (i < node.inputs.length ? this.get(node.inputs[i]) : undefined),
      info: this.info,
    });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Fold rules, by op type

/** What a fold rule sees: the node, the name of the output being folded, its inputs' values (folded on demand). */
interface FoldContext {
  node: NodeView;
  name: string;
  ins: (i: number) => ConstTensor | undefined;
  info: (name: string) => TensorInfo | undefined;
}

type FoldRule = (c: FoldContext) => ConstTensor | undefined;

function foldConstant({ node }: FoldContext): ConstTensor | undefined {
  for (const [key, a] of node.attrs) {
    if (key === 'value' && a.kind === 'tensor') return a.value;
    if (key === 'value_int' && a.kind === 'int') return { dataType: DataType.INT64, dims: [], values: [a.value] };
    if (key === 'value_ints' && a.kind === 'ints') return { dataType: DataType.INT64, dims: [a.value.length], values: a.value };
    if (key === 'value_float' && a.kind === 'float') return { dataType: DataType.FLOAT, dims: [], values: [a.value] };
    if (key === 'value_floats' && a.kind === 'floats') return { dataType: DataType.FLOAT, dims: [a.value.length], values: a.value };
  }
  return undefined;
}

/** Shape (with its start/end attributes) and Size read the static shape of their input. */
function foldShape({ node, info }: FoldContext): ConstTensor | undefined {
  const inf = info(node.inputs[0]);
  if (!inf) return undefined;
  const r = inf.dims.length;
  let start = attrInt(node, 'start', 0);
  let end = attrInt(node, 'end', r);
  if (start < 0) start += r;
  if (end < 0) end += r;
  start = Math.min(Math.max(start, 0), r);
  end = Math.min(Math.max(end, 0), r);
  const values = inf.dims.slice(start, end);
  return { dataType: DataType.INT64, dims: [values.length], values };
}

function foldSize({ node, info }: FoldContext): ConstTensor | undefined {
  const inf = info(node.inputs[0]);
  return inf ? { dataType: DataType.INT64, dims: [], values: [numel(inf.dims)] } : undefined;
}

function foldCast({ node, ins }: FoldContext): ConstTensor | undefined {
  const x = ins(0);
  if (!x) return undefined;
  const to = attrInt(node, 'to', x.dataType);
  const intTarget = to !== DataType.FLOAT && to !== DataType.DOUBLE && to !== DataType.FLOAT16 && to !== DataType.BFLOAT16;
  const values = intTarget ? x.values.map((v) => (to === DataType.BOOL ? (v !== 0 ? 1 : 0) : Math.trunc(v))) : x.values;
  return { dataType: to, dims: x.dims, values };
}

/** Squeeze/Unsqueeze keep the values; the dims come from the static shapes, else from the axes. */
function foldSqueeze({ node, name, ins, info }: FoldContext): ConstTensor | undefined {
  const x = ins(0);
  const outInfo = info(name);
  if (!x) return undefined;
  if (outInfo) return { ...x, dims: outInfo.dims };
  const axes = node.inputs.length > 1 ? ins(1)?.values : attrInts(node, 'axes');
  if (!axes) return undefined;
  if (node.opType === 'Unsqueeze') {
    const r = x.dims.length + axes.length;
    const norm = axes.map((a) => (a < 0 ? a + r : a));
    const dims: number[] = [];
    let j = 0;
    for (let i = 0; i < r; i++) dims.push(norm.includes(i) ? 1 : x.dims[j++]);
    return { ...x, dims };
  }
  const norm = axes.map((a) => (a < 0 ? a + x.dims.length : a));
  return { ...x, dims: x.dims.filter((_, i) => !norm.includes(i)) };
}

function foldReshape({ name, ins, info }: FoldContext): ConstTensor | undefined {
  const x = ins(0);
  const outInfo = info(name);
  if (!x || !outInfo) return undefined;
  return { ...x, dims: outInfo.dims };
}

/** Concat of shape vectors (rank 1) only. */
function foldConcat({ node, ins }: FoldContext): ConstTensor | undefined {
  const parts = node.inputs.map((_, i) => ins(i));
  if (parts.some((p) => !p) || parts.length === 0) return undefined;
  const ps = parts as ConstTensor[];
  if (ps.some((p) => p.dims.length !== 1)) return undefined;
  const values = ps.flatMap((p) => p.values);
  return { dataType: ps[0].dataType, dims: [values.length], values };
}

function foldGather({ node, ins }: FoldContext): ConstTensor | undefined {
  const x = ins(0);
  const idx = ins(1);
  if (!x || !idx || attrInt(node, 'axis', 0) !== 0 || x.dims.length !== 1) return undefined;
  const values = idx.values.map((i) => x.values[i < 0 ? i + x.dims[0] : i]);
  if (values.some((v) => v === undefined)) return undefined;
  return { dataType: x.dataType, dims: idx.dims, values };
}

/** Slice of a rank-1 tensor along its only axis. */
function foldSlice({ node, ins }: FoldContext): ConstTensor | undefined {
  const x = ins(0);
  const starts = ins(1);
  const ends = ins(2);
  if (!x || !starts || !ends || x.dims.length !== 1) return undefined;
  const axes = node.inputs.length > 3 && node.inputs[3] !== '' ? ins(3) : undefined;
  const steps = node.inputs.length > 4 && node.inputs[4] !== '' ? ins(4) : undefined;
  if (axes?.values.some((a) => a !== 0 && a !== -1) || starts.values.length !== 1) return undefined;
  const step = steps ? steps.values[0] : 1;
  const [s, e] = clampSlice(starts.values[0], ends.values[0], step, x.dims[0]);
  const values: number[] = [];
  for (let i = s; step > 0 ? i < e : i > e; i += step) values.push(x.values[i]);
  return { dataType: x.dataType, dims: [values.length], values };
}

/** Add/Sub/Mul/Div of equal-length tensors or with a one-element operand; integer Div truncates. */
function foldArithmetic({ node, ins }: FoldContext): ConstTensor | undefined {
  const a = ins(0);
  const b = ins(1);
  if (!a || !b) return undefined;
  if (a.values.length !== 1 && b.values.length !== 1 && a.values.length !== b.values.length) return undefined;
  const n = Math.max(a.values.length, b.values.length);
  const isInt = a.dataType === DataType.INT64 || a.dataType === DataType.INT32;
  const values: number[] = [];
  for (let i = 0; i < n; i++) {
    const u = a.values[a.values.length === 1 ? 0 : i];
    const v = b.values[b.values.length === 1 ? 0 : i];
    let r = node.opType === 'Add' ? u + v : node.opType === 'Sub' ? u - v : node.opType === 'Mul' ? u * v : u / v;
    if (isInt && node.opType === 'Div') r = Math.trunc(r);
    values.push(r);
  }
  return { dataType: a.dataType, dims: a.values.length >= b.values.length ? a.dims : b.dims, values };
}

function foldNeg({ ins }: FoldContext): ConstTensor | undefined {
  const a = ins(0);
  return a ? { ...a, values: a.values.map((v) => -v) } : undefined;
}

function foldConstantOfShape({ node, ins }: FoldContext): ConstTensor | undefined {
  const shape = ins(0);
  if (!shape) return undefined;
  const a = node.attrs.get('value');
  const fill = a && a.kind === 'tensor' && a.value ? a.value : { dataType: DataType.FLOAT, dims: [1], values: [0] };
  const n = numel(shape.values);
  if (n > MAX_FOLD_ELEMENTS) return undefined;
  return { dataType: fill.dataType, dims: shape.values, values: new Array<number>(n).fill(fill.values[0]) };
}

/** A Map, not an object literal: op types such as 'constructor' must not find Object.prototype members. */
const FOLD_RULES: ReadonlyMap<string, FoldRule> = new Map<string, FoldRule>([
  ['Constant', foldConstant],
  ['Identity', ({ ins }) => ins(0)],
  ['Shape', foldShape],
  ['Size', foldSize],
  ['Cast', foldCast],
  ['Unsqueeze', foldSqueeze],
  ['Squeeze', foldSqueeze],
  ['Reshape', foldReshape],
  ['Concat', foldConcat],
  ['Gather', foldGather],
  ['Slice', foldSlice],
  ['Add', foldArithmetic],
  ['Sub', foldArithmetic],
  ['Mul', foldArithmetic],
  ['Div', foldArithmetic],
  ['Neg', foldNeg],
  ['ConstantOfShape', foldConstantOfShape],
]);

/**
 * ONNX Slice clamping for one axis: returns the effective [start, end) (or (end, start] for negative steps)
 * in the index space of a dimension of size `dim`.
 */
export function clampSlice(start: number, end: number, step: number, dim: number): [number, number] {
  if (start < 0) start += dim;
  if (end < 0) end += dim;
  if (step > 0) {
    start = Math.min(Math.max(start, 0), dim);
    end = Math.min(Math.max(end, 0), dim);
  } else {
    start = Math.min(Math.max(start, 0), dim - 1);
    end = Math.min(Math.max(end, -1), dim - 1);
  }
  return [start, end];
}
