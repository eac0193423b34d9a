/**
 * Reverse-mode rules, one per op type. Each rule reads the forward node, the gradients of its outputs
 * (`gy`) and emits nodes computing the gradients of the inputs that need one (`needs`). Forward tensors are
 * referenced by name (recomputed or fed as residuals by the builder); shapes are the static shapes.
 * Notation in comments: y = op(x…), gy = ∂L/∂y, gx = ∂L/∂x.
 */
import type { Emitter } from './emitter';
import { clampSlice } from './fold';
import {
  type AttrValue,
  type ConstTensor,
  DataType,
  type NodeView,
  type TensorInfo,
  attr,
  attrFloat,
  attrInt,
  attrInts,
  attrString,
  describe,
  numel,
} from './ir';

export interface RuleContext {
  node: NodeView;
  e: Emitter;
  opset: number;
  /** Static type and shape of a tensor; throws a clear error when unknown. */
  info(name: string): TensorInfo;
  /** Folded value of a constant tensor, if it is one. */
  fold(name: string): ConstTensor | undefined;
  /** Whether input `i` lies on the differentiated path (needs a gradient). */
  needs(i: number): boolean;
  /** Gradient of output `i`, undefined when it is zero. */
  gy(i: number): string | undefined;
  /** Adds a gradient contribution for input `i`. */
  addGrad(i: number, g: string): void;
}

type Rule = (c: RuleContext) => void;

const dims = (c: RuleContext, name: string): number[] => c.info(name).dims;
const inDims = (c: RuleContext, i: number): number[] => dims(c, c.node.inputs[i]);
const outDims = (c: RuleContext, i = 0): number[] => dims(c, c.node.outputs[i]);
const gy0 = (c: RuleContext): string => {
  const g = c.gy(0);
  if (g === undefined) throw new Error(`internal: ${describe(c.node)} reached without an output gradient`);
  return g;
};
const normAxis = (a: number, rank: number): number => (a < 0 ? a + rank : a);
const sameShape = (a: number[], b: number[]): boolean => a.length === b.length && a.every((v, i) => v === b[i]);
const range = (a: number, b: number): number[] => Array.from({ length: Math.max(0, b - a) }, (_, i) => a + i);

/** Elementwise rule gx = gy ⊙ f(x, y) for single-input ops. */
function unary(f: (c: RuleContext, g: string, x: string, y: string) => string): Rule {
  return (c) => {
    if (c.needs(0)) c.addGrad(0, f(c, gy0(c), c.node.inputs[0], c.node.outputs[0]));
  };
}

/** Softmax/LogSoftmax reduce over [axis] (opset ≥ 13) or over the flattened trailing axes (older opsets). */
function softmaxAxes(c: RuleContext): number[] {
  const r = inDims(c, 0).length;
  if (c.opset >= 13) return [normAxis(attrInt(c.node, 'axis', -1), r)];
  return range(normAxis(attrInt(c.node, 'axis', 1), r), r);
}

/** Reduction axes of a ReduceSum/ReduceMean node, from its attribute or (newer opsets) its axes input. */
function reduceAxes(c: RuleContext, axesFromInput: boolean): number[] {
  const r = inDims(c, 0).length;
  let axes: number[] | undefined;
  if (axesFromInput) {
    const name = c.node.inputs[1];
    if (name !== undefined && name !== '') {
      const v = c.fold(name);
      if (!v) throw new Error(`buildVjp: ${describe(c.node)} has a non-constant axes input '${name}'; only constant axes are supported`);
      axes = v.values;
    }
  } else {
    axes = attrInts(c.node, 'axes');
  }
  if (axes === undefined || axes.length === 0) {
    // Empty axes: reduce all, unless noop_with_empty_axes makes the op an identity.
    return attrInt(c.node, 'noop_with_empty_axes', 0) === 1 ? [] : range(0, r);
  }
  return axes.map((a) => normAxis(a, r));
}

function reduceRule(mean: boolean): Rule {
  return (c) => {
    if (!c.needs(0)) return;
    const xd = inDims(c, 0);
    const axesFromInput = mean ? c.opset >= 18 : c.opset >= 13;
    const axes = reduceAxes(c, axesFromInput);
    // y = reduce(x, axes): gx = broadcast(gy with the reduced axes kept as 1) (÷ count for the mean).
    const kept = xd.map((d, i) => (axes.includes(i) ? 1 : d));
    let g = c.e.reshape(gy0(c), outDims(c), kept);
    if (mean) {
      const count = axes.reduce((p, a) => p * xd[a], 1);
      g = c.e.op1('Mul', [g, c.e.scalarF(1 / count)]);
    }
    c.addGrad(0, c.e.op1('Expand', [g, c.e.constI64(xd)]));
  };
}

/**
 * Normalisation backward shared by InstanceNormalization and LayerNormalization; `axes` are trailing axes.
 * `scaleB` is the scale broadcast against x, or undefined when it is a constant of ones (GroupNorm exports).
 */
function normBackward(c: RuleContext, x: string, axes: number[], eps: number, scaleB: string | undefined) {
  const e = c.e;
  const xd = inDims(c, 0);
  let xh: string;
  let inv: string;
  if (c.opset >= 17 && e.floatType === DataType.FLOAT) {
    // One fused LayerNormalization (scale 1, no bias) over the same trailing axes recomputes x̂ and
    // 1/√(var + ε) (its InvStdDev output) in a single pass instead of a chain of reductions.
    const ones = e.ones(xd.slice(axes[0]));
    [xh, , inv] = e.op('LayerNormalization', [x, ones], { axis: attr.int(axes[0]), epsilon: attr.float(eps) }, 3);
  } else {
    // x̂ = (x − mean) · inv, inv = 1/√(var + ε), stats over `axes`.
    const mean = e.reduceMean(x, axes, true);
    const xc = e.op1('Sub', [x, mean]);
    const variance = e.reduceMean(e.op1('Mul', [xc, xc]), axes, true);
    inv = e.op1('Reciprocal', [e.op1('Sqrt', [e.op1('Add', [variance, e.scalarF(eps)])])]);
    xh = e.op1('Mul', [xc, inv]);
  }
  const gy = gy0(c);
  let gx: string | undefined;
  if (c.needs(0)) {
    // gx = inv · (g − mean(g) − x̂ · mean(g ⊙ x̂)), g = gy ⊙ scale.
    const gs = scaleB === undefined ? gy : e.op1('Mul', [gy, scaleB]);
    const m1 = e.reduceMean(gs, axes, true);
    const m2 = e.reduceMean(e.op1('Mul', [gs, xh]), axes, true);
    gx = e.op1('Mul', [inv, e.op1('Sub', [e.op1('Sub', [gs, m1]), e.op1('Mul', [xh, m2])])]);
  }
  return { xh, gx };
}

/** Whether tensor `name` is a constant whose every element is 1. */
function allOnes(c: RuleContext, name: string): boolean {
  const v = c.fold(name);
  return v?.values.every((x) => x === 1) === true;
}

/** 2-D-or-more view of MatMul operands (numpy matmul promotion of 1-D operands). */
function matmulRule(c: RuleContext) {
  const e = c.e;
  const [a, b] = c.node.inputs;
  const ad = inDims(c, 0);
  const bd = inDims(c, 1);
  const yd = outDims(c);
  const a2 = ad.length === 1 ? [1, ad[0]] : ad;
  const b2 = bd.length === 1 ? [bd[0], 1] : bd;
  const batch = yd.slice(0, yd.length - (ad.length === 1 ? 0 : 1) - (bd.length === 1 ? 0 : 1));
  const m = a2[a2.length - 2];
  const n = b2[b2.length - 1];
  const k = a2[a2.length - 1];
  const y2 = [...batch, m, n];
  // A gradient g·s with a scalar s (see the Mul rule): multiply the matmul products by s instead.
  const scaled = e.scaledOf(gy0(c));
  const gy = e.reshape(scaled ? scaled[0] : gy0(c), yd, y2);
  const rescale = (t: string) => (scaled ? e.op1('Mul', [t, scaled[1]]) : t);
  const swapLast = (r: number) => [...range(0, r - 2), r - 1, r - 2];
  if (c.needs(0) && bd.length === 2 && ad.length >= 2) {
    // y = a·b with a 2-D b (a weight) ⇒ ga = gy·bᵀ as one Gemm(transB) on 2-D views. Not MatMul(gy, Transpose(b)):
    // onnxruntime constant-folds the Transpose of a weight into a private transposed copy (0.9 GB for SD 1.5).
    const rows = ad.slice(0, -1).reduce((p, v) => p * v, 1);
    const ga = rescale(e.op1('Gemm', [e.reshape(scaled ? scaled[0] : gy0(c), yd, [rows, n]), b], { transB: attr.int(1) }));
    c.addGrad(0, e.reshape(ga, [rows, k], ad));
  } else if (c.needs(0)) {
    // y = a·b ⇒ ga = gy·bᵀ, summed over broadcast batch axes.
    const bT = e.transpose(e.reshape(b, bd, b2), swapLast(b2.length));
    const ga2 = rescale(e.op1('MatMul', [gy, bT]));
    c.addGrad(0, e.reshape(e.unbroadcast(ga2, [...batch, m, k], a2), a2, ad));
  }
  if (c.needs(1)) {
    // gb = aᵀ·gy, summed over broadcast batch axes.
    const aT = e.transpose(e.reshape(a, ad, a2), swapLast(a2.length));
    const gb2 = rescale(e.op1('MatMul', [aT, gy]));
    c.addGrad(1, e.reshape(e.unbroadcast(gb2, [...batch, k, n], b2), b2, bd));
  }
}

function gemmRule(c: RuleContext) {
  const e = c.e;
  const [a, b] = c.node.inputs;
  const alpha = attrFloat(c.node, 'alpha', 1);
  const beta = attrFloat(c.node, 'beta', 1);
  const transA = attrInt(c.node, 'transA', 0);
  const transB = attrInt(c.node, 'transB', 0);
  const gy = gy0(c);
  // y = α·A'·B' + β·C with A' = transA ? Aᵀ : A, B' = transB ? Bᵀ : B.
  if (c.needs(0)) {
    // gA' = α·gy·B'ᵀ; when transA, gA = (gA')ᵀ = α·B'·gyᵀ.
    const ga =
      transA === 0
        ? e.op1('Gemm', [gy, b], { alpha: attr.float(alpha), transB: attr.int(1 - transB) })
        : e.op1('Gemm', [b, gy], { alpha: attr.float(alpha), transA: attr.int(transB), transB: attr.int(1) });
    c.addGrad(0, ga);
  }
  if (c.needs(1)) {
    // gB' = α·A'ᵀ·gy; when transB, gB = (gB')ᵀ = α·gyᵀ·A'.
    const gb =
      transB === 0
        ? e.op1('Gemm', [a, gy], { alpha: attr.float(alpha), transA: attr.int(1 - transA) })
        : e.op1('Gemm', [gy, a], { alpha: attr.float(alpha), transA: attr.int(1), transB: attr.int(transA) });
    c.addGrad(1, gb);
  }
  if (c.node.inputs.length > 2 && c.node.inputs[2] !== '' && c.needs(2)) {
    const scaled = beta === 1 ? gy : e.op1('Mul', [gy, e.scalarF(beta)]);
    c.addGrad(2, e.unbroadcast(scaled, outDims(c), inDims(c, 2)));
  }
}

/** Explicit per-axis begin/end pads of a Conv node (resolving auto_pad with the static shapes). */
function convPads(c: RuleContext, xs: number[], ks: number[], ys: number[], strides: number[], dil: number[]) {
  const nd = xs.length;
  const autoPad = attrString(c.node, 'auto_pad', 'NOTSET');
  const begin: number[] = [];
  const end: number[] = [];
  const pads = attrInts(c.node, 'pads') ?? new Array<number>(2 * nd).fill(0);
  for (let i = 0; i < nd; i++) {
    if (autoPad === 'NOTSET' || autoPad === '') {
      begin.push(pads[i]);
      end.push(pads[i + nd]);
    } else if (autoPad === 'VALID') {
      begin.push(0);
      end.push(0);
    } else if (autoPad === 'SAME_UPPER' || autoPad === 'SAME_LOWER') {
      const total = Math.max(0, (ys[i] - 1) * strides[i] + (ks[i] - 1) * dil[i] + 1 - xs[i]);
      const small = Math.floor(total / 2);
      begin.push(autoPad === 'SAME_UPPER' ? small : total - small);
      end.push(autoPad === 'SAME_UPPER' ? total - small : small);
    } else {
      throw new Error(`buildVjp: ${describe(c.node)} has unknown auto_pad '${autoPad}'`);
    }
  }
  return { begin, end };
}

function convRule(c: RuleContext) {
  const e = c.e;
  const [x, w] = c.node.inputs;
  const xd = inDims(c, 0);
  const wd = inDims(c, 1);
  const yd = outDims(c);
  const nd = xd.length - 2;
  const group = attrInt(c.node, 'group', 1);
  const strides = attrInts(c.node, 'strides') ?? new Array<number>(nd).fill(1);
  const dil = attrInts(c.node, 'dilations') ?? new Array<number>(nd).fill(1);
  const ks = wd.slice(2);
  const xs = xd.slice(2);
  const ys = yd.slice(2);
  const { begin, end } = convPads(c, xs, ks, ys, strides, dil);
  const gy = gy0(c);
  if (c.needs(0)) {
    // gx = ConvTranspose(gy, W) with the same geometry; output_padding restores the rows the forward
    // stride skipped so the result has exactly x's spatial size.
    const outPad = xs.map((s, i) => s - ((ys[i] - 1) * strides[i] + (ks[i] - 1) * dil[i] + 1 - begin[i] - end[i]));
    if (outPad.some((p) => p < 0)) throw new Error(`internal: negative output_padding for ${describe(c.node)}`);
    const attrs: Record<string, AttrValue> = {
      group: attr.int(group),
      strides: attr.ints(strides),
      dilations: attr.ints(dil),
      pads: attr.ints([...begin, ...end]),
      kernel_shape: attr.ints(ks),
    };
    if (outPad.some((p) => p !== 0)) attrs.output_padding = attr.ints(outPad);
    c.addGrad(0, e.op1('ConvTranspose', [gy, w], attrs));
  }
  if (c.needs(1)) {
    // gW[m,c,k] = Σ_n,o gy[n,m,o]·x_pad[n,c,o·s + k·d]: a convolution of x (channels as batch) with gy
    // (batch as channels), stride = forward dilation, dilation = forward stride; one per group.
    const cg = xd[1] / group;
    const mg = yd[1] / group;
    const parts: string[] = [];
    for (let gi = 0; gi < group; gi++) {
      const xg = group === 1 ? x : e.op1('Slice', [x, e.constI64([gi * cg]), e.constI64([(gi + 1) * cg]), e.constI64([1])]);
      const gyg = group === 1 ? gy : e.op1('Slice', [gy, e.constI64([gi * mg]), e.constI64([(gi + 1) * mg]), e.constI64([1])]);
      const perm = [1, 0, ...range(2, nd + 2)];
      const full = e.op1('Conv', [e.transpose(xg, perm), e.transpose(gyg, perm)], {
        strides: attr.ints(dil),
        dilations: attr.ints(strides),
        pads: attr.ints([...begin, ...end]),
      });
      // The correlation can be longer than the kernel when the forward skipped trailing rows; cut to k.
      const cut = e.op1('Slice', [full, e.constI64(ks.map(() => 0)), e.constI64(ks), e.constI64(range(2, nd + 2))]);
      parts.push(e.transpose(cut, perm));
    }
    c.addGrad(1, parts.length === 1 ? parts[0] : e.op1('Concat', parts, { axis: attr.int(0) }));
  }
  if (c.node.inputs.length > 2 && c.node.inputs[2] !== '' && c.needs(2)) {
    c.addGrad(2, e.reduceSum(gy, [0, ...range(2, nd + 2)], false));
  }
}

function sliceRule(c: RuleContext) {
  if (!c.needs(0)) return;
  const e = c.e;
  const [, startsN, endsN, axesN, stepsN] = c.node.inputs;
  const xd = inDims(c, 0);
  const yd = outDims(c);
  const r = xd.length;
  let starts: number[] | undefined;
  let ends: number[] | undefined;
  let axes: number[] | undefined;
  let steps: number[] | undefined;
  if (c.opset < 10) {
    starts = attrInts(c.node, 'starts');
    ends = attrInts(c.node, 'ends');
    axes = attrInts(c.node, 'axes');
  } else {
    starts = c.fold(startsN)?.values;
    ends = c.fold(endsN)?.values;
    axes = axesN !== undefined && axesN !== '' ? c.fold(axesN)?.values : undefined;
    steps = stepsN !== undefined && stepsN !== '' ? c.fold(stepsN)?.values : undefined;
    const unfolded = (axesN !== undefined && axesN !== '' && !axes) || (stepsN !== undefined && stepsN !== '' && !steps);
    if (!starts || !ends || unfolded) {
      // Parameters computed at run time: slice an iota of x's flat indices with the same parameters.
      // The index table is built at run time (Range) so no tensor of x's size is stored in the graph.
      const flatIota = e.op1('Range', [e.constI64([0], []), e.constI64([numel(xd)], []), e.constI64([1], [])]);
      const iota = e.reshape(flatIota, [numel(xd)], xd);
      const picked = e.op1('Slice', [iota, ...c.node.inputs.slice(1)]);
      c.addGrad(0, scatterInto(c, xd, e.reshape(picked, yd, [numel(yd)]), yd));
      return;
    }
  }
  if (!starts || !ends) throw new Error(`buildVjp: ${describe(c.node)} lacks starts/ends`);
  const ax = (axes ?? range(0, starts.length)).map((a) => normAxis(a, r));
  const st = steps ?? new Array<number>(starts.length).fill(1);
  const lo = new Array<number>(r).fill(0);
  const step = new Array<number>(r).fill(1);
  ax.forEach((a, i) => {
    const [s] = clampSlice(starts![i], ends![i], st[i], xd[a]);
    lo[a] = s;
    step[a] = st[i];
  });
  if (step.every((s) => s === 1)) {
    // Unit steps: gx is gy zero-padded back to x's extent.
    const pads = [...lo, ...xd.map((d, i) => d - lo[i] - yd[i])];
    if (pads.every((p) => p === 0)) return void c.addGrad(0, gy0(c));
    c.addGrad(0, e.op1('Pad', [gy0(c), e.constI64(pads)], { mode: attr.string('constant') }));
    return;
  }
  // Strided or reversed slices: scatter gy into the flat positions it was read from (indices are unique).
  const idx: number[] = [];
  const strideX = xd.map((_, i) => numel(xd.slice(i + 1)));
  const walk = (axis: number, base: number) => {
    if (axis === r) return void idx.push(base);
    for (let j = 0, p = lo[axis]; j < yd[axis]; j++, p += step[axis]) walk(axis + 1, base + p * strideX[axis]);
  };
  walk(0, 0);
  c.addGrad(0, scatterInto(c, xd, e.constI64(idx, [idx.length]), yd));
}

/** gx (shape xd) = zeros with gx.flat[idx[i]] = gy.flat[i]; idx are unique flat positions. */
function scatterInto(c: RuleContext, xd: number[], idx: string, yd: number[]): string {
  const e = c.e;
  const flat = e.op1('ScatterElements', [e.zeros([numel(xd)]), idx, e.reshape(gy0(c), yd, [numel(yd)])], {
    axis: attr.int(0),
  });
  return e.reshape(flat, [numel(xd)], xd);
}

function gatherRule(c: RuleContext) {
  if (!c.needs(0)) return;
  const e = c.e;
  const [, indices] = c.node.inputs;
  const xd = inDims(c, 0);
  const idd = inDims(c, 1);
  const yd = outDims(c);
  const axis = normAxis(attrInt(c.node, 'axis', 0), xd.length);
  const d = xd[axis];
  const pre = numel(xd.slice(0, axis));
  const post = numel(xd.slice(axis + 1));
  const nIdx = numel(idd);
  // y = x.take(idx, axis) ⇒ gx = OneHot(idx)ᵀ·gy along `axis`, which also sums repeated indices.
  // One-hot built at run time: M[j, i] = (idx[i] mod d == j), so any (even non-constant) indices work.
  let id64 = indices;
  if (c.info(indices).elemType !== DataType.INT64) id64 = e.op1('Cast', [indices], { to: attr.int(DataType.INT64) });
  const dConst = e.constI64([d], []);
  const wrapped = e.op1('Mod', [e.op1('Add', [e.reshape(id64, idd, [1, nIdx]), dConst]), dConst]);
  const oneHot = e.op1('Cast', [e.op1('Equal', [e.constI64(range(0, d), [d, 1]), wrapped])], {
    to: attr.int(e.floatType),
  });
  const g3 = e.reshape(gy0(c), yd, [pre, nIdx, post]);
  const gx3 = e.op1('MatMul', [oneHot, g3]);
  c.addGrad(0, e.reshape(gx3, [pre, d, post], xd));
}

function resizeRule(c: RuleContext) {
  if (!c.needs(0)) return;
  const e = c.e;
  const mode = attrString(c.node, 'mode', 'nearest');
  const ctm = attrString(c.node, 'coordinate_transformation_mode', 'half_pixel');
  const nearestMode = attrString(c.node, 'nearest_mode', 'round_prefer_floor');
  const xd = inDims(c, 0);
  const yd = outDims(c);
  const factors = yd.map((v, i) => v / xd[i]);
  const integral = factors.every((f) => Number.isInteger(f) && f >= 1);
  // Nearest, asymmetric, integer factor f: y[i] = x[floor(i/f)], so every x element feeds a block of f
  // outputs per axis. round_prefer_floor picks the same source as floor when f ≤ 2 (i/f has fraction ≤ 0.5).
  const floorLike = nearestMode === 'floor' || (nearestMode === 'round_prefer_floor' && factors.every((f) => f <= 2));
  if (mode !== 'nearest' || ctm !== 'asymmetric' || !integral || !floorLike) {
    throw new Error(
      `buildVjp: ${describe(c.node)} is not supported for differentiation: only mode 'nearest' with ` +
        `coordinate_transformation_mode 'asymmetric', nearest_mode 'floor' and integer scale factors is (found mode ` +
        `'${mode}', '${ctm}', '${nearestMode}', factors [${factors.map((f) => +f.toFixed(4)).join(', ')}])`,
    );
  }
  // gy [.., x_i·f_i, ..] → [.., x_i, f_i, ..] → sum the f axes.
  const split = xd.flatMap((v, i) => [v, factors[i]]);
  const g = e.reshape(gy0(c), yd, split);
  const summed = e.reduceSum(
    g,
    xd.map((_, i) => 2 * i + 1).filter((a) => split[a] !== 1),
    false,
  );
  c.addGrad(
    0,
    e.reshape(
      summed,
      xd.flatMap((v, i) => (factors[i] === 1 ? [v, 1] : [v])),
      xd,
    ),
  );
}

export const RULES: Record<string, Rule> = {
  Identity: unary((_c, g) => g),
  Dropout: (c) => {
    if (c.needs(0)) c.addGrad(0, gy0(c)); // inference-mode Dropout is the identity
  },
  Neg: unary((c, g) => c.e.op1('Neg', [g])),
  Exp: unary((c, g, _x, y) => c.e.op1('Mul', [g, y])),
  Log: unary((c, g, x) => c.e.op1('Div', [g, x])),
  Sqrt: unary((c, g, _x, y) => c.e.op1('Div', [c.e.op1('Mul', [g, c.e.scalarF(0.5)]), y])),
  Reciprocal: unary((c, g, _x, y) => c.e.op1('Neg', [c.e.op1('Mul', [g, c.e.op1('Mul', [y, y])])])),
  Abs: unary((c, g, x) => c.e.op1('Mul', [g, c.e.op1('Sign', [x])])),
  Sin: unary((c, g, x) => c.e.op1('Mul', [g, c.e.op1('Cos', [x])])),
  Cos: unary((c, g, x) => c.e.op1('Neg', [c.e.op1('Mul', [g, c.e.op1('Sin', [x])])])),
  // d/dx erf(x) = 2/√π · exp(−x²)
  Erf: unary((c, g, x) => {
    const e = c.e;
    const dens = e.op1('Exp', [e.op1('Neg', [e.op1('Mul', [x, x])])]);
    return e.op1('Mul', [g, e.op1('Mul', [dens, e.scalarF(2 / Math.sqrt(Math.PI))])]);
  }),
  Sigmoid: unary((c, g, _x, y) => c.e.op1('Mul', [g, c.e.op1('Mul', [y, c.e.op1('Sub', [c.e.scalarF(1), y])])])),
  Tanh: unary((c, g, _x, y) => c.e.op1('Mul', [g, c.e.op1('Sub', [c.e.scalarF(1), c.e.op1('Mul', [y, y])])])),
  Relu: unary((c, g, x) => c.e.op1('Where', [c.e.op1('Greater', [x, c.e.scalarF(0)]), g, c.e.scalarF(0)])),
  LeakyRelu: unary((c, g, x) => {
    const alpha = attrFloat(c.node, 'alpha', 0.01);
    return c.e.op1('Where', [c.e.op1('Greater', [x, c.e.scalarF(0)]), g, c.e.op1('Mul', [g, c.e.scalarF(alpha)])]);
  }),
  Cast: (c) => {
    if (c.needs(0)) c.addGrad(0, c.e.op1('Cast', [gy0(c)], { to: attr.int(c.info(c.node.inputs[0]).elemType) }));
  },
  Add: (c) => {
    for (const i of [0, 1]) if (c.needs(i)) c.addGrad(i, c.e.unbroadcast(gy0(c), outDims(c), inDims(c, i)));
  },
  Sum: (c) => {
    c.node.inputs.forEach((_, i) => {
      if (c.needs(i)) c.addGrad(i, c.e.unbroadcast(gy0(c), outDims(c), inDims(c, i)));
    });
  },
  Sub: (c) => {
    if (c.needs(0)) c.addGrad(0, c.e.unbroadcast(gy0(c), outDims(c), inDims(c, 0)));
    if (c.needs(1)) c.addGrad(1, c.e.op1('Neg', [c.e.unbroadcast(gy0(c), outDims(c), inDims(c, 1))]));
  },
  Mul: (c) => {
    const [a, b] = c.node.inputs;
    // y = a·s with a scalar s (attention scores × scale): remembered, so the MatMul rule before it applies s
    // to its own, smaller results instead of a pass over the scores.
    const prod = (i: number, other: string) =>
      numel(inDims(c, 1 - i)) === 1 && sameShape(outDims(c), inDims(c, i))
        ? c.e.scale(gy0(c), other)
        : c.e.unbroadcast(c.e.op1('Mul', [gy0(c), other]), outDims(c), inDims(c, i));
    if (c.needs(0)) c.addGrad(0, prod(0, b));
    if (c.needs(1)) c.addGrad(1, prod(1, a));
  },
  Div: (c) => {
    const [, b] = c.node.inputs;
    const y = c.node.outputs[0];
    if (c.needs(0)) c.addGrad(0, c.e.unbroadcast(c.e.op1('Div', [gy0(c), b]), outDims(c), inDims(c, 0)));
    // y = a/b ⇒ gb = −gy·y/b
    if (c.needs(1)) {
      const gb = c.e.op1('Neg', [c.e.op1('Div', [c.e.op1('Mul', [gy0(c), y]), b])]);
      c.addGrad(1, c.e.unbroadcast(gb, outDims(c), inDims(c, 1)));
    }
  },
  Pow: (c) => {
    const e = c.e;
    const [x, p] = c.node.inputs;
    const y = c.node.outputs[0];
    if (c.needs(0)) {
      const pv = c.fold(p);
      let d: string;
      if (pv && pv.values.length === 1 && pv.values[0] === 2) {
        d = e.op1('Mul', [x, e.scalarF(2)]); // the common square, without a Pow
      } else {
        const pf = c.info(p).elemType === e.floatType ? p : e.op1('Cast', [p], { to: attr.int(e.floatType) });
        // y = x^p ⇒ gx = gy·p·x^(p−1)
        d = e.op1('Mul', [pf, e.op1('Pow', [x, e.op1('Sub', [pf, e.scalarF(1)])])]);
      }
      c.addGrad(0, e.unbroadcast(e.op1('Mul', [gy0(c), d]), outDims(c), inDims(c, 0)));
    }
    if (c.needs(1)) {
      // gp = gy·y·ln x
      const gp = e.op1('Mul', [e.op1('Mul', [gy0(c), y]), e.op1('Log', [x])]);
      c.addGrad(1, e.unbroadcast(gp, outDims(c), inDims(c, 1)));
    }
  },
  Softmax: (c) => {
    if (!c.needs(0)) return;
    const e = c.e;
    const y = c.node.outputs[0];
    // gx = y ⊙ (gy − Σ_axis gy ⊙ y)
    const s = e.reduceSum(e.op1('Mul', [gy0(c), y]), softmaxAxes(c), true);
    c.addGrad(0, e.op1('Mul', [y, e.op1('Sub', [gy0(c), s])]));
  },
  LogSoftmax: (c) => {
    if (!c.needs(0)) return;
    const e = c.e;
    // gx = gy − softmax(x) ⊙ Σ_axis gy, softmax(x) = exp(y)
    const s = e.reduceSum(gy0(c), softmaxAxes(c), true);
    c.addGrad(0, e.op1('Sub', [gy0(c), e.op1('Mul', [e.op1('Exp', [c.node.outputs[0]]), s])]));
  },
  MatMul: matmulRule,
  Gemm: gemmRule,
  Conv: convRule,
  InstanceNormalization: (c) => {
    const e = c.e;
    const xd = inDims(c, 0);
    const r = xd.length;
    const axes = range(2, r);
    const eps = attrFloat(c.node, 'epsilon', 1e-5);
    const scaleB = allOnes(c, c.node.inputs[1]) ? undefined : e.reshape(c.node.inputs[1], inDims(c, 1), [xd[1], ...new Array<number>(r - 2).fill(1)]);
    const { xh, gx } = normBackward(c, c.node.inputs[0], axes, eps, scaleB);
    if (gx) c.addGrad(0, gx);
    if (c.needs(1)) c.addGrad(1, e.reduceSum(e.op1('Mul', [gy0(c), xh]), [0, ...axes], false));
    if (c.needs(2)) c.addGrad(2, e.reduceSum(gy0(c), [0, ...axes], false));
  },
  LayerNormalization: (c) => {
    const e = c.e;
    if (c.gy(1) !== undefined || c.gy(2) !== undefined) {
      throw new Error(`buildVjp: ${describe(c.node)}: differentiating its Mean/InvStdDev outputs is not supported`);
    }
    const xd = inDims(c, 0);
    const r = xd.length;
    const axis = normAxis(attrInt(c.node, 'axis', -1), r);
    const axes = range(axis, r);
    const eps = attrFloat(c.node, 'epsilon', 1e-5);
    const scaleB = allOnes(c, c.node.inputs[1]) ? undefined : c.node.inputs[1];
    const { xh, gx } = normBackward(c, c.node.inputs[0], axes, eps, scaleB);
    if (gx) c.addGrad(0, gx);
    if (c.needs(1)) c.addGrad(1, e.unbroadcast(e.op1('Mul', [gy0(c), xh]), xd, inDims(c, 1)));
    if (c.node.inputs.length > 2 && c.node.inputs[2] !== '' && c.needs(2)) {
      c.addGrad(2, e.unbroadcast(gy0(c), xd, inDims(c, 2)));
    }
  },
  ReduceSum: reduceRule(false),
  ReduceMean: reduceRule(true),
  Reshape: (c) => {
    if (c.needs(0)) c.addGrad(0, c.e.reshape(gy0(c), outDims(c), inDims(c, 0)));
  },
  Flatten: (c) => {
    if (c.needs(0)) c.addGrad(0, c.e.reshape(gy0(c), outDims(c), inDims(c, 0)));
  },
  Squeeze: (c) => {
    if (c.needs(0)) c.addGrad(0, c.e.reshape(gy0(c), outDims(c), inDims(c, 0)));
  },
  Unsqueeze: (c) => {
    if (c.needs(0)) c.addGrad(0, c.e.reshape(gy0(c), outDims(c), inDims(c, 0)));
  },
  Transpose: (c) => {
    if (!c.needs(0)) return;
    const r = inDims(c, 0).length;
    const perm = attrInts(c.node, 'perm') ?? range(0, r).reverse();
    const inv = new Array<number>(r);
    perm.forEach((p, i) => {
      inv[p] = i;
    });
    c.addGrad(0, c.e.transpose(gy0(c), inv));
  },
  Concat: (c) => {
    const r = outDims(c).length;
    const axis = normAxis(attrInt(c.node, 'axis', 0), r);
    const sizes = c.node.inputs.map((_, i) => inDims(c, i)[axis]);
    const parts = c.e.split(gy0(c), axis, sizes);
    c.node.inputs.forEach((_, i) => {
      if (c.needs(i)) c.addGrad(i, parts[i]);
    });
  },
  Split: (c) => {
    if (!c.needs(0)) return;
    const r = inDims(c, 0).length;
    const axis = normAxis(attrInt(c.node, 'axis', 0), r);
    const parts = c.node.outputs.map((o, i) => c.gy(i) ?? c.e.zeros(dims(c, o)));
    c.addGrad(0, parts.length === 1 ? parts[0] : c.e.op1('Concat', parts, { axis: attr.int(axis) }));
  },
  Slice: sliceRule,
  Gather: gatherRule,
  Expand: (c) => {
    if (c.needs(0)) c.addGrad(0, c.e.unbroadcast(gy0(c), outDims(c), inDims(c, 0)));
  },
  Where: (c) => {
    const e = c.e;
    const cond = c.node.inputs[0];
    const zero = e.scalarF(0);
    if (c.needs(1)) c.addGrad(1, e.unbroadcast(e.op1('Where', [cond, gy0(c), zero]), outDims(c), inDims(c, 1)));
    if (c.needs(2)) c.addGrad(2, e.unbroadcast(e.op1('Where', [cond, zero, gy0(c)]), outDims(c), inDims(c, 2)));
  },
  Resize: resizeRule,
};

/** Inputs that carry values (not shapes, indices, conditions or parameters); others never get a gradient. */
export const DIFFERENTIABLE_INPUTS: Record<string, number[]> = {
  Reshape: [0],
  Expand: [0],
  Slice: [0],
  Gather: [0],
  Squeeze: [0],
  Unsqueeze: [0],
  Resize: [0],
  Split: [0],
  ReduceSum: [0],
  ReduceMean: [0],
  Where: [1, 2],
  Pow: [0, 1],
  Dropout: [0],
  Tile: [0],
  Pad: [0],
  Flatten: [0],
  Upsample: [0],
  OneHot: [],
  TopK: [0],
};

/** Ops whose outputs never carry a gradient (integer/boolean results, shape queries, random draws). */
export const NON_DIFFERENTIABLE_OPS = new Set([
  'Shape',
  'Size',
  'Equal',
  'Greater',
  'GreaterOrEqual',
  'Less',
  'LessOrEqual',
  'Not',
  'And',
  'Or',
  'Xor',
  'ArgMax',
  'ArgMin',
  'NonZero',
  'IsNaN',
  'IsInf',
  'Sign',
  'Floor',
  'Ceil',
  'Round',
  'ConstantOfShape',
  'Constant',
  'RandomNormal',
  'RandomUniform',
  'RandomNormalLike',
  'RandomUniformLike',
  'EyeLike',
  'Range',
  'OneHot',
]);
