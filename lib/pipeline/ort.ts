/**
 * onnxruntime-node helpers: shared session defaults, and tensors built from the model's own input metadata (dtype
 * and rank differ between exports: e.g. the UNet timestep is int64 [B], float32 [B] or a float scalar), never
 * assumed. Sessions of a model folder are opened by lib/model/components.ts, which checks each component.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { DivbindError } from '../errors';
import { tryLoadNativeBinding } from '../loss/binding';
import { encodeModel, makeNode, makeValueInfo, DataType } from '../onnx/proto';

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
  /**
   * Run on the weights as the model's external data file holds them (default true). onnxruntime maps a page-aligned
   * external data file instead of reading it, so every session (CFG UNet, guided forward, backward) and every
   * process that opens the same file (the prepared graphs hard-link it) shares one copy of the weights. false lets
   * the CPU provider repack them per session (prepacked GEMM panels, NCHWc convolution weights): a private copy of
   * nearly all weights in each session (3.4 GB for SD 1.5), for faster kernels (bench/results/sd15.json).
   */
  shareWeights?: boolean;
  /**
   * Keep each session's memory arena between runs (onnxruntime's default). Default false: the pipeline alternates
   * between sessions, and a kept arena holds a session's largest working set while the others run, so the peak
   * would be the sum of all of them instead of the largest.
   */
  memoryArena?: boolean;
  /**
   * Keep the memory a run frees for the next run (default true; DIVBIND_RETAIN_FREED_MEMORY=0 in the environment
   * turns the default off). Without an arena every run mallocs its intermediate tensors afresh, and glibc hands
   * large blocks back to the kernel, so each run faults its working memory in again (system time, not compute).
   * Process-wide and one-way: the first session opened with it asks glibc to serve blocks up to 32 MiB from its
   * heap and keep up to 2 GiB of it free for the next run (native/addon/allocator.cc); a no-op on other C
   * libraries or without the addon. Measured in README ("Allocator").
   */
  retainFreedMemory?: boolean;
}

/** Session config entries that keep the weights in the mapped external data file (SessionOptions.shareWeights). */
const SHARED_WEIGHTS = {
  session: { disable_prepacking: '1' },
  optimization: { disable_specified_optimizers: 'NchwcTransformer' },
};

// ---------------------------------------------------------------------------------------------------------------
// Execution providers

/** The CPU provider: always there, and the fallback for operators another provider lacks. */
export const CPU_PROVIDER = 'cpu';

/**
 * How to get the GPU providers: onnxruntime-node ships the CPU (and WebGPU) providers; CUDA and TensorRT are
 * downloaded by its install script only when asked (linux x64, CUDA 12 + cuDNN 9 on the machine).
 */
export const GPU_PROVIDERS_INSTALL =
  'npm install onnxruntime-node --onnxruntime-node-install=cuda12 ' +
  '(or, in an existing install, ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node); ' +
  'the CUDA and TensorRT providers need CUDA 12 and cuDNN 9 installed';

/** Providers this onnxruntime-node build knows, and whether their libraries ship with it. */
export function knownExecutionProviders(): Array<{ name: string; bundled: boolean }> {
  return ort.listSupportedBackends().map((b) => ({ name: b.name, bundled: b.bundled }));
}

/** Folder of the onnxruntime-node binding, where it looks for the provider libraries it does not bundle. */
function bindingDir(): string {
  return path.join(path.dirname(require.resolve('onnxruntime-node')), '..', 'bin', 'napi-v6', process.platform, process.arch);
}

/** Library files a non-bundled provider needs next to the binding (onnxruntime's provider bridge loads them). */
function providerLibraries(name: string): string[] {
  const lib = (base: string) => (process.platform === 'win32' ? `${base}.dll` : `lib${base}.so`);
  return [lib('onnxruntime_providers_shared'), lib(`onnxruntime_providers_${name}`)];
}

function providerMissing(name: string, detail: string, cause?: unknown): DivbindError {
  return new DivbindError('BAD_INPUT', `The '${name}' execution provider is not available here: ${detail}`, {
    field: 'executionProvider',
    fix: `run with --execution-provider cpu, or install onnxruntime-node with its GPU providers: ${GPU_PROVIDERS_INSTALL}`,
    cause,
  });
}

/**
 * Checks that `name` is a provider this onnxruntime-node knows and has installed; returns it. A DivbindError
 * BAD_INPUT naming the provider and the install command otherwise (before onnxruntime logs its own errors).
 */
export function checkExecutionProvider(name: unknown): string {
  const known = knownExecutionProviders();
  const names = known.map((k) => k.name);
  if (typeof name !== 'string' || !names.includes(name)) {
    throw new DivbindError('BAD_INPUT', `Expected one of ${names.map((n) => `'${n}'`).join(', ')} for executionProvider but received ${JSON.stringify(name)}`, {
      field: 'executionProvider',
      fix: `onnxruntime-node ${ort.env.versions.common} on ${process.platform}/${process.arch} knows these providers`,
    });
  }
  if (known.find((k) => k.name === name)!.bundled) return name;
  const dir = bindingDir();
  const missing = providerLibraries(name).filter((f) => !fs.existsSync(path.join(dir, f)));
  if (missing.length > 0) throw providerMissing(name, `onnxruntime-node was installed without it (${missing.join(', ')} missing in ${dir})`);
  return name;
}

/** Providers whose libraries are present here: bundled ones and those installed beside the binding (not probed). */
export function installedExecutionProviders(): string[] {
  const dir = bindingDir();
  return knownExecutionProviders()
    .filter((k) => k.bundled || providerLibraries(k.name).every((f) => fs.existsSync(path.join(dir, f))))
    .map((k) => k.name);
}

/** A one-node model (Identity on float[1]) that a provider must be able to run. */
function probeModel(): Uint8Array {
  return encodeModel({
    ir_version: 8,
    opset_import: [{ domain: '', version: 17 }],
    producer_name: 'divbind-native provider probe',
    graph: {
      name: 'probe',
      node: [makeNode('Identity', ['x'], ['y'])],
      input: [makeValueInfo('x', DataType.FLOAT, [1])],
      output: [makeValueInfo('y', DataType.FLOAT, [1])],
      initializer: [],
      value_info: [],
    },
  });
}

const probed = new Map<string, Promise<void>>();

/**
 * checkExecutionProvider, then one tiny session on that provider alone (once per process): a provider whose
 * libraries are present but cannot start (no GPU, CUDA or cuDNN missing) fails here with the same clear error,
 * not later as an unreadable model.
 */
export async function probeExecutionProvider(name: unknown): Promise<void> {
  const provider = checkExecutionProvider(name);
  let p = probed.get(provider);
  if (p === undefined) {
    p = (async () => {
      try {
        const s = await ort.InferenceSession.create(probeModel(), { executionProviders: [provider], logSeverityLevel: 4 });
        await s.release();
      } catch (err) {
        probed.delete(provider);
        throw providerMissing(provider, `onnxruntime could not start it (${(err as Error).message})`, err);
      }
    })();
    probed.set(provider, p);
  }
  return p;
}

/** Session options that run on `provider` (CPU takes the operators it lacks), after probing it. */
export async function withExecutionProvider(options: SessionOptions | undefined, provider: string | undefined): Promise<SessionOptions | undefined> {
  if (provider === undefined) return options;
  await probeExecutionProvider(provider);
  return { ...options, executionProviders: provider === CPU_PROVIDER ? [CPU_PROVIDER] : [provider, CPU_PROVIDER] };
}

let retained: boolean | undefined;

/** Asks the C library once per process to keep freed memory (SessionOptions.retainFreedMemory); true when it did. */
export function retainFreedMemory(): boolean {
  if (retained === undefined) retained = tryLoadNativeBinding().binding?.retainFreedMemory?.().applied ?? false;
  return retained;
}

export function sessionOptions(opts: SessionOptions = {}): ort.InferenceSession.SessionOptions {
  if (opts.retainFreedMemory ?? process.env.DIVBIND_RETAIN_FREED_MEMORY !== '0') retainFreedMemory();
  const spinning = opts.allowSpinning ? '1' : '0';
  const shared = opts.shareWeights ?? true;
  return {
    intraOpNumThreads: opts.intraOpNumThreads ?? Math.max(1, os.cpus().length),
    interOpNumThreads: opts.interOpNumThreads ?? 1,
    graphOptimizationLevel: opts.graphOptimizationLevel ?? 'all',
    executionProviders: opts.executionProviders ?? [CPU_PROVIDER],
    logSeverityLevel: opts.logSeverityLevel ?? 3,
    enableCpuMemArena: opts.memoryArena ?? false,
    extra: {
      session: { intra_op: { allow_spinning: spinning }, inter_op: { allow_spinning: spinning }, ...(shared ? SHARED_WEIGHTS.session : {}) },
      ...(shared ? { optimization: SHARED_WEIGHTS.optimization } : {}),
    },
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
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
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
    case 'int64':
      return new ort.Tensor(
        'int64',
        BigInt64Array.from({ length: n }, () => BigInt(Math.round(value))),
        dims,
      );
    case 'int32':
      return new ort.Tensor(
        'int32',
        Int32Array.from({ length: n }, () => Math.round(value)),
        dims,
      );
    case 'float32':
      return new ort.Tensor(
        'float32',
        Float32Array.from({ length: n }, () => value),
        dims,
      );
    case 'float64':
      return new ort.Tensor(
        'float64',
        Float64Array.from({ length: n }, () => value),
        dims,
      );
    case 'float16':
      return new ort.Tensor(
        'float16',
        Uint16Array.from({ length: n }, () => toHalf(value)),
        dims,
      );
    default:
      throw new Error(`model input "${spec.name}" has unsupported type ${spec.type} (expected int64, int32, float32 or float16)`);
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
