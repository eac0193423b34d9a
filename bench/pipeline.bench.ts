/**
 * Seconds per image on a model folder (default: the bundled model) for every guidance mode, side by side in one
 * run on the same seeds, with the per-phase breakdown (text encoder, gradient-pass UNet forward, VJP, loss, CFG
 * UNet, scheduler, VAE). Two guidance settings: no refinement (thresholds {}), which isolates the per-step cost
 * of the gradient passes, and the official defaults (refinement at i = 0/10/20). Writes
 * bench/results/pipeline.json and pipeline.md.
 *
 * Each image takes seconds, far too long for benny's statistical sampling: every case runs `repeats` times after
 * one warm-up and the median is reported.
 *
 *   node dist/bench/pipeline.bench.js [--model DIR] [--steps 50] [--repeats 2] [--threads N]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DivBindPipeline, type GenerateOptions } from '../lib/pipeline/pipeline';
import { defaultModelDir } from '../lib/pipeline/defaults';
import type { GuidanceMode } from '../lib/pipeline/guidance';

export interface PipelineBenchOptions {
  modelDir?: string;
  steps?: number;
  repeats?: number;
  threads?: number;
  prompt?: string;
  out?: string;
  log?: (line: string) => void;
}

interface Phases {
  textEncoder: number;
  unetForward: number;
  vjp: number;
  loss: number;
  cfg: number;
  scheduler: number;
  vae: number;
  total: number;
}

export interface PipelineBenchRow {
  mode: GuidanceMode;
  refinement: 'none' | 'default';
  secondsPerImage: number;
  /** Ratio to plain SD ('none') in the same run. */
  ratioToPlain: number;
  refinementIterations: number;
  gradientPasses: number;
  phasesMs: Phases;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

export async function runPipelineBench(o: PipelineBenchOptions = {}): Promise<{ rows: PipelineBenchRow[]; meta: Record<string, unknown> }> {
  const log = o.log ?? ((l: string) => console.log(l));
  const modelDir = o.modelDir ?? defaultModelDir();
  const steps = o.steps ?? 50;
  const repeats = o.repeats ?? 2;
  const prompt = o.prompt ?? 'a red circle and a blue square';
  const pipe = await DivBindPipeline.load(modelDir, {
    prepare: true,
    session: o.threads ? { intraOpNumThreads: o.threads } : undefined,
  });
  const rows: PipelineBenchRow[] = [];
  const cases: Array<{ mode: GuidanceMode; refinement: 'none' | 'default' }> = [
    { mode: 'none', refinement: 'none' },
    { mode: 'max', refinement: 'none' },
    { mode: 'tv', refinement: 'none' },
    { mode: 'tv_bind', refinement: 'none' },
    { mode: 'max', refinement: 'default' },
    { mode: 'tv', refinement: 'default' },
    { mode: 'tv_bind', refinement: 'default' },
  ];
  try {
    for (const c of cases) {
      const times: number[] = [];
      let phases: Phases | null = null;
      let refinementIterations = 0;
      let gradientPasses = 0;
      for (let r = 0; r <= repeats; r++) {
        const opts: GenerateOptions = {
          prompt,
          mode: c.mode,
          steps,
          seed: 1000 + r,
          ...(c.refinement === 'none' ? { thresholds: {} } : {}),
        };
        const t0 = performance.now();
        const res = await pipe.generate(opts);
        const ms = performance.now() - t0;
        if (r === 0) continue; // warm-up
        times.push(ms);
        const img = res.images[0];
        const sum = (k: keyof Phases) => img.steps.reduce((a, s) => a + ((s.ms as unknown as Record<string, number>)[k] ?? 0), 0);
        phases = {
          textEncoder: res.timings.textEncoder,
          unetForward: sum('unetForward'),
          vjp: sum('vjp'),
          loss: sum('loss'),
          cfg: sum('cfg'),
          scheduler: sum('scheduler'),
          vae: res.timings.vae,
          total: ms,
        };
        refinementIterations = img.steps.reduce((a, s) => a + s.refinementIterations, 0);
        gradientPasses = img.steps.filter((s) => s.loss !== null).length;
      }
      const secondsPerImage = median(times) / 1000;
      rows.push({ ...c, secondsPerImage, ratioToPlain: 0, refinementIterations, gradientPasses, phasesMs: phases! });
      log(`${c.mode.padEnd(8)} refinement ${c.refinement.padEnd(7)} ${secondsPerImage.toFixed(2)} s/image`);
    }
  } finally {
    await pipe.release();
  }
  const plain = rows.find((r) => r.mode === 'none')!.secondsPerImage;
  for (const r of rows) r.ratioToPlain = r.secondsPerImage / plain;
  const meta = {
    date: new Date().toISOString(),
    model: modelDir,
    steps,
    repeats,
    prompt,
    cpus: os.cpus().length,
    cpu: os.cpus()[0]?.model,
    node: process.version,
    threads: o.threads ?? os.cpus().length,
  };
  const out = o.out ?? path.resolve(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'pipeline.json'), `${JSON.stringify({ meta, rows }, null, 2)}\n`);
  const md = [
    `| mode | refinement | s / image | × plain SD | refinement iters | gradient passes | UNet fwd (grad pass) ms | VJP ms | loss ms | CFG UNet ms | scheduler ms | VAE ms |`,
    `|---|---|---|---|---|---|---|---|---|---|---|---|`,
    ...rows.map(
      (r) =>
        `| ${r.mode} | ${r.mode === 'none' ? '–' : r.refinement} | ${r.secondsPerImage.toFixed(2)} | ${r.ratioToPlain.toFixed(2)} | ${r.refinementIterations} | ${r.gradientPasses} | ${r.phasesMs.unetForward.toFixed(0)} | ${r.phasesMs.vjp.toFixed(0)} | ${r.phasesMs.loss.toFixed(1)} | ${r.phasesMs.cfg.toFixed(0)} | ${r.phasesMs.scheduler.toFixed(1)} | ${r.phasesMs.vae.toFixed(0)} |`,
    ),
  ].join('\n');
  fs.writeFileSync(path.join(out, 'pipeline.md'), `${md}\n`);
  log(md);
  return { rows, meta };
}

if (require.main === module) {
  const args = process.argv.slice(2);
  const get = (k: string) => {
    const i = args.indexOf(k);
    return i >= 0 ? args[i + 1] : undefined;
  };
  runPipelineBench({
    modelDir: get('--model'),
    steps: get('--steps') ? Number(get('--steps')) : undefined,
    repeats: get('--repeats') ? Number(get('--repeats')) : undefined,
    threads: get('--threads') ? Number(get('--threads')) : undefined,
  }).catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
