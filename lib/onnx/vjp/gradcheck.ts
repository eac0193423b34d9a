/**
 * Gradient checking for generated VJP graphs: runs a model and its VJP on onnxruntime-node and compares the
 * VJP against central finite differences of f(x) = Σ_o ⟨cotangent_o, y_o(x)⟩ (accumulated in float64).
 * Used by the tests and available to users who want to validate a model before guiding with it.
 */
import * as ort from 'onnxruntime-node';
import { type ModelProto, encodeModel, makeValueInfo } from '../proto';
import { type VjpDesign, buildVjp, gradName } from './build';
import { DataType, type TensorInfo } from './ir';

const ORT_TO_ONNX: Record<string, number> = {
  float32: DataType.FLOAT,
  float64: DataType.DOUBLE,
  float16: DataType.FLOAT16,
  int64: DataType.INT64,
  int32: DataType.INT32,
  int8: DataType.INT8,
  uint8: DataType.UINT8,
  bool: DataType.BOOL,
};

export type Feeds = Record<string, ort.Tensor>;

/** Creates an ORT session from an in-memory model. */
export async function sessionFor(
  model: ModelProto,
  options: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: 'basic' },
): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(encodeModel(model), { intraOpNumThreads: 1, interOpNumThreads: 1, ...options });
}

/**
 * Static type and dims of every tensor of a model with fully static inputs, by running it once with every node
 * output exposed (an independent alternative to ORT's shape inference, used to cross-check it).
 */
export async function shapesByRunning(model: ModelProto, feeds: Feeds): Promise<Map<string, TensorInfo>> {
  const graph = model.graph!;
  const known = new Set(graph.output.map((o) => o.name ?? ''));
  const extra: string[] = [];
  for (const n of graph.node)
    for (const o of n.output)
      if (o && !known.has(o)) {
        known.add(o);
        extra.push(o);
      }
  const probe: ModelProto = {
    ...model,
    graph: { ...graph, output: [...graph.output, ...extra.map((o) => makeValueInfo(o))] },
  };
  const session = await sessionFor(probe, { graphOptimizationLevel: 'disabled' });
  try {
    const out = await session.run(feeds);
    const shapes = new Map<string, TensorInfo>();
    for (const [name, t] of Object.entries(out)) {
      const elemType = ORT_TO_ONNX[t.type];
      if (elemType !== undefined) shapes.set(name, { elemType, dims: [...t.dims] });
    }
    for (const [name, t] of Object.entries(feeds)) shapes.set(name, { elemType: ORT_TO_ONNX[t.type], dims: [...t.dims] });
    return shapes;
  } finally {
    await session.release();
  }
}

/** Deterministic uniform generator (mulberry32) so test inputs are reproducible. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface GradCheckOptions {
  model: ModelProto;
  feeds: Feeds;
  wrt: string;
  outputs: string[];
  /** Cotangent per output; random in [-1, 1) when absent. */
  cotangents?: Record<string, Float64Array | Float32Array>;
  design?: VjpDesign;
  /** Finite-difference step (absolute). */
  step: number;
  /** Check at most this many elements of wrt (spread evenly); default all. */
  maxElements?: number;
  seed?: number;
  shapes?: Map<string, TensorInfo>;
}

export interface GradCheckResult {
  /** VJP gradient, all elements. */
  analytic: Float64Array;
  /** Indices of wrt that were checked and their finite-difference gradients. */
  checked: number[];
  numeric: Float64Array;
  /** max |analytic − numeric| over checked elements. */
  maxAbsErr: number;
  /** ‖analytic − numeric‖₂ / ‖numeric‖₂ over checked elements. */
  relL2: number;
  /** max |numeric| (scale for tolerances). */
  maxAbs: number;
  stats: ReturnType<typeof buildVjp>['stats'];
}

function makeLike(t: ort.Tensor, data: Float64Array): ort.Tensor {
  if (t.type === 'float64') return new ort.Tensor('float64', Float64Array.from(data), t.dims);
  return new ort.Tensor('float32', Float32Array.from(data), t.dims);
}

/** Runs the VJP (either design) for the given cotangents; returns grad_<wrt>. */
export async function runVjp(
  model: ModelProto,
  feeds: Feeds,
  wrt: string,
  outputs: string[],
  cot: Record<string, ort.Tensor>,
  shapes: Map<string, TensorInfo>,
  design: VjpDesign = 'recompute',
) {
  const built = buildVjp(model, { wrt, outputs, shapes, design });
  if (design === 'recompute') {
    const s = await sessionFor(built.vjp!);
    try {
      const out = await s.run({ ...feeds, ...Object.fromEntries(outputs.map((o) => [gradName(o), cot[o]])) });
      return { grad: out[gradName(wrt)], stats: built.stats };
    } finally {
      await s.release();
    }
  }
  const fs = await sessionFor(built.forward!);
  const bs = await sessionFor(built.backward!);
  try {
    const fwd = await fs.run(feeds);
    const bfeeds: Feeds = {};
    for (const name of bs.inputNames) {
      if (name in feeds) bfeeds[name] = feeds[name];
      else if (name in fwd) bfeeds[name] = fwd[name];
    }
    for (const o of outputs) bfeeds[gradName(o)] = cot[o];
    const out = await bs.run(bfeeds);
    return { grad: out[gradName(wrt)], stats: built.stats };
  } finally {
    await fs.release();
    await bs.release();
  }
}

export async function gradCheck(o: GradCheckOptions): Promise<GradCheckResult> {
  const shapes = o.shapes ?? (await shapesByRunning(o.model, o.feeds));
  const r = rng(o.seed ?? 1234);
  const cot: Record<string, ort.Tensor> = {};
  const cot64: Record<string, Float64Array> = {};
  for (const name of o.outputs) {
    const inf = shapes.get(name);
    if (!inf) throw new Error(`gradCheck: no shape for output ${name}`);
    const n = inf.dims.reduce((a, b) => a * b, 1);
    const given = o.cotangents?.[name];
    const v = given ? Float64Array.from(given) : Float64Array.from({ length: n }, () => 2 * r() - 1);
    // Round the cotangent to the model's precision so the FD objective uses exactly what the VJP sees.
    cot64[name] = inf.elemType === DataType.DOUBLE ? v : Float64Array.from(Float32Array.from(v));
    cot[name] = inf.elemType === DataType.DOUBLE ? new ort.Tensor('float64', v, inf.dims) : new ort.Tensor('float32', Float32Array.from(v), inf.dims);
  }
  const { grad, stats } = await runVjp(o.model, o.feeds, o.wrt, o.outputs, cot, shapes, o.design);
  const analytic = Float64Array.from(grad.data as Float32Array | Float64Array);

  const fwd = await sessionFor(o.model, { graphOptimizationLevel: 'disabled' });
  try {
    const x0 = Float64Array.from(o.feeds[o.wrt].data as Float32Array | Float64Array);
    const objective = async (x: Float64Array): Promise<number> => {
      const out = await fwd.run({ ...o.feeds, [o.wrt]: makeLike(o.feeds[o.wrt], x) }, o.outputs);
      let s = 0;
      for (const name of o.outputs) {
        const y = out[name].data as Float32Array | Float64Array;
        const c = cot64[name];
        for (let i = 0; i < y.length; i++) s += c[i] * y[i];
      }
      return s;
    };
    const total = x0.length;
    const count = Math.min(total, o.maxElements ?? total);
    const checked = Array.from({ length: count }, (_, k) => Math.floor((k * total) / count));
    const numeric = new Float64Array(count);
    const x = Float64Array.from(x0);
    for (let k = 0; k < count; k++) {
      const i = checked[k];
      x[i] = x0[i] + o.step;
      const fp = await objective(x);
      x[i] = x0[i] - o.step;
      const fm = await objective(x);
      x[i] = x0[i];
      numeric[k] = (fp - fm) / (2 * o.step);
    }
    let maxAbsErr = 0;
    let num2 = 0;
    let err2 = 0;
    let maxAbs = 0;
    for (let k = 0; k < count; k++) {
      const d = analytic[checked[k]] - numeric[k];
      maxAbsErr = Math.max(maxAbsErr, Math.abs(d));
      err2 += d * d;
      num2 += numeric[k] * numeric[k];
      maxAbs = Math.max(maxAbs, Math.abs(numeric[k]));
    }
    return { analytic, checked, numeric, maxAbsErr, relL2: Math.sqrt(err2 / Math.max(num2, 1e-300)), maxAbs, stats };
  } finally {
    await fwd.release();
  }
}
