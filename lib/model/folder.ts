/**
 * A Stable Diffusion ONNX folder (diffusers OnnxStableDiffusionPipeline / Optimum layout): where each component is
 * and what the folder's configs declare. `readUnetFolder` needs only model_index.json and the UNet (all `prepare`
 * uses); `readModelFolder` needs every component the pipeline loads. Errors are DivbindErrors naming the file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DivbindError } from '../errors';
import { detectFamily, readDeclaredDivbind, type DeclaredDivbind, type FamilyEvidence, type ModelFamily } from './family';

export type { DeclaredDivbind } from './family';

/** The ONNX components, relative to the model folder (text_encoder_2: SDXL only). */
export const COMPONENT_FILES = {
  text_encoder: 'text_encoder/model.onnx',
  text_encoder_2: 'text_encoder_2/model.onnx',
  unet: 'unet/model.onnx',
  vae_decoder: 'vae_decoder/model.onnx',
} as const;
export type ComponentName = keyof typeof COMPONENT_FILES;

export const LAYOUT_HINT =
  "pass a Stable Diffusion ONNX folder in the layout of diffusers' OnnxStableDiffusionPipeline / " +
  'Optimum exports: model_index.json, text_encoder/model.onnx, unet/model.onnx, vae_decoder/model.onnx, tokenizer/, scheduler/ ' +
  '(SDXL also text_encoder_2/model.onnx and tokenizer_2/)';

/** SD 1.x/2.x VAE latent scaling factor, used when the VAE config does not declare "scaling_factor". */
export const DEFAULT_VAE_SCALING_FACTOR = 0.18215;
/** Image pixels per latent pixel when the folder declares nothing (SD's VAE: 3 downsamplings). */
export const DEFAULT_VAE_SCALE_FACTOR = 8;

export interface UnetFolder {
  /** Absolute path of the model folder. */
  dir: string;
  index: Record<string, unknown>;
  unetFile: string;
  /** Optional D&B defaults the folder declares in model_index.json "divbind" (our models do; SD exports do not). */
  divbind: DeclaredDivbind;
  /** SD 1.x, SD 2.x or SDXL, and the defaults that follow (lib/model/family.ts). */
  family: ModelFamily;
  /** VAE latent scaling factor (VAE config "scaling_factor", else 0.18215). */
  vaeScalingFactor: number;
  /**
   * Image pixels per latent pixel: "vae_scale_factor" in the VAE config or model_index.json, else
   * 2^(len(block_out_channels) − 1) from the VAE config (diffusers' rule), else 8.
   */
  vaeScaleFactor: number;
}

export interface ModelFolder extends UnetFolder {
  schedulerConfig: Record<string, unknown>;
  tokenizerDir: string;
  textEncoderFile: string;
  vaeDecoderFile: string;
  /** SDXL's second tokenizer and text encoder (OpenCLIP bigG: pooled text_embeds); undefined for SD 1.x/2.x. */
  tokenizer2Dir?: string;
  textEncoder2File?: string;
  /**
   * SDXL's force_zeros_for_empty_prompt (model_index.json, default true): an empty negative prompt is all-zero
   * embeddings, not the encoding of "". Always false for SD 1.x/2.x.
   */
  zeroEmptyNegative: boolean;
}

/** `file` relative to the model folder, with forward slashes ('unet/model.onnx'), for messages and error fields. */
export function relativeName(modelDir: string, file: string): string {
  return path.relative(modelDir, file).split(path.sep).join('/');
}

function readJson(dir: string, rel: string): Record<string, unknown> {
  const file = path.join(dir, rel);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new DivbindError('MODEL_MISSING', `${rel} not found in ${dir}`, { field: rel, fix: LAYOUT_HINT });
  }
  try {
    const value = JSON.parse(text) as unknown;
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error('expected a JSON object');
    return value as Record<string, unknown>;
  } catch (err) {
    throw new DivbindError('MODEL_INVALID', `${rel} is not valid JSON (${(err as Error).message})`, {
      field: rel,
      fix: `restore ${file} from the model's export`,
    });
  }
}

/** `rel` in the folder, or MODEL_MISSING; for SDXL-only files the message says why the folder needs them. */
function requireFile(dir: string, rel: string, family?: ModelFamily): string {
  const file = path.join(dir, rel);
  if (!fs.existsSync(file)) {
    const why = family?.dualTextEncoder ? ` (the folder is ${family.label}: ${family.evidence.join('; ')})` : '';
    throw new DivbindError('MODEL_MISSING', `${rel} is missing from ${dir}${why}`, { field: rel, fix: LAYOUT_HINT });
  }
  return file;
}

/** Checks that `modelDir` is a folder with model_index.json; returns its absolute path and the index. */
function openFolder(modelDir: string): { dir: string; index: Record<string, unknown> } {
  if (typeof modelDir !== 'string' || modelDir === '') {
    throw new DivbindError('BAD_INPUT', `Expected a model folder path but received ${JSON.stringify(modelDir)}`, { field: 'model' });
  }
  const dir = path.resolve(modelDir);
  if (!fs.existsSync(dir)) throw new DivbindError('MODEL_MISSING', `model folder not found: ${dir}`, { field: 'model', fix: LAYOUT_HINT });
  if (!fs.statSync(dir).isDirectory()) {
    throw new DivbindError('MODEL_MISSING', `${dir} is a file, not a model folder`, { field: 'model', fix: LAYOUT_HINT });
  }
  if (!fs.existsSync(path.join(dir, 'model_index.json'))) {
    throw new DivbindError('MODEL_MISSING', `${dir} is not a Stable Diffusion ONNX folder: model_index.json is missing`, {
      field: 'model_index.json',
      fix: LAYOUT_HINT,
    });
  }
  return { dir, index: readJson(dir, 'model_index.json') };
}

function positiveNumber(v: unknown, rel: string, key: string, integer: boolean): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || (integer && !Number.isInteger(v))) {
    throw new DivbindError('MODEL_INVALID', `${rel} "${key}" must be a positive ${integer ? 'integer' : 'finite number'} but is ${JSON.stringify(v)}`, {
      field: `${rel}:${key}`,
      fix: `correct "${key}" in ${rel} (SD 1.x/2.x: ${key === 'scaling_factor' ? DEFAULT_VAE_SCALING_FACTOR : DEFAULT_VAE_SCALE_FACTOR})`,
    });
  }
  return v;
}

/** The VAE numbers the folder declares (see UnetFolder for the precedence). */
function readVaeConfig(dir: string, index: Record<string, unknown>): Pick<UnetFolder, 'vaeScalingFactor' | 'vaeScaleFactor'> {
  const rel = ['vae_decoder/config.json', 'vae/config.json'].find((f) => fs.existsSync(path.join(dir, f)));
  const cfg = rel === undefined ? {} : readJson(dir, rel);
  const cfgName = rel ?? 'vae_decoder/config.json';
  const vaeScalingFactor = cfg.scaling_factor === undefined ? DEFAULT_VAE_SCALING_FACTOR : positiveNumber(cfg.scaling_factor, cfgName, 'scaling_factor', false);
  let vaeScaleFactor = DEFAULT_VAE_SCALE_FACTOR;
  if (cfg.vae_scale_factor !== undefined) vaeScaleFactor = positiveNumber(cfg.vae_scale_factor, cfgName, 'vae_scale_factor', true);
  else if (index.vae_scale_factor !== undefined) vaeScaleFactor = positiveNumber(index.vae_scale_factor, 'model_index.json', 'vae_scale_factor', true);
  else if (Array.isArray(cfg.block_out_channels) && cfg.block_out_channels.length > 0) vaeScaleFactor = 2 ** (cfg.block_out_channels.length - 1);
  return { vaeScalingFactor, vaeScaleFactor };
}

function readOptionalJson(dir: string, rel: string): Record<string, unknown> | undefined {
  return fs.existsSync(path.join(dir, rel)) ? readJson(dir, rel) : undefined;
}

/** The tokenizer's pad token as transformers reads it (special_tokens_map.json over tokenizer_config.json). */
function padToken(dir: string, tokenizer: string): string | undefined {
  const text = (v: unknown) =>
    typeof v === 'string' ? v : typeof (v as { content?: unknown } | null)?.content === 'string' ? (v as { content: string }).content : undefined;
  return (
    text(readOptionalJson(dir, `${tokenizer}/special_tokens_map.json`)?.pad_token) ??
    text(readOptionalJson(dir, `${tokenizer}/tokenizer_config.json`)?.pad_token)
  );
}

/** What lib/model/family.ts needs from the folder's files (every one optional). */
function familyEvidence(dir: string, index: Record<string, unknown>, declared: DeclaredDivbind): FamilyEvidence {
  return {
    index,
    declared: declared.family,
    hasTextEncoder2: fs.existsSync(path.join(dir, COMPONENT_FILES.text_encoder_2)),
    tokenizerPad: padToken(dir, 'tokenizer'),
    predictionType: readOptionalJson(dir, 'scheduler/scheduler_config.json')?.prediction_type,
    unetConfig: readOptionalJson(dir, 'unet/config.json'),
    textEncoderConfig: readOptionalJson(dir, 'text_encoder/config.json'),
  };
}

/** The folder as `prepare` needs it: model_index.json, the UNet and the VAE numbers. */
export function readUnetFolder(modelDir: string): UnetFolder {
  const { dir, index } = openFolder(modelDir);
  const divbind = readDeclaredDivbind(index);
  return {
    dir,
    index,
    unetFile: requireFile(dir, COMPONENT_FILES.unet),
    divbind,
    family: detectFamily(familyEvidence(dir, index, divbind)),
    ...readVaeConfig(dir, index),
  };
}

/** The whole folder as the pipeline needs it: every component, the tokenizer and the scheduler config. */
export function readModelFolder(modelDir: string): ModelFolder {
  const base = readUnetFolder(modelDir);
  const dir = base.dir;
  const tokenizers = base.family.dualTextEncoder ? ['tokenizer', 'tokenizer_2'] : ['tokenizer'];
  for (const t of tokenizers) for (const f of ['vocab.json', 'merges.txt']) requireFile(dir, `${t}/${f}`, base.family);
  const dual = base.family.dualTextEncoder;
  return {
    ...base,
    schedulerConfig: readJson(dir, 'scheduler/scheduler_config.json'),
    tokenizerDir: path.join(dir, 'tokenizer'),
    textEncoderFile: requireFile(dir, COMPONENT_FILES.text_encoder),
    vaeDecoderFile: requireFile(dir, COMPONENT_FILES.vae_decoder),
    ...(dual ? { tokenizer2Dir: path.join(dir, 'tokenizer_2'), textEncoder2File: requireFile(dir, COMPONENT_FILES.text_encoder_2, base.family) } : {}),
    zeroEmptyNegative: dual && base.index.force_zeros_for_empty_prompt !== false,
  };
}
