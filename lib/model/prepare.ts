// `prepare`: turn a Stable Diffusion ONNX folder's UNet into the graphs guidance needs, once per model and size:
//   1. read the folder and check the UNet (fp32, un-fused), 2. infer static shapes for the image size,
//   3. find the cross-attention layers and expose them as outputs attn_<i>, 4. build the VJP graph(s) w.r.t. the
//   latent, for every layer and for the layer subsets the default losses read (lib/model/layer-sets.ts), 5. write everything into a fresh temp folder beside the final one (weights hard-linked, never copied),
//   6. run each graph once as a check, 7. write the manifest and check the whole set as a reader would,
//   8. swap the temp folder into place.
// A ready set for the same UNet and options is reused; a stale, damaged or edited one is rebuilt (no --force
// needed). A failed or interrupted run leaves the previous set or nothing: never a half-written one that looks
// prepared.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DivbindError, isDivbindError } from '../errors';
import { assertUnfusedExport, findCrossAttention, headAveragingExact, instrumentUnet, SUPPORTED_EXPORTS_HINT, type InstrumentResult } from '../onnx/attention';
import { saveModel, type LoadedModel, type SavedModel } from '../onnx/model-io';
import { DataType, dataTypeName, int64ToNumber, opsetVersion, valueInfoDims, valueInfoElemType, type ModelProto, type ValueInfoProto } from '../onnx/proto';
import { inferStaticShapes, realGraphInputs, type ShapeMap } from '../onnx/shapes';
import { buildVjp, pruneToOutputs, type VjpResult, type VjpStats } from '../onnx/vjp/index';
import { PACKAGE_ROOT } from '../pipeline/defaults';
import { isWritableDir, preparedRoots } from './cache';
import { loadModelFile, restoreFix } from './components';
import { COMPONENT_FILES, readUnetFolder, type UnetFolder } from './folder';
import { preparedLayerSets } from './layer-sets';
import { familyResolutions } from './family';
import { MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION, writeManifest, type Manifest, type ManifestLayerSet, type ManifestTensor } from './manifest';
import {
  inspectPrepared,
  listPrepared,
  locatePrepared,
  sizeDirName,
  sourceIdentity,
  type PreparedInfo,
  type PreparedKey,
  type SourceIdentity,
} from './prepared';
import { defaultImageSize, formatSize, resolveImageSize, sizeRule, type ImageSize } from './size';
import { verifyPrepared } from './verify';

export type PrepareStage = 'validate' | 'load' | 'shapes' | 'attention' | 'vjp' | 'save' | 'verify' | 'done';

export interface PrepareProgress {
  stage: PrepareStage;
  message: string;
  /** 0..1 over the whole run. */
  fraction: number;
}

export interface PrepareOptions {
  /** Image height in pixels (a multiple of the VAE factor). Default: the UNet's static size, else the family's default (lib/model/family.ts). */
  height?: number;
  /** Image width in pixels. Default: the UNet's static width, else as height. */
  width?: number;
  /** UNet batch of the gradient pass (default 1: the guidance step runs on the conditional batch only). */
  batch?: number;
  /** Text length T (default: the UNet's static encoder_hidden_states length, else 77). */
  textLength?: number;
  /** Rebuild even when a ready set with the same options exists. */
  force?: boolean;
  /** Cache root used when <model>/unet is not writable (see lib/model/cache.ts). */
  cacheDir?: string;
  /** Expose head-averaged maps or raw per-head probabilities (default: averaged where exact, headAveragingExact). */
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

export interface PrepareResult {
  /** Directory holding the graphs and the manifest (one per image size). */
  dir: string;
  manifestPath: string;
  manifest: Manifest;
  /** True when a ready set with the same options existed and nothing was rebuilt. */
  skipped: boolean;
}

const KNOWN_OPTIONS = new Set(['height', 'width', 'batch', 'textLength', 'force', 'cacheDir', 'headAverage', 'design', 'verify', 'onProgress']);

function badOption(field: string, message: string): DivbindError {
  return new DivbindError('BAD_INPUT', message, { field });
}

function checkInt(v: unknown, name: string, min: number, max: number): void {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw badOption(name, `Expected an integer between ${min} and ${max} for ${name} but received ${JSON.stringify(v)} of type ${typeof v}`);
  }
}

function validateOptions(opts: PrepareOptions): void {
  if (opts === null || typeof opts !== 'object') throw badOption('options', 'Expected an options object for prepareModel');
  for (const k of Object.keys(opts)) {
    if (!KNOWN_OPTIONS.has(k)) throw badOption(k, `Unknown prepareModel option '${k}' (known: ${[...KNOWN_OPTIONS].join(', ')})`);
  }
  // height/width are checked against the VAE factor and the export once the folder is read (lib/model/size.ts).
  if (opts.batch !== undefined) checkInt(opts.batch, 'batch', 1, 64);
  if (opts.textLength !== undefined) checkInt(opts.textLength, 'textLength', 1, 4096);
  if (opts.design !== undefined && opts.design !== 'recompute' && opts.design !== 'residuals') {
    throw badOption('design', `Expected 'recompute' or 'residuals' for design but received ${JSON.stringify(opts.design)}`);
  }
  for (const k of ['force', 'headAverage', 'verify'] as const) {
    if (opts[k] !== undefined && typeof opts[k] !== 'boolean') throw badOption(k, `Expected a boolean for ${k} but received ${JSON.stringify(opts[k])}`);
  }
  if (opts.cacheDir !== undefined && (typeof opts.cacheDir !== 'string' || opts.cacheDir === '')) {
    throw badOption('cacheDir', `Expected a directory path for cacheDir but received ${JSON.stringify(opts.cacheDir)}`);
  }
  if (opts.onProgress !== undefined && typeof opts.onProgress !== 'function') throw badOption('onProgress', 'Expected a function for onProgress');
}

/** Progress reports and per-stage timings of one run. */
class Stages {
  readonly timings: Record<string, number> = {};
  private t = performance.now();
  constructor(private readonly onProgress?: (p: PrepareProgress) => void) {}
  report(stage: PrepareStage, message: string, fraction: number): void {
    this.onProgress?.({ stage, message, fraction });
  }
  lap(key: string): void {
    const now = performance.now();
    this.timings[key] = Math.round(now - this.t);
    this.t = now;
  }
}

interface UnetAnalysis {
  loaded: LoadedModel;
  sample: ValueInfoProto;
  text: ValueInfoProto;
  inputs: ValueInfoProto[];
}

/** Loads the UNet and checks it can be prepared: SD inputs, fp32, attention not fused away. */
function analyseUnet(folder: UnetFolder): UnetAnalysis {
  const rel = COMPONENT_FILES.unet;
  const loaded = loadModelFile({ file: folder.unetFile, rel, fix: restoreFix(rel) }, folder.dir);
  const inputs = realGraphInputs(loaded.model.graph!);
  const sample = inputs.find((v) => v.name === 'sample') ?? inputs.find((v) => (valueInfoDims(v) ?? []).length === 4);
  const text = inputs.find((v) => v.name === 'encoder_hidden_states') ?? inputs.find((v) => (valueInfoDims(v) ?? []).length === 3);
  if (sample === undefined || text === undefined) {
    throw new DivbindError(
      'MODEL_INVALID',
      `${rel} is not a Stable Diffusion UNet: expected inputs sample [B,4,h,w] and ` +
        `encoder_hidden_states [B,T,D], found ${inputs.map((v) => v.name).join(', ')}`,
      { field: rel, fix: restoreFix(rel) },
    );
  }
  const sampleType = valueInfoElemType(sample);
  if (sampleType === DataType.FLOAT16) {
    throw new DivbindError('MODEL_UNSUPPORTED', `${rel} is an fp16 UNet. The gradient pass needs fp32`, {
      field: rel,
      fix: "export the UNet in fp32 (diffusers' convert script without --fp16, or optimum-cli without --dtype fp16)",
    });
  }
  if (sampleType !== DataType.FLOAT) {
    throw new DivbindError('MODEL_UNSUPPORTED', `${rel}: input '${sample.name}' is ${dataTypeName(sampleType ?? 0)}, expected FLOAT`, {
      field: rel,
      fix: SUPPORTED_EXPORTS_HINT,
    });
  }
  try {
    assertUnfusedExport(loaded.model);
  } catch (err) {
    throw new DivbindError('MODEL_UNSUPPORTED', `${rel}: ${(err as Error).message}`, { field: rel, cause: err });
  }
  if (typeof (valueInfoDims(text) ?? [])[2] !== 'number') {
    throw new DivbindError('MODEL_UNSUPPORTED', `${rel}: the hidden size of encoder_hidden_states is not static`, { field: rel, fix: SUPPORTED_EXPORTS_HINT });
  }
  return { loaded, sample, text, inputs };
}

interface PreparePlan {
  key: PreparedKey;
  /** The size `prepare` picks without --height/--width (for printed commands). */
  defaultSize: ImageSize;
  textLength: number;
  /** undefined: decided from the layers' head counts once they are found (headAveragingExact). */
  headAverage: boolean | undefined;
  design: 'recompute' | 'residuals';
  /** Fixed dims of every UNet input. */
  inputDims: Record<string, number[]>;
}

/** Dims and options of the run: options, else what the export fixes, else SD defaults. */
function planPrepare(folder: UnetFolder, unet: UnetAnalysis, opts: PrepareOptions): PreparePlan {
  const sDims = valueInfoDims(unet.sample)!;
  const tDims = valueInfoDims(unet.text)!;
  const rule = sizeRule(sDims, folder.vaeScaleFactor, COMPONENT_FILES.unet, folder.family.defaultLatentSide);
  const size = resolveImageSize(rule, opts.height, opts.width);
  const batch = opts.batch ?? 1;
  const textLength = opts.textLength ?? (typeof tDims[1] === 'number' ? tDims[1] : 77);
  const f = folder.vaeScaleFactor;
  const inputDims: Record<string, number[]> = {
    [unet.sample.name!]: [batch, typeof sDims[1] === 'number' ? sDims[1] : 4, size.height / f, size.width / f],
    [unet.text.name!]: [batch, textLength, tDims[2] as number],
  };
  for (const vi of unet.inputs) {
    if (vi === unet.sample || vi === unet.text) continue;
    // timestep: [] (scalar), [1] or [B]; a dynamic dim follows the batch.
    inputDims[vi.name!] = (valueInfoDims(vi) ?? []).map((x) => (typeof x === 'number' ? x : batch));
  }
  return {
    key: { ...size, batch },
    defaultSize: defaultImageSize(rule),
    textLength,
    inputDims,
    headAverage: opts.headAverage,
    design: opts.design ?? 'residuals',
  };
}

/** A ready set for this plan (same UNet, size and options), if one exists. */
function reusableSet(folder: UnetFolder, plan: PreparePlan, src: SourceIdentity, cacheDir?: string): { dir: string; manifest: Manifest } | undefined {
  for (const root of preparedRoots(folder.dir, cacheDir)) {
    const st = inspectPrepared(path.join(root, sizeDirName(plan.key)), src);
    if (
      st?.state === 'ready' &&
      st.manifest.textLength === plan.textLength &&
      st.manifest.attention.headAveraged === (plan.headAverage ?? headAveragingExact(st.manifest.attention.layers)) &&
      st.manifest.vjp.design === plan.design
    )
      return st;
  }
  return undefined;
}

/** The graphs of a proper layer subset: a forward cut after its last map, and its VJP. */
export interface BuiltLayerSet {
  /** Indices into the instrumented layers, ascending. */
  layers: number[];
  /** Their outputs (attn_<i>). */
  outputs: string[];
  /** Maps (and residuals, design 'residuals') of these layers only. */
  forward: ModelProto;
  /** Backward graph (residuals) or VJP graph (recompute) of these maps. */
  backward: ModelProto;
  stats: VjpStats;
}

interface BuiltGraphs {
  headAverage: boolean;
  shapes: ShapeMap;
  inst: InstrumentResult;
  vjp: VjpResult;
  subsets: BuiltLayerSet[];
}

/**
 * The forward and VJP graphs of the layers `layers` only. Residuals: the forward-with-residuals graph cut to the
 * maps and residuals; recompute: the instrumented UNet cut to the maps, and the VJP graph (which recomputes only up
 * to its last map).
 */
export function buildLayerSet(inst: InstrumentResult, wrt: string, layers: number[], design: PreparePlan['design']): BuiltLayerSet {
  const outputs = layers.map((k) => inst.outputs[k]!);
  const vjp = buildVjp(inst.model, { wrt, outputs, shapes: inst.shapes, design });
  const forward = design === 'residuals' ? pruneToOutputs(vjp.forward!, [...outputs, ...vjp.stats.residualNames]) : pruneToOutputs(inst.model, outputs);
  return { layers, outputs, forward, backward: (vjp.backward ?? vjp.vjp)!, stats: vjp.stats };
}

/** The layer subsets of the default loss resolutions (lib/model/layer-sets.ts), built when the layers are square. */
function buildLayerSets(folder: UnetFolder, plan: PreparePlan, inst: InstrumentResult, wrt: string): BuiltLayerSet[] {
  if (inst.layers.some((l) => l.resolution === null)) return [];
  const shapes = inst.layers.map((l) => ({ heads: l.headAveraged ? 1 : l.heads, resolution: l.resolution! }));
  const sets = preparedLayerSets(shapes, plan.textLength, familyResolutions(folder.family, folder.divbind, plan.key.height));
  return sets.map((layers) => buildLayerSet(inst, wrt, layers, plan.design));
}

async function buildGraphs(folder: UnetFolder, unet: UnetAnalysis, plan: PreparePlan, stages: Stages): Promise<BuiltGraphs> {
  const rel = COMPONENT_FILES.unet;
  const dimsText = Object.entries(plan.inputDims)
    .map(([k, v]) => `${k}=[${v.join(',')}]`)
    .join(' ');
  stages.report('shapes', `inferring static shapes for ${dimsText}`, 0.05);
  let shapes: ShapeMap;
  try {
    shapes = await inferStaticShapes(unet.loaded.model, plan.inputDims);
  } catch (err) {
    // ORT refusing the UNet at these dims (a size its skip connections cannot match, a text length it fixes).
    throw new DivbindError('BAD_INPUT', `${rel} cannot run at ${formatSize(plan.key)} with ${dimsText}: ${(err as Error).message}`, {
      field: 'height',
      fix: 'try a size that is a multiple of 64',
      cause: err,
    });
  }
  stages.lap('shapes');
  stages.report('attention', 'finding cross-attention layers', 0.2);
  let layers: ReturnType<typeof findCrossAttention>;
  try {
    layers = findCrossAttention(unet.loaded.model, shapes, { sampleInput: unet.sample.name!, textInput: unet.text.name! });
  } catch (err) {
    throw new DivbindError('MODEL_UNSUPPORTED', `${rel}: ${(err as Error).message}`, { field: rel, cause: err });
  }
  const headAverage = plan.headAverage ?? headAveragingExact(layers);
  const inst = instrumentUnet(unet.loaded.model, shapes, { layers, headAverage });
  stages.lap('attention');
  stages.report(
    'vjp',
    `building the VJP graphs of ${inst.outputs.length} attention outputs w.r.t. ${unet.sample.name} and of the layer subsets (${plan.design})`,
    0.3,
  );
  const vjp = buildVjp(inst.model, { wrt: unet.sample.name!, outputs: inst.outputs, shapes: inst.shapes, design: plan.design });
  const subsets = buildLayerSets(folder, plan, inst, unet.sample.name!);
  stages.lap('vjp');
  return { headAverage, shapes, inst, vjp, subsets };
}

/** Beside the model when writable, else the cache. */
function chooseRoot(folder: UnetFolder, cacheDir?: string): string {
  const [beside, cache] = preparedRoots(folder.dir, cacheDir) as [string, string];
  if (isWritableDir(beside)) return beside;
  if (isWritableDir(cache)) return cache;
  throw new DivbindError('OUTPUT', `Cannot write the prepared graphs next to the model (${beside}) nor to the cache (${cache})`, {
    field: 'cacheDir',
    fix: 'pass a writable --cache-dir',
  });
}

/** File names of the k-th layer subset's graphs. */
function layerSetFiles(k: number): { forward: string; backward: string } {
  return { forward: `forward-set${k + 1}.onnx`, backward: `backward-set${k + 1}.onnx` };
}

/** The manifest entries of the layer subsets (files named by layerSetFiles). */
function manifestLayerSets(built: BuiltGraphs): ManifestLayerSet[] {
  return built.subsets.map((set, k) => ({
    layers: set.layers,
    ...layerSetFiles(k),
    ...(set.stats.residualNames.length > 0 ? { residuals: set.stats.residualNames } : {}),
    stats: { ...set.stats, residualNames: undefined },
  }));
}

/** Writes the graphs into `dir`; returns the manifest's `files` (graph stamps and how each weights file is reached). */
function saveGraphs(dir: string, unet: UnetAnalysis, built: BuiltGraphs): Manifest['files'] {
  const saved: SavedModel[] = [];
  const files: Manifest['files'] = { unet: 'unet.onnx', externalData: [], graphs: [] };
  type Graph = ['unet' | 'vjp' | 'forward' | 'backward' | null, string, ModelProto | undefined];
  const graphs: Graph[] = [
    ['unet', 'unet.onnx', built.inst.model],
    ['vjp', 'vjp.onnx', built.vjp.vjp],
    ['forward', 'forward.onnx', built.vjp.forward],
    ['backward', 'backward.onnx', built.vjp.backward],
    ...built.subsets.flatMap((set, k) => {
      const names = layerSetFiles(k);
      return [
        [null, names.forward, set.forward],
        [null, names.backward, set.backward],
      ] as Graph[];
    }),
  ];
  for (const [key, file, model] of graphs) {
    if (model === undefined) continue;
    saved.push(saveModel(model, path.join(dir, file), { sourceDir: unet.loaded.dir }));
    if (key !== null) files[key] = file;
    const st = fs.statSync(path.join(dir, file));
    files.graphs.push({ file, bytes: st.size, mtimeMs: st.mtimeMs });
  }
  const ext = new Map<string, Manifest['files']['externalData'][number]>();
  for (const s of saved) {
    for (const e of s.externalData) {
      // The folder is fresh, so every weights file is either linked into it or fed from the model's own file.
      ext.set(e.location, { location: e.location, source: e.source, method: e.method === 'memory' ? 'memory' : 'hardlink' });
    }
  }
  files.externalData = [...ext.values()];
  return files;
}

/** Cotangent input per attention output, and the gradient output, read from the VJP graph itself. */
function vjpNames(built: BuiltGraphs, wrt: string): { cotangents: Record<string, string>; gradient: string } {
  const graph = (built.vjp.vjp ?? built.vjp.backward)!.graph!;
  const inputs = new Set(graph.input.map((v) => v.name ?? ''));
  const cotangents: Record<string, string> = {};
  for (const o of built.inst.outputs) {
    if (!inputs.has(`grad_${o}`)) throw new Error(`The VJP graph has no cotangent input for '${o}' (expected 'grad_${o}')`);
    cotangents[o] = `grad_${o}`;
  }
  const gradient = `grad_${wrt}`;
  if (!graph.output.some((v) => v.name === gradient)) throw new Error(`The VJP graph has no output '${gradient}'`);
  return { cotangents, gradient };
}

function toolVersion(): string {
  try {
    return (JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version?: string }).version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

function tensorInfo(shapes: ShapeMap, name: string): ManifestTensor {
  const s = shapes.get(name)!;
  return { elemType: dataTypeName(s.elemType), dims: [...s.dims] };
}

function buildManifest(
  folder: UnetFolder,
  unet: UnetAnalysis,
  plan: PreparePlan,
  built: BuiltGraphs,
  files: Manifest['files'],
  timings: Record<string, number>,
): Omit<Manifest, 'checksum'> {
  const { loaded } = unet;
  const model = loaded.model;
  const wrt = unet.sample.name!;
  return {
    format: MANIFEST_FORMAT,
    formatVersion: MANIFEST_VERSION,
    tool: { name: 'divbind-native', version: toolVersion() },
    createdAt: new Date().toISOString(),
    source: {
      modelDir: folder.dir,
      unet: COMPONENT_FILES.unet,
      sha256: loaded.sha256,
      sourceHash: loaded.sourceHash,
      bytes: loaded.fileSize,
      externalData: loaded.externalData.map((e) => ({ location: e.location, size: e.size, mtimeMs: e.mtimeMs })),
      opset: opsetVersion(model) ?? 0,
      irVersion: int64ToNumber(model.ir_version, 'ir_version'),
      producer: `${model.producer_name ?? ''} ${model.producer_version ?? ''}`.trim(),
    },
    vaeScaleFactor: folder.vaeScaleFactor,
    height: plan.key.height,
    width: plan.key.width,
    batch: plan.key.batch,
    textLength: plan.textLength,
    inputs: Object.fromEntries(Object.keys(plan.inputDims).map((k) => [k, tensorInfo(built.shapes, k)])),
    attention: { headAveraged: built.headAverage, layers: built.inst.layers },
    files,
    vjp: {
      design: plan.design,
      wrt,
      ...vjpNames(built, wrt),
      ...(built.vjp.stats.residualNames.length > 0 ? { residuals: built.vjp.stats.residualNames } : {}),
      stats: { ...built.vjp.stats, residualNames: undefined },
      layerSets: manifestLayerSets(built),
    },
    timings,
  };
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes temp and retired folders left by runs that died (their pid is gone). */
function sweepAbandoned(root: string): void {
  for (const name of fs.readdirSync(root)) {
    const m = /^\.(?:tmp|old)-.+-(\d+)-[A-Za-z0-9]{6}$/.exec(name);
    if (m !== null && !pidAlive(Number(m[1]))) fs.rmSync(path.join(root, name), { recursive: true, force: true });
  }
}

/** Replaces `final` by the complete folder `tmp`: the old set is moved aside first, then removed. */
function swapIntoPlace(tmp: string, final: string): void {
  let retired: string | undefined;
  if (fs.existsSync(final)) {
    retired = path.join(path.dirname(final), `.old-${path.basename(final)}-${process.pid}-${crypto.randomBytes(3).toString('hex')}`);
    fs.renameSync(final, retired);
  }
  fs.renameSync(tmp, final);
  if (retired !== undefined) fs.rmSync(retired, { recursive: true, force: true });
}

/**
 * Sets whose UNet changed can never be used again; their hard links would keep the replaced weights on disk.
 * Also removes the flat layout of manifest format 1 (one set directly in the root).
 */
function removeDeadSets(folder: UnetFolder, src: SourceIdentity, cacheDir?: string): void {
  for (const s of listPrepared(folder, src, cacheDir)) {
    if (s.state.state === 'stale') fs.rmSync(s.state.dir, { recursive: true, force: true });
  }
  for (const root of preparedRoots(folder.dir, cacheDir)) {
    const flat = path.join(root, MANIFEST_FILE);
    if (!fs.existsSync(flat)) continue;
    for (const name of fs.readdirSync(root)) {
      const p = path.join(root, name);
      if (!name.startsWith('.') && fs.lstatSync(p).isFile()) fs.rmSync(p, { force: true });
    }
  }
}

/** Steps 5–8: a complete, checked set in a temp folder, swapped into <root>/<size>/. */
async function writeSet(
  folder: UnetFolder,
  unet: UnetAnalysis,
  plan: PreparePlan,
  built: BuiltGraphs,
  opts: PrepareOptions,
  stages: Stages,
): Promise<{ dir: string; manifestPath: string; manifest: Manifest }> {
  const root = chooseRoot(folder, opts.cacheDir);
  sweepAbandoned(root);
  const final = path.join(root, sizeDirName(plan.key));
  const tmp = fs.mkdtempSync(path.join(root, `.tmp-${path.basename(final)}-${process.pid}-`));
  try {
    stages.report('save', `writing ${final}`, 0.6);
    const files = saveGraphs(tmp, unet, built);
    stages.lap('save');
    if (opts.verify ?? true) {
      stages.report('verify', 'running the prepared graphs once', 0.75);
      const sets = built.subsets.map((set, k) => ({ ...layerSetFiles(k), outputs: set.outputs }));
      await verifyPrepared(tmp, files, built, plan.inputDims, built.headAverage, vjpNames(built, unet.sample.name!), sets);
      stages.lap('verify');
    }
    writeManifest(tmp, buildManifest(folder, unet, plan, built, files, stages.timings));
    // Check the set exactly as a reader will, against the UNet as it is now (it may have changed meanwhile).
    const src = sourceIdentity(folder);
    const st = inspectPrepared(tmp, src);
    if (st?.state !== 'ready') throw new Error(`The set written in ${tmp} does not check out: ${st === undefined ? 'no manifest' : st.reason}`);
    swapIntoPlace(tmp, final);
    removeDeadSets(folder, src, opts.cacheDir);
    return { dir: final, manifestPath: path.join(final, MANIFEST_FILE), manifest: st.manifest };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** Prepares `modelDir` for guided sampling at one image size (see the file header). */
export async function prepareModel(modelDir: string, opts: PrepareOptions = {}): Promise<PrepareResult> {
  validateOptions(opts);
  const stages = new Stages(opts.onProgress);
  stages.report('validate', 'checking the model folder', 0);
  const folder = readUnetFolder(modelDir);
  stages.report('load', `reading ${COMPONENT_FILES.unet}`, 0.02);
  const unet = analyseUnet(folder);
  const plan = planPrepare(folder, unet, opts);
  stages.lap('load');

  const src: SourceIdentity = {
    unetDir: unet.loaded.dir,
    sha256: unet.loaded.sha256,
    sourceHash: unet.loaded.sourceHash,
    externalData: unet.loaded.externalData,
  };
  const existing = opts.force ? undefined : reusableSet(folder, plan, src, opts.cacheDir);
  if (existing !== undefined) {
    stages.report('done', `already prepared (${path.join(existing.dir, MANIFEST_FILE)})`, 1);
    return { dir: existing.dir, manifestPath: path.join(existing.dir, MANIFEST_FILE), manifest: existing.manifest, skipped: true };
  }
  const built = await buildGraphs(folder, unet, plan, stages);
  const written = await writeSet(folder, unet, plan, built, opts, stages);
  stages.report('done', `prepared ${built.inst.outputs.length} attention layers for ${formatSize(plan.key)} in ${written.dir}`, 1);
  return { ...written, skipped: false };
}

export interface EnsurePreparedOptions {
  /** Prepare the size when it is not ready (instead of failing with MODEL_NOT_PREPARED). */
  prepare?: boolean;
  cacheDir?: string;
  defaultSize?: ImageSize;
  onProgress?: (message: string) => void;
}

/** The ready set for `key`; with `prepare`, builds it first when it is missing, stale or damaged. */
export async function ensurePrepared(folder: UnetFolder, key: PreparedKey, o: EnsurePreparedOptions = {}): Promise<PreparedInfo> {
  try {
    return locatePrepared(folder, key, o);
  } catch (err) {
    if (!o.prepare || !isDivbindError(err, 'MODEL_NOT_PREPARED')) throw err;
  }
  o.onProgress?.(`preparing the UNet for ${formatSize(key)} (instrumented graph + VJP graph); this runs once per model and size`);
  await prepareModel(folder.dir, {
    height: key.height,
    width: key.width,
    batch: key.batch,
    ...(o.cacheDir !== undefined ? { cacheDir: o.cacheDir } : {}),
    onProgress: (p) => o.onProgress?.(`prepare: ${p.message}`),
  });
  return locatePrepared(folder, key, o);
}
