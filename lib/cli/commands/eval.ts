/** `divbind-native eval`: the Shapes benchmark (lib/eval/benchmark.ts) — methods side by side on fixed seeds. */
import { Command } from 'commander';
import { defaultModelDir } from '../../pipeline/defaults';
import { DivBindPipeline } from '../../pipeline/pipeline';
import type { GuidanceMode } from '../../pipeline/guidance';
import { METHODS, runBenchmark } from '../../eval/benchmark';
import { PROMPT_SETS } from '../../eval/prompts';
import { GENERATE_OPTIONS, THREADS } from '../../options/index';
import { integer } from '../../options/kinds';
import { handleCliError } from '../errors';

export interface EvalCliOptions {
  model?: string;
  out: string;
  quick: boolean;
  methods?: string;
  sets?: string;
  seeds?: string;
  steps?: string;
  prompts?: string;
  prepare: boolean;
  threads?: string;
  quiet: boolean;
}

function list(value: string): string[] {
  return value.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
}

/** Strict integers ("0x3", "", "1e3" refused), as the generate flags parse them. */
function int(value: string, flag: string, min: number): number {
  return integer(min, Number.MAX_SAFE_INTEGER).parse!(value, flag);
}

export async function runEvalCommand(o: EvalCliOptions): Promise<void> {
  const threads = o.threads !== undefined ? THREADS.parse!(o.threads, '--threads') : undefined;
  const modelDir = o.model ?? defaultModelDir();
  const log = o.quiet ? () => {} : (m: string) => process.stderr.write(`${m}\n`);
  const pipeline = await DivBindPipeline.load(modelDir, {
    prepare: o.prepare,
    session: threads !== undefined ? { intraOpNumThreads: threads } : undefined,
    onProgress: log,
  });
  try {
    const report = await runBenchmark({
      pipeline,
      modelDir,
      outDir: o.out,
      quick: o.quick,
      methods: o.methods !== undefined ? (list(o.methods) as GuidanceMode[]) : undefined,
      sets: o.sets !== undefined ? list(o.sets) : undefined,
      seeds: o.seeds !== undefined ? list(o.seeds).map((s) => int(s, '--seeds', 0)) : undefined,
      steps: o.steps !== undefined ? GENERATE_OPTIONS.steps.kind.parse!(o.steps, '--steps') : undefined,
      promptsPerSet: o.prompts !== undefined ? int(o.prompts, '--prompts', 1) : undefined,
      onProgress: log,
    });
    process.stdout.write(`${report.markdown}\n`);
    log(`wrote ${report.files.length} files to ${o.out}`);
  } finally {
    await pipeline.release();
  }
}

export function makeEvalCommand(): Command {
  return new Command('eval')
    .description('Shapes benchmark: plain SD, A&E and D&B side by side on fixed prompts and seeds; Markdown table + image grids')
    .option('--model <dir>', 'model folder (default: the bundled shapes-sd model)')
    .option('-o, --out <dir>', 'output folder', 'eval-out')
    .option('--quick', 'quick variant: 1 prompt per set, 2 seeds, 20 steps, capped refinement (< 5 minutes on 2 CPU cores)', false)
    .option('--methods <list>', `comma-separated guidance modes (default ${METHODS.join(',')})`)
    .option('--sets <list>', `prompt sets (default ${PROMPT_SETS.map((s) => s.name).join(',')})`)
    .option('--seeds <list>', 'comma-separated seeds (default 0-7; quick 0,1)')
    .option('--steps <n>', 'denoising steps (default 50; quick 20)')
    .option('--prompts <n>', 'prompts per set (default all; quick 1)')
    .option('--prepare', 'prepare the UNet first if it is not prepared yet', false)
    .option('--threads <n>', 'onnxruntime intra-op threads (default: all cores)')
    .option('-q, --quiet', 'no progress on stderr', false)
    .action(async (o: EvalCliOptions) => {
      try {
        await runEvalCommand(o);
      } catch (err) {
        handleCliError(err);
      }
    });
}
