/**
 * Finds the graphs `divbind-native prepare` wrote for a model folder (next to the UNet in unet/divbind/, or in the
 * cache when the folder is read-only), checks they belong to this UNet, and maps the manifest to what the
 * sampling loop needs. Prepares on demand when asked to.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readManifest, type Manifest } from '../onnx/manifest';
import { cacheDirFor, prepareModel } from '../onnx/prepare';
import type { ModelFolder } from './model-folder';
import type { PreparedUnetFiles } from './unet';

/** The UNet is not prepared (or was prepared for another model / version). The message names the command. */
export class PreparedModelError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PreparedModelError';
  }
}

export interface PreparedInfo {
  dir: string;
  manifest: Manifest;
  files: PreparedUnetFiles;
  /** External data files ORT must get in memory (prepared in a cache dir on another filesystem). */
  memoryExternalData: Array<{ location: string; source: string }>;
}

export interface FindPreparedOptions {
  /** Prepare when missing or stale. */
  prepare?: boolean;
  cacheDir?: string;
  height?: number;
  width?: number;
  onProgress?: (message: string) => void;
}

/** The directories prepare may have used, in the order it tries them. */
export function candidatePreparedDirs(modelDir: string, cacheDir?: string): string[] {
  return [path.join(path.resolve(modelDir), 'unet', 'divbind'), cacheDirFor(modelDir, cacheDir)];
}

function sha256File(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function toFiles(dir: string, m: Manifest): PreparedUnetFiles {
  const layers = m.attention.layers.map((l) => {
    if (l.resolution === null) {
      throw new PreparedModelError(`layer ${l.output} is not square (${l.h}×${l.w}); the D&B losses need square attention maps: use a square image size`);
    }
    return { name: l.scope || l.source, heads: l.headAveraged ? 1 : l.heads, resolution: l.resolution, place: l.place };
  });
  const mapOutputs = m.attention.layers.map((l) => l.output);
  const sample = m.inputs[m.vjp.wrt] ?? m.inputs.sample;
  const text = m.inputs.encoder_hidden_states;
  if (!sample || !text) throw new PreparedModelError(`${dir}: manifest lacks the sample/encoder_hidden_states dims; prepare again with --force`);
  const forwardFile = m.vjp.design === 'residuals' && m.files.forward ? m.files.forward : m.files.unet;
  const backwardFile = m.vjp.design === 'residuals' ? m.files.backward : m.files.vjp;
  if (!backwardFile) throw new PreparedModelError(`${dir}: manifest names no VJP graph; prepare again with --force`);
  return {
    design: m.vjp.design,
    forwardFile: path.join(dir, forwardFile),
    backwardFile: path.join(dir, backwardFile),
    mapOutputs,
    cotangentInputs: mapOutputs.map((o) => m.vjp.cotangents[o]),
    residuals: (m.vjp.residuals ?? []).map((r) => ({ output: r, input: r })),
    gradOutput: m.vjp.gradient,
    layers,
    latentDims: [sample.dims[1], sample.dims[2], sample.dims[3]],
    textDims: [text.dims[1], text.dims[2]],
  };
}

/** Locates (or, with `prepare`, builds) the prepared graphs for `folder`. Throws PreparedModelError otherwise. */
export async function loadPreparedUnet(folder: ModelFolder, opts: FindPreparedOptions = {}): Promise<PreparedInfo> {
  const command = `divbind-native prepare ${folder.dir}`;
  let found: { dir: string; manifest: Manifest } | null = null;
  let stale: string | null = null;
  const unetHash = sha256File(folder.unetFile);
  for (const dir of candidatePreparedDirs(folder.dir, opts.cacheDir)) {
    let manifest: Manifest | undefined;
    try {
      manifest = readManifest(dir);
    } catch (err) {
      stale = (err as Error).message;
      continue;
    }
    if (!manifest) continue;
    if (manifest.source.sha256 !== unetHash) {
      stale = `the prepared graphs in ${dir} belong to another UNet (hash mismatch)`;
      continue;
    }
    if ((opts.height !== undefined && manifest.height !== opts.height) || (opts.width !== undefined && manifest.width !== opts.width)) {
      stale = `the UNet is prepared for ${manifest.width}×${manifest.height}`;
      continue;
    }
    found = { dir, manifest };
    break;
  }
  if (!found) {
    if (!opts.prepare) {
      throw new PreparedModelError(`model not prepared${stale ? ` (${stale})` : ''}: run \`${command}\` once (or pass --prepare / { prepare: true } to do it now)`);
    }
    opts.onProgress?.('preparing the UNet (instrumented graph + VJP graph); this runs once per model');
    const res = await prepareModel(folder.dir, {
      cacheDir: opts.cacheDir, height: opts.height, width: opts.width, force: stale !== null,
      onProgress: (p) => opts.onProgress?.(`prepare: ${p.message}`),
    });
    found = { dir: res.dir, manifest: res.manifest };
  }
  const { dir, manifest } = found;
  return {
    dir,
    manifest,
    files: toFiles(dir, manifest),
    memoryExternalData: manifest.files.externalData.filter((e) => e.method === 'memory').map((e) => ({ location: e.location, source: e.source })),
  };
}
