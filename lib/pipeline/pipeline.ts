/**
 * DivBindPipeline: a Stable Diffusion ONNX folder on onnxruntime-node with Divide & Bind / Attend-and-Excite
 * latent guidance. Load once, then call generate() — concurrently if you like: sessions are shared (ORT runs
 * are thread-safe), every generate() gets its own scheduler state, noise and buffers.
 *
 *   const pipe = await DivBindPipeline.load('models/shapes-sd');
 *   const { images } = await pipe.generate({ prompt: 'a red circle and a blue square', mode: 'tv_bind', seed: 1 });
 */
import { DivbindError, isDivbindError } from '../errors';
import type { LossBackend } from '../loss/types';
import { availableBackends } from '../loss/index';
import { checkComponentsAgree, checkUnetFamily, openScheduler, openTokenizer } from '../model/components';
import { sdxlTimeIds } from '../model/family';
import { readModelFolder, type ModelFolder } from '../model/folder';
import type { PreparedInfo } from '../model/prepared';
import { defaultImageSize, sizeRule, type SizeRule } from '../model/size';
import {
  buildScheduler,
  checkLossAgainstLayers,
  describeGenerationPlan,
  isGenerationPlan,
  readModelDefaults,
  resolveGenerationPlan,
  type GenerateLossOptions,
  type GenerateOptions,
  type GenerationPlan,
  type PlanContext,
} from '../options/index';
import type { ClipTokenizer } from '../tokenizer/clip';
import type { Scheduler } from '../schedulers/index';
import { stepSizes, type GuidanceMode, type RefinementCaps, type RefinementPreset } from './guidance';
import { defaultModelDir } from './defaults';
import { randnTorchCpu } from './noise';
import { withExecutionProvider, type SessionOptions } from './ort';
import { firstNonFinite, sampleLatents, type GuidanceSettings, type SamplerHooks, type StepEvent } from './sampler';
import { TextConditioner, type TextConditioning } from './text-encoder';
import type { SelectionSpec, TokenSelection } from './token-selection';
import { CfgUnet, GuidedUnetsBySize, type ExtraUnetInput, type OrtGuidedUnet, type UnetInputs } from './unet';
import { VaeDecoder } from './vae';
import { attentionGrid, encodePng, imageFromDecoderOutput } from './image';
import type { ort } from './ort';

export type { GuidanceMode, RefinementPreset, RefinementCaps, StepEvent, SelectionSpec, TokenSelection };
export type { GenerateOptions, GenerateLossOptions, GenerationPlan };

export interface LoadOptions {
  /** onnxruntime session options for every model. */
  session?: SessionOptions;
  /**
   * onnxruntime execution provider for every model: 'cpu' (the default), or one this onnxruntime-node has installed
   * ('cuda', 'tensorrt': installed on request, GPU_PROVIDERS_INSTALL in lib/pipeline/ort.ts says how). A provider that
   * is unknown, not installed or cannot start is a DivbindError BAD_INPUT naming it and the fix, before any model loads.
   */
  executionProvider?: string;
  /**
   * Prepare the UNet (instrumentation + VJP graph) when it is not prepared yet, instead of failing.
   * Default: true for the bundled default model (a few seconds, once), false for a folder you pass.
   */
  prepare?: boolean;
  /** Where prepared graphs go when the model folder is read-only. */
  cacheDir?: string;
  /** Progress of loading / preparing. */
  onProgress?: (message: string) => void;
}

export interface GeneratedImage {
  index: number;
  width: number;
  height: number;
  /** RGB, row-major, 3 bytes per pixel. */
  rgb: Uint8Array;
  /** PNG with the generation parameters in tEXt chunks. */
  png: Buffer;
  /** Final latents [4, h, w]. */
  latents: Float32Array;
  steps: StepEvent[];
  /** Heat-map grids per requested loop index. */
  attentionMaps: Array<{ index: number; png: Buffer }>;
}

export interface GenerateResult {
  images: GeneratedImage[];
  tokens: TokenSelection | null;
  /** Everything that determines the result, as used (defaults resolved). */
  parameters: Record<string, unknown>;
  timings: { textEncoder: number; denoise: number; vae: number; total: number };
}

interface TextEmbeddings {
  cond: TextConditioning;
  uncond: TextConditioning;
}

/** Loads the ONNX components, checked one by one, against each other and the family; nothing stays open on failure. */
async function loadComponents(folder: ModelFolder, tokenizer: ClipTokenizer, session: SessionOptions | undefined, progress: (m: string) => void) {
  const opened: Array<{ release(): Promise<void> }> = [];
  try {
    progress(folder.family.dualTextEncoder ? 'loading text encoders' : 'loading text encoder');
    const textEncoder = await TextConditioner.load(folder, tokenizer, session);
    opened.push(textEncoder);
    progress('loading UNet');
    const unet = await CfgUnet.load(folder.unetFile, session);
    opened.push(unet.session);
    progress('loading VAE decoder');
    const vae = await VaeDecoder.load(folder.vaeDecoderFile, session);
    opened.push(vae);
    checkUnetFamily(folder.family, unet.inputs);
    checkComponentsAgree(folder, textEncoder.ios, unet.inputs, vae.io);
    return { textEncoder, unet, vae };
  } catch (err) {
    await Promise.all(opened.map((o) => o.release()));
    throw err;
  }
}

export class DivBindPipeline {
  private planContext: PlanContext | undefined;

  private constructor(
    readonly folder: ModelFolder,
    readonly tokenizer: ClipTokenizer,
    private readonly textEncoder: TextConditioner,
    private readonly unet: { session: ort.InferenceSession; inputs: UnetInputs },
    /** The guided UNet per image size (prepared sets, opened on first use). */
    private readonly guidedBySize: GuidedUnetsBySize,
    /** The guided UNet at the default size, when that size is prepared. */
    private readonly guided: OrtGuidedUnet | null,
    /** The prepared set of the default size, or null. */
    readonly prepared: PreparedInfo | null,
    private readonly vae: VaeDecoder,
    private readonly scheduler: Scheduler,
    /** Which image sizes the UNet runs, and its default (lib/model/size.ts). */
    private readonly sizes: SizeRule,
  ) {}

  /**
   * Loads a Stable Diffusion ONNX folder (default: the bundled model). Every component is checked here (a damaged,
   * missing or misplaced file is a DivbindError naming it). Guided modes need the UNet prepared for the image size
   * (`divbind-native prepare`); the default size's set is opened now, other sizes on first use.
   */
  static async load(modelDir?: string, options: LoadOptions = {}): Promise<DivBindPipeline> {
    const progress = options.onProgress ?? (() => {});
    const session = await withExecutionProvider(options.session, options.executionProvider);
    const folder = readModelFolder(modelDir ?? defaultModelDir());
    const tokenizer = openTokenizer(folder);
    const scheduler = openScheduler(folder);
    const { textEncoder, unet, vae } = await loadComponents(folder, tokenizer, session, progress);
    const sizes = sizeRule(unet.inputs.sample.shape, folder.vaeScaleFactor, undefined, folder.family.defaultLatentSide);
    const defaultSize = defaultImageSize(sizes);
    const guidedBySize = new GuidedUnetsBySize(folder, {
      prepare: options.prepare ?? modelDir === undefined,
      cacheDir: options.cacheDir,
      defaultSize,
      session,
      onProgress: progress,
    });
    let first: { unet: OrtGuidedUnet; prepared: PreparedInfo } | null = null;
    try {
      progress('loading prepared UNet graphs');
      first = await guidedBySize.get({ ...defaultSize, batch: 1 });
    } catch (err) {
      // Plain SD still works; guided modes report this error when asked for.
      if (!isDivbindError(err, 'MODEL_NOT_PREPARED') && !isDivbindError(err, 'MODEL_UNSUPPORTED')) {
        await Promise.all([textEncoder.release(), unet.session.release(), vae.release()]);
        throw err;
      }
    }
    const pipe = new DivBindPipeline(folder, tokenizer, textEncoder, unet, guidedBySize, first?.unet ?? null, first?.prepared ?? null, vae, scheduler, sizes);
    try {
      void pipe.context; // the model's declared defaults are checked now, not at the first generate()
    } catch (err) {
      await pipe.release();
      throw err;
    }
    return pipe;
  }

  /** Whether guided modes are available at the default image size (the UNet is prepared for it). */
  get canGuide(): boolean {
    return this.guided !== null;
  }

  /** What plans need to know about this model; built once. */
  private get context(): PlanContext {
    this.planContext ??= this.makeContext();
    return this.planContext;
  }

  private makeContext(): PlanContext {
    const c = this.unet.inputs.sample.shape[1];
    const prepared = this.prepared;
    return {
      modelDir: this.folder.dir,
      tokenizer: this.tokenizer,
      latentChannels: typeof c === 'number' && c > 0 ? c : 4,
      sizes: this.sizes,
      schedulerConfig: this.folder.schedulerConfig,
      defaultScheduler: this.scheduler.name,
      declared: this.folder.divbind,
      family: this.folder.family,
      modelDefaults: readModelDefaults(this.folder.divbind, this.folder.family),
      // The default size's prepared set lets a plan check loss options early; other sizes are checked on use.
      guidance:
        prepared && this.guided
          ? {
              latentSize: [prepared.files.latentDims[1], prepared.files.latentDims[2]],
              textLength: prepared.files.textDims[0],
              resolutions: [...new Set(this.guided.layers.map((l) => l.resolution))],
            }
          : null,
    };
  }

  /**
   * Checks `options` against this model and resolves every default (a random seed included) without running
   * anything. Throws a DivbindError naming the field. generate() accepts the returned plan.
   */
  plan(options: GenerateOptions): GenerationPlan {
    return resolveGenerationPlan(options, this.context);
  }

  /** Generates the images of `options` (or of a plan from this pipeline's plan()). */
  async generate(options: GenerateOptions | GenerationPlan): Promise<GenerateResult> {
    const tStart = performance.now();
    // 1. Check inputs: the plan (defaults, the seed, every check against the model).
    const plan = this.ownPlan(options);
    const guidedUnet = await this.guidedUnetFor(plan);
    // 2. Prompt → embeddings.
    const tText = performance.now();
    const text = await this.encodeText(plan);
    const textMs = performance.now() - tText;
    // 3. Initial noise [n, C, h, w]: the caller's latents or torch.randn on the seed.
    const noise = plan.latents ?? randnTorchCpu(plan.seed ?? 0n, plan.latentShape);
    // 4. Denoising loop and decoding, per image.
    const images: GeneratedImage[] = [];
    const tLoop = performance.now();
    let vaeMs = 0;
    for (let n = 0; n < plan.imagesPerPrompt; n++) {
      const { image, decodeMs } = await this.generateImage(plan, n, noise, text, guidedUnet);
      images.push(image);
      vaeMs += decodeMs;
    }
    return {
      images,
      tokens: plan.tokens,
      parameters: describeGenerationPlan(plan),
      timings: { textEncoder: textMs, denoise: performance.now() - tLoop - vaeMs, vae: vaeMs, total: performance.now() - tStart },
    };
  }

  private ownPlan(options: GenerateOptions | GenerationPlan): GenerationPlan {
    if (!isGenerationPlan(options)) return this.plan(options);
    if (!isGenerationPlan(options, this.context)) {
      throw new DivbindError('BAD_INPUT', 'generate: this plan was made by another pipeline', {
        field: 'options',
        fix: "pass a plan from this pipeline's plan(), or the options",
      });
    }
    return options;
  }

  /** Both CFG branches; SDXL's empty negative prompt is zeros (force_zeros_for_empty_prompt), not the encoding of "". */
  private async encodeText(plan: GenerationPlan): Promise<TextEmbeddings> {
    const cond = await this.textEncoder.encode(plan.prompt);
    const zero = this.folder.zeroEmptyNegative && plan.negativePrompt === '';
    const uncond = zero ? TextConditioner.zeros(cond) : await this.textEncoder.encode(plan.negativePrompt);
    return { cond, uncond };
  }

  /** SDXL's added conditions per CFG row: the pooled text_embeds, and time_ids of the plan's image size. */
  private addedConditions(text: TextEmbeddings, plan: GenerationPlan): ExtraUnetInput[] {
    const { cond, uncond } = text;
    if (cond.pooled === undefined || uncond.pooled === undefined) return [];
    const timeIds = sdxlTimeIds(plan.height, plan.width);
    return [
      { name: 'text_embeds', uncond: uncond.pooled, cond: cond.pooled, dims: [cond.pooled.length] },
      { name: 'time_ids', uncond: timeIds, cond: timeIds, dims: [timeIds.length] },
    ];
  }

  private guidance(plan: GenerationPlan, timesteps: number): GuidanceSettings | null {
    if (plan.mode === 'none' || plan.loss === null) return null;
    return {
      mode: plan.mode,
      loss: { ...plan.loss, stepIndex: 0 },
      lossBackend: plan.lossBackend,
      maxIterToAlter: plan.maxIterToAlter,
      thresholds: plan.thresholds,
      caps: plan.caps,
      stepSizes: stepSizes(plan.scaleFactor, plan.scaleRange, timesteps),
    };
  }

  /** Image n of the plan: its own scheduler state, the shared noise slice, the loop, the decoder, the PNGs. */
  /**
   * The guided UNet for the plan's image size (null for plain SD): its prepared set is opened (or, with
   * `prepare`, built) on first use, else MODEL_NOT_PREPARED says which command fixes it. The loss options are
   * checked against that set's layers.
   */
  private async guidedUnetFor(plan: GenerationPlan): Promise<OrtGuidedUnet | null> {
    if (plan.mode === 'none' || plan.loss === null) return null;
    const { unet, prepared } = await this.guidedBySize.get({ height: plan.height, width: plan.width, batch: 1 });
    checkLossAgainstLayers(
      plan.loss,
      prepared.files.textDims[0],
      unet.layers.map((l) => l.resolution),
    );
    return unet;
  }

  private async generateImage(
    plan: GenerationPlan,
    n: number,
    noise: Float32Array,
    text: TextEmbeddings,
    guidedUnet: OrtGuidedUnet | null,
  ): Promise<{ image: GeneratedImage; decodeMs: number }> {
    const [, C, h, w] = plan.latentShape;
    const perImage = C * h * w;
    const scheduler = buildScheduler(this.context, plan.scheduler);
    scheduler.setTimesteps(plan.steps);
    const initial = noise.subarray(n * perImage, (n + 1) * perImage).map((v) => v * scheduler.initNoiseSigma);
    const added = this.addedConditions(text, plan);
    const cfg = CfgUnet.bind(this.unet, [C, h, w], text.uncond.context, text.cond.context, text.cond.dims, added);
    const settings = this.guidance(plan, scheduler.timesteps.length);
    const captured: Array<{ index: number; maps: Float32Array; resolution: number }> = [];
    const hooks: SamplerHooks = {
      signal: plan.signal,
      onStep: plan.onStep ? (e) => plan.onStep!({ ...e, image: n }) : undefined,
      captureMapsAt: new Set(plan.attentionMapsAt),
      onMaps: (index, maps) => captured.push({ index, maps: Float32Array.from(maps.objects), resolution: maps.resolution }),
    };
    const guided = settings && guidedUnet ? { unet: guidedUnet.withExtraInputs(added), cond: text.cond.context, settings } : null;
    const run = await sampleLatents(initial, scheduler, cfg, plan.guidanceScale, guided, hooks);
    const t0 = performance.now();
    const { rgb, width, height } = await this.decode(run.latents, [C, h, w]);
    const decodeMs = performance.now() - t0;
    const png = encodePng(rgb, width, height, { parameters: JSON.stringify(describeGenerationPlan(plan, n)), Software: 'divbind-native' });
    const labels = (plan.tokens?.choices ?? []).filter((c) => c.role === 'object').map((c) => c.word);
    const attentionMaps = captured.map((c) => ({ index: c.index, png: attentionGrid(rgb, width, height, c.maps, c.resolution, labels) }));
    return { image: { index: n, width, height, rgb, png, latents: run.latents, steps: run.steps, attentionMaps }, decodeMs };
  }

  /** Final latents → RGB, refusing non-finite numbers (they would become a black image). */
  private async decode(latents: Float32Array, dims: [number, number, number]): Promise<{ rgb: Uint8Array; width: number; height: number }> {
    const sf = this.folder.vaeScalingFactor;
    const input = latents.map((v) => v / sf);
    const badInput = firstNonFinite(input);
    if (badInput >= 0) {
      throw new DivbindError(
        'NUMERIC',
        `the VAE decoder's input (latents / scaling_factor ${sf}) is not finite at index ${badInput} (latent value ${latents[badInput]})`,
        {
          field: 'vae_decoder/config.json',
        },
      );
    }
    const decoded = await this.vae.decode(input, [1, ...dims]);
    const bad = firstNonFinite(decoded.data);
    if (bad >= 0) {
      throw new DivbindError('NUMERIC', `the VAE decoder returned a non-finite value (${decoded.data[bad]} at index ${bad}) from finite latents`, {
        field: 'vae_decoder/model.onnx',
        fix: 'check the VAE decoder export (fp16 overflow?) and its scaling_factor',
      });
    }
    const [height, width] = [decoded.dims[2], decoded.dims[3]];
    return { rgb: imageFromDecoderOutput(decoded.data, height, width), width, height };
  }

  /** Loss backends usable here. */
  static lossBackends(): LossBackend[] {
    return availableBackends();
  }

  async release(): Promise<void> {
    await this.textEncoder.release();
    await this.unet.session.release();
    await this.vae.release();
    await this.guidedBySize.release();
  }
}
