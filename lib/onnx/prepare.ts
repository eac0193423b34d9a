// `prepare`: turn a Stable Diffusion ONNX folder's UNet into the graphs guidance needs, once per model and size:
//   1. validate the folder and the UNet (fp32, un-fused), 2. infer static shapes for the requested dims,
//   3. find the cross-attention layers and expose them as outputs attn_<i>, 4. build the VJP graph(s) w.r.t. the
//   latent, 5. save everything to <model>/unet/divbind/ (or a cache dir when the model folder is read-only),
//   6. run each graph once as a check, 7. write divbind-manifest.json last (a manifest means complete files).
// Re-running with the same model (hash) and options does nothing.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { assertUnfusedExport, findCrossAttention, instrumentUnet, SUPPORTED_EXPORTS_HINT, DEFAULT_HEAD_AVERAGE } from './attention';
import {
  MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION, readManifest, writeManifest, type Manifest, type ManifestTensor,
} from './manifest';
import { createSession, loadModel, saveModel, type SavedModel } from './model-io';
import { DataType, dataTypeName, int64ToNumber, opsetVersion, ortTypeOf, valueInfoDims, valueInfoElemType, type ModelProto } from './proto';
import { inferStaticShapes, realGraphInputs, type ShapeMap } from './shapes';
import { buildVjp } from './vjp/index';

export type PrepareStage = 'validate' | 'load' | 'shapes' | 'attention' | 'vjp' | 'save' | 'verify' | 'done';

export interface PrepareProgress {
  stage: PrepareStage;
  message: string;
  /** 0..1 over the whole run. */
  fraction: number;
}

export interface PrepareOptions {
  /** Image height in pixels (multiple of 8). Default: the UNet's static latent height × 8, else 512. */
  height?: number;
  /** Image width in pixels (multiple of 8). Default: as height. */
  width?: number;
  /** UNet batch of the gradient pass (default 1: the guidance step runs on the conditional batch only). */
  batch?: number;
  /** Text length T (default: the UNet's static encoder_hidden_states length, else 77). */
  textLength?: number;
  /** Rebuild even when a matching manifest exists. */
  force?: boolean;
  /** Where to write when <model>/unet is not writable (default ~/.cache/divbind-native). */
  cacheDir?: string;
  /** Expose head-averaged maps (default DEFAULT_HEAD_AVERAGE) or raw per-head probabilities. */
  headAverage?: boolean;
  /**
   * VJP design passed to buildVjp. Default 'residuals': the guidance step runs the forward anyway (for the maps), so
   * only the backward graph is extra — measured faster per step than 'recompute' (bench/results/vjp.json).
   */
  design?: 'recompute' | 'residuals';
  /** Run each written graph once (default true). */
  verify?: boolean;
  onProgress?: (p: PrepareProgress) => void;
}

/**
 * The model folder or UNet cannot be prepared: missing files, not an SD folder, fp16, fused attention, no
 * cross-attention found. The CLI maps it to its "model" exit code.
 */
export class ModelError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ModelError';
  }
}

/** Runs `fn`, turning plain Errors (not TypeError/RangeError, which are option mistakes) into ModelErrors. */
function asModelError<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof TypeError || err instanceof RangeError || err instanceof ModelError || !(err instanceof Error)) throw err;
    throw new ModelError(err.message, { cause: err });
  }
}

export interface PrepareResult {
  /** Directory holding the graphs and the manifest. */
  dir: string;
  manifestPath: string;
  manifest: Manifest;
  /** True when a matching manifest existed and nothing was rebuilt. */
  skipped: boolean;
}

const KNOWN_OPTIONS = new Set(['height', 'width', 'batch', 'textLength', 'force', 'cacheDir', 'headAverage', 'design', 'verify', 'onProgress']);

function toolVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.resolve(__dirname, '../../../package.json'), 'utf8')) as { version?: string };
    return pkg.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

function checkInt(v: unknown, name: string, min: number, max: number, multipleOf = 1): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) {
    throw new TypeError(`Expected an integer for ${name} but received ${String(v)} of type ${typeof v}`);
  }
  if (v < min || v > max || v % multipleOf !== 0) {
    throw new RangeError(`Expected ${multipleOf > 1 ? `a multiple of ${multipleOf} ` : 'an integer '}between ${min} and ${max} `
      + `for ${name} but received ${v}`);
  }
  return v;
}

function validateOptions(opts: PrepareOptions): void {
  if (opts === null || typeof opts !== 'object') throw new TypeError('Expected an options object for prepareModel');
  for (const k of Object.keys(opts)) {
    if (!KNOWN_OPTIONS.has(k)) throw new TypeError(`Unknown prepareModel option '${k}' (known: ${[...KNOWN_OPTIONS].join(', ')})`);
  }
  if (opts.height !== undefined) checkInt(opts.height, 'height', 8, 8192, 8);
  if (opts.width !== undefined) checkInt(opts.width, 'width', 8, 8192, 8);
  if (opts.batch !== undefined) checkInt(opts.batch, 'batch', 1, 64);
  if (opts.textLength !== undefined) checkInt(opts.textLength, 'textLength', 1, 4096);
  if (opts.design !== undefined && opts.design !== 'recompute' && opts.design !== 'residuals') {
    throw new RangeError(`Expected 'recompute' or 'residuals' for design but received '${String(opts.design)}'`);
  }
  for (const k of ['force', 'headAverage', 'verify'] as const) {
    if (opts[k] !== undefined && typeof opts[k] !== 'boolean') throw new TypeError(`Expected a boolean for ${k} but received ${String(opts[k])}`);
  }
  if (opts.cacheDir !== undefined && (typeof opts.cacheDir !== 'string' || opts.cacheDir === '')) {
    throw new TypeError(`Expected a directory path for cacheDir but received ${String(opts.cacheDir)}`);
  }
  if (opts.onProgress !== undefined && typeof opts.onProgress !== 'function') {
    throw new TypeError('Expected a function for onProgress');
  }
}

/** Checks the folder layout; returns the UNet path. Errors say what is wrong and what to do. */
export function validateModelDir(modelDir: string): string {
  if (typeof modelDir !== 'string' || modelDir === '') {
    throw new TypeError(`Expected a model folder path for modelDir but received ${String(modelDir)}`);
  }
  const dir = path.resolve(modelDir);
  if (!fs.existsSync(dir)) throw new ModelError(`Model folder not found: ${dir}`);
  if (!fs.statSync(dir).isDirectory()) {
    throw new ModelError(`${dir} is a file; pass the Stable Diffusion ONNX folder (the one with model_index.json and unet/)`);
  }
  const layout = 'the layout of diffusers\' OnnxStableDiffusionPipeline / Optimum exports: model_index.json, '
    + 'unet/model.onnx, text_encoder/model.onnx, vae_decoder/model.onnx, tokenizer/, scheduler/';
  if (!fs.existsSync(path.join(dir, 'model_index.json'))) {
    throw new ModelError(`${dir} is not a Stable Diffusion ONNX folder: model_index.json is missing. Expected ${layout}.`);
  }
  const unet = path.join(dir, 'unet', 'model.onnx');
  if (!fs.existsSync(unet)) {
    throw new ModelError(`${dir} has no unet/model.onnx. Expected ${layout}.`);
  }
  return unet;
}

function isWritableDir(dir: string): boolean {
  try {
    fs.mkdirSync(dir, { recursive: true });
    fs.accessSync(dir, fs.constants.W_OK);
    const probe = path.join(dir, `.divbind-write-test-${process.pid}`);
    fs.writeFileSync(probe, '');
    fs.rmSync(probe);
    return true;
  } catch {
    return false;
  }
}

function tensorInfo(shapes: ShapeMap, name: string): ManifestTensor {
  const s = shapes.get(name)!;
  return { elemType: dataTypeName(s.elemType), dims: [...s.dims] };
}

/** Deterministic pseudo-random values in [-1, 1) (xorshift), for the check runs. */
function pseudoRandom(n: number, seed: number): Float32Array {
  let x = (seed * 2654435761) >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    out[i] = (x / 4294967296) * 2 - 1;
  }
  return out;
}

function feedFor(name: string, elemType: number, dims: number[], seed: number, timestep = 500): ort.Tensor {
  const n = dims.reduce((a, b) => a * b, 1);
  const type = ortTypeOf(elemType);
  if (name === 'timestep' || /time/.test(name)) {
    if (type === 'int64') return new ort.Tensor('int64', BigInt64Array.from({ length: n }, () => BigInt(timestep)), dims);
    if (type === 'int32') return new ort.Tensor('int32', Int32Array.from({ length: n }, () => timestep), dims);
    if (type === 'float32') return new ort.Tensor('float32', Float32Array.from({ length: n }, () => timestep), dims);
  }
  if (type !== 'float32') throw new Error(`Cannot make a check input for '${name}' of type ${dataTypeName(elemType)}`);
  return new ort.Tensor('float32', pseudoRandom(n, seed), dims);
}

function assertFinite(data: ArrayLike<number>, what: string): void {
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) throw new Error(`Check run failed: ${what} has a non-finite value at element ${i}`);
  }
}

/** The cache directory used for `modelDir` when its unet/ folder is read-only. */
export function cacheDirFor(modelDir: string, cacheDir?: string): string {
  const root = path.resolve(modelDir);
  const cacheRoot = path.resolve(cacheDir ?? path.join(os.homedir(), '.cache', 'divbind-native'));
  return path.join(cacheRoot, `${path.basename(root)}-${crypto.createHash('sha256').update(root).digest('hex').slice(0, 16)}`);
}

export interface LocatePreparedOptions {
  cacheDir?: string;
  /** When given, the prepared graphs must be for this size/batch. */
  height?: number;
  width?: number;
  batch?: number;
}

/**
 * Finds the prepared graphs of `modelDir` (beside the model, else in the cache) for the pipeline. Throws a ModelError
 * telling the user the exact `prepare` command when there are none, they are stale (the UNet changed), or they
 * were prepared for another size.
 */
export function locatePrepared(modelDir: string, opts: LocatePreparedOptions = {}): { dir: string; manifest: Manifest } {
  const unetPath = validateModelDir(modelDir);
  const root = path.resolve(modelDir);
  const want = [opts.height !== undefined ? ` --height ${opts.height}` : '', opts.width !== undefined ? ` --width ${opts.width}` : '',
    opts.batch !== undefined && opts.batch !== 1 ? ` --batch ${opts.batch}` : ''].join('');
  const cmd = `divbind-native prepare ${JSON.stringify(root)}${want}${opts.cacheDir ? ` --cache-dir ${JSON.stringify(opts.cacheDir)}` : ''}`;
  const current = loadModel(unetPath).sourceHash;
  for (const dir of [path.join(path.dirname(unetPath), 'divbind'), cacheDirFor(root, opts.cacheDir)]) {
    const m = readManifest(dir);
    if (m === undefined) continue;
    if (m.formatVersion !== MANIFEST_VERSION) throw new ModelError(`${dir} was prepared by another divbind-native version: run \`${cmd} --force\``);
    if (m.source.sourceHash !== current) throw new ModelError(`The UNet changed since ${dir} was prepared: run \`${cmd} --force\``);
    if ((opts.height !== undefined && m.height !== opts.height) || (opts.width !== undefined && m.width !== opts.width)
      || (opts.batch !== undefined && m.batch !== opts.batch)) {
      throw new ModelError(`${dir} is prepared for ${m.width}×${m.height} batch ${m.batch}, not `
        + `${opts.width ?? m.width}×${opts.height ?? m.height} batch ${opts.batch ?? m.batch}: run \`${cmd}\``);
    }
    return { dir, manifest: m };
  }
  throw new ModelError(`${root} is not prepared for guidance yet: run \`${cmd}\` once`);
}

/**
 * Prepares `modelDir` for guided sampling (see the file header). Returns where the graphs are and the manifest.
 */
export async function prepareModel(modelDir: string, opts: PrepareOptions = {}): Promise<PrepareResult> {
  validateOptions(opts);
  const timings: Record<string, number> = {};
  let t = performance.now();
  const lap = (k: string) => { const now = performance.now(); timings[k] = Math.round(now - t); t = now; };
  const progress = (stage: PrepareStage, message: string, fraction: number) => opts.onProgress?.({ stage, message, fraction });

  progress('validate', 'checking the model folder', 0);
  const unetPath = asModelError(() => validateModelDir(modelDir));
  const root = path.resolve(modelDir);

  progress('load', `reading ${path.relative(root, unetPath)}`, 0.02);
  const loaded = asModelError(() => loadModel(unetPath));
  const model = loaded.model;
  const graph = model.graph!;
  const inputs = realGraphInputs(graph);
  const sampleVi = inputs.find((v) => v.name === 'sample') ?? inputs.find((v) => (valueInfoDims(v) ?? []).length === 4);
  const textVi = inputs.find((v) => v.name === 'encoder_hidden_states') ?? inputs.find((v) => (valueInfoDims(v) ?? []).length === 3);
  if (sampleVi === undefined || textVi === undefined) {
    throw new ModelError(`${unetPath} does not look like an SD UNet: expected inputs sample [B,4,h,w] and encoder_hidden_states `
      + `[B,T,D], found ${inputs.map((v) => v.name).join(', ')}`);
  }
  const sampleType = valueInfoElemType(sampleVi);
  if (sampleType === DataType.FLOAT16) {
    throw new ModelError(`${unetPath} is an fp16 UNet. The gradient pass needs fp32: export the UNet in fp32 `
      + '(diffusers\' convert script without --fp16, or optimum-cli without --dtype fp16).');
  }
  if (sampleType !== DataType.FLOAT) {
    throw new ModelError(`${unetPath}: input '${sampleVi.name}' is ${dataTypeName(sampleType ?? 0)}, expected FLOAT. ${SUPPORTED_EXPORTS_HINT}`);
  }
  asModelError(() => assertUnfusedExport(model));
  lap('load');

  // Dims: options, else what the model fixes, else SD defaults.
  const sDims = valueInfoDims(sampleVi)!;
  const tDims = valueInfoDims(textVi)!;
  const staticOr = (d: number | string | null | undefined, dflt: number) => (typeof d === 'number' ? d : dflt);
  const height = opts.height ?? staticOr(sDims[2], 64) * 8;
  const width = opts.width ?? (opts.height !== undefined ? opts.height : staticOr(sDims[3], 64) * 8);
  checkInt(height, 'height', 8, 8192, 8);
  checkInt(width, 'width', 8, 8192, 8);
  const batch = opts.batch ?? 1;
  const textLength = opts.textLength ?? staticOr(tDims[1], 77);
  const textDim = tDims[2];
  if (typeof textDim !== 'number') throw new ModelError(`${unetPath}: the hidden size of encoder_hidden_states is not static`);
  const channels = staticOr(sDims[1], 4);
  const inputDims: Record<string, number[]> = {
    [sampleVi.name!]: [batch, channels, height / 8, width / 8],
    [textVi.name!]: [batch, textLength, textDim],
  };
  for (const vi of inputs) {
    if (vi === sampleVi || vi === textVi) continue;
    const d = valueInfoDims(vi) ?? [];
    // timestep: [] (scalar), [1] or [B]; a dynamic dim follows the batch.
    inputDims[vi.name!] = d.map((x) => (typeof x === 'number' ? x : batch));
  }
  const headAverage = opts.headAverage ?? DEFAULT_HEAD_AVERAGE;
  const design = opts.design ?? 'residuals';

  // Where to write: beside the model, else the cache. Nothing is created before the save stage.
  const besideModel = path.join(path.dirname(unetPath), 'divbind');
  const cacheOut = cacheDirFor(root, opts.cacheDir);

  // Idempotence: same source, dims and options → nothing to do.
  for (const candidate of [besideModel, cacheOut]) {
    const existing = (() => { try { return readManifest(candidate); } catch { return undefined; } })();
    if (!opts.force && existing !== undefined && existing.formatVersion === MANIFEST_VERSION
      && existing.source.sourceHash === loaded.sourceHash && existing.height === height && existing.width === width
      && existing.batch === batch && existing.textLength === textLength && existing.attention.headAveraged === headAverage
      && existing.vjp.design === design
      && [existing.files.unet, existing.files.vjp, existing.files.forward, existing.files.backward]
        .every((f) => f === undefined || fs.existsSync(path.join(candidate, f)))) {
      progress('done', `already prepared (${path.join(candidate, MANIFEST_FILE)})`, 1);
      return { dir: candidate, manifestPath: path.join(candidate, MANIFEST_FILE), manifest: existing, skipped: true };
    }
  }

  progress('shapes', `inferring static shapes for ${Object.entries(inputDims).map(([k, v]) => `${k}=[${v.join(',')}]`).join(' ')}`, 0.05);
  let shapes: ShapeMap;
  try {
    shapes = await inferStaticShapes(model, inputDims);
  } catch (err) {
    // ORT refusing the UNet at these dims (e.g. a size the skip connections cannot match) is a model problem.
    if (err instanceof TypeError || err instanceof RangeError) throw err;
    throw new ModelError(`${(err as Error).message} (height ${height}, width ${width}: try a multiple of 64)`, { cause: err });
  }
  lap('shapes');

  progress('attention', 'finding cross-attention layers', 0.2);
  const layers = asModelError(() => findCrossAttention(model, shapes, { sampleInput: sampleVi.name!, textInput: textVi.name! }));
  const inst = instrumentUnet(model, shapes, { layers, headAverage });
  lap('attention');

  progress('vjp', `building the VJP graph of ${inst.outputs.length} attention outputs w.r.t. ${sampleVi.name} (${design})`, 0.3);
  const vjp = buildVjp(inst.model, { wrt: sampleVi.name!, outputs: inst.outputs, shapes: inst.shapes, design });
  lap('vjp');

  let outDir = besideModel;
  if (!isWritableDir(besideModel)) {
    outDir = cacheOut;
    if (!isWritableDir(outDir)) {
      throw new ModelError(`Cannot write next to the model (${besideModel}) nor to the cache (${outDir}): pass a writable --cache-dir`);
    }
  }
  progress('save', `writing ${outDir}`, 0.6);
  // Stale manifest first: if anything below fails, no manifest claims the half-written files.
  fs.rmSync(path.join(outDir, MANIFEST_FILE), { force: true });
  const saved: Record<string, SavedModel> = {};
  const files: Manifest['files'] = { unet: 'unet.onnx', externalData: [] };
  saved.unet = saveModel(inst.model, path.join(outDir, files.unet), { sourceDir: loaded.dir });
  const graphs: Array<[keyof Manifest['files'], ModelProto | undefined, string]> = [
    ['vjp', vjp.vjp, 'vjp.onnx'], ['forward', vjp.forward, 'forward.onnx'], ['backward', vjp.backward, 'backward.onnx'],
  ];
  for (const [key, m, file] of graphs) {
    if (m === undefined) continue;
    saved[key] = saveModel(m, path.join(outDir, file), { sourceDir: loaded.dir });
    (files as unknown as Record<string, string>)[key] = file;
  }
  const ext = new Map<string, Manifest['files']['externalData'][number]>();
  for (const s of Object.values(saved)) for (const e of s.externalData) ext.set(e.location, { location: e.location, source: e.source, method: e.method });
  files.externalData = [...ext.values()];
  lap('save');

  // Cotangent and gradient names from the VJP graph itself.
  const firstGraph = (vjp.vjp ?? vjp.backward)!;
  const gInputs = new Set(firstGraph.graph!.input.map((v) => v.name ?? ''));
  const cotangents: Record<string, string> = {};
  for (const o of inst.outputs) {
    const c = [`grad_${o}`].find((n) => gInputs.has(n));
    if (c === undefined) throw new Error(`The VJP graph has no cotangent input for '${o}' (expected 'grad_${o}')`);
    cotangents[o] = c;
  }
  const gradient = `grad_${sampleVi.name}`;
  if (!firstGraph.graph!.output.some((v) => v.name === gradient)) {
    throw new Error(`The VJP graph has no output '${gradient}'`);
  }

  const memoryExt = files.externalData.filter((e) => e.method === 'memory').map((e) => ({ location: e.location, source: e.source }));
  if (opts.verify ?? true) {
    progress('verify', 'running the prepared graphs once', 0.75);
    await verifyPrepared(outDir, files, inst.outputs, cotangents, gradient, inst.shapes, inputDims, headAverage, memoryExt);
    lap('verify');
  }

  const manifest: Manifest = {
    format: MANIFEST_FORMAT,
    formatVersion: MANIFEST_VERSION,
    tool: { name: 'divbind-native', version: toolVersion() },
    createdAt: new Date().toISOString(),
    source: {
      modelDir: root,
      unet: path.relative(root, unetPath),
      sha256: loaded.sha256,
      sourceHash: loaded.sourceHash,
      bytes: loaded.fileSize,
      externalData: loaded.externalData.map((e) => ({ location: e.location, size: e.size, mtimeMs: e.mtimeMs })),
      opset: opsetVersion(model) ?? 0,
      irVersion: int64ToNumber(model.ir_version, 'ir_version'),
      producer: `${model.producer_name ?? ''} ${model.producer_version ?? ''}`.trim(),
    },
    height,
    width,
    batch,
    textLength,
    inputs: Object.fromEntries(Object.keys(inputDims).map((k) => [k, tensorInfo(shapes, k)])),
    attention: { headAveraged: headAverage, layers: inst.layers },
    files,
    vjp: {
      design,
      wrt: sampleVi.name!,
      cotangents,
      gradient,
      ...(vjp.stats.residualNames.length > 0 ? { residuals: vjp.stats.residualNames } : {}),
      stats: { ...vjp.stats, residualNames: undefined },
    },
    timings,
  };
  const manifestPath = writeManifest(outDir, manifest);
  progress('done', `prepared ${inst.outputs.length} attention layers in ${outDir}`, 1);
  return { dir: outDir, manifestPath, manifest, skipped: false };
}

/** Runs the instrumented UNet and the VJP graph(s) once and checks dims, finiteness and (raw or averaged) row sums. */
async function verifyPrepared(dir: string, files: Manifest['files'], outputs: string[], cotangents: Record<string, string>,
  gradient: string, shapes: ShapeMap, inputDims: Record<string, number[]>, headAverage: boolean,
  memoryExt: Array<{ location: string; source: string }>): Promise<void> {
  // 'basic': the check needs correctness, not speed, and 'all' takes longer to create sessions for big VJP graphs.
  const sessOpts: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: 'basic', logSeverityLevel: 3 };
  const feeds: Record<string, ort.Tensor> = {};
  let seed = 1;
  for (const [name, dims] of Object.entries(inputDims)) feeds[name] = feedFor(name, shapes.get(name)!.elemType, dims, seed++);

  const unet = await createSession(path.join(dir, files.unet), sessOpts, { externalData: memoryExt });
  try {
    const res = await unet.run(feeds);
    for (const o of outputs) {
      const got = res[o];
      if (got === undefined) throw new Error(`Check run failed: the instrumented UNet did not return '${o}'`);
      const data = got.data as Float32Array;
      assertFinite(data, o);
      // Each row of a softmax (and a mean of softmaxes) sums to 1.
      const T = got.dims[got.dims.length - 1]!;
      for (let r = 0; r < data.length; r += T) {
        let s = 0;
        for (let k = 0; k < T; k++) s += data[r + k]!;
        if (Math.abs(s - 1) > 1e-3) {
          throw new Error(`Check run failed: a row of '${o}' sums to ${s}, not 1 (${headAverage ? 'averaged' : 'raw'} probabilities expected)`);
        }
      }
    }
  } finally {
    await unet.release();
  }

  const cot: Record<string, ort.Tensor> = {};
  for (const o of outputs) {
    const s = shapes.get(o);
    const dims = s?.dims ?? [];
    cot[cotangents[o]!] = new ort.Tensor('float32', pseudoRandom(dims.reduce((a, b) => a * b, 1), seed++), dims);
  }
  const run = async (file: string, available: Record<string, ort.Tensor>) => {
    const sess = await createSession(path.join(dir, file), sessOpts, { externalData: memoryExt });
    try {
      const f: Record<string, ort.Tensor> = {};
      for (const n of sess.inputNames) {
        const v = available[n];
        if (v === undefined) throw new Error(`Check run failed: no value for input '${n}' of ${file}`);
        f[n] = v;
      }
      return await sess.run(f);
    } finally {
      await sess.release();
    }
  };
  let out: ort.InferenceSession.OnnxValueMapType;
  if (files.vjp !== undefined) {
    out = await run(files.vjp, { ...feeds, ...cot });
  } else {
    const fwd = await run(files.forward!, feeds);
    out = await run(files.backward!, { ...feeds, ...fwd, ...cot });
  }
  const g = out[gradient];
  if (g === undefined) throw new Error(`Check run failed: the VJP graph did not return '${gradient}'`);
  const want = inputDims.sample ?? g.dims;
  if (g.dims.join(',') !== want.join(',')) throw new Error(`Check run failed: '${gradient}' has dims [${g.dims.join(', ')}], expected [${want.join(', ')}]`);
  assertFinite(g.data as Float32Array, gradient);
}
