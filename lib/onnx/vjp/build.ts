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
  if (!Array.isArray(options.outputs) || options.outputs.length === 0 || options.outputs.some((o) => typeof o !== 'string' || o === '')) {
    throw new TypeError('buildVjp: expected a non-empty array of tensor names for options.outputs');
  }
  if (new Set(options.outputs).size !== options.outputs.length) {
    throw new RangeError('buildVjp: options.outputs lists a tensor twice; pass each output once');
  }
  if (!(options.shapes instanceof Map)) {
    throw new TypeError('buildVjp: expected a Map of static shapes for options.shapes (see inferStaticShapes)');
  }
  if (options.design !== undefined && options.design !== 'recompute' && options.design !== 'residuals') {
    throw new RangeError(`buildVjp: expected 'recompute' or 'residuals' for options.design but received '${String(options.design)}'`);
  }
  const graph = model.graph;
  if (!graph.input.some((i) => i.name === options.wrt)) {
    throw new RangeError(`buildVjp: options.wrt '${options.wrt}' is not an input of the graph (inputs: ${graph.input.map((i) => i.name).join(', ')})`);
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

  const src = indexSource(model, graph, options.shapes);
  const wrtInfo = checkTargets(src, wrt, outputs);
  const activity = analyseActivity(src, wrt, outputs);
  const bwd = emitBackward(src, activity, { wrt, outputs, opset, wrtInfo });
  const asm = collectAssembly(src, bwd, wrt, outputs, wrtInfo);
  const stats: VjpStats = {
    design,
    sourceNodes: src.nodes.length,
    differentiatedNodes: Object.values(bwd.opCounts).reduce((a, b) => a + b, 0),
    backwardNodes: bwd.e.nodes.length,
    forwardNodes: 0,
    residuals: 0,
    residualBytes: 0,
    residualNames: [],
    unreachableOutputs: outputs.filter((o) => !activity.useful.has(o)),
    opCounts: bwd.opCounts,
    buildMs: 0,
  };
  if (design === 'recompute') {
    const { vjp, forwardNodes } = assembleRecompute(src, asm);
    stats.forwardNodes = forwardNodes;
    stats.buildMs = performance.now() - t0;
    return { vjp, stats };
  }
  const { forward, backward, forwardNodes, residualNames } = assembleResiduals(src, asm);
  stats.forwardNodes = forwardNodes;
  stats.residualNames = residualNames;
  stats.residuals = residualNames.length;
  stats.residualBytes = residualNames.reduce((sum, r) => {
    const inf = src.info(r)!;
    return sum + numel(inf.dims) * (BYTES[inf.elemType] ?? 4);
  }, 0);
  stats.buildMs = performance.now() - t0;
  return { forward, backward, stats };
}

// ---------------------------------------------------------------------------------------------------------------
// The source graph, indexed once

interface Source {
  model: ModelProto;
  graph: GraphProto;
  nodes: NodeView[];
  producer: Map<string, NodeView>;
  inits: Map<string, TensorProto>;
  inputNames: Set<string>;
  /** Every tensor and node name in use: generated names avoid them. */
  taken: Set<string>;
  /** The static shapes passed in (options.shapes). */
  shapes: Map<string, TensorInfo>;
  /** Element type and dims of a tensor: options.shapes, else the declared graph inputs and initializers. */
  info: (name: string) => TensorInfo | undefined;
  folder: ConstantFolder;
}

function indexSource(model: ModelProto, graph: GraphProto, shapes: Map<string, TensorInfo>): Source {
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

  const declared = new Map<string, TensorInfo>();
  for (const vi of graph.input) {
    const et = valueInfoElemType(vi);
    const d = valueInfoDims(vi);
    if (et !== undefined && d?.every((x) => typeof x === 'number')) declared.set(vi.name ?? '', { elemType: et, dims: d as number[] });
  }
  for (const [name, t] of inits) declared.set(name, { elemType: t.data_type ?? 0, dims: tensorDims(t) });
  const info = (name: string): TensorInfo | undefined => shapes.get(name) ?? declared.get(name);
  const constInit = new Map<string, ConstTensor | null>();
  const initValue = (name: string): ConstTensor | undefined => {
    const t = inits.get(name);
    if (!t) return undefined;
    if (!constInit.has(name)) constInit.set(name, readConstTensor(t) ?? null);
    return constInit.get(name) ?? undefined;
  };
  const folder = new ConstantFolder(producer, initValue, info);
  return { model, graph, nodes, producer, inits, inputNames, taken, shapes, info, folder };
}

/** Checks `wrt` (a float32/float64 tensor with a static shape) and `outputs` (produced, names free); `wrt`'s info. */
function checkTargets(src: Source, wrt: string, outputs: string[]): TensorInfo {
  const wrtInfo = src.info(wrt);
  if (!wrtInfo) throw new RangeError(`buildVjp: no static shape for '${wrt}'; pass it in options.shapes`);
  if (wrtInfo.elemType !== DataType.FLOAT && wrtInfo.elemType !== DataType.DOUBLE) {
    // fp16 is refused rather than silently computed in half precision: gradients of attention losses
    // underflow in fp16, and casting every differentiated op to fp32 would double the weights in memory.
    throw new RangeError(
      `buildVjp: '${wrt}' is ${dataTypeName(wrtInfo.elemType)}; only float32 (or float64) models ` +
        'can be differentiated. Use the float32 export of the UNet for guidance',
    );
  }
  for (const o of outputs) {
    if (!src.producer.has(o) && !src.inputNames.has(o)) throw new RangeError(`buildVjp: options.outputs names '${o}', which no node produces`);
  }
  for (const name of [wrt, ...outputs].map(gradName)) {
    if (src.taken.has(name)) throw new RangeError(`buildVjp: the model already has a tensor named '${name}', the name the VJP graph needs for a gradient`);
  }
  return wrtInfo;
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Activity

interface Activity {
  /** Tensors on a float path from `wrt` to a requested output. */
  useful: Set<string>;
  /** The nodes to differentiate, in reverse topological order. */
  diffNodes: NodeView[];
}

// The rule tables are keyed by op type: look up own properties only, so that an op type such as 'constructor'
// finds no rule instead of an Object.prototype member.

/** Input slots through which a node's outputs depend differentiably on its inputs. */
const diffSlots = (n: NodeView): number[] => (Object.hasOwn(DIFFERENTIABLE_INPUTS, n.opType) ? DIFFERENTIABLE_INPUTS[n.opType] : n.inputs.map((_, i) => i));

const hasRule = (n: NodeView): boolean => (n.domain === '' || n.domain === 'ai.onnx') && Object.hasOwn(RULES, n.opType);

/** Float tensors that depend on `wrt` through differentiable inputs. */
function activeTensors(src: Source, wrt: string): Set<string> {
  const active = new Set<string>([wrt]);
  for (const n of src.nodes) {
    if (NON_DIFFERENTIABLE_OPS.has(n.opType)) continue;
    if (!diffSlots(n).some((i) => active.has(n.inputs[i]))) continue;
    for (const o of n.outputs) {
      if (!o) continue;
      const inf = src.info(o);
      if (!inf) throw new RangeError(`buildVjp: no static shape for '${o}' (output of ${describe(n)}); options.shapes must cover every tensor`);
      if (isFloatType(inf.elemType)) active.add(o);
    }
  }
  return active;
}

function analyseActivity(src: Source, wrt: string, outputs: string[]): Activity {
  const active = activeTensors(src, wrt);
  const useful = new Set(outputs.filter((o) => active.has(o)));
  const diffNodes: NodeView[] = [];
  for (let k = src.nodes.length - 1; k >= 0; k--) {
    const n = src.nodes[k];
    if (!n.outputs.some((o) => useful.has(o))) continue;
    if (NON_DIFFERENTIABLE_OPS.has(n.opType)) continue;
    const slots = diffSlots(n).filter((i) => active.has(n.inputs[i]));
    if (slots.length === 0) continue;
    for (const i of slots) useful.add(n.inputs[i]);
    diffNodes.push(n); // reverse topological order
  }
  for (const n of diffNodes) {
    if (!hasRule(n)) {
      throw new Error(
        `buildVjp: cannot differentiate ${describe(n)}${n.domain ? ` (domain ${n.domain})` : ''}: no gradient ` +
          `rule for ${n.opType}; it lies on the path from '${wrt}' to the requested outputs`,
      );
    }
  }
  return { useful, diffNodes };
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Backward pass

interface Backward {
  /** The emitted backward nodes and constants (dead code removed); its output is gradName(wrt). */
  e: Emitter;
  opCounts: Record<string, number>;
}

interface BackwardTargets {
  wrt: string;
  outputs: string[];
  opset: number;
  wrtInfo: TensorInfo;
}

function emitBackward(src: Source, act: Activity, t: BackwardTargets): Backward {
  const e = new Emitter(t.opset, t.wrtInfo.elemType, src.taken);
  // Gradient contributions per tensor, summed when a tensor is read several times.
  const grads = new Map<string, string[]>();
  const push = (tensor: string, g: string) => {
    const list = grads.get(tensor);
    if (list) list.push(g);
    else grads.set(tensor, [g]);
  };
  for (const o of t.outputs) if (act.useful.has(o)) push(o, gradName(o));
  const opCounts: Record<string, number> = {};
  for (const n of act.diffNodes) {
    const gys = n.outputs.map((o) => {
      const list = act.useful.has(o) ? grads.get(o) : undefined;
      return list ? e.sum(list) : undefined;
    });
    if (gys.every((g) => g === undefined)) continue;
    opCounts[n.opType] = (opCounts[n.opType] ?? 0) + 1;
    RULES[n.opType](ruleContext(src, act, n, e, t.opset, gys, push));
  }
  emitGradOutput(e, grads.get(t.wrt), gradName(t.wrt), t.wrtInfo);
  e.removeDeadCode([gradName(t.wrt)]);
  return { e, opCounts };
}

/** What an op's gradient rule sees of node `n`: shapes, folded constants, its output gradients, where to add. */
function ruleContext(
  src: Source,
  act: Activity,
  n: NodeView,
  e: Emitter,
  opset: number,
  gys: Array<string | undefined>,
  push: (tensor: string, g: string) => void,
): RuleContext {
  return {
    node: n,
    e,
    opset,
    info: (name) => {
      const inf = src.info(name);
      if (!inf) throw new RangeError(`buildVjp: no static shape for '${name}' (used by ${describe(n)})`);
      return inf;
    },
    fold: (name) => src.folder.get(name),
    needs: (i) => i < n.inputs.length && n.inputs[i] !== '' && act.useful.has(n.inputs[i]) && diffSlots(n).includes(i),
    gy: (i) => gys[i],
    addGrad: (i, g) => push(n.inputs[i], g),
  };
}

/** The graph output `finalName`: the summed gradient of wrt, or zeros when no requested output depends on wrt. */
function emitGradOutput(e: Emitter, gw: string[] | undefined, finalName: string, wrtInfo: TensorInfo): void {
  if (gw) {
    e.nodes.push({
      name: e.fresh('grad_output'),
      opType: 'Identity',
      inputs: [e.sum(gw)],
      outputs: [finalName],
      attrs: {},
    });
  } else {
    e.nodes.push({
      name: e.fresh('grad_output'),
      opType: 'ConstantOfShape',
      inputs: [e.constI64(wrtInfo.dims)],
      outputs: [finalName],
      attrs: { value: { kind: 'tensor', value: { dataType: wrtInfo.elemType, dims: [1], values: [0] } } },
    });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Assembly

/** What both designs assemble from: the emitted backward and the forward tensors it reads. */
interface Assembly {
  newNodes: NodeProto[];
  newInits: TensorProto[];
  /** Forward tensors the backward reads. */
  reads: Set<string>;
  cotangentInputs: ValueInfoProto[];
  gradOutput: ValueInfoProto;
}

function collectAssembly(src: Source, bwd: Backward, wrt: string, outputs: string[], wrtInfo: TensorInfo): Assembly {
  const { e } = bwd;
  const emitted = new Set<string>(e.initializers.map((t) => t.name));
  for (const n of e.nodes) for (const o of n.outputs) emitted.add(o);
  const cotangents = new Set(outputs.map(gradName));
  const reads = new Set<string>();
  for (const n of e.nodes) for (const i of n.inputs) if (i && !emitted.has(i) && !cotangents.has(i)) reads.add(i);
  const cotangentInputs = outputs.map((o) => {
    const inf = src.info(o);
    if (!inf) throw new RangeError(`buildVjp: no static shape for output '${o}'`);
    return makeValueInfo(gradName(o), inf.elemType, inf.dims);
  });
  return {
    newNodes: e.nodes.map(toNodeProto),
    newInits: e.initializers.map(toTensorProto),
    reads,
    cotangentInputs,
    gradOutput: makeValueInfo(gradName(wrt), wrtInfo.elemType, wrtInfo.dims),
  };
}

/** Source nodes (in source order) needed to compute `targets`, stopping at `stop` tensors. */
function closure(src: Source, targets: Iterable<string>, stop: (t: string) => boolean): NodeView[] {
  const need = new Set<NodeView>();
  const stack = [...targets];
  const seen = new Set<string>();
  while (stack.length > 0) {
    const t = stack.pop()!;
    if (seen.has(t) || stop(t)) continue;
    seen.add(t);
    const p = src.producer.get(t);
    if (!p || need.has(p)) continue;
    need.add(p);
    for (const i of p.inputs) if (i) stack.push(i);
  }
  return src.nodes.filter((n) => need.has(n));
}

function valueInfoOf(src: Source, name: string): ValueInfoProto {
  const inf = src.info(name);
  if (!inf) throw new RangeError(`buildVjp: no static shape for '${name}'`);
  return makeValueInfo(name, inf.elemType, inf.dims);
}

/** A graph input with its static dims: the generated graphs bake in the static shapes (no dim_params left). */
function staticInput(src: Source, vi: ValueInfoProto): ValueInfoProto {
  const inf = src.shapes.get(vi.name ?? '');
  return inf && valueInfoElemType(vi) !== undefined ? makeValueInfo(vi.name ?? '', inf.elemType, inf.dims) : vi;
}

/** Initializers referenced by `ns`, shared by reference with the source model. */
function usedInits(src: Source, ns: NodeProto[]): TensorProto[] {
  const used = new Set<string>();
  for (const n of ns) for (const i of n.input) used.add(i);
  return src.graph.initializer.filter((t) => used.has(t.name ?? ''));
}

function makeModel(src: Source, g: GraphProto): ModelProto {
  const m: ModelProto = {
    ir_version: src.model.ir_version,
    opset_import: src.model.opset_import,
    producer_name: 'divbind-native vjp',
    graph: g,
  };
  if (src.model.functions && src.model.functions.length > 0) m.functions = src.model.functions;
  return m;
}

/** 'recompute': one graph holding the forward nodes the backward reads, then the backward. */
function assembleRecompute(src: Source, asm: Assembly): { vjp: ModelProto; forwardNodes: number } {
  const fwd = closure(src, asm.reads, (t) => src.inits.has(t) || src.inputNames.has(t)).map((n) => n.source as NodeProto);
  const vjp = makeModel(src, {
    name: `${src.graph.name || 'graph'}_vjp`,
    node: [...fwd, ...asm.newNodes],
    initializer: [...usedInits(src, fwd.concat(asm.newNodes)), ...asm.newInits],
    input: [...src.graph.input.map((vi) => staticInput(src, vi)), ...asm.cotangentInputs],
    output: [asm.gradOutput],
    value_info: [],
  });
  return { vjp, forwardNodes: fwd.length };
}

interface ResidualGraphs {
  forward: ModelProto;
  backward: ModelProto;
  forwardNodes: number;
  residualNames: string[];
}

/**
 * 'residuals': the forward graph with the tensors the backward reads as extra outputs, and a backward graph.
 * Tensors that depend on a graph input are passed from the forward; constant chains are recomputed inside the
 * backward (they are cheap and often tiny shape vectors), and so are the large attention probabilities.
 */
function assembleResiduals(src: Source, asm: Assembly): ResidualGraphs {
  const { graph } = src;
  const dynamic = dynamicTensors(src);
  const recomputed = recomputedChains(src, asm.reads, dynamic);
  const first = splitReads(src, asm.reads, recomputed, dynamic);
  for (const n of rematerialized(src, first.residualNames, recomputed, dynamic)) recomputed.add(n);
  const { needed, residualNames, foldedConsts, staticReads } = splitReads(src, asm.reads, recomputed, dynamic);
  const inputReads = graph.input.filter((vi) => needed.has(vi.name ?? '') && !src.inits.has(vi.name ?? ''));
  const constNodes = closure(src, staticReads, (t) => src.inits.has(t)).map((n) => n.source as NodeProto);
  const recomputedNodes = src.nodes.filter((n) => recomputed.has(n)).map((n) => n.source as NodeProto);
  const existingOutputs = new Set(graph.output.map((o) => o.name ?? ''));
  const newOutputs = residualNames.filter((r) => !existingOutputs.has(r)).map((r) => valueInfoOf(src, r));
  const forward = makeModel(src, {
    ...graph,
    input: graph.input.map((vi) => staticInput(src, vi)),
    output: [...graph.output, ...newOutputs],
  } as GraphProto);
  const bwdNodes = [...constNodes, ...recomputedNodes, ...asm.newNodes];
  const backward = makeModel(src, {
    name: `${graph.name || 'graph'}_backward`,
    node: bwdNodes,
    initializer: [...usedInits(src, bwdNodes), ...foldedConsts, ...asm.newInits],
    input: [...inputReads.map((vi) => staticInput(src, vi)), ...residualNames.map((r) => valueInfoOf(src, r)), ...asm.cotangentInputs],
    output: [asm.gradOutput],
    value_info: [],
  });
  return { forward, backward, forwardNodes: constNodes.length + recomputedNodes.length, residualNames };
}

/** Tensors that depend on a (non-initializer) graph input. */
function dynamicTensors(src: Source): Set<string> {
  const dynamic = new Set<string>([...src.inputNames].filter((n) => !src.inits.has(n)));
  for (const n of src.nodes) if (n.inputs.some((i) => dynamic.has(i))) for (const o of n.outputs) dynamic.add(o);
  return dynamic;
}

const SAME_SIZE_OPS = new Set(['Softmax', 'Mul', 'Div', 'Add', 'Sub', 'Reshape', 'Transpose', 'Identity', 'Cast']);

/**
 * Forward nodes the backward recomputes instead of receiving their outputs. Attention probabilities are most of the
 * residual bytes ([B·h, HW, HW] per self-attention layer) but are cheap to rebuild from q and k: a chain of same-size
 * ops (Softmax, scaling, Reshape/Transpose) that starts at a MatMul whose operands are at least 4× smaller is
 * recomputed in the backward instead of passed.
 */
function recomputedChains(src: Source, reads: Set<string>, dynamic: Set<string>): Set<NodeView> {
  const size = (t: string): number => numel(src.info(t)?.dims ?? []);
  const isFloat = (t: string): boolean => isFloatType(src.info(t)?.elemType ?? 0);
  const chainFrom = (t: string): NodeView[] | undefined => {
    const chain: NodeView[] = [];
    let cur = t;
    for (let depth = 0; depth < 8; depth++) {
      const p = src.producer.get(cur);
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
  const recomputed = new Set<NodeView>();
  for (const t of reads) {
    if (!dynamic.has(t) || src.inputNames.has(t)) continue;
    for (const n of chainFrom(t) ?? []) recomputed.add(n);
  }
  return recomputed;
}

/** Ops the backward recomputes from other residuals rather than receive: elementwise or layout, no reduction. */
const CHEAP_OPS = new Set([
  'Add',
  'Sub',
  'Mul',
  'Div',
  'Neg',
  'Erf',
  'Sqrt',
  'Sigmoid',
  'Tanh',
  'Cast',
  'Identity',
  'Reshape',
  'Squeeze',
  'Unsqueeze',
  'Slice',
  'Transpose',
]);
const REMAT_DEPTH = 6;

/**
 * Forward nodes whose outputs the backward recomputes from the residuals it keeps, so fewer bytes cross from the
 * forward (every residual is an output the forward allocates and Node copies). A residual is dropped when a chain of
 * at most REMAT_DEPTH cheap ops rebuilds it from kept residuals, graph inputs, constants and recomputed tensors: a
 * GEGLU feed-forward keeps its two halves instead of five tensors of that size (x/√2, 1 + erf, the products), a
 * reshaped or transposed copy of a kept tensor is not passed twice. Residuals are visited in topological order, so
 * a dropped one is rebuilt only from tensors decided before it.
 */
function rematerialized(src: Source, residuals: readonly string[], recomputed: ReadonlySet<NodeView>, dynamic: Set<string>): Set<NodeView> {
  const order = new Map(src.nodes.map((n, k) => [n, k]));
  const position = (t: string) => order.get(src.producer.get(t)!) ?? -1;
  const kept = new Set(residuals);
  const rebuilt = new Set<string>();
  for (const n of recomputed) for (const o of n.outputs) rebuilt.add(o);
  const chosen = new Set<NodeView>();
  const available = (t: string) =>
    !t ||
    kept.has(t) ||
    rebuilt.has(t) ||
    src.inits.has(t) ||
    src.inputNames.has(t) ||
    !dynamic.has(t) ||
    (!isFloatType(src.info(t)?.elemType ?? 0) && src.folder.get(t) !== undefined);
  const rebuild = (t: string, depth: number, chain: NodeView[]): boolean => {
    if (available(t)) return true;
    const p = src.producer.get(t);
    if (!p || depth >= REMAT_DEPTH || !CHEAP_OPS.has(p.opType) || p.outputs.length !== 1 || (p.domain !== '' && p.domain !== 'ai.onnx')) return false;
    if (!p.inputs.every((i) => rebuild(i, depth + 1, chain))) return false;
    if (!chain.includes(p)) chain.push(p);
    return true;
  };
  for (const r of [...residuals].sort((a, b) => position(a) - position(b))) {
    kept.delete(r);
    const chain: NodeView[] = [];
    if (rebuild(r, 0, chain)) {
      for (const n of chain) {
        chosen.add(n);
        for (const o of n.outputs) rebuilt.add(o);
      }
    } else {
      kept.add(r);
    }
  }
  return chosen;
}

interface SplitReads {
  /** Every tensor the backward graph reads from outside itself. */
  needed: Set<string>;
  /** Dynamic tensors passed from the forward graph, in the order of the backward's inputs. */
  residualNames: string[];
  /** Integer side values folded to constants. */
  foldedConsts: TensorProto[];
  /** Tensors computable from initializers alone (their nodes are copied into the backward). */
  staticReads: string[];
}

/** Sorts the backward's reads into residuals, folded constants and constant chains to copy. */
function splitReads(src: Source, reads: Set<string>, recomputed: Set<NodeView>, dynamic: Set<string>): SplitReads {
  const recomputedOut = new Set<string>();
  for (const n of recomputed) for (const o of n.outputs) recomputedOut.add(o);
  const needed = new Set<string>([...reads]);
  for (const n of recomputed) for (const i of n.inputs) if (i) needed.add(i);
  const residualNames: string[] = [];
  const foldedConsts: TensorProto[] = [];
  const staticReads: string[] = [];
  for (const t of needed) {
    if (recomputedOut.has(t) || src.inputNames.has(t) || src.inits.has(t)) continue;
    if (!dynamic.has(t)) {
      staticReads.push(t);
      continue;
    }
    // Integer side values of recomputed nodes (reshape targets from Shape chains) fold to constants.
    const v = isFloatType(src.info(t)?.elemType ?? 0) ? undefined : src.folder.get(t);
    if (v) foldedConsts.push(toTensorProto({ ...v, name: t }));
    else residualNames.push(t);
  }
  return { needed, residualNames, foldedConsts, staticReads };
}
