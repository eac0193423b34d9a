/**
 * The generation plan: the generate options checked (check.ts), every default applied and every value checked
 * against the loaded model, before any model runs. generate() runs a plan; result.parameters and the PNG record
 * it (describe.ts). A plan is made for one loaded model (PlanContext) and is only valid there.
 */
import { randomInt } from 'node:crypto';
import { DivbindError, isDivbindError, type DivbindErrorCode } from '../errors';
import { availableBackends, resolveBackend } from '../loss/index';
import type { LossBackend, LossOptions } from '../loss/types';
import { normalizeOptionsFor } from '../loss/validate';
import { defaultThresholds, lastGuidedIndex, refinementCaps, type GuidanceMode, type RefinementCaps, type RefinementPreset } from '../pipeline/guidance';
import { readLatentsNpy } from '../pipeline/noise';
import type { StepEvent } from '../pipeline/sampler';
import { selectTokens, type TokenSelection } from '../pipeline/token-selection';
import { fromConfig, type Scheduler, type SchedulerName } from '../schedulers/index';
import type { ClipTokenizer } from '../tokenizer/clip';
import { checkGenerateOptions } from './check';
import type { CheckedGenerateOptions, GenerateOptions } from './definitions';
import { badInput, plainObject } from './kinds';
import { withModelDefaults, type ModelDefaults } from './model-defaults';
import { latentSize, resolveImageSize, type SizeRule } from '../model/size';
import { familyResolutions, type FamilyTraits } from '../model/family';

/** What a plan needs to know about the loaded model. */
export interface PlanContext {
  /** The model folder (recorded with every result). */
  modelDir: string;
  tokenizer: ClipTokenizer;
  latentChannels: number;
  /** Which image sizes the UNet runs and its default (lib/model/size.ts: the one rule prepare uses too). */
  sizes: SizeRule;
  schedulerConfig: Record<string, unknown>;
  defaultScheduler: SchedulerName;
  /** Resolutions D&B should use, as the model folder declares them (model_index.json "divbind"). */
  declared: { attentionResolution?: number; attributeResolutions?: number[] };
  /** The model family, whose rule gives the resolutions the folder does not declare (lib/model/family.ts). */
  family: Pick<FamilyTraits, 'attributeFactors'>;
  /** Generate options the model folder declares as its defaults (checked, model-defaults.ts). */
  modelDefaults: ModelDefaults;
  /** The default size's prepared set (to check loss options early), or null; other sizes are checked on use. */
  guidance: { latentSize: readonly [number, number]; textLength: number; resolutions: readonly number[] } | null;
}

const PLAN = Symbol('divbind.GenerationPlan');

export interface GenerationPlan {
  readonly [PLAN]: PlanContext;
  prompt: string;
  negativePrompt: string;
  mode: GuidanceMode;
  /** The guided tokens (null for mode 'none'). */
  tokens: TokenSelection | null;
  guidanceScale: number;
  steps: number;
  /** Timesteps the scheduler runs for `steps` (PNDM: steps + 1): the number of loop indices. */
  timesteps: number;
  height: number;
  width: number;
  /** [images, channels, height / f, width / f]. */
  latentShape: [number, number, number, number];
  /** The seed the noise is drawn from: the caller's or a random one; null when latents were given. */
  seed: bigint | null;
  /** Initial latents given by the caller (already read and checked), else null. */
  latents: Float32Array | null;
  /** Where the latents came from: their file, 'Float32Array', or null. */
  latentsSource: string | null;
  imagesPerPrompt: number;
  scheduler: SchedulerName;
  lossBackend: LossBackend;
  maxIterToAlter: number;
  scaleFactor: number;
  scaleRange: [number, number];
  thresholds: Record<number, number>;
  refinement: RefinementPreset | RefinementCaps;
  caps: RefinementCaps;
  /** Loss options for the loss core without stepIndex (null for mode 'none'). */
  loss: Omit<LossOptions, 'stepIndex'> | null;
  attentionMapsAt: number[];
  signal: AbortSignal | undefined;
  onStep: ((event: StepEvent & { image: number }) => void) | undefined;
  model: string;
}

/** True for a plan made by resolveGenerationPlan (for this context, when one is given). */
export function isGenerationPlan(value: unknown, context?: PlanContext): value is GenerationPlan {
  return typeof value === 'object' && value !== null && PLAN in value && (context === undefined || (value as GenerationPlan)[PLAN] === context);
}

/** Re-throws a lower-level error (TypeError/RangeError of a part) as a DivbindError naming the option. */
function asOptionError(err: unknown, field: string, code: DivbindErrorCode = 'BAD_INPUT'): DivbindError {
  if (isDivbindError(err)) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new DivbindError(code, message.startsWith(`${field}:`) ? message : `${field}: ${message}`, { field, cause: err });
}

/** Resolves and checks the options against the loaded model; nothing runs yet. */
export function resolveGenerationPlan(options: GenerateOptions | unknown, ctx: PlanContext): GenerationPlan {
  // 1. Model-free checks; the model's declared defaults, then the fixed ones.
  const o = checkGenerateOptions(plainObject(options) ? withModelDefaults(options, ctx.modelDefaults) : options);
  // 2. The text: both prompts within the text encoder's length.
  checkPromptLength(ctx.tokenizer, o.prompt, 'prompt');
  checkPromptLength(ctx.tokenizer, o.negativePrompt, 'negativePrompt');
  // 3. Size, schedule, refinement schedule.
  const size = resolveSize(o, ctx);
  const schedule = resolveSchedule(o, ctx);
  const thresholds = o.thresholds ?? defaultThresholds(o.mode);
  checkAttentionMapsAt(o, thresholds, schedule.timesteps);
  const refinement = o.refinement;
  const caps = typeof refinement === 'string' ? refinementCaps(refinement, o.mode) : refinement;
  // 4. Tokens and loss options, checked by the same code the loss core runs.
  const tokens = o.mode === 'none' ? null : chooseTokens(o, ctx);
  const loss = tokens === null ? null : resolveLoss(o, ctx, tokens, size.height);
  // 5. Initial noise: the caller's latents, or a seed (a random one is recorded like a given one).
  const noise = resolveNoise(o, size.latentShape);
  return {
    [PLAN]: ctx,
    prompt: o.prompt,
    negativePrompt: o.negativePrompt,
    mode: o.mode,
    tokens,
    guidanceScale: o.guidanceScale,
    steps: o.steps,
    ...schedule,
    ...size,
    ...noise,
    imagesPerPrompt: o.imagesPerPrompt,
    lossBackend: resolveLossBackend(o.lossBackend),
    maxIterToAlter: o.maxIterToAlter,
    scaleFactor: o.scaleFactor,
    scaleRange: o.scaleRange,
    thresholds,
    refinement,
    caps,
    loss,
    attentionMapsAt: o.attentionMapsAt ?? [],
    signal: o.signal,
    onStep: o.onStep,
    model: ctx.modelDir,
  };
}

/** Refuses text longer than the encoder takes (it would be cut silently), without echoing a long prompt. */
function checkPromptLength(tokenizer: ClipTokenizer, prompt: string, field: string): void {
  const enc = tokenizer.encode(prompt);
  if (!enc.truncated) return;
  const room = tokenizer.maxLength - 2;
  const kept = tokenizer
    .wordPieces(prompt)
    .filter((w) => !w.truncated)
    .slice(-4)
    .map((w) => w.word)
    .join(' ');
  throw new DivbindError(
    'BAD_INPUT',
    `${field} is ${enc.tokens.length} tokens long but the text encoder takes at most ${room} (${tokenizer.maxLength} with the start and end tokens)`,
    {
      field,
      fix: `shorten it by ${enc.tokens.length - room} tokens; it would be cut after "…${kept}" (\`divbind-native tokens\` shows the table)`,
    },
  );
}

function resolveSize(o: CheckedGenerateOptions, ctx: PlanContext): Pick<GenerationPlan, 'height' | 'width' | 'latentShape'> {
  const { height, width } = resolveImageSize(ctx.sizes, o.height, o.width);
  const [h, w] = latentSize({ height, width }, ctx.sizes.factor);
  return { height, width, latentShape: [o.imagesPerPrompt, ctx.latentChannels, h, w] };
}

/** A fresh scheduler of the plan's kind on the model's config. */
export function buildScheduler(ctx: PlanContext, name: SchedulerName): Scheduler {
  try {
    return fromConfig(ctx.schedulerConfig, { name });
  } catch (err) {
    throw asOptionError(err, 'scheduler');
  }
}

/** Whether `steps` gives timesteps inside the trained range (PNDM with 1000 steps would ask for t = 1000). */
function fitsSchedule(s: Scheduler, steps: number): boolean {
  try {
    s.setTimesteps(steps);
  } catch {
    return false;
  }
  return s.timesteps.every((t) => Number.isInteger(t) && t >= 0 && t < s.config.num_train_timesteps);
}

function resolveSchedule(o: CheckedGenerateOptions, ctx: PlanContext): Pick<GenerationPlan, 'scheduler' | 'timesteps'> {
  const name = o.scheduler ?? ctx.defaultScheduler;
  const s = buildScheduler(ctx, name);
  if (!fitsSchedule(s, o.steps)) {
    let max = o.steps - 1;
    while (max > 1 && !fitsSchedule(s, max)) max--;
    const c = s.config;
    throw badInput(
      'steps',
      `an integer between 1 and ${max} for the ${name} scheduler`,
      o.steps,
      `its ${c.num_train_timesteps} training timesteps (steps_offset ${c.steps_offset}, ${c.timestep_spacing} spacing) allow no more`,
    );
  }
  return { scheduler: name, timesteps: s.timesteps.length };
}

/** Maps exist only where a gradient pass runs: guided modes, loop indices up to the last guided one. */
function checkAttentionMapsAt(o: CheckedGenerateOptions, thresholds: Record<number, number>, timesteps: number): void {
  const at = o.attentionMapsAt ?? [];
  if (at.length === 0) return;
  if (o.mode === 'none') throw badInput('attentionMapsAt', "nothing with mode 'none'", at, 'attention maps come from the guidance; pick a guided mode');
  const last = Math.min(lastGuidedIndex(o.maxIterToAlter, thresholds), timesteps - 1);
  at.forEach((index, i) => {
    if (index > last) {
      throw badInput(
        `attentionMapsAt[${i}]`,
        `a loop index between 0 and ${last}`,
        index,
        `the last gradient pass runs at loop index ${last} (maxIterToAlter ${o.maxIterToAlter}, last threshold key, ${timesteps} timesteps)`,
      );
    }
  });
}

function chooseTokens(o: CheckedGenerateOptions, ctx: PlanContext): TokenSelection {
  try {
    return selectTokens(ctx.tokenizer, o.prompt, o.tokens ?? {});
  } catch (err) {
    throw asOptionError(err, 'tokens');
  }
}

/**
 * Loss options as generate() passes them: the caller's, over the pipeline's rules (resolutions from the model
 * folder or its family's rule at this size, lib/model/family.ts; 'max' is A&E's hinge; the EOT position of
 * 'until-eot' read off the prompt's ids), checked now by the loss core's own checks.
 */
function resolveLoss(o: CheckedGenerateOptions, ctx: PlanContext, tokens: TokenSelection, height: number): Omit<LossOptions, 'stepIndex'> {
  const given = o.loss ?? {};
  const { attentionResolution, attributeResolutions } = familyResolutions(ctx.family, ctx.declared, height, given);
  const eotIndex = given.tokenSlice === 'until-eot' ? ctx.tokenizer.encode(o.prompt).eotIndex : undefined;
  const loss: Omit<LossOptions, 'stepIndex'> = {
    ...(o.mode === 'max' ? { maxVariant: 'attend-excite' as const } : {}),
    ...given,
    mode: o.mode as LossOptions['mode'],
    attentionResolution,
    attributeResolutions,
    tokenIndices: tokens.tokenIndices,
    ...(tokens.attributeIndices ? { attributeIndices: tokens.attributeIndices } : {}),
    ...(eotIndex !== undefined ? { eotIndex } : {}),
  };
  const set = ctx.guidance;
  if (set && set.latentSize[0] * ctx.sizes.factor === height) checkLossAgainstLayers(loss, set.textLength, set.resolutions);
  return loss;
}

/** The loss core's own option checks against a prepared set's text length and map resolutions. */
export function checkLossAgainstLayers(loss: Omit<LossOptions, 'stepIndex'>, textLength: number, resolutions: readonly number[]): void {
  try {
    normalizeOptionsFor({ textLength, resolutions: [...new Set(resolutions)] }, loss);
  } catch (err) {
    throw asOptionError(err, 'loss');
  }
}

function resolveLossBackend(requested: LossBackend | undefined): LossBackend {
  if (requested === undefined) return resolveBackend();
  const available = availableBackends();
  if (!available.includes(requested)) {
    throw badInput(
      'lossBackend',
      `a loss backend available here (${available.join(', ')})`,
      requested,
      requested === 'cuda' ? 'the addon was built without CUDA or sees no device' : 'the native addon did not load',
    );
  }
  return requested;
}

function resolveNoise(o: CheckedGenerateOptions, shape: [number, number, number, number]): Pick<GenerationPlan, 'seed' | 'latents' | 'latentsSource'> {
  if (o.latents === undefined) {
    // torch.manual_seed keeps the low 32 bits for the generator state, so 32 random bits reach every stream.
    return { seed: o.seed ?? BigInt(randomInt(0, 2 ** 32)), latents: null, latentsSource: null };
  }
  const count = shape.reduce((a, b) => a * b, 1);
  if (typeof o.latents === 'string') {
    let latents: Float32Array;
    try {
      latents = readLatentsNpy(o.latents, shape);
    } catch (err) {
      throw asOptionError(err, 'latents');
    }
    return { seed: null, latents, latentsSource: o.latents };
  }
  if (o.latents.length !== count) {
    throw badInput('latents', `a Float32Array of ${shape.join('×')} = ${count} values (images, channels, height/f, width/f)`, o.latents);
  }
  const bad = o.latents.findIndex((v) => !Number.isFinite(v));
  if (bad >= 0) throw badInput('latents', 'finite values', o.latents[bad], `the first non-finite value is at flat index ${bad}`);
  return { seed: null, latents: o.latents, latentsSource: 'Float32Array' };
}
