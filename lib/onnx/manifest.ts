// The manifest `divbind-manifest.json` written by `prepare` next to the graphs it builds: what was prepared, from
// which model, for which dims, and which file holds what. Readers check `format` and `formatVersion` first.

import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ManifestLayer } from './attention';

export const MANIFEST_FILE = 'divbind-manifest.json';
export const MANIFEST_FORMAT = 'divbind-manifest';
/** Bumped whenever the layout of the manifest or of the prepared graphs changes; older manifests are re-prepared. */
export const MANIFEST_VERSION = 1;

export interface ManifestTensor {
  /** ONNX data type name ('FLOAT', 'INT64', …). */
  elemType: string;
  dims: number[];
}

export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  formatVersion: number;
  tool: { name: string; version: string };
  createdAt: string;
  source: {
    /** The model folder as given (absolute). */
    modelDir: string;
    /** The UNet file, relative to modelDir. */
    unet: string;
    /** sha256 of the UNet .onnx bytes. */
    sha256: string;
    /** sha256 + external data sizes and mtimes (LoadedModel.sourceHash); the idempotence key. */
    sourceHash: string;
    bytes: number;
    externalData: Array<{ location: string; size: number; mtimeMs: number }>;
    opset: number;
    irVersion: number;
    producer: string;
  };
  /** Image size in pixels and the UNet input dims the graphs are fixed to. */
  height: number;
  width: number;
  batch: number;
  textLength: number;
  inputs: Record<string, ManifestTensor>;
  attention: {
    headAveraged: boolean;
    layers: ManifestLayer[];
  };
  files: {
    /** Instrumented UNet: original outputs + attn_<i>. */
    unet: string;
    /** design 'recompute': one graph, inputs = UNet inputs + cotangents, output = gradient. */
    vjp?: string;
    /** design 'residuals': forward graph with residual outputs, and the backward graph. */
    forward?: string;
    backward?: string;
    /** External data of the graphs, and how it is reachable from this directory. */
    externalData: Array<{ location: string; source: string; method: 'same-directory' | 'hardlink' | 'memory' }>;
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
  };
  /** Milliseconds per stage of the prepare run. */
  timings: Record<string, number>;
}

/** Reads and checks a manifest; undefined when the file does not exist. Throws for a foreign or corrupt file. */
export function readManifest(dir: string): Manifest | undefined {
  const file = path.join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let m: Partial<Manifest>;
  try {
    m = JSON.parse(text) as Partial<Manifest>;
  } catch (err) {
    throw new Error(`${file} is not valid JSON (${(err as Error).message}): delete it and prepare again (--force)`);
  }
  if (m.format !== MANIFEST_FORMAT || typeof m.formatVersion !== 'number') {
    throw new Error(`${file} is not a divbind-native manifest: delete it and prepare again (--force)`);
  }
  return m as Manifest;
}

/** Writes the manifest atomically (temp file + rename), so a manifest on disk always describes complete files. */
export function writeManifest(dir: string, manifest: Manifest): string {
  const file = path.join(dir, MANIFEST_FILE);
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, `${JSON.stringify(manifest, null, 2)}\n`);
  fs.renameSync(tmp, file);
  return file;
}
