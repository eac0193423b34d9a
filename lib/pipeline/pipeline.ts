/**
 * DivBindPipeline: a Stable Diffusion ONNX folder on onnxruntime-node with Divide & Bind / Attend-and-Excite
 * latent guidance. Load once, then call generate() — concurrently if you like: sessions are shared (ORT runs
 * are thread-safe), every generate() gets its own scheduler state, noise and buffers.
 *
 *   const pipe = await DivBindPipeline.load('models/shapes-sd');
 *   const { images } = await pipe.generate({ prompt: 'a red circle and a blue square', mode: 'tv_bind', seed: 1 });
 */
import type { LossBackend, LossOptions } from '../loss/types';
import { availableBackends } from '../loss/index';
import { isDivbindError } from '../errors';
import { checkComponentsAgree, openScheduler, openTokenizer } from '../model/components';
import { readModelFolder, type ModelFolder } from '../model/folder';
import type { PreparedInfo } from '../model/prepared';
import { defaultImageSize, latentSize, resolveImageSize, sizeRule, type SizeRule } from '../model/size';
import type { ClipTokenizer } from '../tokenizer/clip';
import { fromConfig, type Scheduler, type SchedulerName } from '../schedulers/index';
import { defaultThresholds, refinementCaps, stepSizes, type GuidanceMode, type RefinementCaps, type RefinementPreset } from './guidance';
import { defaultModelDir } from './defaults';
import { randnTorchCpu, readLatentsNpy } from './noise';
import { type SessionOptions } from './ort';
import { sampleLatents, type StepEvent } from './sampler';
import { TextEncoder } from './text-encoder';
import { selectTokens, type SelectionSpec, type TokenSelection } from './token-selection';
import { CfgUnet, GuidedUnetsBySize, OrtGuidedUnet, type UnetInputs } from './unet';
import { VaeDecoder } from './vae';
import { attentionGrid, encodePng, imageFromDecoderOutput } from './image';
import type { ort } from './ort';

export type { GuidanceMode, RefinementPreset, RefinementCaps, StepEvent, SelectionSpec, TokenSelection };

export interface LoadOptions {
  /** onnxruntime session options for every model. */
  session?: SessionOptions;
  /**
   * Prepare the UNet (instrumentation + VJP graph) for an image size when it is not prepared (or stale) yet,
   * instead of failing. Default: true for the bundled default model (a few seconds, once per size), false for a
   * folder you pass.
   */
  prepare?: boolean;
  /** Cache root for prepared graphs when the model folder is read-only (lib/model/cache.ts). */
  cacheDir?: string;
  /** Progress of loading / preparing. */
  onProgress?: (message: string) => void;
}

/** Loss parameters a generate() call may override (spec §9); token indices come from `tokens`. */
export type GenerateLossOptions = Omit<LossOptions, 'mode' | 'tokenIndices' | 'attributeIndices' | 'stepIndex'>;

export interface GenerateOptions {
  prompt: string;
  /** Default "" (the reference pipelines' unconditional prompt). */
  negativePrompt?: string;
  /** 'none' = plain SD, 'max' = Attend-and-Excite, 'tv' / 'tv_bind' / 'tv_max' = Divide & Bind. Default 'tv_bind'. */
  mode?: GuidanceMode;
  /**
   * Which tokens to guide: { objects: [indices or words], attributes?: [...aligned, null = none] }; omit objects
   * (or the whole field) for the automatic part-of-speech choice.
   */
  tokens?: SelectionSpec;
  /** Classifier-free guidance scale. Default 7.5. */
  guidanceScale?: number;
  /** Inference steps. Default 50 (PNDM then runs 51 timesteps). */
  steps?: number;
  /** Image size; must match the prepared graphs (default: the prepared size). */
  height?: number;
  width?: number;
  /** Seed for the initial noise (PyTorch CPU torch.randn, bit-exact). Default: random. */
  seed?: number | bigint;
  /** Initial latents [n, 4, h, w] (overrides seed), as a Float32Array or a .npy file path. */
  latents?: Float32Array | string;
  /** Images for this prompt (one noise draw of shape [n, 4, h, w], like diffusers). Default 1. */
  imagesPerPrompt?: number;
  /** Scheduler; default: the model's scheduler_config.json (_class_name). */
  scheduler?: SchedulerName;
  /** Loss backend; default 'native' when the addon loads, else 'js'. */
  lossBackend?: LossBackend;
  /** Latent updates run for loop indices i < maxIterToAlter. Default 25. */
  maxIterToAlter?: number;
  /** α_i = scaleFactor·√linspace(scaleRange[0], scaleRange[1], N)[i]. Defaults 20 and [1, 0.5]. */
  scaleFactor?: number;
  scaleRange?: [number, number];
  /** Refinement thresholds {loop index: θ threshold}; default per mode (spec §3). */
  thresholds?: Record<number, number>;
  /** Refinement caps: a preset ('official-latest' 100/50 default, 'paper') or explicit caps. */
  refinement?: RefinementPreset | RefinementCaps;
  /** Loss parameters (spec §9). attentionResolution defaults to the model's declared value or ceil(height/32). */
  loss?: GenerateLossOptions;
  /** Loop indices at which to record the smoothed attention maps (for heat-map grids). */
  attentionMapsAt?: number[];
  signal?: AbortSignal;
  /** Progress: one event per denoising step. */
  onStep?: (event: StepEvent & { image: number }) => void;
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

function positiveInt(value: unknown, field: string, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) throw new TypeError(`Expected an integer for ${field} but received ${JSON.stringify(value)} of type ${typeof value}`);
  if (value < 1 || value > max) throw new RangeError(`Expected an integer between 1 and ${max} for ${field} but received ${value}`);
  return value;
}

function finite(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) throw new TypeError(`Expected a finite number for ${field} but received ${JSON.stringify(value)}`);
  return value;
}

const MODES: readonly GuidanceMode[] = ['none', 'max', 'tv', 'tv_bind', 'tv_max'];

/** Loads the three ONNX components, checked one by one and against each other; nothing stays open on failure. */
async function loadComponents(folder: ModelFolder, session: SessionOptions | undefined, progress: (m: string) => void) {
  const opened: Array<{ release(): Promise<void> }> = [];
  try {
    progress('loading text encoder');
    const textEncoder = await TextEncoder.load(folder.textEncoderFile, session);
    opened.push(textEncoder);
    progress('loading UNet');
    const unet = await CfgUnet.load(folder.unetFile, session);
    opened.push(unet.session);
    progress('loading VAE decoder');
    const vae = await VaeDecoder.load(folder.vaeDecoderFile, session);
    opened.push(vae);
    checkComponentsAgree(folder, textEncoder.io, unet.inputs, vae.io);
    return { textEncoder, unet, vae };
  } catch (err) {
    await Promise.all(opened.map((o) => o.release()));
    throw err;
  }
}

export class DivBindPipeline {
  private constructor(
    readonly folder: ModelFolder,
    readonly tokenizer: ClipTokenizer,
    private readonly textEncoder: TextEncoder,
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
    const folder = readModelFolder(modelDir ?? defaultModelDir());
    const tokenizer = openTokenizer(folder);
    const scheduler = openScheduler(folder);
    const { textEncoder, unet, vae } = await loadComponents(folder, options.session, progress);
    const sizes = sizeRule(unet.inputs.sample.shape, folder.vaeScaleFactor);
    const defaultSize = defaultImageSize(sizes);
    const guidedBySize = new GuidedUnetsBySize(folder, {
      prepare: options.prepare ?? modelDir === undefined, cacheDir: options.cacheDir, defaultSize, session: options.session, onProgress: progress,
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
    return new DivBindPipeline(folder, tokenizer, textEncoder, unet, guidedBySize, first?.unet ?? null, first?.prepared ?? null, vae, scheduler, sizes);
  }

  /** Whether guided modes are available at the default image size (the UNet is prepared for it). */
  get canGuide(): boolean {
    return this.guided !== null;
  }

  async generate(options: GenerateOptions): Promise<GenerateResult> {
    const tStart = performance.now();
    // 1. Check inputs.
    if (options === null || typeof options !== 'object') throw new TypeError('generate: Expected an options object');
    if (typeof options.prompt !== 'string') throw new TypeError(`Expected a string for prompt but received ${typeof options.prompt}`);
    const mode: GuidanceMode = options.mode ?? 'tv_bind';
    if (!MODES.includes(mode)) throw new RangeError(`Expected one of ${MODES.join(', ')} for mode but received ${JSON.stringify(mode)}`);
    const negativePrompt = options.negativePrompt ?? '';
    if (typeof negativePrompt !== 'string') throw new TypeError('Expected a string for negativePrompt');
    const guidanceScale = finite(options.guidanceScale ?? 7.5, 'guidanceScale');
    const steps = positiveInt(options.steps ?? 50, 'steps', 1000);
    const nImages = positiveInt(options.imagesPerPrompt ?? 1, 'imagesPerPrompt', 64);
    const latentDims = this.latentDims(options.height, options.width);
    const [C, h, w] = latentDims;
    const height = h * this.folder.vaeScaleFactor;
    const width = w * this.folder.vaeScaleFactor;
    // Guided modes need the UNet prepared for this size: its set is opened once (MODEL_NOT_PREPARED otherwise).
    const guided = mode === 'none' ? null : (await this.guidedBySize.get({ height, width, batch: 1 })).unet;
    const maxIterToAlter = options.maxIterToAlter ?? 25;
    if (!Number.isInteger(maxIterToAlter) || maxIterToAlter < 0) throw new RangeError(`Expected a non-negative integer for maxIterToAlter but received ${maxIterToAlter}`);
    const scaleFactor = finite(options.scaleFactor ?? 20, 'scaleFactor');
    const scaleRange = options.scaleRange ?? [1.0, 0.5];
    if (!Array.isArray(scaleRange) || scaleRange.length !== 2 || !scaleRange.every((v) => typeof v === 'number' && v >= 0 && Number.isFinite(v))) {
      throw new RangeError('Expected [start, end] with non-negative finite numbers for scaleRange, e.g. [1, 0.5]');
    }
    const thresholds = options.thresholds ?? defaultThresholds(mode);
    for (const [k, v] of Object.entries(thresholds)) {
      if (!/^\d+$/.test(k) || typeof v !== 'number' || !Number.isFinite(v)) throw new RangeError(`thresholds: expected {loopIndex: number}, got ${k}: ${JSON.stringify(v)}`);
    }
    const refinement = options.refinement ?? 'official-latest';
    const caps: RefinementCaps = typeof refinement === 'string'
      ? (refinement === 'official-latest' || refinement === 'paper' ? refinementCaps(refinement, mode)
        : (() => { throw new RangeError(`Expected 'official-latest', 'paper' or {initStep, other} for refinement but received ${JSON.stringify(refinement)}`); })())
      : refinement;
    const lossBackend = options.lossBackend;
    if (lossBackend !== undefined && !availableBackends().includes(lossBackend)) {
      throw new RangeError(`lossBackend '${lossBackend}' is not available here (available: ${availableBackends().join(', ')})`);
    }

    // 2. Prompt → token ids → embeddings; token choice.
    const condEnc = this.tokenizer.encode(options.prompt);
    const uncondEnc = this.tokenizer.encode(negativePrompt);
    const tokens = mode === 'none' ? null : selectTokens(this.tokenizer, options.prompt, options.tokens ?? {});
    const tText = performance.now();
    const cond = await this.textEncoder.encode(condEnc.ids);
    const uncond = await this.textEncoder.encode(uncondEnc.ids);
    const textDims: [number, number] = [cond.dims[1], cond.dims[2]];
    const textMs = performance.now() - tText;

    // 3. Scheduler (own state per call) and step sizes.
    const scheduler = options.scheduler ? fromConfig(this.folder.schedulerConfig, { name: options.scheduler }) : this.scheduler.clone();
    scheduler.setTimesteps(steps);
    const alphas = stepSizes(scaleFactor, [scaleRange[0], scaleRange[1]], scheduler.timesteps.length);

    // 4. Initial noise [n, C, h, w].
    const perImage = C * h * w;
    let noise: Float32Array;
    if (options.latents !== undefined) {
      noise = typeof options.latents === 'string' ? readLatentsNpy(options.latents, [nImages, C, h, w]) : options.latents;
      if (!(noise instanceof Float32Array) || noise.length !== nImages * perImage) {
        throw new RangeError(`latents: expected ${nImages}×${C}×${h}×${w} = ${nImages * perImage} float32 values but received ${noise?.length}`);
      }
    } else {
      const seed = options.seed ?? BigInt(Math.floor(Math.random() * 2 ** 52));
      noise = randnTorchCpu(seed, [nImages, C, h, w]);
    }

    // 5. Loss options: resolution defaults from the model (declared) or from the size, as diffusers derives attn_res.
    const attentionResolution = options.loss?.attentionResolution ?? this.folder.divbind.attentionResolution ?? Math.ceil(height / 32);
    const attributeResolutions = options.loss?.attributeResolutions ?? this.folder.divbind.attributeResolutions ?? [attentionResolution * 4, attentionResolution * 2];
    const lossOptions: LossOptions = {
      // 'max' is Attend-and-Excite: its hinge max(0, 1 − m) unless the caller asks for D&B's variant.
      ...(mode === 'max' ? { maxVariant: 'attend-excite' as const } : {}),
      ...options.loss,
      mode: mode === 'none' ? 'tv' : mode,
      attentionResolution,
      attributeResolutions,
      tokenIndices: tokens?.tokenIndices ?? [],
      attributeIndices: tokens?.attributeIndices ?? undefined,
    };

    // 6. Denoising loop per image.
    const images: GeneratedImage[] = [];
    const tLoop = performance.now();
    let vaeMs = 0;
    for (let n = 0; n < nImages; n++) {
      const mapsAt = new Set(options.attentionMapsAt ?? []);
      const captured: Array<{ index: number; maps: Float32Array; resolution: number }> = [];
      const initial = noise.subarray(n * perImage, (n + 1) * perImage).map((v) => v * scheduler.initNoiseSigma);
      const cfg = CfgUnet.bind(this.unet, latentDims, uncond.data, cond.data, textDims);
      const run = await sampleLatents(initial, n === 0 ? scheduler : (() => { const s = scheduler.clone(); s.setTimesteps(steps); return s; })(), cfg, guidanceScale,
        guided === null ? null : {
          unet: guided,
          cond: cond.data,
          settings: { mode, loss: lossOptions, lossBackend, maxIterToAlter, thresholds, caps, stepSizes: alphas },
        },
        {
          signal: options.signal,
          onStep: options.onStep ? (e) => options.onStep!({ ...e, image: n }) : undefined,
          captureMapsAt: mapsAt,
          onMaps: (index, maps) => captured.push({ index, maps: Float32Array.from(maps.objects), resolution: maps.resolution }),
        });
      const tv = performance.now();
      const decoded = await this.vae.decode(run.latents.map((v) => v / this.folder.vaeScalingFactor), [1, C, h, w]);
      vaeMs += performance.now() - tv;
      const rgb = imageFromDecoderOutput(decoded.data, decoded.dims[2], decoded.dims[3]);
      const parameters = this.describe(options, mode, steps, guidanceScale, height, width, tokens, n);
      const png = encodePng(rgb, decoded.dims[3], decoded.dims[2], { parameters: JSON.stringify(parameters), Software: 'divbind-native' });
      const attentionMaps = captured.map((c) => ({
        index: c.index,
        png: attentionGrid(rgb, decoded.dims[3], decoded.dims[2], c.maps, c.resolution, (tokens?.choices ?? []).filter((c) => c.role === 'object').map((c) => c.word)),
      }));
      images.push({ index: n, width: decoded.dims[3], height: decoded.dims[2], rgb, png, latents: run.latents, steps: run.steps, attentionMaps });
    }
    const loopMs = performance.now() - tLoop - vaeMs;
    return {
      images,
      tokens,
      parameters: this.describe(options, mode, steps, guidanceScale, height, width, tokens, 0),
      timings: { textEncoder: textMs, denoise: loopMs, vae: vaeMs, total: performance.now() - tStart },
    };
  }

  /** Latent dims [C, h, w] for a requested size, checked against what the UNet export runs (lib/model/size.ts). */
  private latentDims(height?: number, width?: number): [number, number, number] {
    const [h, w] = latentSize(resolveImageSize(this.sizes, height, width), this.sizes.factor);
    const c = this.unet.inputs.sample.shape[1];
    return [typeof c === 'number' && c > 0 ? c : 4, h, w];
  }

  private describe(o: GenerateOptions, mode: GuidanceMode, steps: number, guidanceScale: number, height: number, width: number, tokens: TokenSelection | null, image: number): Record<string, unknown> {
    return {
      prompt: o.prompt, negativePrompt: o.negativePrompt ?? '', mode, steps, guidanceScale, height, width,
      seed: o.seed === undefined ? null : String(o.seed), image, scheduler: o.scheduler ?? this.scheduler.name,
      tokens: tokens ? { tokenIndices: tokens.tokenIndices, attributeIndices: tokens.attributeIndices, choices: tokens.choices.map((c) => `${c.role} ${c.word}@${c.index}`) } : null,
      maxIterToAlter: o.maxIterToAlter ?? 25, scaleFactor: o.scaleFactor ?? 20, refinement: o.refinement ?? 'official-latest',
      thresholds: o.thresholds ?? defaultThresholds(mode), loss: o.loss ?? {}, model: this.folder.dir,
    };
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
