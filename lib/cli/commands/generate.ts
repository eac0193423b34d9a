/**
 * `divbind-native generate "<prompt>"`: one or more images with D&B / A&E guidance, written as PNG + JSON log.
 * The generate flags come from the option definitions (lib/options); everything that can be refused is refused
 * before the generation starts: flag values and the output folder before the model loads, the plan (token
 * indices, size, steps) and existing files right after. Existing files are never replaced without --overwrite.
 */
import { Command } from 'commander';
import { EXECUTION_PROVIDER, THREADS, addGenerateFlags, checkGenerateOptions, generateOptionsFromFlags, type GenerationPlan } from '../../options/index';
import {
  allFiles,
  checkBaseName,
  checkNotWritten,
  defaultBaseName,
  outputFiles,
  prepareOutputFolder,
  writeOutput,
  type OutputFiles,
} from '../../options/output';
import { DivBindPipeline, type GenerateResult, type TokenSelection } from '../../pipeline/pipeline';
import { defaultModelDir } from '../../pipeline/defaults';
import { handleCliError } from '../errors';
import { createProgress } from '../progress';

/** The flags that are not generate options (commander's parsed values; generate options arrive as strings). */
export interface GenerateCliOptions {
  model?: string;
  out: string;
  name?: string;
  overwrite: boolean;
  prepare: boolean;
  threads?: string;
  executionProvider?: string;
  json: boolean;
  quiet: boolean;
  [generateFlag: string]: unknown;
}

/** One line per guided object: "dog@3 + purple@2 (word)", so users always see what was chosen. */
export function describeSelection(sel: TokenSelection): string {
  const objects = sel.choices.filter((c) => c.role === 'object');
  const parts = objects.map((o) => {
    const attr = sel.choices.find((c) => c.role === 'attribute' && c.slot === o.slot);
    return `${o.word}@${o.index}${attr ? ` + ${attr.word}@${attr.index}` : ''} (${o.source})`;
  });
  return `guided tokens: ${parts.join(', ')}`;
}

export function makeGenerateCommand(): Command {
  const command = new Command('generate')
    .description('generate images with Divide & Bind (tv, tv_bind), Attend-and-Excite (max) or plain SD (none)')
    .option('-m, --model <dir>', 'Stable Diffusion ONNX folder (default: the bundled model)');
  return addGenerateFlags(command)
    .option('-o, --out <dir>', 'output folder (created if missing)', 'out')
    .option('--name <base>', 'output file base name, no folders (default: <prompt>-<mode>-<seed>)')
    .option('--overwrite', 'replace existing files of the same name (default: refuse, exit 3)', false)
    .option('--prepare', 'prepare the UNet first if it is not prepared yet', false)
    .option('--threads <n>', 'onnxruntime intra-op threads (default: all cores)')
    .option(EXECUTION_PROVIDER.flags, EXECUTION_PROVIDER.doc)
    .option('--json', 'print the result summary as JSON', false)
    .option('-q, --quiet', 'no progress output', false)
    .action(async (prompt: string, o: GenerateCliOptions) => {
      try {
        await runGenerate(prompt, o);
      } catch (err) {
        handleCliError(err);
      }
    });
}

export async function runGenerate(prompt: string, o: GenerateCliOptions): Promise<void> {
  // 1. What needs no model: flag values, the file name, the output folder.
  const options = generateOptionsFromFlags(prompt, o);
  checkGenerateOptions(options);
  const threads = o.threads === undefined ? undefined : THREADS.parse!(o.threads, '--threads');
  const executionProvider = o.executionProvider === undefined ? undefined : EXECUTION_PROVIDER.kind.parse!(o.executionProvider, '--execution-provider');
  const name = o.name === undefined ? undefined : checkBaseName(o.name);
  const outDir = prepareOutputFolder(o.out);
  const progress = createProgress(o.quiet || o.json);
  // 2. The model and the plan: defaults (the seed too), checks against the model, files not yet written.
  const modelDir = o.model ?? defaultModelDir();
  progress.note(`model ${modelDir}`);
  const pipe = await DivBindPipeline.load(modelDir, {
    // The bundled default model is prepared on first use; a folder you pass needs `prepare` or --prepare.
    prepare: o.prepare || o.model === undefined,
    session: threads !== undefined ? { intraOpNumThreads: threads } : undefined,
    executionProvider,
    onProgress: (m) => progress.note(m),
  });
  try {
    const plan = pipe.plan({ ...options, onStep: (e) => progress.step(e) });
    if (plan.tokens) progress.note(describeSelection(plan.tokens));
    const files = outputFiles(outDir, name ?? defaultBaseName(plan), plan);
    checkNotWritten(files, o.overwrite);
    // 3. Generate, then write.
    const result = await pipe.generate(plan);
    progress.done();
    writeResult(files, plan, result, o.overwrite);
    const written = allFiles(files);
    process.stdout.write(
      o.json
        ? `${JSON.stringify({ files: written, seed: plan.seed === null ? null : String(plan.seed), timings: result.timings, tokens: result.tokens }, null, 2)}\n`
        : written.map((f) => `${f}\n`).join(''),
    );
  } finally {
    await pipe.release();
  }
}

function writeResult(files: OutputFiles, plan: GenerationPlan, result: GenerateResult, overwrite: boolean): void {
  result.images.forEach((img, n) => {
    writeOutput(files.images[n].png, img.png, overwrite);
    for (const grid of img.attentionMaps) {
      const target = files.images[n].attention.find((a) => a.index === grid.index);
      if (target) writeOutput(target.file, grid.png, overwrite);
    }
  });
  const log = {
    parameters: result.parameters,
    timings: result.timings,
    tokens: result.tokens,
    images: result.images.map((img) => ({
      index: img.index,
      steps: img.steps.map((s) => ({
        index: s.index,
        timestep: s.timestep,
        loss: s.loss,
        indicator: s.indicator,
        refinementIterations: s.refinementIterations,
        updates: s.updates,
        tokens: s.tokens,
        ms: s.ms,
      })),
    })),
    files: allFiles(files).filter((f) => f !== files.log),
    seed: plan.seed === null ? null : String(plan.seed),
  };
  writeOutput(files.log, `${JSON.stringify(log, null, 2)}\n`, overwrite);
}
