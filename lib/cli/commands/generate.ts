/** `divbind-native generate "<prompt>"`: one or more images with D&B / A&E guidance, written as PNG + JSON log. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import { DivBindPipeline, type GenerateOptions, type StepEvent, type SelectionSpec, type TokenSelection } from '../../pipeline/pipeline';
import { defaultModelDir } from '../../pipeline/defaults';
import { selectTokens } from '../../pipeline/token-selection';
import type { GuidanceMode } from '../../pipeline/guidance';
import { handleCliError } from '../errors';
import { createProgress } from '../progress';

function list(value: string): string[] {
  return value.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
}

function intList(value: string, field: string): number[] {
  return list(value).map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n)) throw new RangeError(`${field}: "${s}" is not an integer (expected a comma-separated list like 2,5)`);
    return n;
  });
}

function slug(prompt: string): string {
  return prompt.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 60) || 'image';
}

export interface GenerateCliOptions {
  model?: string;
  mode: GuidanceMode;
  objects?: string;
  attributes?: string;
  tokenIndices?: string;
  attributeIndices?: string;
  negative: string;
  guidance: string;
  steps: string;
  height?: string;
  width?: string;
  seed?: string;
  latents?: string;
  images: string;
  scheduler?: 'pndm' | 'ddim' | 'euler';
  lossBackend?: 'native' | 'js' | 'cuda';
  maxIterToAlter: string;
  scaleFactor: string;
  refinement: string;
  thresholds?: string;
  attnRes?: string;
  attrRes?: string;
  tvVertical?: 'official' | 'neighbor';
  tokenSlice?: 'all-but-last' | 'until-eot';
  attentionMaps?: string;
  out: string;
  name?: string;
  prepare: boolean;
  threads?: string;
  json: boolean;
  quiet: boolean;
}

function num(value: string, field: string): number {
  const n = Number(value);
  if (!Number.isFinite(n)) throw new RangeError(`--${field}: "${value}" is not a number`);
  return n;
}

/** Maps CLI flags to the API's token spec: explicit indices, or words, or (neither) the automatic choice. */
export function tokenSpecFromFlags(o: Pick<GenerateCliOptions, 'objects' | 'attributes' | 'tokenIndices' | 'attributeIndices'>): SelectionSpec {
  if (o.tokenIndices !== undefined) {
    if (o.objects !== undefined) throw new RangeError('use either --token-indices or --objects, not both');
    const objects = intList(o.tokenIndices, '--token-indices');
    const attributes = o.attributeIndices !== undefined ? intList(o.attributeIndices, '--attribute-indices').map((v) => (v > 0 ? v : null)) : undefined;
    return { objects, attributes };
  }
  if (o.attributeIndices !== undefined) throw new RangeError('--attribute-indices needs --token-indices');
  if (o.objects !== undefined) {
    const objects = list(o.objects);
    const attributes = o.attributes !== undefined ? list(o.attributes).map((w) => (w === '-' || w === '' ? null : w)) : undefined;
    return { objects, attributes };
  }
  if (o.attributes !== undefined) throw new RangeError('--attributes needs --objects (aligned lists, "-" for none)');
  return {};
}

/** One line per guided object: "dog@3 (attribute purple@2)", so users always see what was chosen. */
export function describeSelection(sel: TokenSelection): string {
  const objects = sel.choices.filter((c) => c.role === 'object');
  const parts = objects.map((o) => {
    const attr = sel.choices.find((c) => c.role === 'attribute' && c.slot === o.slot);
    return `${o.word}@${o.index}${attr ? ` + ${attr.word}@${attr.index}` : ''} (${o.source})`;
  });
  return `guided tokens: ${parts.join(', ')}`;
}

export function makeGenerateCommand(): Command {
  return new Command('generate')
    .description('generate images with Divide & Bind (tv, tv_bind), Attend-and-Excite (max) or plain SD (none)')
    .argument('<prompt>', 'text prompt')
    .option('-m, --model <dir>', 'Stable Diffusion ONNX folder (default: the bundled model)')
    .addOption(new Option('--mode <mode>', 'guidance mode').choices(['none', 'max', 'tv', 'tv_bind', 'tv_max']).default('tv_bind'))
    .option('--objects <words>', 'object words to guide, comma-separated (e.g. dog,bench; dog#2 = 2nd "dog")')
    .option('--attributes <words>', 'attribute words aligned with --objects ("-" = none), e.g. purple,green')
    .option('--token-indices <list>', 'explicit object token indices (SOT = 0), e.g. 2,5; see `divbind-native tokens`')
    .option('--attribute-indices <list>', 'explicit attribute token indices aligned with --token-indices (0 = none)')
    .option('-n, --negative <prompt>', 'negative prompt', '')
    .option('-g, --guidance <scale>', 'classifier-free guidance scale', '7.5')
    .option('-s, --steps <n>', 'inference steps (PNDM runs n+1 timesteps)', '50')
    .option('--height <px>', 'image height (must match the prepared UNet)')
    .option('--width <px>', 'image width (must match the prepared UNet)')
    .option('--seed <n>', 'seed (torch.randn on the CPU generator, bit-exact with PyTorch)')
    .option('--latents <file.npy>', 'initial latents [n,4,h,w] (overrides --seed)')
    .option('--images <n>', 'images for this prompt', '1')
    .addOption(new Option('--scheduler <name>', 'scheduler (default: the model\'s)').choices(['pndm', 'ddim', 'euler']))
    .addOption(new Option('--loss-backend <name>', 'loss backend (default: native when built, else js)').choices(['native', 'js', 'cuda']))
    .option('--max-iter-to-alter <n>', 'latent updates for loop indices below n', '25')
    .option('--scale-factor <x>', 'step size scale α = x·√linspace(1, 0.5)', '20')
    .addOption(new Option('--refinement <preset>', 'refinement caps').choices(['official-latest', 'paper']).default('official-latest'))
    .option('--thresholds <json>', 'refinement thresholds, e.g. \'{"0":0.05,"10":0.2,"20":0.3}\'')
    .option('--attn-res <r>', 'object attention resolution (default: the model\'s, or height/32)')
    .option('--attr-res <list>', 'attribute source resolutions, e.g. 64,32')
    .addOption(new Option('--tv-vertical <mode>', 'vertical TV term').choices(['official', 'neighbor']))
    .addOption(new Option('--token-slice <mode>', 'token slice before the softmax').choices(['all-but-last', 'until-eot']))
    .option('--attention-maps <steps>', 'write attention heat-map grids at these loop indices, e.g. 0,10,20')
    .option('-o, --out <dir>', 'output folder', 'out')
    .option('--name <base>', 'output file base name (default: from the prompt)')
    .option('--prepare', 'prepare the UNet first if it is not prepared yet', false)
    .option('--threads <n>', 'onnxruntime intra-op threads (default: all cores)')
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
  const modelDir = o.model ?? defaultModelDir();
  // The bundled default model is prepared on first use; a folder you pass needs `prepare` or --prepare.
  const prepare = o.prepare || o.model === undefined;
  const progress = createProgress(o.quiet || o.json);
  const threads = o.threads !== undefined ? num(o.threads, 'threads') : undefined;
  const tokens = tokenSpecFromFlags(o);
  let thresholds: Record<number, number> | undefined;
  if (o.thresholds !== undefined) {
    try {
      thresholds = JSON.parse(o.thresholds) as Record<number, number>;
    } catch {
      throw new RangeError(`--thresholds: not valid JSON: ${o.thresholds} (expected e.g. '{"0":0.05,"10":0.2}')`);
    }
  }
  progress.note(`model ${modelDir}`);
  const pipe = await DivBindPipeline.load(modelDir, {
    prepare,
    session: threads !== undefined ? { intraOpNumThreads: threads } : undefined,
    onProgress: (m) => progress.note(m),
  });
  try {
    if (o.mode !== 'none') progress.note(describeSelection(selectTokens(pipe.tokenizer, prompt, tokens)));
    const options: GenerateOptions = {
      prompt,
      negativePrompt: o.negative,
      mode: o.mode,
      tokens: o.mode === 'none' ? undefined : tokens,
      guidanceScale: num(o.guidance, 'guidance'),
      steps: num(o.steps, 'steps'),
      height: o.height !== undefined ? num(o.height, 'height') : undefined,
      width: o.width !== undefined ? num(o.width, 'width') : undefined,
      seed: o.seed !== undefined ? BigInt(o.seed) : undefined,
      latents: o.latents,
      imagesPerPrompt: num(o.images, 'images'),
      scheduler: o.scheduler,
      lossBackend: o.lossBackend,
      maxIterToAlter: num(o.maxIterToAlter, 'max-iter-to-alter'),
      scaleFactor: num(o.scaleFactor, 'scale-factor'),
      refinement: o.refinement as GenerateOptions['refinement'],
      thresholds,
      loss: {
        ...(o.attnRes !== undefined ? { attentionResolution: num(o.attnRes, 'attn-res') } : {}),
        ...(o.attrRes !== undefined ? { attributeResolutions: intList(o.attrRes, '--attr-res') } : {}),
        ...(o.tvVertical !== undefined ? { tvVertical: o.tvVertical } : {}),
        ...(o.tokenSlice !== undefined ? { tokenSlice: o.tokenSlice } : {}),
      },
      attentionMapsAt: o.attentionMaps !== undefined ? intList(o.attentionMaps, '--attention-maps') : undefined,
      onStep: (e: StepEvent & { image: number }) => progress.step(e),
    };
    if (options.seed === undefined && options.latents === undefined) {
      options.seed = BigInt(Math.floor(Math.random() * 2 ** 31));
    }
    const result = await pipe.generate(options);
    progress.done();
    fs.mkdirSync(o.out, { recursive: true });
    const base = o.name ?? `${slug(prompt)}-${o.mode}-${String(options.seed ?? 'latents')}`;
    const written: string[] = [];
    for (const img of result.images) {
      const suffix = result.images.length > 1 ? `-${img.index}` : '';
      const file = path.join(o.out, `${base}${suffix}.png`);
      fs.writeFileSync(file, img.png);
      written.push(file);
      for (const grid of img.attentionMaps) {
        const g = path.join(o.out, `${base}${suffix}-attention-step${grid.index}.png`);
        fs.writeFileSync(g, grid.png);
        written.push(g);
      }
    }
    const log = {
      parameters: result.parameters,
      timings: result.timings,
      tokens: result.tokens,
      images: result.images.map((img) => ({
        index: img.index,
        steps: img.steps.map((s) => ({
          index: s.index, timestep: s.timestep, loss: s.loss, indicator: s.indicator, refinementIterations: s.refinementIterations,
          updates: s.updates, tokens: s.tokens, ms: s.ms,
        })),
      })),
      files: written,
    };
    const logFile = path.join(o.out, `${base}.json`);
    fs.writeFileSync(logFile, `${JSON.stringify(log, null, 2)}\n`);
    written.push(logFile);
    if (o.json) {
      process.stdout.write(`${JSON.stringify({ files: written, timings: result.timings, tokens: result.tokens }, null, 2)}\n`);
    } else {
      for (const f of written) process.stdout.write(`${f}\n`);
    }
  } finally {
    await pipe.release();
  }
}
