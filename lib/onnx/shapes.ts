// Static shapes of every tensor of a graph for given input dims, with onnxruntime as the shape-inference engine
// (docs/onnx-export.md §5): fix the graph-input dims in the model (freeDimensionOverrides is a no-op in
// onnxruntime-node), add a name-only ValueInfo for every node output, let ORT optimise at level 'basic' with
// optimizedModelFilePath, and read elem_type and dims back from the saved model. The saved graph is rewritten
// (Constants folded into initializers, Identity/Shape chains removed, MatMul+Add turned into Gemm), so it is only
// harvested: the caller keeps its original graph. Tensors ORT folded away are filled in from initializers and
// Constant nodes.
//
// Big float initializers (and all external ones) become graph inputs of the probe model: shapes need no weight
// values, the probe then loads no weights (an SD UNet has 3.4 GB) and the saved probe stays small.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import {
  DataType,
  constantNodeTensor,
  dataTypeName,
  decodeModel,
  encodeModel,
  externalDataOf,
  makeNode,
  makeTensor,
  makeValueInfo,
  tensorDims,
  valueInfoDims,
  valueInfoElemType,
  type GraphProto,
  type ModelProto,
  type TensorProto,
  type ValueInfoProto,
} from './proto';

export interface StaticShape {
  elemType: number;
  dims: number[];
}

export type ShapeMap = Map<string, StaticShape>;

export interface InferShapesOptions {
  /** Parent directory for the temporary probe files (default os.tmpdir()). */
  tmpDir?: string;
  /** Keep the temporary directory (for debugging); its path is logged by the caller via `onTempDir`. */
  keepTemp?: boolean;
  onTempDir?: (dir: string) => void;
  /** Return what could be inferred instead of throwing when some node output has no static shape. */
  allowPartial?: boolean;
  /** Float initializers with more elements than this become probe inputs (default 1024). */
  moveInitializersAbove?: number;
}

/** Names of the graph inputs that are real inputs (not initializers listed as inputs, as IR < 4 files do). */
export function realGraphInputs(graph: GraphProto): ValueInfoProto[] {
  const inits = new Set(graph.initializer.map((t) => t.name));
  return graph.input.filter((v) => !inits.has(v.name));
}

/**
 * Checks `inputDims` against the graph inputs and returns the complete fixed dims of every real input. Dims the
 * model fixes already may be omitted from inputDims; dynamic ones must be given.
 */
export function resolveInputDims(graph: GraphProto, inputDims: Readonly<Record<string, readonly number[]>>): Map<string, number[]> {
  if (inputDims === null || typeof inputDims !== 'object') {
    throw new TypeError('Expected an object mapping input names to dims for inputDims, e.g. { sample: [1, 4, 64, 64] }');
  }
  const inputs = realGraphInputs(graph);
  const names = new Set(inputs.map((v) => v.name ?? ''));
  for (const k of Object.keys(inputDims)) {
    if (!names.has(k)) {
      throw new RangeError(`inputDims names '${k}', which is not an input of the graph (inputs: ${[...names].join(', ')})`);
    }
  }
  const out = new Map<string, number[]>();
  for (const vi of inputs) {
    const name = vi.name ?? '';
    const declared = valueInfoDims(vi);
    const given = inputDims[name];
    if (given !== undefined) {
      if (!Array.isArray(given) || given.some((d) => !Number.isSafeInteger(d) || d < 1)) {
        throw new TypeError(`Expected an array of positive integers for inputDims.${name} but received ${JSON.stringify(given)}`);
      }
      if (declared !== undefined && declared.length !== given.length) {
        throw new RangeError(
          `inputDims.${name} has rank ${given.length} but the model declares rank ${declared.length} ` + `([${declared.map((d) => d ?? '?').join(', ')}])`,
        );
      }
      declared?.forEach((d, k) => {
        if (typeof d === 'number' && d !== given[k]) {
          throw new RangeError(`inputDims.${name}[${k}] is ${given[k]} but the model fixes that dim to ${d}`);
        }
      });
      out.set(name, [...given]);
    } else {
      if (declared === undefined || declared.some((d) => typeof d !== 'number')) {
        throw new RangeError(
          `Input '${name}' has dynamic dims [${(declared ?? ['?']).map((d) => d ?? '?').join(', ')}]: ` + `give its dims in inputDims.${name}`,
        );
      }
      out.set(name, declared as number[]);
    }
  }
  return out;
}

/** A copy of `model` whose real graph inputs have the given static dims (dim_param → dim_value). Shares tensors. */
export function withFixedInputDims(model: ModelProto, dims: ReadonlyMap<string, readonly number[]>): ModelProto {
  const graph = model.graph!;
  const input = graph.input.map((vi) => {
    const d = dims.get(vi.name ?? '');
    if (d === undefined) return vi;
    const et = valueInfoElemType(vi);
    if (et === undefined) throw new TypeError(`Graph input '${vi.name}' has no tensor type`);
    const fixed = makeValueInfo(vi.name ?? '', et, d);
    if (vi.doc_string) fixed.doc_string = vi.doc_string;
    return fixed;
  });
  return cloneModelShallow(model, { ...copyGraphFields(graph), input });
}

/** Carries protobufjs' non-enumerable `$unknowns` (fields the schema does not know) over to a copy. */
function keepUnknowns<T extends object>(from: object, to: T): T {
  const u = (from as { $unknowns?: unknown }).$unknowns;
  if (u != null && Object.hasOwn(from, '$unknowns')) {
    Object.defineProperty(to, '$unknowns', { value: u, writable: true, configurable: true, enumerable: false });
  }
  return to;
}

/** Own enumerable fields of a decoded or plain graph, as a plain object (tensors and nodes shared). */
export function copyGraphFields(graph: GraphProto): GraphProto {
  return keepUnknowns(graph, {
    ...(graph as object),
    node: [...graph.node],
    initializer: [...graph.initializer],
    input: [...graph.input],
    output: [...graph.output],
    value_info: [...graph.value_info],
  } as GraphProto);
}

/** A plain-object copy of the model's top-level fields with `graph` replaced. */
export function cloneModelShallow(model: ModelProto, graph: GraphProto): ModelProto {
  return keepUnknowns(model, { ...(model as object), opset_import: [...model.opset_import], graph } as ModelProto);
}

const FLOATISH: ReadonlySet<number> = new Set([DataType.FLOAT, DataType.FLOAT16, DataType.BFLOAT16, DataType.DOUBLE]);

/**
 * Infers the static elem_type and dims of every tensor of `model` (graph inputs, initializers, every node output)
 * for the given input dims. Async because ORT sessions are created asynchronously.
 */
export async function inferStaticShapes(
  model: ModelProto,
  inputDims: Readonly<Record<string, readonly number[]>>,
  opts: InferShapesOptions = {},
): Promise<ShapeMap> {
  const graph = model.graph;
  if (graph == null) throw new TypeError('inferStaticShapes: the model has no graph');
  const fixed = resolveInputDims(graph, inputDims);
  const threshold = opts.moveInitializersAbove ?? 1024;

  // 1. Probe graph: fixed inputs, big float initializers as inputs, name-only value_info for all node outputs.
  const probeGraph = copyGraphFields(withFixedInputDims(model, fixed).graph!);
  const inputNames = new Set(probeGraph.input.map((v) => v.name));
  const keptInits: TensorProto[] = [];
  const movedInputs: ValueInfoProto[] = [];
  for (const t of graph.initializer) {
    const dims = tensorDims(t);
    const n = dims.reduce((a, b) => a * b, 1);
    if (externalDataOf(t) !== undefined || (FLOATISH.has(t.data_type ?? 0) && n > threshold)) {
      if (!inputNames.has(t.name)) movedInputs.push(makeValueInfo(t.name ?? '', t.data_type ?? 0, dims));
    } else {
      keptInits.push(t);
    }
  }
  probeGraph.initializer = keptInits;
  // IR < 4 lists initializers as inputs too; such a moved one keeps its (static) input declaration.
  probeGraph.input = [...probeGraph.input, ...movedInputs];
  const outputNames = new Set<string>();
  for (const node of graph.node) for (const o of node.output) if (o) outputNames.add(o);
  const declaredOutputs = new Set(graph.output.map((v) => v.name ?? ''));
  probeGraph.value_info = [...outputNames].filter((n) => !inputNames.has(n) && !declaredOutputs.has(n)).map((n) => makeValueInfo(n));
  // Declared outputs may carry dim_params of a dynamic export; name-only lets ORT put the inferred type there.
  probeGraph.output = graph.output.map((vi) => makeValueInfo(vi.name ?? ''));
  // ORT writes the graph it loaded back unchanged (no inferred types) unless an optimiser modified it; a foldable
  // Identity of a constant guarantees one modification. (This is why level 'disabled' saves no types at all.)
  const taken = new Set([...outputNames, ...graph.initializer.map((t) => t.name ?? ''), ...graph.input.map((v) => v.name ?? '')]);
  let dummy = '__divbind_shape_probe';
  while (taken.has(`${dummy}_in`) || taken.has(`${dummy}_out`)) dummy += '_';
  probeGraph.initializer.push(makeTensor(`${dummy}_in`, DataType.INT64, [1], BigInt64Array.of(1n)));
  probeGraph.node = [...probeGraph.node, makeNode('Identity', [`${dummy}_in`], [`${dummy}_out`], { name: dummy })];
  const probe = cloneModelShallow(model, probeGraph);

  // 2. Let ORT infer at 'basic' and save; harvest. Nodes ORT removes (e.g. a Cast to the type its input already has)
  // take their value_info with them, so a second probe declares the still-missing tensors as graph outputs, which
  // ORT keeps.
  const shapes: ShapeMap = new Map();
  const put = (name: string | undefined, elemType: number | undefined, dims: Array<number | string | null> | undefined) => {
    if (!name || elemType === undefined || dims === undefined || shapes.has(name)) return;
    if (dims.some((d) => typeof d !== 'number')) return;
    shapes.set(name, { elemType, dims: dims as number[] });
  };
  for (const [name, dims] of fixed) {
    const vi = graph.input.find((v) => v.name === name)!;
    shapes.set(name, { elemType: valueInfoElemType(vi)!, dims: [...dims] });
  }
  for (const t of graph.initializer) put(t.name, t.data_type, tensorDims(t));
  for (const node of graph.node) {
    const t = constantNodeTensor(node);
    if (t !== undefined) put(node.output[0], t.data_type, tensorDims(t));
  }
  const harvest = (saved: ModelProto) => {
    const sg = saved.graph!;
    for (const vi of [...sg.input, ...sg.output, ...sg.value_info]) put(vi.name, valueInfoElemType(vi), valueInfoDims(vi));
    for (const t of sg.initializer) put(t.name, t.data_type, tensorDims(t));
  };
  harvest(await ortProbe(probe, fixed, opts));
  let missing = [...outputNames].filter((n) => !shapes.has(n));
  if (missing.length > 0) {
    const declared = new Set(probeGraph.output.map((v) => v.name));
    const second = cloneModelShallow(probe, {
      ...probeGraph,
      output: [...probeGraph.output, ...missing.filter((n) => !declared.has(n)).map((n) => makeValueInfo(n))],
    });
    harvest(await ortProbe(second, fixed, opts));
    missing = [...outputNames].filter((n) => !shapes.has(n));
  }

  shapes.delete(`${dummy}_in`);
  shapes.delete(`${dummy}_out`);
  if (missing.length > 0 && !opts.allowPartial) {
    throw new Error(
      `Shape inference left ${missing.length} tensor(s) without a static shape, e.g. ` +
        `${missing
          .slice(0, 5)
          .map((n) => `'${n}'`)
          .join(', ')}. The graph may contain ops whose output shape depends ` +
        'on data; pass allowPartial to get the shapes that are known.',
    );
  }
  return shapes;
}

/** Creates an ORT session at level 'basic' that saves its optimised model, and returns the decoded saved model. */
async function ortProbe(probe: ModelProto, fixed: ReadonlyMap<string, readonly number[]>, opts: InferShapesOptions): Promise<ModelProto> {
  const tmpRoot = opts.tmpDir ?? os.tmpdir();
  fs.mkdirSync(tmpRoot, { recursive: true });
  const dir = fs.mkdtempSync(path.join(tmpRoot, 'divbind-shapes-'));
  opts.onTempDir?.(dir);
  const savedPath = path.join(dir, 'optimized.onnx');
  try {
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(encodeModel(probe), {
        graphOptimizationLevel: 'basic',
        optimizedModelFilePath: savedPath,
        intraOpNumThreads: 1,
        interOpNumThreads: 1,
        logSeverityLevel: 3,
      });
    } catch (err) {
      throw new Error(
        `Shape inference failed: onnxruntime could not load the model with inputs ` +
          `${[...fixed].map(([k, v]) => `${k}=[${v.join(', ')}]`).join(', ')}: ${(err as Error).message}`,
      );
    }
    await session.release();
    return decodeModel(fs.readFileSync(savedPath), 'ORT-optimised probe model');
  } finally {
    if (!opts.keepTemp) fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Typed ValueInfos for `names` from a shape map (e.g. to declare new graph outputs or annotate a graph). */
export function valueInfosFromShapes(shapes: ShapeMap, names: Iterable<string>): ValueInfoProto[] {
  const out: ValueInfoProto[] = [];
  for (const n of names) {
    const s = shapes.get(n);
    if (s === undefined) throw new RangeError(`No static shape known for tensor '${n}'`);
    out.push(makeValueInfo(n, s.elemType, s.dims));
  }
  return out;
}

/** 'FLOAT[1, 4, 64, 64]' */
export function formatShape(s: StaticShape): string {
  return `${dataTypeName(s.elemType)}[${s.dims.join(', ')}]`;
}
