/**
 * One benchmark child of bench/sd15.bench.ts: loads the pipeline, makes one warm-up image, then times `repeats`
 * images of one mode and size, and reports seconds per image, the phase breakdown, its own peak RSS (VmHWM) and
 * where it left the final latents (for the comparison with the PyTorch peer). Also `prepare` for a size, in its own
 * child so that its memory never counts in a run.
 *
 * The child tells the parent when the timed images start ({ phase: 'timed' }): the parent samples Pss only before
 * that, during the load and the warm-up image (which runs every phase: text encoder, guided forward, loss, VJP,
 * CFG, VAE). Reading smaps_rollup walks the page tables of every mapping (three sessions on a 3.4 GB weights file)
 * and takes a core from the two that onnxruntime uses. Measured on the SD 1.5-size model at 256² (6 steps, 3 guided,
 * two rounds): sampling every 200 ms throughout made tv_bind 33.3 / 35.7 s against 26.3 / 24.2 s unsampled (its CFG
 * phase 16.9-17.9 s against 11.8-13.0 s), and plain SD 15.4 / 16.9 s against 14.5 / 14.4 s.
 */
import { fork } from 'node:child_process';
import * as path from 'node:path';
import { prepareModel } from '../lib/model/prepare';
import type { GuidanceMode } from '../lib/pipeline/guidance';
import { DivBindPipeline, type GenerateOptions, type GenerateResult } from '../lib/pipeline/pipeline';
import type { SelectionSpec } from '../lib/pipeline/token-selection';
import { writeNpy } from '../lib/util/npy';

export interface RunSettings {
  modelDir: string;
  size: number;
  mode: GuidanceMode;
  /** Initial latents [1, 4, size/8, size/8] (.npy), the same for every mode and for the peer. */
  latentsFile: string;
  steps: number;
  maxIterToAlter: number;
  repeats: number;
  warmupSteps: number;
  threads: number;
  seed: number;
  shareWeights: boolean;
  /** SessionOptions.retainFreedMemory (false: --release-freed-memory). */
  retainFreedMemory: boolean;
  prompt: string;
  tokens: SelectionSpec;
}

export interface ModeRun {
  secondsPerImage: number;
  seconds: number[];
  /** VmHWM of the child at the end. */
  peakRssMB: number;
  /** Sums over the steps of one image (the last repeat), and the text encoder / VAE. */
  phasesMs: Record<string, number>;
  gradientPasses: number;
  loadSeconds: number;
  tokens: { tokenIndices: number[]; attributeIndices: Array<number | null> | null } | null;
  finalLatentsFile: string;
}

const PHASES = ['unetForward', 'vjp', 'loss', 'cfg', 'scheduler'] as const;

function phases(res: GenerateResult): Record<string, number> {
  const steps = res.images[0]!.steps;
  const out: Record<string, number> = { textEncoder: res.timings.textEncoder, vae: res.timings.vae };
  for (const k of PHASES) out[k] = steps.reduce((a, s) => a + s.ms[k], 0);
  return out;
}

function generateOptions(s: RunSettings, steps: number): GenerateOptions {
  return {
    prompt: s.prompt,
    mode: s.mode,
    steps,
    latents: s.latentsFile,
    height: s.size,
    width: s.size,
    maxIterToAlter: s.maxIterToAlter,
    ...(s.mode === 'none' ? {} : { tokens: s.tokens, thresholds: {} }),
  };
}

/** The child's work: load, warm up, time. */
async function runMode(s: RunSettings): Promise<ModeRun> {
  const t0 = performance.now();
  const pipe = await DivBindPipeline.load(s.modelDir, {
    prepare: false,
    session: { intraOpNumThreads: s.threads, shareWeights: s.shareWeights, retainFreedMemory: s.retainFreedMemory },
  });
  const loadSeconds = (performance.now() - t0) / 1000;
  try {
    if (s.warmupSteps > 0) await pipe.generate(generateOptions(s, s.warmupSteps));
    process.send?.(TIMED);
    const seconds: number[] = [];
    let last: GenerateResult | undefined;
    for (let r = 0; r < s.repeats; r++) {
      const t = performance.now();
      last = await pipe.generate(generateOptions(s, s.steps));
      seconds.push((performance.now() - t) / 1000);
    }
    const finalLatentsFile = `${s.latentsFile.replace(/\.npy$/, '')}-${s.mode}-node.npy`;
    writeNpy(finalLatentsFile, last!.images[0]!.latents, [1, 4, s.size / 8, s.size / 8]);
    const sorted = [...seconds].sort((a, b) => a - b);
    return {
      secondsPerImage: sorted[Math.floor(sorted.length / 2)]!,
      seconds,
      peakRssMB: process.resourceUsage().maxRSS / 1024,
      phasesMs: phases(last!),
      gradientPasses: last!.images[0]!.steps.filter((e) => e.loss !== null).length,
      loadSeconds,
      tokens: last!.tokens ? { tokenIndices: last!.tokens.tokenIndices, attributeIndices: last!.tokens.attributeIndices } : null,
      finalLatentsFile,
    };
  } finally {
    await pipe.release();
  }
}

type ChildJob = { kind: 'run'; settings: RunSettings } | { kind: 'prepare'; modelDir: string; size: number };

/** The message a run child sends when its timed images start (after the load and the warm-up). */
const TIMED = { phase: 'timed' } as const;
const isTimed = (m: unknown) => typeof m === 'object' && m !== null && (m as { phase?: unknown }).phase === TIMED.phase;

/** Hooks of a run child: its pid once started, and the moment its timed images start. */
export interface ChildHooks {
  onStart?: (pid: number) => void;
  onTimed?: () => void;
}

function inChild<T>(job: ChildJob, hooks: ChildHooks = {}): Promise<T> {
  return new Promise((resolve, reject) => {
    const child = fork(__filename, ['--child', JSON.stringify(job)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    if (child.pid !== undefined) hooks.onStart?.(child.pid);
    let result: T | undefined;
    child.on('message', (m) => {
      if (isTimed(m)) hooks.onTimed?.();
      else result = m as T;
    });
    child.on('error', reject);
    child.on('exit', (code) => (result !== undefined ? resolve(result) : reject(new Error(`bench child ${job.kind} exited with ${code}`))));
  });
}

/** Times one mode in a fresh process; `hooks` get its pid and the start of its timed images (for memory sampling). */
export function runModeInChild(settings: RunSettings, hooks: ChildHooks = {}): Promise<ModeRun> {
  return inChild<ModeRun>({ kind: 'run', settings }, hooks);
}

/** Prepares `modelDir` for a size (a no-op when ready) in a fresh process; the seconds it took. */
export function prepareInChild(modelDir: string, size: number): Promise<number> {
  return inChild<number>({ kind: 'prepare', modelDir, size });
}

async function childMain(job: ChildJob): Promise<unknown> {
  if (job.kind === 'run') return runMode(job.settings);
  const t0 = performance.now();
  const r = await prepareModel(job.modelDir, {
    height: job.size,
    width: job.size,
    onProgress: (p) => console.log(`  prepare ${path.basename(job.modelDir)} ${job.size}²: ${p.message}`),
  });
  return r.skipped ? 0 : (performance.now() - t0) / 1000;
}

if (require.main === module && process.argv[2] === '--child') {
  childMain(JSON.parse(process.argv[3]!) as ChildJob).then(
    (r) => process.send!(r),
    (err) => {
      console.error(err);
      process.exitCode = 1;
    },
  );
}
