/**
 * The Shapes benchmark: every prompt of every set, on the same seeds, once per method (plain SD 'none', A&E
 * 'max', D&B 'tv' and 'tv_bind'), each image scored by the detector. Writes into outDir:
 *   results.md    Markdown table, one block per prompt set, one row per method
 *   results.json  every image's detections and score, the options used, timings
 *   grid-<set>-<k>.png  per prompt: rows = methods (in the order of the table), columns = seeds
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DivBindPipeline, type GenerateOptions } from '../pipeline/pipeline';
import type { GuidanceMode } from '../pipeline/guidance';
import { encodePng } from '../pipeline/image';
import { detect, type Detection } from './detector';
import { scoreImage, type ImageScore } from './score';
import { PROMPT_SETS, SEEDS, type PromptSet } from './prompts';

export const METHODS: readonly GuidanceMode[] = ['none', 'max', 'tv', 'tv_bind'];
export const METHOD_LABELS: Readonly<Record<string, string>> = {
  none: 'SD (none)',
  max: 'A&E (max)',
  tv: 'D&B (tv)',
  tv_bind: 'D&B (tv_bind)',
  tv_max: 'D&B (tv_max)',
};

export interface BenchmarkOptions {
  /** A loaded pipeline, or a model folder to load (guided methods need it prepared, see `prepare`). */
  pipeline?: DivBindPipeline;
  modelDir?: string;
  /** Prepare the UNet when loading modelDir if it is not prepared yet. */
  prepare?: boolean;
  outDir: string;
  /** Quick variant: the first prompt of each set, 2 seeds, 20 steps, refinement capped at 10/5 iterations. */
  quick?: boolean;
  methods?: GuidanceMode[];
  sets?: string[];
  seeds?: number[];
  /** Denoising steps. Default 50 (quick: 20). */
  steps?: number;
  guidanceScale?: number;
  /** Prompts per set (default all; quick 1). */
  promptsPerSet?: number;
  /** Extra generate() options applied to every image (loss parameters, scheduler, …). */
  generate?: Partial<GenerateOptions>;
  onProgress?: (message: string) => void;
  signal?: AbortSignal;
}

export interface ImageRecord {
  set: string;
  prompt: string;
  seed: number;
  method: GuidanceMode;
  detections: Detection[];
  score: ImageScore;
  ms: number;
}

export interface MethodSummary {
  method: GuidanceMode;
  images: number;
  allPresent: number;
  allBound: number | null;
  countCorrect: number;
  shapeRecall: number;
  bindingRecall: number | null;
}

export interface BenchmarkReport {
  records: ImageRecord[];
  summary: Record<string, MethodSummary[]>;
  markdown: string;
  files: string[];
}

function pickSets(names: string[] | undefined): PromptSet[] {
  if (names === undefined) return [...PROMPT_SETS];
  return names.map((n) => {
    const s = PROMPT_SETS.find((p) => p.name === n);
    if (!s) throw new RangeError(`unknown prompt set "${n}" (expected one of ${PROMPT_SETS.map((p) => p.name).join(', ')})`);
    return s;
  });
}

function checkOptions(o: BenchmarkOptions): void {
  if (o === null || typeof o !== 'object') throw new TypeError('Expected benchmark options { outDir, modelDir | pipeline, … }');
  if (typeof o.outDir !== 'string' || o.outDir === '') throw new TypeError('Expected outDir: the folder for results.md, results.json and the grids');
  if (!o.pipeline && (typeof o.modelDir !== 'string' || o.modelDir === '')) throw new TypeError('Expected modelDir (a Stable Diffusion ONNX folder) or a loaded pipeline');
  for (const m of o.methods ?? []) {
    if (!(m in METHOD_LABELS)) throw new RangeError(`unknown method "${m}" (expected none, max, tv, tv_bind or tv_max)`);
  }
  for (const s of o.seeds ?? []) {
    if (!Number.isInteger(s) || s < 0) throw new RangeError(`seeds must be non-negative integers but received ${s}`);
  }
  if (o.steps !== undefined && (!Number.isInteger(o.steps) || o.steps < 1)) throw new RangeError(`steps must be a positive integer but received ${o.steps}`);
  if (o.promptsPerSet !== undefined && (!Number.isInteger(o.promptsPerSet) || o.promptsPerSet < 1)) {
    throw new RangeError(`promptsPerSet must be a positive integer but received ${o.promptsPerSet}`);
  }
}

/** Tiles images (all the same size) into rows × cols with a 2-pixel white gap, each scaled up by `zoom`. */
export function tileGrid(images: Array<{ rgb: Uint8Array; width: number; height: number }>, cols: number, zoom = 2): { rgb: Uint8Array; width: number; height: number } {
  if (images.length === 0) throw new RangeError('tileGrid: no images');
  const { width: w, height: h } = images[0];
  const rows = Math.ceil(images.length / cols);
  const gap = 2;
  const W = cols * (w * zoom + gap) + gap, H = rows * (h * zoom + gap) + gap;
  const out = new Uint8Array(W * H * 3).fill(255);
  images.forEach((img, k) => {
    if (img.width !== w || img.height !== h) throw new RangeError('tileGrid: images differ in size');
    const ox = gap + (k % cols) * (w * zoom + gap), oy = gap + Math.floor(k / cols) * (h * zoom + gap);
    for (let y = 0; y < h * zoom; y++) {
      for (let x = 0; x < w * zoom; x++) {
        const s = (Math.floor(y / zoom) * w + Math.floor(x / zoom)) * 3;
        out.set(img.rgb.subarray(s, s + 3), ((oy + y) * W + ox + x) * 3);
      }
    }
  });
  return { rgb: out, width: W, height: H };
}

function pct(x: number | null): string {
  return x === null ? '–' : `${(100 * x).toFixed(1)} %`;
}

export function summarise(records: ImageRecord[], methods: readonly GuidanceMode[]): MethodSummary[] {
  return methods.map((method) => {
    const rs = records.filter((r) => r.method === method);
    const n = rs.length || 1;
    const coloured = rs.filter((r) => r.score.requestedColoured > 0);
    const sum = (f: (r: ImageRecord) => number, list = rs) => list.reduce((a, r) => a + f(r), 0);
    return {
      method,
      images: rs.length,
      allPresent: sum((r) => (r.score.allPresent ? 1 : 0)) / n,
      allBound: coloured.length ? sum((r) => (r.score.allBound ? 1 : 0), coloured) / coloured.length : null,
      countCorrect: sum((r) => (r.score.countCorrect ? 1 : 0)) / n,
      shapeRecall: sum((r) => r.score.shapesFound / r.score.requested) / n,
      bindingRecall: coloured.length ? sum((r) => r.score.boundFound / r.score.requestedColoured, coloured) / coloured.length : null,
    };
  });
}

export function markdownTable(title: string, rows: MethodSummary[]): string {
  const lines = [
    `### ${title}`,
    '',
    '| method | images | all objects present | every object with its colour | count correct | mean objects found | mean objects with colour |',
    '|---|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of rows) {
    lines.push(`| ${METHOD_LABELS[r.method]} | ${r.images} | ${pct(r.allPresent)} | ${pct(r.allBound)} | ${pct(r.countCorrect)} | ${pct(r.shapeRecall)} | ${pct(r.bindingRecall)} |`);
  }
  return lines.join('\n');
}

export async function runBenchmark(options: BenchmarkOptions): Promise<BenchmarkReport> {
  checkOptions(options);
  const quick = options.quick ?? false;
  const methods = options.methods ?? [...METHODS];
  const seeds = options.seeds ?? (quick ? SEEDS.slice(0, 2) : [...SEEDS]);
  const steps = options.steps ?? (quick ? 20 : 50);
  const perSet = options.promptsPerSet ?? (quick ? 1 : Infinity);
  // Quick: refinement (up to 100 + 50 UNet VJPs per image by default) dominates CPU time; cap it.
  const refinement = quick ? { initStep: 10, other: 5 } : undefined;
  const sets = pickSets(options.sets);
  const progress = options.onProgress ?? (() => {});
  const pipe = options.pipeline ?? (await DivBindPipeline.load(options.modelDir as string, { prepare: options.prepare, onProgress: progress }));
  if (methods.some((m) => m !== 'none') && !pipe.canGuide) {
    throw new RangeError('guided methods need the prepared UNet: run `divbind-native prepare <model>` or pass --prepare (or use --methods none)');
  }
  fs.mkdirSync(options.outDir, { recursive: true });
  const records: ImageRecord[] = [];
  const files: string[] = [];
  const total = sets.reduce((a, s) => a + Math.min(perSet, s.prompts.length), 0) * seeds.length * methods.length;
  let done = 0;
  const t0 = Date.now();
  for (const set of sets) {
    const prompts = set.prompts.slice(0, perSet);
    for (let k = 0; k < prompts.length; k++) {
      const bp = prompts[k];
      const tiles: Array<{ rgb: Uint8Array; width: number; height: number }> = [];
      for (const method of methods) {
        for (const seed of seeds) {
          const t = Date.now();
          const result = await pipe.generate({
            guidanceScale: options.guidanceScale,
            refinement,
            ...options.generate,
            prompt: bp.prompt,
            mode: method,
            tokens: method === 'none' ? undefined : bp.tokens,
            seed,
            steps,
            signal: options.signal,
          });
          const img = result.images[0];
          // The detector's size thresholds are for 64×64; scale the minimum area with the image.
          const detections = detect(img, { minArea: Math.max(1, Math.round((30 * img.width * img.height) / 4096)) });
          records.push({ set: set.name, prompt: bp.prompt, seed, method, detections, score: scoreImage(bp.objects, detections), ms: Date.now() - t });
          tiles.push({ rgb: img.rgb, width: img.width, height: img.height });
          done++;
          progress(`[${done}/${total}] ${set.name} "${bp.prompt}" ${method} seed ${seed}: ${detections.map((d) => `${d.colour} ${d.shape}`).join(', ') || 'nothing'} (${Date.now() - t} ms)`);
        }
      }
      const grid = tileGrid(tiles, seeds.length, tiles[0].width <= 128 ? 2 : 1);
      const file = path.join(options.outDir, `grid-${set.name}-${k}.png`);
      fs.writeFileSync(file, encodePng(grid.rgb, grid.width, grid.height, { prompt: bp.prompt, rows: methods.join(','), columns: `seeds ${seeds.join(',')}` }));
      files.push(file);
    }
  }
  const summary: Record<string, MethodSummary[]> = {};
  const blocks: string[] = [
    '# Shapes benchmark',
    '',
    `Model: ${options.modelDir ?? '(loaded pipeline)'}; ${steps} steps; seeds ${seeds.join(', ')}; ${quick ? 'quick variant (refinement capped at 10/5 iterations)' : 'full'}; ${((Date.now() - t0) / 1000).toFixed(0)} s.`,
    'Detector: lib/eval/detector.ts (palette segmentation, connected components, shape from area / (π R²)).',
    '"every object with its colour" and "mean objects with colour" count only objects whose colour the prompt names.',
    '',
  ];
  for (const set of sets) {
    summary[set.name] = summarise(records.filter((r) => r.set === set.name), methods);
    blocks.push(markdownTable(set.title, summary[set.name]), '');
  }
  summary.all = summarise(records, methods);
  blocks.push(markdownTable('all prompts', summary.all), '');
  blocks.push(`Grids: grid-<set>-<k>.png, rows = ${methods.map((m) => METHOD_LABELS[m]).join(' / ')}, columns = seeds ${seeds.join(', ')}.`, '');
  const markdown = blocks.join('\n');
  const md = path.join(options.outDir, 'results.md');
  fs.writeFileSync(md, markdown);
  const js = path.join(options.outDir, 'results.json');
  fs.writeFileSync(js, JSON.stringify({ options: { quick, methods, seeds, steps, sets: sets.map((s) => s.name), perSet: Number.isFinite(perSet) ? perSet : 'all', modelDir: options.modelDir ?? null }, summary, records }, null, 1));
  files.unshift(md, js);
  if (!options.pipeline) await pipe.release();
  return { records, summary, markdown, files };
}
