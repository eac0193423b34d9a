/**
 * Emits the backward nodes: unique names, small constants, and opset-aware helpers for the ops whose
 * signature changed between opsets (ReduceSum axes input since 13, ReduceMean axes input since 18,
 * Squeeze/Unsqueeze axes input since 13, Split sizes input since 13).
 */
import { type AttrValue, DataType, type NewNode, type NewTensor, attr, sameDims } from './ir';

export class Emitter {
  readonly nodes: NewNode[] = [];
  readonly initializers: NewTensor[] = [];
  private counter = 0;
  private readonly constCache = new Map<string, string>();
  /** Output → [source, source dims] of emitted Reshapes, and → [source, perm] of emitted Transposes. */
  private readonly reshapeOf = new Map<string, [string, number[]]>();
  private readonly transposeOf = new Map<string, [string, number[]]>();
  /** Output → [g, s] of emitted g·s products with a scalar s, so a MatMul rule can scale its smaller result. */
  private readonly scaledBy = new Map<string, [string, string]>();

  /**
   * @param opset   default-domain opset of the model (decides the op signatures used)
   * @param floatType element type of the gradient path (FLOAT or DOUBLE)
   * @param taken   every name already used by the source model, so new names never collide
   */
  constructor(
    readonly opset: number,
    readonly floatType: number,
    private readonly taken: Set<string>,
    private readonly prefix = 'vjp',
  ) {}

  /** A fresh tensor/node name derived from `hint`. */
  fresh(hint: string): string {
    for (;;) {
      const name = `${this.prefix}/${hint}_${this.counter++}`;
      if (!this.taken.has(name)) {
        this.taken.add(name);
        return name;
      }
    }
  }

  /** Adds one node; returns its output names. */
  op(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, nOut = 1): string[] {
    const outputs: string[] = [];
    for (let i = 0; i < nOut; i++) outputs.push(this.fresh(`${opType}_out`));
    this.nodes.push({ name: this.fresh(opType), opType, inputs, outputs, attrs });
    return outputs;
  }

  op1(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}): string {
    return this.op(opType, inputs, attrs, 1)[0];
  }

  private constant(dataType: number, values: number[], dims: number[], hint: string): string {
    const key = `${dataType}|${dims.join(',')}|${values.join(',')}`;
    // Small constants are deduplicated; big tables (index maps) are not worth hashing twice.
    const cacheable = values.length <= 64;
    if (cacheable) {
      const hit = this.constCache.get(key);
      if (hit !== undefined) return hit;
    }
    const name = this.fresh(hint);
    this.initializers.push({ name, dataType, dims: [...dims], values: [...values] });
    if (cacheable) this.constCache.set(key, name);
    return name;
  }

  /** A constant of the gradient float type. */
  constF(values: number[], dims: number[]): string {
    return this.constant(this.floatType, values, dims, 'const');
  }
  scalarF(v: number): string {
    return this.constF([v], []);
  }
  constI64(values: number[], dims: number[] = [values.length]): string {
    return this.constant(DataType.INT64, values, dims, 'shape');
  }

  /** A constant of ones (normalisation scales), one initializer per distinct shape. */
  ones(dims: number[]): string {
    const key = `ones|${this.floatType}|${dims.join(',')}`;
    const hit = this.constCache.get(key);
    if (hit !== undefined) return hit;
    const name = this.fresh('ones');
    const n = dims.reduce((a, b) => a * b, 1);
    this.initializers.push({ name, dataType: this.floatType, dims: [...dims], values: new Array<number>(n).fill(1) });
    this.constCache.set(key, name);
    return name;
  }

  /** Reshape to a static shape (no-op when `from` already has those dims). */
  reshape(x: string, from: number[], to: number[]): string {
    // Reshape of an emitted Reshape reads the original tensor (the inner one becomes dead code).
    const inner = this.reshapeOf.get(x);
    if (inner) [x, from] = inner;
    if (sameDims(from, to)) return x;
    const y = this.op1('Reshape', [x, this.constI64(to)]);
    this.reshapeOf.set(y, [x, [...from]]);
    return y;
  }

  transpose(x: string, perm: number[]): string {
    // Transpose of an emitted Transpose composes the permutations.
    const inner = this.transposeOf.get(x);
    if (inner) {
      const [src, p1] = inner;
      x = src;
      perm = perm.map((p) => p1[p]);
    }
    if (perm.every((p, i) => p === i)) return x;
    const y = this.op1('Transpose', [x], { perm: attr.ints(perm) });
    this.transposeOf.set(y, [x, [...perm]]);
    return y;
  }

  /** g · s for a scalar tensor s, remembered so that consumers may apply s later to a smaller tensor. */
  scale(g: string, s: string): string {
    const y = this.op1('Mul', [g, s]);
    this.scaledBy.set(y, [g, s]);
    return y;
  }

  /** [g, s] when `x` was emitted by `scale(g, s)`. */
  scaledOf(x: string): [string, string] | undefined {
    return this.scaledBy.get(x);
  }

  /** Drops emitted nodes and constants nothing reads (left behind by the Reshape/Transpose folding). */
  removeDeadCode(liveOutputs: Iterable<string>): void {
    const live = new Set(liveOutputs);
    for (let k = this.nodes.length - 1; k >= 0; k--) {
      const n = this.nodes[k];
      if (n.outputs.some((o) => live.has(o))) for (const i of n.inputs) live.add(i);
      else this.nodes.splice(k, 1);
    }
    for (let k = this.initializers.length - 1; k >= 0; k--) {
      if (!live.has(this.initializers[k].name)) this.initializers.splice(k, 1);
    }
  }

  reduceSum(x: string, axes: number[], keepdims: boolean): string {
    if (axes.length === 0) return x;
    if (this.opset >= 13) {
      return this.op1('ReduceSum', [x, this.constI64(axes)], { keepdims: attr.int(keepdims ? 1 : 0) });
    }
    return this.op1('ReduceSum', [x], { axes: attr.ints(axes), keepdims: attr.int(keepdims ? 1 : 0) });
  }

  reduceMean(x: string, axes: number[], keepdims: boolean): string {
    if (axes.length === 0) return x;
    if (this.opset >= 18) {
      return this.op1('ReduceMean', [x, this.constI64(axes)], { keepdims: attr.int(keepdims ? 1 : 0) });
    }
    return this.op1('ReduceMean', [x], { axes: attr.ints(axes), keepdims: attr.int(keepdims ? 1 : 0) });
  }

  /** Split along `axis` into pieces of the given sizes. */
  split(x: string, axis: number, sizes: number[]): string[] {
    if (sizes.length === 1) return [x];
    if (this.opset >= 13) {
      return this.op('Split', [x, this.constI64(sizes)], { axis: attr.int(axis) }, sizes.length);
    }
    return this.op('Split', [x], { axis: attr.int(axis), split: attr.ints(sizes) }, sizes.length);
  }

  /** A tensor of zeros with a static shape (ConstantOfShape, so no big initializer is stored). */
  zeros(dims: number[]): string {
    const value = { kind: 'tensor' as const, value: { dataType: this.floatType, dims: [1], values: [0] } };
    return this.op1('ConstantOfShape', [this.constI64(dims)], { value });
  }

  /**
   * Sums a gradient of shape `from` back to the shape `to` it was broadcast from (numpy rules): sums the
   * leading axes that `to` lacks and the axes where `to` has 1, then reshapes to `to`.
   */
  unbroadcast(g: string, from: number[], to: number[]): string {
    if (sameDims(from, to)) return g;
    const lead = from.length - to.length;
    if (lead < 0) throw new Error(`internal: cannot unbroadcast [${from}] to the larger shape [${to}]`);
    const axes: number[] = [];
    for (let i = 0; i < from.length; i++) {
      if (i < lead) axes.push(i);
      else if (to[i - lead] === 1 && from[i] !== 1) axes.push(i);
      else if (to[i - lead] !== from[i]) {
        throw new Error(`internal: shape [${to}] does not broadcast to [${from}]`);
      }
    }
    const summed = this.reduceSum(g, axes, true);
    const keptDims = from.map((d, i) => (axes.includes(i) ? 1 : d));
    return this.reshape(summed, keptDims, to);
  }

  /** Sums a list of same-shaped gradients. */
  sum(parts: string[]): string {
    if (parts.length === 1) return parts[0];
    return this.op1('Sum', parts);
  }
}
