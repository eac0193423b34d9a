/**
 * Prepared sets: the graphs `prepare` wrote for one image size, in <root>/<W>x<H>/ (roots: lib/model/cache.ts).
 * A set is usable ("ready") only when its manifest is valid, it was built from the UNet as it is now (sourceHash
 * over the .onnx bytes and every external data file), every graph has the size and mtime it was written with, and
 * every hard-linked weights file is still the model's own file (same inode). Anything else is "stale" (the model
 * changed) or "invalid" (the set is damaged or edited), and reads as "not prepared: run prepare --force".
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DivbindError } from '../errors';
import type { GuidedLayerInfo } from '../pipeline/sampler';
import { preparedRoots } from './cache';
import { loadModelFile, restoreFix } from './components';
import { COMPONENT_FILES, type UnetFolder } from './folder';
import { readManifest, type Manifest } from './manifest';
import { formatSize, type ImageSize } from './size';

export interface PreparedKey extends ImageSize {
  /** UNet batch of the gradient pass. */
  batch: number;
}

/** Folder name of a prepared set: '256x256', or '256x256-batch2'. */
export function sizeDirName(k: PreparedKey): string {
  return `${k.width}x${k.height}${k.batch === 1 ? '' : `-batch${k.batch}`}`;
}

const SIZE_DIR = /^(\d+)x(\d+)(?:-batch(\d+))?$/;

/** The UNet as it is now: what every prepared set is checked against. */
export interface SourceIdentity {
  unetDir: string;
  sha256: string;
  sourceHash: string;
  externalData: Array<{ location: string; size: number; mtimeMs: number }>;
}

/** Decodes the UNet .onnx (its weights are stat'ed, not read) for its identity. */
export function sourceIdentity(folder: UnetFolder): SourceIdentity {
  const rel = COMPONENT_FILES.unet;
  const loaded = loadModelFile({ file: folder.unetFile, rel, fix: restoreFix(rel) }, folder.dir);
  return { unetDir: loaded.dir, sha256: loaded.sha256, sourceHash: loaded.sourceHash, externalData: loaded.externalData };
}

export type PreparedState = { state: 'ready'; dir: string; manifest: Manifest } | { state: 'stale' | 'invalid'; dir: string; reason: string };

function sameFile(a: string, b: string): boolean {
  try {
    const [sa, sb] = [fs.statSync(a), fs.statSync(b)];
    return sa.dev === sb.dev && sa.ino === sb.ino;
  } catch {
    return false;
  }
}

/** What changed in the UNet since `m` was prepared, or null. */
function sourceChange(m: Manifest, src: SourceIdentity): string | null {
  if (m.source.sourceHash === src.sourceHash) return null;
  if (m.source.sha256 !== src.sha256) return `${m.source.unet} changed since prepare`;
  for (const e of m.source.externalData) {
    const now = src.externalData.find((x) => x.location === e.location);
    if (now === undefined || now.size !== e.size || Math.round(now.mtimeMs) !== Math.round(e.mtimeMs)) {
      return (
        `unet/${e.location} changed since prepare (${e.size} bytes of ${new Date(e.mtimeMs).toISOString()} → ` +
        `${now === undefined ? 'gone' : `${now.size} bytes of ${new Date(now.mtimeMs).toISOString()}`})`
      );
    }
  }
  return "the UNet's external data files changed since prepare";
}

/** A graph that is missing, truncated or rewritten since prepare, or null. */
function damagedGraph(dir: string, m: Manifest): string | null {
  for (const g of m.files.graphs) {
    let st: fs.Stats;
    try {
      st = fs.statSync(path.join(dir, g.file));
    } catch {
      return `${g.file} is missing from ${dir}`;
    }
    if (st.size !== g.bytes) return `${g.file} has ${st.size} bytes, not the ${g.bytes} written by prepare (truncated or rewritten)`;
    if (Math.round(st.mtimeMs) !== Math.round(g.mtimeMs)) return `${g.file} was modified after prepare`;
  }
  return null;
}

/** A hard-linked weights file that is no longer the model's own (replaced by cp --remove-destination, rsync, …). */
function brokenLink(dir: string, m: Manifest, src: SourceIdentity): string | null {
  for (const e of m.files.externalData) {
    if (e.method === 'hardlink' && !sameFile(path.join(dir, e.location), path.join(src.unetDir, e.location))) {
      return `${path.join(dir, e.location)} is no longer the model's unet/${e.location} (the weights were replaced after prepare)`;
    }
  }
  return null;
}

/** The state of the set in `dir`; undefined when there is no manifest at all. */
export function inspectPrepared(dir: string, src: SourceIdentity): PreparedState | undefined {
  const read = readManifest(dir);
  if (read.state === 'missing') return undefined;
  if (read.state === 'invalid') return { state: 'invalid', dir, reason: read.reason };
  const m = read.manifest;
  const changed = sourceChange(m, src) ?? brokenLink(dir, m, src);
  if (changed !== null) return { state: 'stale', dir, reason: changed };
  const damaged = damagedGraph(dir, m);
  if (damaged !== null) return { state: 'invalid', dir, reason: damaged };
  return { state: 'ready', dir, manifest: m };
}

export interface PrepareCommandOptions {
  size?: ImageSize;
  /** The size `prepare` picks by itself: --height/--width are left out when `size` equals it. */
  defaultSize?: ImageSize;
  batch?: number;
  cacheDir?: string;
  force?: boolean;
}

/** The `divbind-native prepare …` command line that prepares `modelDir` as asked. */
export function prepareCommand(modelDir: string, o: PrepareCommandOptions = {}): string {
  const sized = o.size !== undefined && (o.defaultSize === undefined || o.size.height !== o.defaultSize.height || o.size.width !== o.defaultSize.width);
  return [
    `divbind-native prepare ${JSON.stringify(path.resolve(modelDir))}`,
    sized ? ` --height ${o.size!.height} --width ${o.size!.width}` : '',
    o.batch !== undefined && o.batch !== 1 ? ` --batch ${o.batch}` : '',
    o.cacheDir !== undefined ? ` --cache-dir ${JSON.stringify(o.cacheDir)}` : '',
    o.force ? ' --force' : '',
  ].join('');
}

export interface ListedSet {
  size: ImageSize;
  batch: number;
  state: PreparedState;
}

/** Every prepared set of the folder (both roots), for `info` and for messages. */
export function listPrepared(folder: UnetFolder, src: SourceIdentity, cacheDir?: string): ListedSet[] {
  const out: ListedSet[] = [];
  for (const root of preparedRoots(folder.dir, cacheDir)) {
    let names: string[];
    try {
      names = fs.readdirSync(root).sort();
    } catch {
      continue;
    }
    for (const name of names) {
      const m = SIZE_DIR.exec(name);
      const state = m === null ? undefined : inspectPrepared(path.join(root, name), src);
      if (m !== null && state !== undefined) out.push({ size: { width: Number(m[1]), height: Number(m[2]) }, batch: Number(m[3] ?? 1), state });
    }
  }
  return out;
}

/** What the pipeline needs of a ready set. */
export interface PreparedInfo {
  dir: string;
  manifest: Manifest;
  files: PreparedUnetFiles;
  /** Weights ORT must get in memory (a cache on another filesystem): resolved in the model folder as it is now. */
  memoryExternalData: Array<{ location: string; source: string }>;
  /** The command that rebuilds this set, for errors found when it is opened. */
  rebuild: string;
  /** Graphs of proper layer subsets (manifest vjp.layerSets), for losses that read only those layers. */
  layerSets: PreparedUnetFiles[];
}

/** The ready set for `key`, or a DivbindError MODEL_NOT_PREPARED that says why and gives the command. */
export function locatePrepared(
  folder: UnetFolder,
  key: PreparedKey,
  o: { cacheDir?: string; defaultSize?: ImageSize; source?: SourceIdentity } = {},
): PreparedInfo {
  const src = o.source ?? sourceIdentity(folder);
  const problems: Array<{ dir: string; reason: string }> = [];
  for (const root of preparedRoots(folder.dir, o.cacheDir)) {
    const st = inspectPrepared(path.join(root, sizeDirName(key)), src);
    if (st?.state === 'ready') return preparedInfo(folder, st.dir, st.manifest, prepareCommand(folder.dir, { ...o, size: key, batch: key.batch, force: true }));
    if (st !== undefined) problems.push(st);
  }
  const others = [
    ...new Set(
      listPrepared(folder, src, o.cacheDir)
        .filter((s) => s.state.state === 'ready')
        .map((s) => formatSize(s.size)),
    ),
  ];
  const command = prepareCommand(folder.dir, { ...o, size: key, batch: key.batch, force: problems.length > 0 });
  throw new DivbindError(
    'MODEL_NOT_PREPARED',
    `${folder.dir} is not prepared for ${formatSize(key)}${problems.map((p) => `: ${p.reason}`).join(';')}` +
      `${others.length > 0 ? ` (prepared sizes: ${others.join(', ')})` : ''}`,
    {
      field: problems[0]?.dir ?? path.join(preparedRoots(folder.dir, o.cacheDir)[0]!, sizeDirName(key)),
      fix: `run \`${command}\``,
    },
  );
}

/** The UNet graphs of a prepared set, as the guided UNet runs them. */
export interface PreparedUnetFiles {
  design: 'recompute' | 'residuals';
  /** Instrumented UNet (recompute) or forward-with-residuals graph. */
  forwardFile: string;
  /** VJP graph (recompute) or backward-only graph (residuals). */
  backwardFile: string;
  /** Attention outputs of the forward graph, in layer order, with their dims. */
  mapOutputs: string[];
  mapDims: number[][];
  /** Cotangent inputs of the backward graph, aligned with mapOutputs. */
  cotangentInputs: string[];
  /** Residual tensors: forward output name → backward input name (residuals design only). */
  residuals: Array<{ output: string; input: string }>;
  /** Gradient output of the backward graph. */
  gradOutput: string;
  layers: GuidedLayerInfo[];
  /** Latent dims the graphs were prepared for: [C, h, w]. */
  latentDims: [number, number, number];
  textDims: [number, number];
  /** Indices of these graphs' layers in the full layer list (every index for the full set). */
  layerIndices: number[];
}

function preparedInfo(folder: UnetFolder, dir: string, m: Manifest, rebuild: string): PreparedInfo {
  const oblong = m.attention.layers.find((l) => l.resolution === null);
  if (oblong !== undefined) {
    throw new DivbindError(
      'MODEL_UNSUPPORTED',
      `${dir} is prepared for ${m.width}×${m.height}, where ${oblong.output} is ${oblong.h}×${oblong.w}: ` +
        'the D&B and A&E losses need square attention maps',
      { field: 'height', fix: 'use a square image size (equal height and width) for guided modes' },
    );
  }
  const forward = m.vjp.design === 'residuals' ? m.files.forward! : m.files.unet;
  const backward = m.vjp.design === 'residuals' ? m.files.backward! : m.files.vjp!;
  const all = m.attention.layers.map((_, k) => k);
  const files = unetFiles(dir, m, { forward, backward, residuals: m.vjp.residuals ?? [] }, all);
  const layerSets = m.vjp.layerSets.map((s) => unetFiles(dir, m, { forward: s.forward, backward: s.backward, residuals: s.residuals ?? [] }, s.layers));
  const unetDir = path.dirname(folder.unetFile);
  const memoryExternalData = m.files.externalData
    .filter((e) => e.method === 'memory')
    .map((e) => ({ location: e.location, source: path.join(unetDir, e.location) }));
  return { dir, manifest: m, files, memoryExternalData, rebuild, layerSets };
}

/** The graphs of one layer set (the full one, or a subset) as the guided UNet runs them. */
function unetFiles(dir: string, m: Manifest, graphs: { forward: string; backward: string; residuals: string[] }, indices: number[]): PreparedUnetFiles {
  const sample = m.inputs[m.vjp.wrt]!;
  const text = Object.entries(m.inputs).find(([k, v]) => k !== m.vjp.wrt && v.dims.length === 3)![1];
  const layers = indices.map((k) => m.attention.layers[k]!);
  return {
    design: m.vjp.design,
    forwardFile: path.join(dir, graphs.forward),
    backwardFile: path.join(dir, graphs.backward),
    mapOutputs: layers.map((l) => l.output),
    mapDims: layers.map((l) => l.dims),
    cotangentInputs: layers.map((l) => m.vjp.cotangents[l.output]!),
    residuals: graphs.residuals.map((r) => ({ output: r, input: r })),
    gradOutput: m.vjp.gradient,
    layers: layers.map((l) => ({ name: l.scope || l.source, heads: l.headAveraged ? 1 : l.heads, resolution: l.resolution!, place: l.place })),
    latentDims: [sample.dims[1]!, sample.dims[2]!, sample.dims[3]!],
    textDims: [text.dims[1]!, text.dims[2]!],
    layerIndices: indices,
  };
}
