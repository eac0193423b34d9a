/**
 * Reads a Stable Diffusion ONNX folder (diffusers OnnxStableDiffusionPipeline / Optimum layout): model_index.json,
 * scheduler/scheduler_config.json, tokenizer/, text_encoder/, unet/, vae_decoder/. Errors say what is missing
 * and what to do.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface ModelFolder {
  dir: string;
  index: Record<string, unknown>;
  schedulerConfig: Record<string, unknown>;
  tokenizerDir: string;
  textEncoderFile: string;
  unetFile: string;
  vaeDecoderFile: string;
  /** Optional defaults the folder declares for D&B (our models do; real SD exports do not). */
  divbind: { attentionResolution?: number; attributeResolutions?: number[] };
  /** VAE latent scaling factor (vae_decoder/config.json or vae/config.json "scaling_factor", else 0.18215). */
  vaeScalingFactor: number;
  /** Image pixels per latent pixel ("vae_scale_factor" in the VAE config or model_index.json; SD: 8). */
  vaeScaleFactor: number;
}

export class ModelFolderError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModelFolderError';
  }
}

function readJson(file: string, what: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new ModelFolderError(`${what} not found: ${file}`);
  }
  try {
    const value = JSON.parse(text) as unknown;
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error('not an object');
    return value as Record<string, unknown>;
  } catch (err) {
    throw new ModelFolderError(`${what} is not valid JSON (${file}): ${err instanceof Error ? err.message : String(err)}`);
  }
}

function requireFile(file: string, what: string, hint: string): string {
  if (!fs.existsSync(file)) throw new ModelFolderError(`${what} missing: ${file}. ${hint}`);
  return file;
}

export function readModelFolder(dir: string): ModelFolder {
  const abs = path.resolve(dir);
  if (!fs.existsSync(abs) || !fs.statSync(abs).isDirectory()) {
    throw new ModelFolderError(`model folder not found: ${abs}. Pass --model <dir> with a Stable Diffusion ONNX export (model_index.json, unet/, text_encoder/, vae_decoder/, tokenizer/, scheduler/).`);
  }
  const hint = 'Expected the diffusers/Optimum ONNX layout (model_index.json, text_encoder/model.onnx, unet/model.onnx, vae_decoder/model.onnx, tokenizer/, scheduler/).';
  const index = readJson(path.join(abs, 'model_index.json'), 'model_index.json');
  const schedulerConfig = readJson(path.join(abs, 'scheduler', 'scheduler_config.json'), 'scheduler/scheduler_config.json');
  const tokenizerDir = path.join(abs, 'tokenizer');
  requireFile(path.join(tokenizerDir, 'vocab.json'), 'tokenizer/vocab.json', hint);
  requireFile(path.join(tokenizerDir, 'merges.txt'), 'tokenizer/merges.txt', hint);
  const divbindRaw = (index.divbind ?? {}) as Record<string, unknown>;
  const divbind: ModelFolder['divbind'] = {};
  if (typeof divbindRaw.attentionResolution === 'number') divbind.attentionResolution = divbindRaw.attentionResolution;
  if (Array.isArray(divbindRaw.attributeResolutions)) divbind.attributeResolutions = divbindRaw.attributeResolutions.map(Number);
  let vaeScalingFactor = 0.18215;
  let vaeScaleFactor = typeof index.vae_scale_factor === 'number' ? index.vae_scale_factor : 8;
  for (const cfg of ['vae_decoder/config.json', 'vae/config.json']) {
    const f = path.join(abs, cfg);
    if (fs.existsSync(f)) {
      const c = readJson(f, cfg);
      if (typeof c.scaling_factor === 'number') vaeScalingFactor = c.scaling_factor;
      if (typeof c.vae_scale_factor === 'number') vaeScaleFactor = c.vae_scale_factor;
      break;
    }
  }
  if (!Number.isInteger(vaeScaleFactor) || vaeScaleFactor < 1) {
    throw new ModelFolderError(`vae_scale_factor must be a positive integer but is ${vaeScaleFactor}`);
  }
  return {
    dir: abs,
    index,
    schedulerConfig,
    tokenizerDir,
    textEncoderFile: requireFile(path.join(abs, 'text_encoder', 'model.onnx'), 'text_encoder/model.onnx', hint),
    unetFile: requireFile(path.join(abs, 'unet', 'model.onnx'), 'unet/model.onnx', hint),
    vaeDecoderFile: requireFile(path.join(abs, 'vae_decoder', 'model.onnx'), 'vae_decoder/model.onnx', hint),
    divbind,
    vaeScalingFactor,
    vaeScaleFactor,
  };
}
