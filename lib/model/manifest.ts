/**
 * The manifest `divbind-manifest.json` that `prepare` writes last into each prepared set: what was prepared, from
 * which UNet, for which size, and which file holds what. It is versioned and checksummed, and every field is
 * checked on read: a manifest from another version, edited by hand or inconsistent is "invalid", never half-used.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ManifestLayer } from '../onnx/attention';

export const MANIFEST_FILE = 'divbind-manifest.json';
export const MANIFEST_FORMAT = 'divbind-manifest';
/**
 * Bumped whenever the manifest or the prepared graphs change layout; other versions read as invalid and are
 * rebuilt. 2: one set per image size, graph stamps, link checks, checksum, the VAE factor. 3: layer subsets
 * (vjp.layerSets).
 */
export const MANIFEST_VERSION = 3;

export interface ManifestTensor {
  /** ONNX data type name ('FLOAT', 'INT64', …). */
  elemType: string;
  dims: number[];
}

/** Size and modification time of a written graph, checked before each use (a truncated or rewritten graph is invalid). */
export interface GraphStamp {
  file: string;
  bytes: number;
  mtimeMs: number;
}

export type ExternalDataMethod = 'hardlink' | 'memory';

export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  formatVersion: number;
  tool: { name: string; version: string };
  createdAt: string;
  source: {
    /** The model folder when prepared (absolute; informational: lookups use the folder at hand). */
    modelDir: string;
    /** The UNet file, relative to modelDir ('unet/model.onnx'). */
    unet: string;
    /** sha256 of the UNet .onnx bytes. */
    sha256: string;
    /** The staleness key: LoadedModel.sourceHash over the .onnx bytes and every external data file it references. */
    sourceHash: string;
    bytes: number;
    externalData: Array<{ location: string; size: number; mtimeMs: number }>;
    opset: number;
    irVersion: number;
    producer: string;
  };
  /** Image pixels per latent pixel of the folder when prepared. */
  vaeScaleFactor: number;
  /** Image size in pixels and the UNet input dims the graphs are fixed to. */
  height: number;
  width: number;
  batch: number;
  textLength: number;
  inputs: Record<string, ManifestTensor>;
  attention: { headAveraged: boolean; layers: ManifestLayer[] };
  files: {
    /** Instrumented UNet: original outputs + attn_<i>. */
    unet: string;
    /** design 'recompute': one graph, inputs = UNet inputs + cotangents, output = gradient. */
    vjp?: string;
    /** design 'residuals': forward graph with residual outputs, and the backward graph. */
    forward?: string;
    backward?: string;
    /** External weights of the graphs: hard-linked into this directory, or fed to ORT from the model's own file. */
    externalData: Array<{ location: string; source: string; method: ExternalDataMethod }>;
    graphs: GraphStamp[];
  };
  vjp: {
    design: 'recompute' | 'residuals';
    wrt: string;
    /** Graph output (attn_<i>) → name of its cotangent input in the VJP graph. */
    cotangents: Record<string, string>;
    /** Name of the gradient output (w.r.t. `wrt`). */
    gradient: string;
    /** design 'residuals': tensors passed from forward to backward. */
    residuals?: string[];
    stats: Record<string, unknown>;
    /** Proper layer subsets with their own graphs (the full set is the one above). */
    layerSets: ManifestLayerSet[];
  };
  /** Milliseconds per stage of the prepare run. */
  timings: Record<string, number>;
  /** sha256 of the manifest without this field (canonical JSON): a hand edit reads as invalid. */
  checksum: string;
}

/**
 * Graphs for a proper subset of the layers (lib/model/layer-sets.ts): a guidance step whose loss reads only these
 * maps runs a forward cut after the last of them and differentiates only them. The cotangent inputs and the
 * gradient output are named as in the full set (vjp.cotangents, vjp.gradient).
 */
export interface ManifestLayerSet {
  /** Indices into attention.layers, ascending. */
  layers: number[];
  /** Forward graph: the UNet inputs → these maps (and, design 'residuals', the residuals), nothing after them. */
  forward: string;
  /** Backward graph (design 'residuals') or VJP graph (design 'recompute') of these maps. */
  backward: string;
  /** design 'residuals': tensors passed from this forward to this backward. */
  residuals?: string[];
  stats: Record<string, unknown>;
}

export type ManifestRead = { state: 'missing' } | { state: 'invalid'; reason: string } | { state: 'ok'; manifest: Manifest };

function checksumOf(m: Omit<Manifest, 'checksum'> & { checksum?: string }): string {
  const { checksum: _ignored, ...rest } = m;
  return crypto.createHash('sha256').update(JSON.stringify(rest)).digest('hex');
}

/** The manifest with its checksum set (as written). */
export function withChecksum(m: Omit<Manifest, 'checksum'> & { checksum?: string }): Manifest {
  return { ...m, checksum: checksumOf(m) } as Manifest;
}

/** Reads and fully checks the manifest in `dir`. Never throws for a bad file: the reason comes back instead. */
export function readManifest(dir: string): ManifestRead {
  const file = path.join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { state: 'missing' };
    return { state: 'invalid', reason: `${MANIFEST_FILE} cannot be read (${(err as Error).message})` };
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    return { state: 'invalid', reason: `${MANIFEST_FILE} is not valid JSON (${(err as Error).message})` };
  }
  try {
    return { state: 'ok', manifest: validateManifest(raw) };
  } catch (err) {
    if (!(err instanceof ManifestProblem)) throw err;
    return { state: 'invalid', reason: `${MANIFEST_FILE}: ${err.message}` };
  }
}

/** Writes the manifest atomically (temp file + rename), checksum included. */
export function writeManifest(dir: string, manifest: Omit<Manifest, 'checksum'>): string {
  const file = path.join(dir, MANIFEST_FILE);
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, `${JSON.stringify(withChecksum(manifest), null, 2)}\n`);
  fs.renameSync(tmp, file);
  return file;
}

// ---------------------------------------------------------------------------------------------------------------
// Validation: each check names the field at fault.

class ManifestProblem extends Error {}

function fail(message: string): never {
  throw new ManifestProblem(message);
}

type Obj = Record<string, unknown>;

function obj(v: unknown, field: string): Obj {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(`${field} must be an object but is ${JSON.stringify(v)}`);
  return v as Obj;
}

function str(v: unknown, field: string): string {
  if (typeof v !== 'string' || v === '') fail(`${field} must be a non-empty string but is ${JSON.stringify(v)}`);
  return v;
}

function int(v: unknown, field: string, min = 1): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) fail(`${field} must be an integer ≥ ${min} but is ${JSON.stringify(v)}`);
  return v;
}

function arr(v: unknown, field: string, minLength = 0): unknown[] {
  if (!Array.isArray(v) || v.length < minLength) fail(`${field} must be an array of at least ${minLength} entries but is ${JSON.stringify(v)}`);
  return v;
}

/** A plain file name in the prepared directory: graphs and links never point elsewhere. */
function fileName(v: unknown, field: string): string {
  const s = str(v, field);
  if (s !== path.basename(s) || s === '.' || s === '..' || s.includes('/') || s.includes('\\'))
    fail(`${field} must be a file name in the prepared directory but is ${JSON.stringify(s)}`);
  return s;
}

function sameDims(got: unknown, want: number[], field: string): void {
  const dims = arr(got, field);
  if (dims.length !== want.length || dims.some((d, i) => d !== want[i])) fail(`${field} is ${JSON.stringify(dims)} but must be ${JSON.stringify(want)}`);
}

function validateSource(v: unknown): void {
  const s = obj(v, 'source');
  str(s.modelDir, 'source.modelDir');
  str(s.unet, 'source.unet');
  for (const k of ['sha256', 'sourceHash'] as const) {
    if (!/^[0-9a-f]{64}$/.test(str(s[k], `source.${k}`))) fail(`source.${k} must be a sha256 hex digest`);
  }
  int(s.bytes, 'source.bytes', 0);
  arr(s.externalData, 'source.externalData').forEach((e, i) => {
    const o = obj(e, `source.externalData[${i}]`);
    str(o.location, `source.externalData[${i}].location`);
    int(o.size, `source.externalData[${i}].size`, 0);
    if (typeof o.mtimeMs !== 'number') fail(`source.externalData[${i}].mtimeMs must be a number`);
  });
}

/** Size, batch and the UNet input dims agree with each other and with the VAE factor. */
function validateDims(m: Obj): void {
  const f = int(m.vaeScaleFactor, 'vaeScaleFactor');
  const height = int(m.height, 'height');
  const width = int(m.width, 'width');
  const batch = int(m.batch, 'batch');
  const textLength = int(m.textLength, 'textLength');
  if (height % f !== 0 || width % f !== 0) fail(`height ${height} and width ${width} must be multiples of vaeScaleFactor ${f}`);
  const inputs = obj(m.inputs, 'inputs');
  const wrt = str(obj(m.vjp, 'vjp').wrt, 'vjp.wrt');
  const sample = obj(inputs[wrt], `inputs.${wrt}`);
  const sdims = arr(sample.dims, `inputs.${wrt}.dims`, 4);
  sameDims(sdims, [batch, int(sdims[1], `inputs.${wrt}.dims[1]`), height / f, width / f], `inputs.${wrt}.dims`);
  const text = Object.entries(inputs).find(
    ([k]) => k !== wrt && Array.isArray((inputs[k] as Obj | null)?.dims) && ((inputs[k] as Obj).dims as unknown[]).length === 3,
  );
  if (text === undefined) fail('inputs must hold the text input (encoder_hidden_states, [batch, textLength, hidden])');
  const tdims = arr(obj(text[1], `inputs.${text[0]}`).dims, `inputs.${text[0]}.dims`, 3);
  sameDims(tdims, [batch, textLength, int(tdims[2], `inputs.${text[0]}.dims[2]`)], `inputs.${text[0]}.dims`);
}

/** Each layer's map dims follow from its size, heads and the text length (the loss core relies on them). */
function validateLayers(m: Obj): ManifestLayer[] {
  const att = obj(m.attention, 'attention');
  if (typeof att.headAveraged !== 'boolean') fail('attention.headAveraged must be a boolean');
  const batch = m.batch as number;
  const seen = new Set<string>();
  return arr(att.layers, 'attention.layers', 1).map((v, i) => {
    const field = `attention.layers[${i}]`;
    const l = obj(v, field);
    const output = str(l.output, `${field}.output`);
    if (!/^[A-Za-z0-9_]+$/.test(output) || seen.has(output)) fail(`${field}.output ${JSON.stringify(output)} must be a unique tensor name`);
    seen.add(output);
    if (!['down', 'mid', 'up'].includes(l.place as string)) fail(`${field}.place must be down, mid or up`);
    const [h, w, heads] = [int(l.h, `${field}.h`), int(l.w, `${field}.w`), int(l.heads, `${field}.heads`)];
    if (l.hw !== h * w) fail(`${field}.hw is ${JSON.stringify(l.hw)} but the layer is ${h}×${w}`);
    if (l.resolution !== (h === w ? h : null)) fail(`${field}.resolution is ${JSON.stringify(l.resolution)} but the layer is ${h}×${w}`);
    if (l.headAveraged !== att.headAveraged) fail(`${field}.headAveraged differs from attention.headAveraged`);
    if (l.textLength !== m.textLength) fail(`${field}.textLength differs from textLength`);
    const T = m.textLength as number;
    const want = att.headAveraged ? [batch, h * w, T] : l.layout === 'BH-N-T' ? [batch * heads, h * w, T] : [batch, heads, h * w, T];
    sameDims(l.dims, want, `${field}.dims`);
    return l as unknown as ManifestLayer;
  });
}

function validateFiles(m: Obj): void {
  const files = obj(m.files, 'files');
  const design = obj(m.vjp, 'vjp').design;
  if (design !== 'recompute' && design !== 'residuals') fail(`vjp.design must be 'recompute' or 'residuals' but is ${JSON.stringify(design)}`);
  const needed = design === 'recompute' ? ['unet', 'vjp'] : ['unet', 'forward', 'backward'];
  const named = needed.map((k) => fileName(files[k], `files.${k}`));
  const stamped = new Set(
    arr(files.graphs, 'files.graphs').map((g, i) => {
      const o = obj(g, `files.graphs[${i}]`);
      int(o.bytes, `files.graphs[${i}].bytes`);
      if (typeof o.mtimeMs !== 'number') fail(`files.graphs[${i}].mtimeMs must be a number`);
      return fileName(o.file, `files.graphs[${i}].file`);
    }),
  );
  for (const f of named) if (!stamped.has(f)) fail(`files.graphs has no stamp for ${f}`);
  arr(files.externalData, 'files.externalData').forEach((e, i) => {
    const o = obj(e, `files.externalData[${i}]`);
    const location = str(o.location, `files.externalData[${i}].location`);
    if (path.isAbsolute(location) || location.split(/[\\/]/).includes('..')) fail(`files.externalData[${i}].location must stay inside the model folder`);
    str(o.source, `files.externalData[${i}].source`);
    if (o.method !== 'hardlink' && o.method !== 'memory') fail(`files.externalData[${i}].method must be 'hardlink' or 'memory'`);
  });
}

function validateVjp(m: Obj, layers: ManifestLayer[]): void {
  const vjp = obj(m.vjp, 'vjp');
  const cot = obj(vjp.cotangents, 'vjp.cotangents');
  for (const l of layers) str(cot[l.output], `vjp.cotangents.${l.output}`);
  str(vjp.gradient, 'vjp.gradient');
  if (vjp.design === 'residuals')
    arr(vjp.residuals, 'vjp.residuals').forEach((r, i) => {
      str(r, `vjp.residuals[${i}]`);
    });
  const stamped = new Set((obj(m.files, 'files').graphs as Obj[]).map((g) => g.file));
  arr(vjp.layerSets, 'vjp.layerSets').forEach((v, i) => {
    validateLayerSet(v, `vjp.layerSets[${i}]`, layers.length, vjp.design, stamped);
  });
}

/** A layer subset: proper, ascending layer indices; stamped graph files; residuals with the residuals design. */
function validateLayerSet(v: unknown, field: string, layerCount: number, design: unknown, stamped: Set<unknown>): void {
  const s = obj(v, field);
  const indices = arr(s.layers, `${field}.layers`, 1);
  indices.forEach((k, j) => {
    if (typeof k !== 'number' || !Number.isInteger(k) || k < 0 || k >= layerCount)
      fail(`${field}.layers[${j}] must be a layer index below ${layerCount} but is ${JSON.stringify(k)}`);
    if (j > 0 && k <= (indices[j - 1] as number)) fail(`${field}.layers must be ascending without repeats`);
  });
  if (indices.length >= layerCount) fail(`${field}.layers must be a proper subset of attention.layers`);
  for (const k of ['forward', 'backward'] as const) {
    if (!stamped.has(fileName(s[k], `${field}.${k}`))) fail(`files.graphs has no stamp for ${String(s[k])}`);
  }
  if (design === 'residuals')
    arr(s.residuals, `${field}.residuals`).forEach((r, i) => {
      str(r, `${field}.residuals[${i}]`);
    });
  obj(s.stats, `${field}.stats`);
}

/** Checks every field the pipeline and `prepare` rely on; throws ManifestProblem naming the first bad one. */
function validateManifest(raw: unknown): Manifest {
  const m = obj(raw, 'the manifest');
  if (m.format !== MANIFEST_FORMAT) fail(`not a divbind-native manifest (format ${JSON.stringify(m.format)})`);
  if (m.formatVersion !== MANIFEST_VERSION) {
    fail(`written for manifest format ${JSON.stringify(m.formatVersion)}; this divbind-native reads format ${MANIFEST_VERSION}`);
  }
  if (m.checksum !== checksumOf(m as unknown as Manifest)) fail('edited after prepare (checksum mismatch)');
  validateSource(m.source);
  validateDims(m);
  const layers = validateLayers(m);
  validateFiles(m);
  validateVjp(m, layers);
  return m as unknown as Manifest;
}
