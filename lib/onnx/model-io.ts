// Loading and saving ONNX models without touching external weights, and opening them in onnxruntime-node.
//
// External data (measured with onnxruntime-node 1.30.0, test/onnx/model-io.test.ts): ORT resolves a tensor's
// `location` against the model file's directory and refuses locations that leave it: `../x` ("escapes model
// directory"), absolute paths ("Absolute path not allowed") and symlinks pointing elsewhere (it resolves them).
// A hard link is an ordinary directory entry and is accepted. So a model saved into another directory keeps its
// `location` strings and gets a hard link to each data file: no weight bytes are copied. Where a hard link is
// impossible (another filesystem, no permission) the reference is left as is and the caller passes the data to ORT
// in memory (`createSession(..., { externalData })`), which ORT accepts for models created from bytes.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { DivbindError } from '../errors';
import { decodeModel, encodeModel, externalDataOf, bytesPerElement, tensorDims, type GraphProto, type ModelProto, type TensorProto } from './proto';

/** Conventional external-data file names (Optimum and the diffusers conversion script). */
export const KNOWN_EXTERNAL_DATA_NAMES = ['model.onnx_data', 'weights.pb'] as const;

export interface ExternalDataFile {
  /** The `location` string as written in the model. */
  location: string;
  /** Absolute path of the file it resolves to. */
  path: string;
  size: number;
  mtimeMs: number;
  /** Number of tensors stored in it. */
  tensors: number;
  /** Largest offset + length referenced (≤ size). */
  bytesReferenced: number;
}

export interface LoadedModel {
  model: ModelProto;
  /** Absolute path of the .onnx file. */
  path: string;
  /** Its directory: the base of external-data locations. */
  dir: string;
  /** Size in bytes of the .onnx file. */
  fileSize: number;
  /** sha256 (hex) of the .onnx bytes. */
  sha256: string;
  /**
   * Identity of the whole model: sha256 over the .onnx sha256 and, per external data file, its location, size and
   * mtime. Weights are not hashed (3.4 GB for SD 1.x); any rewrite of them changes size or mtime.
   */
  sourceHash: string;
  externalData: ExternalDataFile[];
  /** Conventional data files present next to the model but not referenced by it (informational). */
  unreferencedDataFiles: string[];
}

/** Every tensor of the top-level graph that may hold data: initializers and Constant node values. */
function dataTensors(graph: GraphProto): TensorProto[] {
  const out: TensorProto[] = [...graph.initializer];
  for (const n of graph.node) {
    for (const a of n.attribute ?? []) {
      if (a.t != null) out.push(a.t);
      for (const t of a.tensors ?? []) out.push(t);
    }
  }
  return out;
}

/** location → { tensors, furthest byte referenced } for every external tensor of the model. */
export function externalDataReferences(model: ModelProto): Map<string, { tensors: number; end: number }> {
  const refs = new Map<string, { tensors: number; end: number }>();
  for (const t of dataTensors(model.graph!)) {
    const ext = externalDataOf(t);
    if (ext === undefined) continue;
    const count = tensorDims(t).reduce((a, b) => a * b, 1);
    const length = ext.length ?? count * (bytesPerElement(t.data_type ?? 0) ?? 0);
    const r = refs.get(ext.location) ?? { tensors: 0, end: 0 };
    r.tensors += 1;
    r.end = Math.max(r.end, ext.offset + length);
    refs.set(ext.location, r);
  }
  return refs;
}

/**
 * Reads and decodes an .onnx file. External weights are never read: their files are only checked to exist and
 * to be long enough (stat), and recorded with size and mtime. A missing file is a DivbindError MODEL_MISSING, an
 * unreadable, undecodable or truncated one MODEL_INVALID (field: the absolute path at fault).
 */
export function loadModel(modelPath: string): LoadedModel {
  if (typeof modelPath !== 'string' || modelPath === '') {
    throw new TypeError(`Expected a path to an .onnx file for modelPath but received ${String(modelPath)}`);
  }
  const abs = path.resolve(modelPath);
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(abs);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new DivbindError('MODEL_MISSING', `ONNX model not found: ${abs}`, { field: abs });
    if (code === 'EISDIR') throw new DivbindError('MODEL_INVALID', `${abs} is a directory; expected an .onnx file`, { field: abs });
    throw new DivbindError('MODEL_INVALID', `Cannot read ONNX model ${abs}: ${(err as Error).message}`, { field: abs, cause: err });
  }
  const sha256 = crypto.createHash('sha256').update(bytes).digest('hex');
  let model: ModelProto;
  try {
    model = decodeModel(bytes, abs);
  } catch (err) {
    throw new DivbindError('MODEL_INVALID', (err as Error).message, { field: abs, cause: err });
  }
  const dir = path.dirname(abs);

  const externalData: ExternalDataFile[] = [];
  for (const [location, ref] of externalDataReferences(model)) {
    const file = path.resolve(dir, location);
    let st: fs.Stats;
    try {
      st = fs.statSync(file);
    } catch {
      throw new DivbindError(
        'MODEL_MISSING',
        `External data file '${location}' used by ${ref.tensors} tensor(s) of ${abs} is missing ` +
          `(expected at ${file}). Keep the weights file next to model.onnx, as exported.`,
        { field: file },
      );
    }
    if (st.size < ref.end) {
      throw new DivbindError(
        'MODEL_INVALID',
        `External data file ${file} has ${st.size} bytes but ${abs} references bytes up to ${ref.end}: ` +
          'the weights file is truncated or belongs to another export',
        { field: file },
      );
    }
    externalData.push({
      location,
      path: file,
      size: st.size,
      mtimeMs: st.mtimeMs,
      tensors: ref.tensors,
      bytesReferenced: ref.end,
    });
  }
  externalData.sort((a, b) => a.location.localeCompare(b.location));
  const referenced = new Set(externalData.map((e) => path.basename(e.path)));
  const unreferencedDataFiles = KNOWN_EXTERNAL_DATA_NAMES.filter((n) => !referenced.has(n) && fs.existsSync(path.join(dir, n)));

  const h = crypto.createHash('sha256').update(sha256);
  for (const e of externalData) h.update(`\n${e.location}\t${e.size}\t${Math.round(e.mtimeMs)}`);
  return {
    model,
    path: abs,
    dir,
    fileSize: bytes.byteLength,
    sha256,
    sourceHash: h.digest('hex'),
    externalData,
    unreferencedDataFiles: [...unreferencedDataFiles],
  };
}

export type ExternalDataMethod = 'same-directory' | 'hardlink' | 'memory';

export interface SavedExternalData {
  location: string;
  /** The data file the location resolved to before saving. */
  source: string;
  /** Where it resolves from the saved model's directory. */
  target: string;
  /** same-directory: nothing to do; hardlink: a hard link was made (or already existed); memory: the file could not
   *  be linked: open the model with createSession(path, opts, { externalData: [{ location, source }] }). */
  method: ExternalDataMethod;
}

export interface SavedModel {
  path: string;
  bytes: number;
  externalData: SavedExternalData[];
}

export interface SaveModelOptions {
  /** Directory the model's external-data locations currently resolve against (the source model's dir). Required
   *  when the model references external data. */
  sourceDir?: string;
}

function sameFile(a: string, b: string): boolean {
  try {
    const sa = fs.statSync(a);
    const sb = fs.statSync(b);
    return sa.dev === sb.dev && sa.ino === sb.ino;
  } catch {
    return false;
  }
}

/**
 * Writes `model` to `outPath` (atomically: temp file + rename) and keeps its external-data references valid from
 * the new directory without copying weights (see the header comment). Returns what was done per data file.
 */
export function saveModel(model: ModelProto, outPath: string, opts: SaveModelOptions = {}): SavedModel {
  if (typeof outPath !== 'string' || outPath === '') {
    throw new TypeError(`Expected an output path for outPath but received ${String(outPath)}`);
  }
  const abs = path.resolve(outPath);
  const outDir = path.dirname(abs);
  const refs = externalDataReferences(model);
  if (refs.size > 0 && opts.sourceDir === undefined) {
    throw new TypeError(
      `The model references external data (${[...refs.keys()].join(', ')}): pass ` +
        'opts.sourceDir, the directory those locations resolve against (LoadedModel.dir)',
    );
  }
  fs.mkdirSync(outDir, { recursive: true });
  const externalData: SavedExternalData[] = [];
  for (const location of refs.keys()) {
    const source = path.resolve(opts.sourceDir!, location);
    const target = path.resolve(outDir, location);
    if (!fs.existsSync(source)) throw new Error(`External data file '${location}' not found at ${source}`);
    if (path.resolve(opts.sourceDir!) === outDir || sameFile(source, target)) {
      externalData.push({
        location,
        source,
        target,
        method: path.resolve(opts.sourceDir!) === outDir ? 'same-directory' : 'hardlink',
      });
      continue;
    }
    if (fs.existsSync(target)) {
      throw new Error(`Cannot link external data: ${target} exists and is not ${source}. Remove it or save elsewhere.`);
    }
    try {
      fs.mkdirSync(path.dirname(target), { recursive: true });
      fs.linkSync(source, target);
      externalData.push({ location, source, target, method: 'hardlink' });
    } catch {
      // Another filesystem or no permission: no copy (weights can be GBs); the caller feeds the file from memory.
      externalData.push({ location, source, target: source, method: 'memory' });
    }
  }
  const bytes = encodeModel(model);
  const tmp = `${abs}.tmp-${process.pid}-${Date.now()}`;
  fs.writeFileSync(tmp, bytes);
  fs.renameSync(tmp, abs);
  return { path: abs, bytes: bytes.byteLength, externalData };
}

export interface CreateSessionExtras {
  /** Data files ORT cannot reach from the model's directory (SavedExternalData with method 'memory'). They are read
   *  into memory and passed as `externalData`. */
  externalData?: ReadonlyArray<{ location: string; source: string }>;
}

/**
 * Opens an .onnx file in onnxruntime-node. With `extras.externalData`, the model is created from its bytes and
 * the listed data files are given to ORT in memory (ORT refuses to follow locations out of the model directory).
 */
export async function createSession(
  modelPath: string,
  options: ort.InferenceSession.SessionOptions = {},
  extras: CreateSessionExtras = {},
): Promise<ort.InferenceSession> {
  const abs = path.resolve(modelPath);
  const memory = extras.externalData ?? [];
  try {
    if (memory.length === 0) return await ort.InferenceSession.create(abs, options);
    const externalData = memory.map((e) => ({ path: e.location, data: new Uint8Array(fs.readFileSync(e.source)) }));
    return await ort.InferenceSession.create(new Uint8Array(fs.readFileSync(abs)), { ...options, externalData });
  } catch (err) {
    throw new Error(`onnxruntime could not load ${abs}: ${(err as Error).message}`);
  }
}

/**
 * Opens an in-memory model whose external data (if any) resolves against `baseDir`. The data files are read into
 * memory for ORT; use createSession on a saved file for big models.
 */
export async function createSessionFromModel(
  model: ModelProto,
  options: ort.InferenceSession.SessionOptions = {},
  baseDir?: string,
): Promise<ort.InferenceSession> {
  const refs = [...externalDataReferences(model).keys()];
  if (refs.length > 0 && baseDir === undefined) {
    throw new TypeError('The model references external data: pass baseDir, the directory its locations resolve against');
  }
  const externalData = refs.map((location) => ({
    path: location,
    data: new Uint8Array(fs.readFileSync(path.resolve(baseDir!, location))),
  }));
  const bytes = encodeModel(model);
  return ort.InferenceSession.create(bytes, externalData.length > 0 ? { ...options, externalData } : options);
}
