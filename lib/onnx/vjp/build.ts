/**
 * Reverse-mode differentiation of an ONNX graph: builds the vector-Jacobian product of the tensors `outputs`
 * with respect to the input `wrt`, as ONNX graphs that onnxruntime runs (no gradient ops needed).
 *
 * 1. Activity: tensors depending on `wrt` through value inputs (`active`), intersected with those the
 *    requested outputs depend on (`useful`). Everything else (shape arithmetic, timestep and text paths) is a
 *    constant of the backward pass, read from the forward.
 * 2. Backward: the useful nodes in reverse order; each op's rule emits nodes for its input gradients;
 *    gradients of tensors used several times are summed.
 * 3. Assembly: 'recompute' = one graph (forward nodes the backward reads + backward);
 *    'residuals' = the forward graph with extra outputs (the tensors the backward reads) + a backward graph.
 */
import {
  type GraphProto,
  type ModelProto,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
  makeValueInfo,
  opsetVersion,
  tensorDims,
  valueInfoDims,
  valueInfoElemType,
} from '../proto';
import { Emitter } from './emitter';
import { ConstantFolder } from './fold';
import { type ConstTensor, DataType, type NodeView, type TensorInfo, dataTypeName, describe, isFloatType, numel } from './ir';
import { readConstTensor, toNodeProto, toTensorProto, viewNode } from './proto-adapter';
import { DIFFERENTIABLE_INPUTS, NON_DIFFERENTIABLE_OPS, RULES, type RuleContext } from './rules';

export type VjpDesign = 'recompute' | 'residuals';

export interface VjpOptions {
  /** Graph input to differentiate with respect to (e.g. 'sample'). */
  wrt: string;
  /** Tensors whose cotangents are given (e.g. the exposed attention probabilities). */
  outputs: string[];
  /** Static element type and dims of every tensor (from `inferStaticShapes`). */
  shapes: Map<string, TensorInfo>;
  /** 'recompute' (default): one graph; 'residuals': forward-with-residuals + backward graphs. */
  design?: VjpDesign;
}

export interface VjpStats {
  design: VjpDesign;
  /** Nodes of the source graph. */
  sourceNodes: number;
  /** Source nodes that were differentiated. */
  differentiatedNodes: number;
  /** Nodes emitted for the backward pass. */
  backwardNodes: number;
  /** Forward nodes copied into the VJP graph (recompute) or the backward graph (constant chains, residuals). */
  forwardNodes: number;
  /** Residual tensors passed from forward to backward ('residuals' design; 0 otherwise). */
  residuals: number;
  /** Total size of the residual tensors in bytes. */
  residualBytes: number;
  /** Names of the residual tensors, in the order of the backward graph's inputs. */
  residualNames: string[];
  /** Requested outputs that do not depend on `wrt` (their cotangent inputs are unused). */
  unreachableOutputs: string[];
  /** Differentiated nodes by op type. */
  opCounts: Record<string, number>;
  buildMs: number;
}

export interface VjpResult {
  vjp?: ModelProto;
  forward?: ModelProto;
  backward?: ModelProto;
  stats: VjpStats;
}

/** Name of the cotangent input for `output` and of the gradient output for `wrt`. */
export const gradName = (tensor: string): string => `grad_${tensor}`;

const BYTES: Record<number, number> = {
  [DataType.FLOAT]: 4,
  [DataType.DOUBLE]: 8,
  [DataType.FLOAT16]: 2,
  [DataType.INT64]: 8,
};

function checkOptions(model: ModelProto, options: VjpOptions): GraphProto {
  if (model === null || typeof model !== 'object' || model.graph == null) {
    throw new TypeError('buildVjp: expected a decoded ModelProto with a graph for model');
  }
  if (options === null || typeof options !== 'object') throw new TypeError('buildVjp: expected an options object');
  if (typeof options.wrt !== 'string' || options.wrt === '') {
    throw new TypeError(`buildVjp: expected a tensor name for options.wrt but received ${String(options.wrt)}`);
  }
  if (
    !Array.isArray(options.outputs) ||
    options.outputs.length === 0 ||
    options.outputs.some((o) => typeof o !== 'string' || o === '')
  ) {
    throw new TypeError('buildVjp: expected a non-empty array of tensor names for options.outputs');
  }
  if (new Set(options.outputs).size !== options.outputs.length) {
    throw new RangeError('buildVjp: options.outputs lists a tensor twice; pass each output once');
  }
  if (!(options.shapes instanceof Map)) {
    throw new TypeError('buildVjp: expected a Map of static shapes for options.shapes (see inferStaticShapes)');
  }
  if (options.design !== undefined && options.design !== 'recompute' && options.design !== 'residuals') {
    throw new RangeError(
      `buildVjp: expected 'recompute' or 'residuals' for options.design but received '${String(options.design)}'`,
    );
  }
  const graph = model.graph;
  if (!graph.input.some((i) => i.name === options.wrt)) {
    throw new RangeError(
      `buildVjp: options.wrt '${options.wrt}' is not an input of the graph (inputs: ${graph.input.map((i) => i.name).join(', ')})`,
    );
  }
  return graph;
}

export function buildVjp(model: ModelProto, options: VjpOptions): VjpResult {
  const t0 = performance.now();
  const graph = checkOptions(model, options);
  const design = options.design ?? 'recompute';
  const { wrt, outputs } = options;
  const opset = opsetVersion(model, '') ?? 1;
  if (opset < 11) throw new RangeError(`buildVjp: the model imports opset ${opset}; opset 11 or newer is required`);

  // ---- index the source graph
  const nodes = graph.node.map(viewNode);
  const producer = new Map<string, NodeView>();
  const taken = new Set<string>();
  for (const n of nodes) {
    for (const o of n.outputs) if (o) producer.set(o, n);
    for (const t of [...n.inputs, ...n.outputs]) taken.add(t);
    taken.add(n.name);
  }
  const inits = new Map<string, TensorProto>();
  for (const t of graph.initializer) {
    inits.set(t.name ?? '', t);
    taken.add(t.name ?? '');
  }
  const inputNames = new Set(graph.input.map((i) => i.name ?? ''));
  for (const n of inputNames) taken.add(n);
  for (const o of graph.output) taken.add(o.name ?? '');

  const extraInfo = new Map<string, TensorInfo>();
  for (const vi of graph.input) {
    const et = valueInfoElemType(vi);
    const d = valueInfoDims(vi);
    if (et !== undefined && d?.every((x) => typeof x === 'number'))
      extraInfo.set(vi.name ?? '', { elemType: et, dims: d as number[] });
  }
  for (const [name, t] of inits) extraInfo.set(name, { elemType: t.data_type ?? 0, dims: tensorDims(t) });
  const info = (name: string): TensorInfo | undefined => options.shapes.get(name) ?? extraInfo.get(name);
  const constInit = new Map<string, ConstTensor | null>();
  const initValue = (name: string): ConstTensor | undefined => {
    const t = inits.get(name);
    if (!t) return undefined;
    if (!constInit.has(name)) constInit.set(name, readConstTensor(t) ?? null);
    return constInit.get(name) ?? undefined;
  };
  const folder = new ConstantFolder(producer, initValue, info);

  const wrtInfo = info(wrt);
  if (!wrtInfo) throw new RangeError(`buildVjp: no static shape for '${wrt}'; pass it in options.shapes`);
  if (wrtInfo.elemType !== DataType.FLOAT && wrtInfo.elemType !== DataType.DOUBLE) {
    // fp16 is refused rather than silently computed in half precision: gradients of attention losses
    // underflow in fp16, and casting every differentiated op to fp32 would double the weights in memory.
    throw new RangeError(
      `buildVjp: '${wrt}' is ${dataTypeName(wrtInfo.elemType)}; only float32 (or float64) models ` +
        'can be differentiated. Use the float32 export of the UNet for guidance',
    );
  }
  const floatType = wrtInfo.elemType;
  for (const o of outputs) {
    if (!producer.has(o) && !inputNames.has(o))
      throw new RangeError(`buildVjp: options.outputs names '${o}', which no node produces`);
  }

  for (const name of [wrt, ...outputs].map(gradName)) {
    if (taken.has(name))
      throw new RangeError(
        `buildVjp: the model already has a tensor named '${name}', the name the VJP graph needs for a gradient`,
      );
  }

  // ---- 1. activity analysis
  const active = new Set<string>([wrt]);
  const diffSlots = (n: NodeView): number[] => DIFFERENTIABLE_INPUTS[n.opType] ?? n.inputs.map((_, i) => i);
  for (const n of nodes) {
    if (NON_DIFFERENTIABLE_OPS.has(n.opType)) continue;
    if (!diffSlots(n).some((i) => active.has(n.inputs[i]))) continue;
    for (const o of n.outputs) {
      if (!o) continue;
      const inf = info(o);
      if (!inf)
        throw new RangeError(
          `buildVjp: no static shape for '${o}' (output of ${describe(n)}); options.shapes must cover every tensor`,
        );
      if (isFloatType(inf.elemType)) active.add(o);
    }
  }
  const useful = new Set(outputs.filter((o) => active.has(o)));
  const diffNodes: NodeView[] = [];
  for (let k = nodes.length - 1; k >= 0; k--) {
    const n = nodes[k];
    if (!n.outputs.some((o) => useful.has(o))) continue;
    if (NON_DIFFERENTIABLE_OPS.has(n.opType)) continue;
    const slots = diffSlots(n).filter((i) => active.has(n.inputs[i]));
    if (slots.length === 0) continue;
    for (const i of slots) useful.add(n.inputs[i]);
    diffNodes.push(n); // reverse topological order
  }
  for (const n of diffNodes) {
    if ((n.domain !== '' && n.domain !== 'ai.onnx') || !(n.opType in RULES)) {
      throw new Error(
        `buildVjp: cannot differentiate ${describe(n)}${n.domain ? ` (domain ${n.domain})` : ''}: no gradient ` +
          `rule for ${n.opType}; it lies on the path from '${wrt}' to the requested outputs`,
      );
    }
  }

  // ---- 2. backward pass
  const e = new Emitter(opset, floatType, taken);
  const grads = new Map<string, string[]>();
  const push = (t: string, g: string) => {
    const list = grads.get(t);
    if (list) list.push(g);
    else grads.set(t, [g]);
  };
  for (const o of outputs) if (useful.has(o)) push(o, gradName(o));
  const opCounts: Record<string, number> = {};
  for (const n of diffNodes) {
    const gys = n.outputs.map((o) => {
      const list = useful.has(o) ? grads.get(o) : undefined;
      return list ? e.sum(list) : undefined;
    });
    if (gys.every((g) => g === undefined)) continue;
    opCounts[n.opType] = (opCounts[n.opType] ?? 0) + 1;
    const ctx: RuleContext = {
      node: n,
      e,
      opset,
      info: (name) => {
        const inf = info(name);
        if (!inf) throw new RangeError(`buildVjp: no static shape for '${name}' (used by ${describe(n)})`);
        return inf;
      },
      fold: (name) => folder.get(name),
      needs: (i) => i < n.inputs.length && n.inputs[i] !== '' && useful.has(n.inputs[i]) && diffSlots(n).includes(i),
      gy: (i) => gys[i],
      addGrad: (i, g) => push(n.inputs[i], g),
    };
    RULES[n.opType](ctx);
  }
  const finalName = gradName(wrt);
  const gw = grads.get(wrt);
  if (gw) {
    e.nodes.push({
      name: e.fresh('grad_output'),
      opType: 'Identity',
      inputs: [e.sum(gw)],
      outputs: [finalName],
      attrs: {},
    });
  } else {
    // No requested output depends on wrt: the gradient is exactly zero.
    e.nodes.push({
      name: e.fresh('grad_output'),
      opType: 'ConstantOfShape',
      inputs: [e.constI64(wrtInfo.dims)],
      outputs: [finalName],
      attrs: { value: { kind: 'tensor', value: { dataType: floatType, dims: [1], values: [0] } } },
    });
  }

  e.removeDeadCode([finalName]);

  // ---- 3. assembly
  const newNodes = e.nodes.map(toNodeProto);
  const newInits = e.initializers.map(toTensorProto);
  const emitted = new Set<string>(e.initializers.map((t) => t.name));
  for (const n of e.nodes) for (const o of n.outputs) emitted.add(o);
  const cotangents = new Set(outputs.map(gradName));
  // Forward tensors the backward reads.
  const reads = new Set<string>();
  for (const n of e.nodes) for (const i of n.inputs) if (i && !emitted.has(i) && !cotangents.has(i)) reads.add(i);

  /** Source nodes (in source order) needed to compute `targets`, stopping at `stop` tensors. */
  const closure = (targets: Iterable<string>, stop: (t: string) => boolean): NodeView[] => {
    const need = new Set<NodeView>();
    const stack = [...targets];
    const seen = new Set<string>();
    while (stack.length > 0) {
      const t = stack.pop()!;
      if (seen.has(t) || stop(t)) continue;
      seen.add(t);
      const p = producer.get(t);
      if (!p || need.has(p)) continue;
      need.add(p);
      for (const i of p.inputs) if (i) stack.push(i);
    }
    return nodes.filter((n) => need.has(n));
  };
  const valueInfo = (name: string): ValueInfoProto => {
    const inf = info(name);
    if (!inf) throw new RangeError(`buildVjp: no static shape for '${name}'`);
    return makeValueInfo(name, inf.elemType, inf.dims);
  };
  const cotangentInputs = outputs.map((o) => {
    const inf = info(o);
    if (!inf) throw new RangeError(`buildVjp: no static shape for output '${o}'`);
    return makeValueInfo(gradName(o), inf.elemType, inf.dims);
  });
  const gradOutput = makeValueInfo(finalName, floatType, wrtInfo.dims);
  // The generated graphs bake in the static shapes, so their inputs declare them (no dim_params left).
  const staticInput = (vi: ValueInfoProto): ValueInfoProto => {
    const inf = options.shapes.get(vi.name ?? '');
    return inf && valueInfoElemType(vi) !== undefined ? makeValueInfo(vi.name ?? '', inf.elemType, inf.dims) : vi;
  };
  /** Initializers referenced by `ns`, shared by reference with the source model. */
  const usedInits = (ns: NodeProto[]): TensorProto[] => {
    const used = new Set<string>();
    for (const n of ns) for (const i of n.input) used.add(i);
    return graph.initializer.filter((t) => used.has(t.name ?? ''));
  };
  const makeModel = (g: GraphProto): ModelProto => {
    const m: ModelProto = {
      ir_version: model.ir_version,
      opset_import: model.opset_import,
      producer_name: 'divbind-native vjp',
      graph: g,
    };
    if (model.functions && model.functions.length > 0) m.functions = model.functions;
    return m;
  };
  const stats: VjpStats = {
    design,
    sourceNodes: nodes.length,
    differentiatedNodes: Object.values(opCounts).reduce((a, b) => a + b, 0),
    backwardNodes: e.nodes.length,
    forwardNodes: 0,
    residuals: 0,
    residualBytes: 0,
    residualNames: [],
    unreachableOutputs: outputs.filter((o) => !useful.has(o)),
    opCounts,
    buildMs: 0,
  };

  if (design === 'recompute') {
    const fwd = closure(reads, (t) => inits.has(t) || inputNames.has(t)).map((n) => n.source as NodeProto);
    stats.forwardNodes = fwd.length;
    const allNodes = [...fwd, ...newNodes];
    const vjp = makeModel({
      name: `${graph.name || 'graph'}_vjp`,
      node: allNodes,
      initializer: [...usedInits(fwd.concat(newNodes)), ...newInits],
      input: [...graph.input.map(staticInput), ...cotangentInputs],
      output: [gradOutput],
      value_info: [],
    });
    stats.buildMs = performance.now() - t0;
    return { vjp, stats };
  }

  // residuals: tensors that depend on a graph input are passed from the forward; constant chains are
  // recomputed inside the backward (they are cheap and often tiny shape vectors).
  const dynamic = new Set<string>([...inputNames].filter((n) => !inits.has(n)));
  for (const n of nodes) if (n.inputs.some((i) => dynamic.has(i))) for (const o of n.outputs) dynamic.add(o);
  const size = (t: string): number => numel(info(t)?.dims ?? []);
  const isFloat = (t: string): boolean => isFloatType(info(t)?.elemType ?? 0);
  // Attention probabilities are most of the residual bytes ([B·h, HW, HW] per self-attention layer) but are
  // cheap to rebuild from q and k: a chain of same-size ops (Softmax, scaling, Reshape/Transpose) that starts
  // at a MatMul whose operands are at least 4× smaller is recomputed in the backward instead of passed.
  const recomputed = new Set<NodeView>();
  const SAME_SIZE_OPS = new Set(['Softmax', 'Mul', 'Div', 'Add', 'Sub', 'Reshape', 'Transpose', 'Identity', 'Cast']);
  const chainFrom = (t: string): NodeView[] | undefined => {
    const chain: NodeView[] = [];
    let cur = t;
    for (let depth = 0; depth < 8; depth++) {
      const p = producer.get(cur);
      if (p?.outputs.length !== 1 || (p.domain !== '' && p.domain !== 'ai.onnx')) return undefined;
      chain.push(p);
      if (p.opType === 'MatMul') {
        const operands = p.inputs.reduce((sum, i) => sum + size(i), 0);
        return operands * 4 <= size(cur) ? chain : undefined;
      }
      if (!SAME_SIZE_OPS.has(p.opType)) return undefined;
      const data = p.inputs.filter((i) => i && dynamic.has(i) && isFloat(i));
      if (data.length !== 1 || size(data[0]) !== size(cur)) return undefined;
      cur = data[0];
    }
    return undefined;
  };
  for (const t of reads) {
    if (!dynamic.has(t) || inputNames.has(t)) continue;
    for (const n of chainFrom(t) ?? []) recomputed.add(n);
  }
  const recomputedOut = new Set<string>();
  for (const n of recomputed) for (const o of n.outputs) recomputedOut.add(o);
  const needed = new Set<string>([...reads]);
  for (const n of recomputed) for (const i of n.inputs) if (i) needed.add(i);
  const residualNames: string[] = [];
  const foldedConsts: TensorProto[] = [];
  const staticReads: string[] = [];
  for (const t of needed) {
    if (recomputedOut.has(t) || inputNames.has(t) || inits.has(t)) continue;
    if (!dynamic.has(t)) {
      staticReads.push(t);
      continue;
    }
    // Integer side values of recomputed nodes (reshape targets from Shape chains) fold to constants.
    const v = isFloat(t) ? undefined : folder.get(t);
    if (v) foldedConsts.push(toTensorProto({ ...v, name: t }));
    else residualNames.push(t);
  }
  const inputReads = graph.input.filter((vi) => needed.has(vi.name ?? '') && !inits.has(vi.name ?? ''));
  const constNodes = closure(staticReads, (t) => inits.has(t)).map((n) => n.source as NodeProto);
  const recomputedNodes = nodes.filter((n) => recomputed.has(n)).map((n) => n.source as NodeProto);
  stats.forwardNodes = constNodes.length + recomputedNodes.length;
  stats.residualNames = residualNames;
  stats.residuals = residualNames.length;
  stats.residualBytes = residualNames.reduce((s, r) => {
    const inf = info(r)!;
    return s + numel(inf.dims) * (BYTES[inf.elemType] ?? 4);
  }, 0);
  const existingOutputs = new Set(graph.output.map((o) => o.name ?? ''));
  const forward = makeModel({
    ...graph,
    input: graph.input.map(staticInput),
    output: [...graph.output, ...residualNames.filter((r) => !existingOutputs.has(r)).map(valueInfo)],
  } as GraphProto);
  const bwdNodes = [...constNodes, ...recomputedNodes, ...newNodes];
  const backward = makeModel({
    name: `${graph.name || 'graph'}_backward`,
    node: bwdNodes,
    initializer: [...usedInits(bwdNodes), ...foldedConsts, ...newInits],
    input: [...inputReads.map(staticInput), ...residualNames.map(valueInfo), ...cotangentInputs],
    output: [gradOutput],
    value_info: [],
  });
  stats.buildMs = performance.now() - t0;
  return { forward, backward, stats };
}
