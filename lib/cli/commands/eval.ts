/** `divbind-native eval`: the Shapes benchmark (lib/eval/benchmark.ts) — methods side by side on a prompt file. */
import { Command } from 'commander';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { DivbindError } from '../../errors';
import { defaultModelDir } from '../../pipeline/defaults';
import type { GuidanceMode } from '../../pipeline/guidance';
import { ALL_METHODS, DEFAULT_METHODS, QUICK, runEval, type GenerateOverrides } from '../../eval/benchmark';
import { integer } from '../../options/kinds';
import { handleCliError } from '../errors';

export interface EvalCliOptions {
  prompts: string;
  seeds: string;
  methods: string;
  out: string;
  model?: string;
  steps?: string;
  workers?: string;
  threads?: string;
  quick: boolean;
  prepare: boolean;
  generateOptions?: string;
  quiet: boolean;
}

function bad(flag: string, message: string): DivbindError {
  return new DivbindError('BAD_INPUT', `${flag}: ${message}`, { field: flag });
}

/** Strict integers ("0x3", "", "1e3" refused), parsed as the generate flags parse them. */
function int(value: string, flag: string, min: number): number {
  return integer(min, Number.MAX_SAFE_INTEGER).parse!(value, flag);
}

/** "4" → seeds 0..3; "0,5,9" or "100-103" (ranges, inclusive) → those seeds. */
export function parseSeeds(value: string): number[] {
  const v = value.trim();
  if (/^\d+$/.test(v)) return Array.from({ length: int(v, '--seeds', 1) }, (_, i) => i);
  const seeds = v
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .flatMap((item) => {
      const range = /^(\d+)\s*-\s*(\d+)$/.exec(item);
      if (!range) return [int(item, '--seeds', 0)];
      const [a, b] = [int(range[1], '--seeds', 0), int(range[2], '--seeds', 0)];
      if (b < a) throw bad('--seeds', `range "${item}" runs backwards`);
      return Array.from({ length: b - a + 1 }, (_, i) => a + i);
    });
  if (seeds.length === 0) throw bad('--seeds', 'no seeds given (e.g. 4, or 0,1,2,3, or 100-103)');
  return seeds;
}

export function parseMethods(value: string): GuidanceMode[] {
  const methods = value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  for (const m of methods) if (!ALL_METHODS.includes(m as GuidanceMode)) throw bad('--methods', `unknown method "${m}" (expected ${ALL_METHODS.join(', ')})`);
  if (methods.length === 0) throw bad('--methods', 'no methods given');
  return methods as GuidanceMode[];
}

/** --generate-options: inline JSON, or a JSON file. */
export function parseOverrides(value: string): GenerateOverrides {
  const text = value.trim().startsWith('{')
    ? value
    : (() => {
        try {
          return fs.readFileSync(value, 'utf8');
        } catch (err) {
          throw bad('--generate-options', `neither JSON nor a readable file: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
        }
      })();
  try {
    return JSON.parse(text) as GenerateOverrides;
  } catch (err) {
    throw bad('--generate-options', `invalid JSON: ${(err as Error).message}`);
  }
}

export async function runEvalCommand(o: EvalCliOptions): Promise<void> {
  const log = o.quiet ? () => {} : (m: string) => process.stderr.write(`${m}\n`);
  const report = await runEval({
    prompts: o.prompts,
    seeds: parseSeeds(o.seeds),
    methods: parseMethods(o.methods),
    outDir: o.out,
    modelDir: o.model ?? defaultModelDir(),
    // The bundled model is prepared on first use, as in `generate`.
    prepare: o.prepare || o.model === undefined,
    steps: o.steps !== undefined ? int(o.steps, '--steps', 1) : undefined,
    workers: o.workers !== undefined ? int(o.workers, '--workers', 1) : undefined,
    threads: o.threads !== undefined ? int(o.threads, '--threads', 1) : undefined,
    quick: o.quick,
    generate: o.generateOptions !== undefined ? parseOverrides(o.generateOptions) : undefined,
    onProgress: log,
  });
  process.stdout.write(`${report.markdown}\n`);
  log(`wrote results.json, records.json, results.md and ${report.entries.length} grids to ${o.out}`);
}

export function makeEvalCommand(): Command {
  return new Command('eval')
    .description('Shapes benchmark: plain SD, A&E and D&B on the prompts of a file; detector-scored success rates with bootstrap intervals, image grids')
    .requiredOption(
      '--prompts <file>',
      'prompt file: one prompt per line, optionally category<TAB>prompt (single, two, two_colour, three); # starts a comment; a prompt on k lines runs on k × the seeds',
    )
    .option('--seeds <n|list>', 'N = seeds 0..N-1, or a list such as 0,3,7 or 100-103', '4')
    .option('--methods <list>', `comma-separated, of ${ALL_METHODS.join(', ')}`, DEFAULT_METHODS.join(','))
    .option('-o, --out <dir>', 'output folder', 'eval-out')
    .option('--model <dir>', 'model folder (default: the bundled shapes-sd model)')
    .option('--steps <n>', `denoising steps (default 50; quick ${QUICK.steps})`)
    .option('--workers <k>', `child processes sharing the images, each with its own model copy (default: CPU cores, here ${os.cpus().length})`)
    .option('--threads <n>', 'onnxruntime threads per worker (default: cores / workers)')
    .option(
      '--quick',
      `first prompt per category, ${QUICK.seeds} seeds, ${QUICK.steps} steps, refinement capped at ${QUICK.refinement.initStep}/${QUICK.refinement.other}`,
      false,
    )
    .option('--prepare', 'prepare the UNet first if it is not prepared yet', false)
    .option('--generate-options <json|file>', 'extra generate() options for every image, e.g. {"scaleFactor":10,"perMethod":{"max":{"thresholds":{"0":0.05}}}}')
    .option('-q, --quiet', 'no progress on stderr', false)
    .action(async (o: EvalCliOptions) => {
      try {
        await runEvalCommand(o);
      } catch (err) {
        handleCliError(err);
      }
    });
}
