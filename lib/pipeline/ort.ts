/**
 * onnxruntime-node helpers: shared session defaults, and tensors built from the model's own input metadata (dtype
 * and rank differ between exports: e.g. the UNet timestep is int64 [B], float32 [B] or a float scalar), never
 * assumed. Sessions of a model folder are opened by lib/model/components.ts, which checks each component.
 */
import * as os from 'node:os';
import * as ort from 'onnxruntime-node';

export { ort };

export interface SessionOptions {
  /** Threads inside one operator. Default: the number of CPU cores. */
  intraOpNumThreads?: number;
  /** Threads across operators. Default 1. */
  interOpNumThreads?: number;
  /** ORT graph optimisation level. Default 'all'. */
  graphOptimizationLevel?: 'disabled' | 'basic' | 'extended' | 'all';
  /** Execution providers. Default ['cpu']. */
  executionProviders?: string[];
  logSeverityLevel?: 0 | 1 | 2 | 3 | 4;
  /**
   * Let idle intra-op threads spin-wait for work (ORT's default). Default false here: the pipeline alternates
   * between several sessions (CFG UNet, guided forward, backward, VAE), and each session's spinning pool steals the
   * cores from the one that is running.
   */
  allowSpinning?: boolean;
}

export function sessionOptions(opts: SessionOptions = {}): ort.InferenceSession.SessionOptions {
  return {
    intraOpNumThreads: opts.intraOpNumThreads ?? Math.max(1, os.cpus().length),
    interOpNumThreads: opts.interOpNumThreads ?? 1,
    graphOptimizationLevel: opts.graphOptimizationLevel ?? 'all',
    executionProviders: opts.executionProviders ?? ['cpu'],
    logSeverityLevel: opts.logSeverityLevel ?? 3,
    extra: { session: { intra_op: { allow_spinning: opts.allowSpinning ? '1' : '0' }, inter_op: { allow_spinning: opts.allowSpinning ? '1' : '0' } } },
  };
}

export interface InputSpec {
  name: string;
  type: ort.Tensor.Type;
  /** Declared shape; numbers are fixed dims, strings symbolic; [] = scalar. */
  shape: ReadonlyArray<number | string>;
}

export function inputSpec(session: ort.InferenceSession, name: string): InputSpec {
  const meta = session.inputMetadata.find((m) => m.name === name);
  if (!meta) {
    throw new Error(`model input "${name}" not found; the model has inputs ${session.inputNames.join(', ')}`);
  }
  if (!meta.isTensor) throw new Error(`model input "${name}" is not a tensor`);
  return { name, type: meta.type, shape: meta.shape };
}

/** Fixed batch size of an input (first dim), or null when it is symbolic/dynamic. */
export function fixedBatch(spec: InputSpec): number | null {
  const d = spec.shape[0];
  return typeof d === 'number' && d > 0 ? d : null;
}

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);
/** float32 → IEEE half bits (round to nearest even). */
export function toHalf(value: number): number {
  F32[0] = value;
  const x = U32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && (half & 1))) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1))) half++;
  return sign | half;
}

/** Tensor holding `values` (one per batch entry, or one scalar) in the dtype and rank the input declares. */
export function scalarInput(spec: InputSpec, value: number, batch: number): ort.Tensor {
  const scalar = spec.shape.length === 0;
  // A fixed first dim (e.g. timestep [1] that the graph broadcasts over the batch) wins over the batch size.
  const fixed = spec.shape[0];
  const n = scalar ? 1 : typeof fixed === 'number' && fixed > 0 ? fixed : batch;
  const dims = scalar ? [] : [n];
  switch (spec.type) {
    case 'int64': return new ort.Tensor('int64', BigInt64Array.from({ length: n }, () => BigInt(Math.round(value))), dims);
    case 'int32': return new ort.Tensor('int32', Int32Array.from({ length: n }, () => Math.round(value)), dims);
    case 'float32': return new ort.Tensor('float32', Float32Array.from({ length: n }, () => value), dims);
    case 'float64': return new ort.Tensor('float64', Float64Array.from({ length: n }, () => value), dims);
    case 'float16': return new ort.Tensor('float16', Uint16Array.from({ length: n }, () => toHalf(value)), dims);
    default: throw new Error(`model input "${spec.name}" has unsupported type ${spec.type} (expected int64, int32, float32 or float16)`);
  }
}

/** Float tensor in the input's float type (float32, or float16 converted). */
export function floatInput(spec: InputSpec, data: Float32Array, dims: number[]): ort.Tensor {
  if (spec.type === 'float32') return new ort.Tensor('float32', data, dims);
  if (spec.type === 'float16') return new ort.Tensor('float16', Uint16Array.from(data, toHalf), dims);
  throw new Error(`model input "${spec.name}" has type ${spec.type}; expected float32 or float16`);
}

/** Reads a float output (float32 or float16) as Float32Array. */
export function floatOutput(tensor: ort.Tensor, what: string): Float32Array {
  if (tensor.type === 'float32') return tensor.data as Float32Array;
  if (tensor.type === 'float16') {
    const bits = tensor.data as Uint16Array;
    const out = new Float32Array(bits.length);
    for (let i = 0; i < bits.length; i++) out[i] = halfToFloat(bits[i]);
    return out;
  }
  throw new Error(`${what}: expected a float output, got ${tensor.type}`);
}

export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 0x1f) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
