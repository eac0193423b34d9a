// Finding the cross-attention probabilities of an exported SD UNet and exposing them as graph outputs.
//
// A cross-attention Softmax is recognised by structure, not by name (docs/onnx-export.md §3):
//   scores = MatMul(q, k) [→ Mul/Div by a scalar] → Softmax(last axis), or the SDPA form
//   MatMul(Mul(q, √s), Mul(kᵀ, √s)) → Softmax,
// with the softmax's last dim equal to the text length and its key operand k reached from the text input
// (`encoder_hidden_states`) through data-movement and projection ops only (Transpose, Reshape, MatMul with a
// constant weight, Add of a bias, …). Self-attention keys come from LayerNorm(hidden states) and stop the walk.
// `/attn2/`-style scope names only break ties (walk inconclusive) and label the layers.

import {
  DataType,
  attr,
  attrInt,
  indexGraph,
  makeNode,
  makeTensor,
  makeValueInfo,
  opsetVersion,
  type GraphIndex,
  type GraphProto,
  type ModelProto,
  type NodeProto,
} from './proto';
import { cloneModelShallow, copyGraphFields, realGraphInputs, withFixedInputDims, type ShapeMap } from './shapes';

export type AttentionPlace = 'down' | 'mid' | 'up';
export type AttentionPattern = 'matmul' | 'matmul-mul' | 'matmul-div' | 'sdpa';
/** 'BH-N-T': [B·heads, HW, T] (classic processors); 'B-H-N-T': [B, heads, HW, T] (SDPA). */
export type AttentionLayout = 'BH-N-T' | 'B-H-N-T';

export interface CrossAttentionLayer {
  /** 0-based, in graph (execution) order. */
  index: number;
  softmaxNode: string;
  softmaxOutput: string;
  /** The scores MatMul node. */
  matmulNode: string;
  pattern: AttentionPattern;
  layout: AttentionLayout;
  /** Dims of the softmax output. */
  dims: number[];
  batch: number;
  heads: number;
  /** Query positions (latent pixels at this layer's resolution). */
  hw: number;
  /** Latent height and width at this layer. */
  h: number;
  w: number;
  /** h when the latent is square (h === w), else null: use h and w. */
  resolution: number | null;
  textLength: number;
  place: AttentionPlace;
  /** Where `place` came from: module scope names, or graph order + resolution. */
  placeFrom: 'names' | 'order';
  /** Module scope from the node name ('/down_blocks.0/attentions.0/transformer_blocks.0/attn2'), or ''. */
  scope: string;
  /** 'structure': keys traced to the text input; 'name': walk inconclusive, accepted on its /attn2/ scope. */
  detectedBy: 'structure' | 'name';
}

export interface FindAttentionOptions {
  /** Name of the latent input (default: 'sample', else the only rank-4 float input). */
  sampleInput?: string;
  /** Name of the text-embedding input (default: 'encoder_hidden_states', else the only rank-3 float input). */
  textInput?: string;
}

// ---------------------------------------------------------------------------------------------------------------
// Refusing fused exports

const FUSED_OPS: ReadonlySet<string> = new Set([
  'MultiHeadAttention',
  'Attention',
  'PackedAttention',
  'PackedMultiHeadAttention',
  'BiasSplitGelu',
  'GroupNorm',
  'NhwcConv',
  'BiasAdd',
  'FusedMatMul',
  'SkipLayerNormalization',
  'SkipGroupNorm',
  'BiasGelu',
  'FastGelu',
]);

export const SUPPORTED_EXPORTS_HINT =
  'divbind-native works with plain PyTorch/Optimum ONNX exports at opset 14-17, fp32 (fp16 UNets are refused: ' +
  're-export in fp32, the gradient pass needs it); Olive/ORT-transformers-optimised graphs hide the attention ' +
  'maps. Re-export the UNet without ORT transformer optimisation, e.g. `optimum-cli export onnx --model <id> ' +
  "--task text-to-image <dir>` (no --optimize), or diffusers' convert_stable_diffusion_checkpoint_to_onnx.py.";

/** Throws when the graph uses fused/contrib ops in which the attention probabilities do not exist. */
export function assertUnfusedExport(model: ModelProto): void {
  for (const node of model.graph!.node) {
    const domain = node.domain ?? '';
    const op = node.op_type ?? '';
    const contrib = domain !== '' && domain !== 'ai.onnx';
    // ONNX opset 23 has its own (default-domain) Attention op: fused as well.
    if (contrib || (FUSED_OPS.has(op) && (op === 'Attention' || op === 'GroupNorm' || contrib))) {
      throw new Error(
        `Unsupported UNet export: node '${node.name || node.output[0]}' is the fused op ` +
          `${contrib ? `${domain}.` : ''}${op}, so the attention probabilities are not in the graph. ${SUPPORTED_EXPORTS_HINT}`,
      );
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Finding the layers

function numel(shapes: ShapeMap, name: string): number | undefined {
  const s = shapes.get(name);
  return s === undefined ? undefined : s.dims.reduce((a, b) => a * b, 1);
}

/** Tensors computable from initializers and Constants alone (folded weights, Identity copies of initializers). */
function constantTensors(graph: GraphProto): Set<string> {
  const c = new Set<string>(graph.initializer.map((t) => t.name ?? ''));
  for (const n of graph.node) {
    const ins = n.input.filter((i) => i !== '');
    const random = /^Random/.test(n.op_type ?? '');
    if (!random && ins.every((i) => c.has(i)) && (ins.length > 0 || n.op_type === 'Constant')) {
      for (const o of n.output) if (o) c.add(o);
    }
  }
  return c;
}

const PASS_INPUT0: ReadonlySet<string> = new Set([
  'Transpose',
  'Reshape',
  'Squeeze',
  'Unsqueeze',
  'Flatten',
  'Identity',
  'Cast',
  'Expand',
  'Slice',
  'Split',
  'Tile',
  'Contiguous',
]);
const PASS_LINEAR: ReadonlySet<string> = new Set(['MatMul', 'Gemm', 'Add', 'Sub', 'Mul', 'Div']);

interface WalkContext {
  index: GraphIndex;
  consts: Set<string>;
  shapes: ShapeMap;
  graphInputs: Set<string>;
}

/**
 * Follows a tensor back through data-movement ops and projections by constant weights/biases/scalars; returns the
 * graph input it comes from, or undefined when the path stops at any other op (LayerNorm, Softmax, Conv, an Add of
 * two activations, …).
 */
function traceToGraphInput(ctx: WalkContext, start: string): string | undefined {
  let name = start;
  for (let depth = 0; depth < 64; depth++) {
    if (ctx.graphInputs.has(name)) return name;
    if (ctx.consts.has(name)) return undefined;
    const p = ctx.index.producer.get(name);
    if (p === undefined) return undefined;
    const op = p.node.op_type ?? '';
    if ((p.node.domain ?? '') !== '') return undefined;
    if (PASS_INPUT0.has(op)) {
      name = p.node.input[0] ?? '';
      continue;
    }
    if (PASS_LINEAR.has(op)) {
      const live = p.node.input.filter((i) => i !== '' && !ctx.consts.has(i) && (numel(ctx.shapes, i) ?? 2) > 1);
      if (live.length !== 1) return undefined;
      name = live[0]!;
      continue;
    }
    return undefined;
  }
  return undefined;
}

function isScalarOperand(ctx: WalkContext, name: string): boolean {
  return (numel(ctx.shapes, name) ?? 2) === 1;
}

/** Unwraps Mul(x, scalar) / Div(x, scalar): returns x, or undefined when `name` is not such a product. */
function unwrapScalarScale(ctx: WalkContext, name: string, ops: ReadonlyArray<string>): { inner: string; op: string } | undefined {
  const p = ctx.index.producer.get(name);
  if (p === undefined || !ops.includes(p.node.op_type ?? '') || (p.node.domain ?? '') !== '') return undefined;
  const [a, b] = p.node.input;
  if (a === undefined || b === undefined) return undefined;
  if (isScalarOperand(ctx, b) && !isScalarOperand(ctx, a)) return { inner: a, op: p.node.op_type! };
  if (p.node.op_type === 'Mul' && isScalarOperand(ctx, a) && !isScalarOperand(ctx, b)) return { inner: b, op: 'Mul' };
  return undefined;
}

function scopeOf(nodeName: string): string {
  const k = nodeName.lastIndexOf('/');
  return k > 0 ? nodeName.slice(0, k) : '';
}

function placeFromName(name: string): AttentionPlace | undefined {
  if (/(^|[/.])down_blocks?[./]/.test(name)) return 'down';
  if (/(^|[/.])mid_block[./]/.test(name)) return 'mid';
  if (/(^|[/.])up_blocks?[./]/.test(name)) return 'up';
  return undefined;
}

/** Latent (h, w) at a layer with `hw` query positions: the stride-2 downsamplings give ceil(H/f) × ceil(W/f). */
function layerHW(hw: number, H: number, W: number): { h: number; w: number } | undefined {
  for (let f = 1; f <= 1024; f *= 2) {
    const h = Math.ceil(H / f);
    const w = Math.ceil(W / f);
    if (h * w === hw) return { h, w };
    if (h * w < hw) break;
  }
  return undefined;
}

function pickInput(graph: GraphProto, shapes: ShapeMap, preferred: string | undefined, fallback: string, rank: number, what: string): string {
  const inputs = realGraphInputs(graph).map((v) => v.name ?? '');
  if (preferred !== undefined) {
    if (!inputs.includes(preferred)) throw new RangeError(`${what} '${preferred}' is not an input of the UNet (inputs: ${inputs.join(', ')})`);
    return preferred;
  }
  if (inputs.includes(fallback)) return fallback;
  const cands = inputs.filter((n) => {
    const s = shapes.get(n);
    return s !== undefined && s.dims.length === rank && (s.elemType === DataType.FLOAT || s.elemType === DataType.FLOAT16);
  });
  if (cands.length !== 1) {
    throw new Error(
      `Cannot tell which UNet input is the ${what} (no input named '${fallback}', ${cands.length} rank-${rank} ` +
        `float inputs among ${inputs.join(', ')}): name it in the options`,
    );
  }
  return cands[0]!;
}

/** The latent and text inputs the layers are measured against. */
interface AttentionTarget {
  textName: string;
  batch: number;
  /** Latent height and width. */
  H: number;
  W: number;
  /** Text length (keys per cross-attention row). */
  T: number;
}

function attentionTarget(graph: GraphProto, shapes: ShapeMap, opts: FindAttentionOptions): AttentionTarget {
  const sampleName = pickInput(graph, shapes, opts.sampleInput, 'sample', 4, 'latent input (sample)');
  const textName = pickInput(graph, shapes, opts.textInput, 'encoder_hidden_states', 3, 'text input (encoder_hidden_states)');
  const sample = shapes.get(sampleName)!;
  const text = shapes.get(textName);
  if (text === undefined || text.dims.length !== 3) throw new Error(`The text input '${textName}' must have static dims [B, T, D]`);
  const [batch, , H, W] = sample.dims as [number, number, number, number];
  return { textName, batch, H, W, T: text.dims[1]! };
}

type FoundLayer = Omit<CrossAttentionLayer, 'index' | 'place' | 'placeFrom'>;

/**
 * Finds every cross-attention Softmax of a UNet graph, in graph order. `shapes` must come from inferStaticShapes
 * for the dims the layers are wanted at. Throws for fused exports and when no cross-attention is found.
 */
export function findCrossAttention(model: ModelProto, shapes: ShapeMap, opts: FindAttentionOptions = {}): CrossAttentionLayer[] {
  assertUnfusedExport(model);
  const graph = model.graph!;
  const target = attentionTarget(graph, shapes, opts);
  const ctx: WalkContext = {
    index: indexGraph(graph),
    consts: constantTensors(graph),
    shapes,
    graphInputs: new Set(realGraphInputs(graph).map((v) => v.name ?? '')),
  };
  const defaultAxis = (opsetVersion(model) ?? 13) >= 13 ? -1 : 1;
  const found: FoundLayer[] = [];
  for (const node of graph.node) {
    const layer = matchCrossAttention(ctx, node, target, defaultAxis);
    if (layer !== undefined) found.push(layer);
  }
  if (found.length === 0) {
    throw new Error(
      `No cross-attention Softmax found in the UNet (no Softmax over ${target.T} text positions whose keys come from ` +
        `'${target.textName}'). ${SUPPORTED_EXPORTS_HINT}`,
    );
  }
  return assignPlaces(found);
}

/** The layer whose probabilities `node` computes, when it is a cross-attention Softmax (see the file comment). */
function matchCrossAttention(ctx: WalkContext, node: NodeProto, target: AttentionTarget, defaultAxis: number): FoundLayer | undefined {
  if (node.op_type !== 'Softmax' || (node.domain ?? '') !== '') return undefined;
  const out = node.output[0] ?? '';
  const s = ctx.shapes.get(out);
  if (s === undefined || (s.dims.length !== 3 && s.dims.length !== 4)) return undefined;
  const rank = s.dims.length;
  const axis = attrInt(node, 'axis', defaultAxis);
  if (axis !== -1 && axis !== rank - 1) return undefined;
  if (s.dims[rank - 1] !== target.T) return undefined;
  const scores = scoresOf(ctx, node.input[0] ?? '');
  if (scores === undefined) return undefined;

  const source = traceToGraphInput(ctx, scores.keyName);
  const scope = scopeOf(node.name ?? '');
  let detectedBy: CrossAttentionLayer['detectedBy'];
  if (source === target.textName) detectedBy = 'structure';
  else if (source === undefined && /(^|\/)attn2(\/|$)/.test(scope)) detectedBy = 'name';
  else return undefined;

  const { heads, hw, h, w } = layerGeometry(node, s.dims, target);
  return {
    softmaxNode: node.name ?? '',
    softmaxOutput: out,
    matmulNode: scores.matmul.name ?? '',
    pattern: scores.pattern,
    layout: rank === 4 ? 'B-H-N-T' : 'BH-N-T',
    dims: [...s.dims],
    batch: target.batch,
    heads,
    hw,
    h,
    w,
    resolution: h === w ? h : null,
    textLength: target.T,
    scope,
    detectedBy,
  };
}

/** The scores MatMul behind a Softmax input: an optional scalar Mul/Div after it, or the SDPA split scale before it. */
function scoresOf(ctx: WalkContext, softmaxInput: string): { matmul: NodeProto; keyName: string; pattern: AttentionPattern } | undefined {
  let scoresName = softmaxInput;
  let pattern: AttentionPattern = 'matmul';
  const post = unwrapScalarScale(ctx, scoresName, ['Mul', 'Div']);
  if (post !== undefined) {
    scoresName = post.inner;
    pattern = post.op === 'Div' ? 'matmul-div' : 'matmul-mul';
  }
  const mm = ctx.index.producer.get(scoresName);
  if (mm === undefined || mm.node.op_type !== 'MatMul') return undefined;
  let keyName = mm.node.input[1] ?? '';
  const qPre = unwrapScalarScale(ctx, mm.node.input[0] ?? '', ['Mul']);
  const kPre = unwrapScalarScale(ctx, keyName, ['Mul']);
  if (qPre !== undefined && kPre !== undefined && pattern === 'matmul') {
    pattern = 'sdpa';
    keyName = kPre.inner;
  }
  return { matmul: mm.node, keyName, pattern };
}

/** Heads, query positions and latent grid of a cross-attention Softmax output of dims `dims`. */
function layerGeometry(node: NodeProto, dims: number[], target: AttentionTarget): { heads: number; hw: number; h: number; w: number } {
  const { batch, H, W } = target;
  const rank = dims.length;
  const hw = dims[rank - 2]!;
  let heads: number;
  if (rank === 4) {
    if (dims[0] !== batch) throw new Error(`Softmax '${node.name}' has batch ${dims[0]} but the sample has batch ${batch}`);
    heads = dims[1]!;
  } else {
    if (dims[0]! % batch !== 0) {
      throw new Error(`Softmax '${node.name}' has leading dim ${dims[0]}, not a multiple of the sample batch ${batch}`);
    }
    heads = dims[0]! / batch;
  }
  const lw = layerHW(hw, H, W);
  if (lw === undefined) {
    throw new Error(`Softmax '${node.name}' attends from ${hw} positions, which matches no downsampling of the ${H}×${W} latent`);
  }
  return { heads, hw, h: lw.h, w: lw.w };
}

/** Place of each layer: module names when every layer has one, else graph order around the lowest resolution. */
function assignPlaces(found: FoundLayer[]): CrossAttentionLayer[] {
  const named = found.map((f) => placeFromName(f.scope));
  const byName = named.every((p) => p !== undefined);
  const minHw = Math.min(...found.map((f) => f.hw));
  const first = found.findIndex((f) => f.hw === minHw);
  let last = first;
  while (last + 1 < found.length && found[last + 1]!.hw === minHw) last++;
  return found.map((f, index) => ({
    index,
    ...f,
    place: byName ? named[index]! : index < first ? 'down' : index <= last ? 'mid' : 'up',
    placeFrom: byName ? 'names' : 'order',
  }));
}

// ---------------------------------------------------------------------------------------------------------------
// Instrumentation

export interface InstrumentOptions extends FindAttentionOptions {
  /**
   * Expose the head-averaged map ReduceMean over heads, [B, HW, T] (true), or the raw probabilities in the graph's
   * layout (false). Default: DEFAULT_HEAD_AVERAGE (see its comment for the measurement).
   */
  headAverage?: boolean;
  /** Output name prefix (default 'attn_'): outputs are `${prefix}${index}`. */
  outputPrefix?: string;
  /** Layers to expose (default: all found by findCrossAttention). */
  layers?: CrossAttentionLayer[];
}

/**
 * Default for InstrumentOptions.headAverage: head-averaged maps. Measured with bench/prepare.bench.ts on the tiny
 * fixture UNet (batch 1, ORT CPU, level 'all', 2 threads, medians of 20 runs, 4 alternating rounds; shared 2-core
 * machine at load average ~11, so ±40 % noise): instrumented UNet 118 ms averaged vs 173 ms raw, VJP graph 350 ms
 * averaged vs 300 ms raw; per guidance step (UNet + VJP) 468 vs 472 ms, no measurable difference. The averaged form
 * wins on what the tiny model cannot show: onnxruntime-node copies every output and cotangent through JS, and for
 * SD 1.5 at 512² the raw maps are 8 heads × 16 layers (≈ 50 MB per step each way at 64²) against 1/8 of that, and
 * the losses average over heads anyway (the native loss takes heads = 1).
 */
export const DEFAULT_HEAD_AVERAGE = true;

/**
 * Whether head-averaged maps give the losses what the raw per-head maps give, for `prepare`'s default. The losses
 * average every (layer, head) map of an aggregate (objects at one resolution, attributes over several), as the
 * reference AttentionStore does; a head-averaged output counts as one map, so when the layers' head counts differ
 * (SD 2.x: 5/10/20/20 heads per level, SDXL: 10/20) the aggregate would weigh layers instead of maps (tiny-sd2's
 * tv_bind loss −0.26006 instead of the reference's −0.26044). SD 1.x has one head count everywhere.
 */
export function headAveragingExact(layers: ReadonlyArray<{ heads: number }>): boolean {
  return layers.every((l) => l.heads === layers[0]!.heads);
}

export interface ManifestLayer {
  index: number;
  /** Graph output name ('attn_0', …). */
  output: string;
  /** Name of the source Softmax node (and its output tensor). */
  source: string;
  sourceOutput: string;
  place: AttentionPlace;
  placeFrom: 'names' | 'order';
  scope: string;
  /** Latent side at this layer (null when non-square: see h, w). */
  resolution: number | null;
  h: number;
  w: number;
  hw: number;
  /** Heads of the source layer. */
  heads: number;
  /** True: the output is the mean over heads, dims [B, HW, T] (heads = 1 for the loss). */
  headAveraged: boolean;
  textLength: number;
  /** Dims of the exposed output. */
  dims: number[];
  layout: AttentionLayout;
  pattern: AttentionPattern;
}

export interface InstrumentResult {
  /** The instrumented model (new plain-object graph; tensors shared with the input model). */
  model: ModelProto;
  layers: ManifestLayer[];
  outputs: string[];
  /** `shapes` plus the tensors added by the instrumentation. */
  shapes: ShapeMap;
}

/**
 * Adds one graph output per cross-attention layer (`attn_<i>`), with the graph inputs fixed to the dims `shapes`
 * was inferred for. The original outputs stay first. The input model is not modified.
 */
export function instrumentUnet(model: ModelProto, shapes: ShapeMap, opts: InstrumentOptions = {}): InstrumentResult {
  const headAverage = opts.headAverage ?? DEFAULT_HEAD_AVERAGE;
  if (typeof headAverage !== 'boolean') throw new TypeError(`Expected a boolean for headAverage but received ${String(headAverage)}`);
  const prefix = opts.outputPrefix ?? 'attn_';
  const layers = opts.layers ?? findCrossAttention(model, shapes, opts);
  const g = copyGraphFields(withFixedInputDims(model, inferredInputDims(model.graph!, shapes)).graph!);
  const taken = new Set<string>([...g.input, ...g.output].map((v) => v.name ?? ''));
  for (const n of g.node) for (const o of n.output) taken.add(o);
  for (const t of g.initializer) taken.add(t.name ?? '');
  const outShapes: ShapeMap = new Map(shapes);
  const newOutputs = [];
  const manifest: ManifestLayer[] = [];
  const opset = opsetVersion(model) ?? 17;
  const inserts = new Map<string, NodeProto[]>();

  for (const L of layers) {
    const output = `${prefix}${L.index}`;
    if (taken.has(output)) throw new Error(`Cannot add output '${output}': the UNet already has a tensor of that name; pass another outputPrefix`);
    const elemType = shapes.get(L.softmaxOutput)!.elemType;
    const exposed = headAverage ? headMean(g, outShapes, L, output, elemType, opset) : rawProbabilities(L, output, shapes.get(L.softmaxOutput)!.dims);
    inserts.set(L.softmaxOutput, exposed.nodes);
    outShapes.set(output, { elemType, dims: exposed.dims });
    newOutputs.push(makeValueInfo(output, elemType, exposed.dims));
    manifest.push(manifestLayer(L, output, headAverage, exposed.dims));
  }
  g.node = insertAfterProducers(g.node, inserts);
  g.output = [...g.output, ...newOutputs];
  return {
    model: cloneModelShallow(model, g),
    layers: manifest,
    outputs: manifest.map((m) => m.output),
    shapes: outShapes,
  };
}

/** The dims `shapes` gives every real graph input (so every declared shape of the instrumented graph holds). */
function inferredInputDims(graph: GraphProto, shapes: ShapeMap): Map<string, number[]> {
  const fixed = new Map<string, number[]>();
  for (const vi of realGraphInputs(graph)) {
    const s = shapes.get(vi.name ?? '');
    if (s === undefined) throw new RangeError(`shapes has no entry for graph input '${vi.name}': pass the map from inferStaticShapes`);
    fixed.set(vi.name ?? '', s.dims);
  }
  return fixed;
}

/** The layer's probabilities as they are, in the graph's layout. */
function rawProbabilities(L: CrossAttentionLayer, output: string, dims: number[]): { nodes: NodeProto[]; dims: number[] } {
  return {
    nodes: [makeNode('Identity', [L.softmaxOutput], [output], { name: `/divbind/${output}/Identity` })],
    dims: [...dims],
  };
}

/**
 * Nodes computing the mean over heads of layer L's probabilities into `output`, [B, HW, T]. New constants go into
 * `g.initializer` and the new tensors' shapes into `outShapes`.
 */
function headMean(
  g: GraphProto,
  outShapes: ShapeMap,
  L: CrossAttentionLayer,
  output: string,
  elemType: number,
  opset: number,
): { nodes: NodeProto[]; dims: number[] } {
  const tag = `/divbind/${output}`;
  const nodes: NodeProto[] = [];
  let x = L.softmaxOutput;
  if (L.layout === 'BH-N-T') {
    // [B·h, HW, T] is batch-major (b·h + head), as torch's reshape/permute and diffusers' head_to_batch_dim lay it out.
    const shapeName = `${tag}/split_heads_shape`;
    const split = `${tag}/split_heads`;
    const splitDims = [L.batch, L.heads, L.hw, L.textLength];
    g.initializer.push(makeTensor(shapeName, DataType.INT64, [4], BigInt64Array.from(splitDims.map(BigInt))));
    nodes.push(makeNode('Reshape', [x, shapeName], [split], { name: `${tag}/Reshape` }));
    outShapes.set(shapeName, { elemType: DataType.INT64, dims: [4] });
    outShapes.set(split, { elemType, dims: splitDims });
    x = split;
  }
  if (opset >= 18) {
    const axesName = `${tag}/axes`;
    g.initializer.push(makeTensor(axesName, DataType.INT64, [1], BigInt64Array.of(1n)));
    outShapes.set(axesName, { elemType: DataType.INT64, dims: [1] });
    const attributes = [attr.int('keepdims', 0)];
    nodes.push(makeNode('ReduceMean', [x, axesName], [output], { name: `${tag}/ReduceMean`, attributes }));
  } else {
    const attributes = [attr.ints('axes', [1]), attr.int('keepdims', 0)];
    nodes.push(makeNode('ReduceMean', [x], [output], { name: `${tag}/ReduceMean`, attributes }));
  }
  return { nodes, dims: [L.batch, L.hw, L.textLength] };
}

function manifestLayer(L: CrossAttentionLayer, output: string, headAveraged: boolean, dims: number[]): ManifestLayer {
  return {
    index: L.index,
    output,
    source: L.softmaxNode,
    sourceOutput: L.softmaxOutput,
    place: L.place,
    placeFrom: L.placeFrom,
    scope: L.scope,
    resolution: L.resolution,
    h: L.h,
    w: L.w,
    hw: L.hw,
    heads: L.heads,
    headAveraged,
    textLength: L.textLength,
    dims,
    layout: L.layout,
    pattern: L.pattern,
  };
}

/** `nodes` with each list of `inserts` placed right after the node producing its key (keeps topological order). */
function insertAfterProducers(nodes: NodeProto[], inserts: ReadonlyMap<string, NodeProto[]>): NodeProto[] {
  const out: NodeProto[] = [];
  for (const n of nodes) {
    out.push(n);
    for (const o of n.output) {
      const extra = inserts.get(o);
      if (extra !== undefined) out.push(...extra);
    }
  }
  return out;
}

/** Human-readable one-line summary of a layer ('attn_3 down 16×16 2 heads [1, 256, 77] (…/attn2/Softmax)'). */
export function describeLayer(m: ManifestLayer): string {
  return (
    `${m.output} ${m.place} ${m.h}×${m.w} ${m.heads} head${m.heads === 1 ? '' : 's'}${m.headAveraged ? ' (averaged)' : ''} ` +
    `[${m.dims.join(', ')}] (${m.source || m.sourceOutput})`
  );
}
