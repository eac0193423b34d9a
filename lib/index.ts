/**
 * divbind-native: Divide & Bind / Attend-and-Excite for Stable Diffusion ONNX exports on Node.js.
 *
 * - Loss core: attentionLoss / attentionLossAsync (native C++ addon, CUDA, or the pure-TS twin).
 * - Pipeline: DivBindPipeline.load(modelDir) → generate({ prompt, mode, tokens, seed, … }).
 * - Model lifecycle: prepareModel(modelDir, { height, width }) exposes the UNet's cross-attention maps and builds its
 *   VJP graph, once per model and image size (lib/model).
 * - Errors: every failure a caller can act on is a DivbindError with a code (lib/errors.ts).
 */
export * from './loss/types';
export { attentionLoss, attentionLossAsync, availableBackends } from './loss/index';
export { DivBindPipeline } from './pipeline/pipeline';
export type { GenerateOptions, GenerateResult, GeneratedImage, LoadOptions, GenerateLossOptions } from './pipeline/pipeline';
export { GPU_PROVIDERS_INSTALL, knownExecutionProviders } from './pipeline/ort';
export type { SessionOptions } from './pipeline/ort';
export { hugePagesState, relaunchWithHugePages } from './pipeline/huge-pages';
export type { HugePagesState } from './pipeline/huge-pages';
export { GENERATE_OPTIONS, checkGenerateOptions, describeGenerationPlan, generateOptionsJsonSchema } from './options/index';
export type { CheckedGenerateOptions, GenerationPlan, JsonSchema } from './options/index';
export type { GuidanceMode, RefinementPreset, RefinementCaps } from './pipeline/guidance';
export { defaultThresholds, refinementCaps, stepSizes } from './pipeline/guidance';
export type { StepEvent } from './pipeline/sampler';
export { defaultModelDir } from './pipeline/defaults';
export { DivbindError, isDivbindError } from './errors';
export type { DivbindErrorCode, DivbindErrorDetails } from './errors';
export { prepareModel } from './model/prepare';
export type { PrepareOptions, PrepareProgress, PrepareResult } from './model/prepare';
export { readModelFolder } from './model/folder';
export type { ModelFolder } from './model/folder';
export { cacheDirFor } from './model/cache';
export { ClipTokenizer } from './tokenizer/clip';
export { createScheduler, fromConfig } from './schedulers/index';
export type { Scheduler, SchedulerName } from './schedulers/index';
export { randnTorchCpu } from './pipeline/noise';
