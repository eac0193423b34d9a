/**
 * The Shapes benchmark (detection-based, in the manner of GenEval): every prompt of a prompt file on the same
 * seeds, once per method (plain SD 'none', A&E 'max', D&B 'tv' and 'tv_bind'), each image scored by the detector.
 * Writes into outDir:
 *   results.json  per method: seconds per image and, per category, n / success rate / 95 % bootstrap interval;
 *                 also the paired differences and the configuration
 *   records.json  every image: prompt, seed, method, verdict, score, detections, SHA-256 of the pixels, time
 *   results.md    the table (categories × methods), the differences, the per-prompt counts
 *   grids/<category>-<nn>-<prompt>.png  rows = methods (table order), columns = seeds, verdict bar under each image
 */
import { createHash } from 'node:crypto';
import * as os from 'node:os';
import { DivbindError } from '../errors';
import { DivBindPipeline } from '../pipeline/pipeline';
import type { GuidanceMode } from '../pipeline/guidance';
import { detect, type Detection } from './detector';
import { guidanceTokens, lineSeeds, readPromptFile, type Category, type ParsedPrompt, type PromptLine } from './prompts';
import { scoreImage, type ImageScore } from './score';
import { inProcessRunner, startWorkerPool, type ImageJob, type ImageRunner, type JobOptions } from './runner';
import { prepareOutDir, writeGrid, writeResults, type GridTile, type Results } from './report';

/** Every guidance mode the benchmark can run, in table order. */
export const ALL_METHODS: readonly GuidanceMode[] = ['none', 'max', 'tv', 'tv_bind', 'tv_max'];
/** The methods of the table (the default). */
export const DEFAULT_METHODS: readonly GuidanceMode[] = ['none', 'max', 'tv', 'tv_bind'];
/** The quick variant: first prompt of each category, 2 seeds, 20 steps, refinement capped at 10 / 5 iterations. */
export const QUICK = { seeds: 2, steps: 20, refinement: { initStep: 10, other: 5 } } as const;
/** generate() options the benchmark sets per image; overrides may not touch them. */
const RESERVED = ['prompt', 'mode', 'tokens', 'seed', 'latents', 'imagesPerPrompt', 'steps', 'signal', 'onStep'] as const;

/** Extra generate() options for every image, and per method (e.g. tuned thresholds for 'max'). */
export type GenerateOverrides = Partial<JobOptions> & { perMethod?: Partial<Record<GuidanceMode, Partial<JobOptions>>> };

export interface EvalOptions {
  /** A prompt file (see lib/eval/prompts.ts) or its parsed lines. */
  prompts: string | PromptLine[];
  /** Seeds of each prompt line (repeated lines shift them, see lineSeeds). */
  seeds: number[];
  /** Default DEFAULT_METHODS. */
  methods?: GuidanceMode[];
  outDir: string;
  /** A model folder to load, or a loaded pipeline (then the images are made in this process). */
  modelDir?: string;
  pipeline?: DivBindPipeline;
  /** Prepare the UNet when loading modelDir if it is not prepared yet. */
  prepare?: boolean;
  cacheDir?: string;
  /** Denoising steps (default: the pipeline's 50; quick 20). */
  steps?: number;
  /** Child processes sharing the images (default: the number of CPU cores; 1 = this process). */
  workers?: number;
  /** onnxruntime intra-op threads per worker (default: cores / workers, at least 1). */
  threads?: number;
  quick?: boolean;
  generate?: GenerateOverrides;
  onProgress?: (line: string) => void;
  signal?: AbortSignal;
}

/** One prompt of the run with all its lines and seeds: one grid. */
export interface PromptEntry {
  category: Category;
  prompt: ParsedPrompt;
  lines: number[];
  seeds: number[];
  /** 1-based position among the category's prompts. */
  index: number;
}

export interface ImageRecord {
  category: Category;
  prompt: string;
  lines: number[];
  seed: number;
  method: GuidanceMode;
  success: boolean;
  score: ImageScore;
  detections: Detection[];
  imageSha256: string;
  seconds: number;
}

export interface EvalReport {
  entries: PromptEntry[];
  records: ImageRecord[];
  /** The object written to results.json. */
  results: Results;
  markdown: string;
  files: string[];
  /** How many processes made the images (the workers that took part). */
  processes: number;
}

function bad(field: string, message: string): DivbindError {
  return new DivbindError('BAD_INPUT', message, { field });
}

function checkInteger(value: unknown, field: string, min: number): void {
  if (value !== undefined && (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min)) {
    throw bad(field, `Expected an integer ≥ ${min} for ${field} but received ${JSON.stringify(value)}`);
  }
}

function checkOverrides(g: GenerateOverrides | undefined): void {
  if (g === undefined) return;
  if (g === null || typeof g !== 'object' || Array.isArray(g)) throw bad('generate', 'Expected an object of generate() options for generate');
  const check = (o: object, where: string) => {
    for (const k of RESERVED)
      if (k in o) throw bad(where, `${where}.${k} is set by the benchmark per image; remove it${k === 'steps' ? ' (use steps / --steps)' : ''}`);
  };
  check(g, 'generate');
  for (const [m, o] of Object.entries(g.perMethod ?? {})) {
    if (!ALL_METHODS.includes(m as GuidanceMode))
      throw bad('generate.perMethod', `unknown method "${m}" in generate.perMethod (expected ${ALL_METHODS.join(', ')})`);
    if (o === null || typeof o !== 'object') throw bad(`generate.perMethod.${m}`, `Expected an object of generate() options for generate.perMethod.${m}`);
    check(o, `generate.perMethod.${m}`);
  }
}

function checkOptions(o: EvalOptions): void {
  if (o === null || typeof o !== 'object') throw bad('options', 'Expected eval options { prompts, seeds, outDir, modelDir | pipeline, … }');
  if (typeof o.outDir !== 'string' || o.outDir === '') throw bad('outDir', 'Expected outDir: the folder for results.json, results.md and the grids');
  if (!o.pipeline && (typeof o.modelDir !== 'string' || o.modelDir === ''))
    throw bad('modelDir', 'Expected modelDir (a Stable Diffusion ONNX folder) or a loaded pipeline');
  if (!Array.isArray(o.seeds) || o.seeds.length === 0) throw bad('seeds', 'Expected a non-empty array of seeds');
  o.seeds.forEach((s, i) => checkInteger(s, `seeds[${i}]`, 0));
  if (new Set(o.seeds).size !== o.seeds.length) throw bad('seeds', `seeds repeat a value: ${o.seeds.join(', ')}`);
  const methods = o.methods ?? DEFAULT_METHODS;
  if (!Array.isArray(methods) || methods.length === 0) throw bad('methods', 'Expected a non-empty array of methods');
  for (const m of methods) if (!ALL_METHODS.includes(m)) throw bad('methods', `unknown method "${m}" (expected ${ALL_METHODS.join(', ')})`);
  if (new Set(methods).size !== methods.length) throw bad('methods', `methods repeat a value: ${methods.join(', ')}`);
  checkInteger(o.steps, 'steps', 1);
  checkInteger(o.workers, 'workers', 1);
  checkInteger(o.threads, 'threads', 1);
  if (o.pipeline && (o.workers ?? 1) !== 1) throw bad('workers', 'a loaded pipeline runs in this process: pass modelDir instead to use several workers');
  checkOverrides(o.generate);
}

/** The seeds of each prompt line in this run: the quick variant keeps the first QUICK.seeds. */
export function runSeeds(seeds: readonly number[], quick = false): number[] {
  return quick ? seeds.slice(0, QUICK.seeds) : [...seeds];
}

/** Groups the lines by prompt (a repeated prompt gathers the seeds of all its lines); quick keeps one per category. */
export function promptEntries(lines: PromptLine[], seeds: readonly number[], quick = false): PromptEntry[] {
  const byText = new Map<string, PromptEntry>();
  const perCategory = new Map<Category, number>();
  for (const l of lines) {
    let e = byText.get(l.prompt.text);
    if (!e) {
      if (quick && perCategory.has(l.category)) continue;
      const index = (perCategory.get(l.category) ?? 0) + 1;
      perCategory.set(l.category, index);
      e = { category: l.category, prompt: l.prompt, lines: [], seeds: [], index };
      byText.set(l.prompt.text, e);
    } else if (quick) continue;
    e.lines.push(l.line);
    e.seeds.push(...lineSeeds(seeds, l.occurrence));
  }
  return [...byText.values()];
}

/** The generate() options of one image (every choice the benchmark makes, in one place). */
function jobOptions(o: EvalOptions, e: PromptEntry, method: GuidanceMode, seed: number): JobOptions {
  const { perMethod, ...common } = o.generate ?? {};
  return {
    ...(o.quick ? { refinement: { ...QUICK.refinement } } : {}),
    ...common,
    ...perMethod?.[method],
    prompt: e.prompt.text,
    mode: method,
    tokens: method === 'none' ? undefined : guidanceTokens(e.prompt),
    seed,
    ...(o.steps !== undefined ? { steps: o.steps } : o.quick ? { steps: QUICK.steps } : {}),
  };
}

/** The detector's size thresholds are for 64×64 scenes; the minimum area scales with the image. */
export function detectObjects(img: { rgb: Uint8Array; width: number; height: number }): Detection[] {
  return detect(img, { minArea: Math.max(1, Math.round((30 * img.width * img.height) / 4096)) });
}

function clock(ms: number): string {
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 3600)}:${String(Math.floor(s / 60) % 60).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
}

async function openRunner(
  o: EvalOptions,
  images: number,
  progress: (m: string) => void,
): Promise<{ runner: ImageRunner; workers: number; threads: number | null }> {
  if (o.pipeline) return { runner: inProcessRunner(o.pipeline, o.signal), workers: 1, threads: null };
  const cores = Math.max(1, os.cpus().length);
  const workers = Math.min(o.workers ?? cores, images);
  const threads = o.threads ?? Math.max(1, Math.floor(cores / workers));
  if (workers === 1) {
    const pipe = await DivBindPipeline.load(o.modelDir, {
      prepare: o.prepare,
      cacheDir: o.cacheDir,
      session: { intraOpNumThreads: threads },
      onProgress: progress,
    });
    return { runner: inProcessRunner(pipe, o.signal, () => pipe.release()), workers, threads };
  }
  progress(`starting ${workers} workers × ${threads} onnxruntime thread(s)`);
  const runner = await startWorkerPool({
    modelDir: o.modelDir as string,
    prepare: o.prepare ?? false,
    cacheDir: o.cacheDir,
    threads,
    workers,
    onNote: progress,
  });
  return { runner, workers, threads };
}

interface Job extends ImageJob {
  entry: number;
  seed: number;
  method: GuidanceMode;
}

function makeJobs(o: EvalOptions, entries: PromptEntry[], methods: readonly GuidanceMode[]): Job[] {
  const jobs: Job[] = [];
  // Prompt-major order: a prompt's images finish together (its grid is written and its tiles freed), and the
  // ETA sees every method from the start.
  entries.forEach((e, entry) => {
    for (const seed of e.seeds) {
      for (const method of methods) jobs.push({ id: jobs.length, entry, seed, method, options: jobOptions(o, e, method, seed) });
    }
  });
  return jobs;
}

/** generate()'s parameters without what changes from image to image. */
function withoutPerImage(p: Record<string, unknown>): Record<string, unknown> {
  const { prompt: _p, seed: _s, tokens: _t, image: _i, ...rest } = p;
  return rest;
}

function describeResult(r: ImageRecord): string {
  const found = r.detections.map((d) => `${d.colour} ${d.shape}`).join(', ') || 'nothing';
  return `${r.category} "${r.prompt}" ${r.method} seed ${r.seed}: ${r.success ? 'success' : 'failure'} (${found})`;
}

/** Runs the benchmark and writes its outputs; see the file header. */
export async function runEval(o: EvalOptions): Promise<EvalReport> {
  checkOptions(o);
  const progress = o.onProgress ?? (() => {});
  const methods = [...(o.methods ?? DEFAULT_METHODS)];
  const lines = typeof o.prompts === 'string' ? readPromptFile(o.prompts) : o.prompts;
  const seeds = runSeeds(o.seeds, o.quick);
  const entries = promptEntries(lines, seeds, o.quick);
  const jobs = makeJobs(o, entries, methods);
  prepareOutDir(o.outDir);
  const { runner, workers, threads } = await openRunner(o, jobs.length, progress);
  const stop = () => void runner.close();
  o.signal?.addEventListener('abort', stop, { once: true });
  const records: ImageRecord[] = new Array(jobs.length);
  const tiles = entries.map(() => new Map<number, GridTile>());
  const files: string[] = [];
  const pids = new Set<number>();
  const resolved: Record<string, Record<string, unknown>> = {};
  try {
    if (methods.some((m) => m !== 'none') && !runner.canGuide) {
      throw new DivbindError('MODEL_NOT_PREPARED', `guided methods (${methods.filter((m) => m !== 'none').join(', ')}) need the prepared UNet`, {
        field: 'methods',
        fix: `run \`divbind-native prepare ${o.modelDir ?? '<model>'}\` or pass --prepare (or use --methods none)`,
      });
    }
    const t0 = performance.now();
    let done = 0;
    await Promise.all(
      jobs.map(async (job) => {
        const res = await runner.run(job);
        pids.add(res.pid);
        resolved[job.method] ??= withoutPerImage(res.parameters);
        const e = entries[job.entry];
        const detections = detectObjects(res);
        const score = scoreImage(e.prompt.objects, detections);
        records[job.id] = {
          category: e.category,
          prompt: e.prompt.text,
          lines: e.lines,
          seed: job.seed,
          method: job.method,
          success: score.success,
          score,
          detections,
          imageSha256: createHash('sha256').update(res.rgb).digest('hex'),
          seconds: res.ms / 1000,
        };
        tiles[job.entry].set(job.id, { image: res, success: score.success });
        if (tiles[job.entry].size === e.seeds.length * methods.length) {
          files.push(
            writeGrid(
              o.outDir,
              e,
              methods,
              jobs.filter((j) => j.entry === job.entry).map((j) => tiles[job.entry].get(j.id) as GridTile),
            ),
          );
          tiles[job.entry].clear();
        }
        done++;
        const elapsed = performance.now() - t0;
        progress(
          `[${done}/${jobs.length}] ${((100 * done) / jobs.length).toFixed(1)} % elapsed ${clock(elapsed)} ETA ${clock((elapsed / done) * (jobs.length - done))} | ${describeResult(records[job.id])}`,
        );
      }),
    );
  } catch (err) {
    if (o.signal?.aborted) throw new DivbindError('ABORTED', 'the benchmark was interrupted', { cause: err });
    throw err;
  } finally {
    o.signal?.removeEventListener('abort', stop);
    await runner.close();
  }
  const config = {
    prompts: typeof o.prompts === 'string' ? o.prompts : '(parsed lines)',
    model: o.modelDir ?? o.pipeline?.folder.dir ?? null,
    seeds,
    methods,
    quick: o.quick ?? false,
    workers,
    threadsPerWorker: threads,
    generate: o.generate ?? {},
    promptsRun: entries.length,
    images: jobs.length,
    // What generate() used per method, defaults resolved (steps, thresholds, refinement, scale factor, …).
    parameters: Object.fromEntries(methods.map((m) => [m, resolved[m]])),
  };
  const written = writeResults(o.outDir, { entries, records, methods, config });
  return { entries, records, results: written.results, markdown: written.markdown, files: [...written.files, ...files.sort()], processes: pids.size };
}
