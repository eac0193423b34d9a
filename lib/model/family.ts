/**
 * Model families (SD 1.x, SD 2.x, SDXL) in one place: how a folder is recognised, and every default that follows
 * from the family (image size, D&B map resolutions, token slice, guidance scale, SDXL's added conditions). Real
 * exports carry no `divbind` entry in model_index.json, so the family is read off what every export has: the
 * pipeline class and component names of model_index.json, the tokenizer's pad token, the scheduler's prediction
 * type, the components' config.json where Optimum writes them, and the components' inputs and outputs (checked
 * at load, lib/model/components.ts). An explicit model_index.json `divbind` entry wins over every derived value.
 * The values and where they come from: docs/model-families.md.
 */
import { DivbindError } from '../errors';
import { TOKEN_SLICES } from '../loss/options';
import type { TokenSlice } from '../loss/types';

export const FAMILY_NAMES = ['sd1', 'sd2', 'sdxl'] as const;
export type FamilyName = (typeof FAMILY_NAMES)[number];

/** What a family fixes. Thresholds and step sizes are the spec's for every family (lib/pipeline/guidance.ts). */
export interface FamilyTraits {
  name: FamilyName;
  label: string;
  /** Token columns kept before the token softmax: SD 1.x pads with EOT (the official 1:-1 slice), SD 2.x/XL with "!". */
  tokenSlice: TokenSlice;
  /** Attribute map sources as multiples of the attention resolution r (SD: 4r and 2r; SDXL has no maps at 4r). */
  attributeFactors: readonly number[];
  /** Classifier-free guidance scale of the family's own pipeline. */
  guidanceScale: number;
  /** Latent side when neither the export nor unet/config.json fixes it (SD 2.x v-prediction: 768 px). */
  latentSide: number;
  /** SDXL: two text encoders, pooled `text_embeds` and `time_ids` as added UNet inputs. */
  dualTextEncoder: boolean;
}

const TRAITS: Record<FamilyName, FamilyTraits> = {
  sd1: { name: 'sd1', label: 'SD 1.x', tokenSlice: 'all-but-last', attributeFactors: [4, 2], guidanceScale: 7.5, latentSide: 64, dualTextEncoder: false },
  sd2: { name: 'sd2', label: 'SD 2.x', tokenSlice: 'until-eot', attributeFactors: [4, 2], guidanceScale: 7.5, latentSide: 64, dualTextEncoder: false },
  sdxl: { name: 'sdxl', label: 'SDXL', tokenSlice: 'until-eot', attributeFactors: [2], guidanceScale: 5, latentSide: 128, dualTextEncoder: true },
};

/** SD 2.x's 768-v checkpoints (v-prediction) are trained at 768², its base checkpoints at 512². */
const SD2_V_LATENT_SIDE = 96;
/** The object attention resolution is ⌈image side / 32⌉ (16 at 512², 24 at 768², 32 at 1024²), as diffusers' attn_res. */
const ATTENTION_DIVISOR = 32;

export interface ModelFamily extends FamilyTraits {
  /** Why the folder was read as this family, for `info` and messages. */
  evidence: string[];
  /** Default latent side of this folder: unet/config.json sample_size, else the family's. */
  defaultLatentSide: number;
}

/** What detectFamily reads; folder.ts gathers it from the files (absent files: undefined). */
export interface FamilyEvidence {
  index: Record<string, unknown>;
  /** model_index.json divbind.family, when the folder names its family. */
  declared?: FamilyName;
  hasTextEncoder2: boolean;
  tokenizerPad?: string;
  predictionType?: unknown;
  unetConfig?: Record<string, unknown>;
  textEncoderConfig?: Record<string, unknown>;
}

/** Reasons the folder is SDXL (empty: it is not). */
function sdxlSigns(e: FamilyEvidence): string[] {
  const signs: string[] = [];
  const cls = e.index._class_name;
  if (typeof cls === 'string' && /XL/.test(cls)) signs.push(`model_index.json _class_name ${cls}`);
  if (Array.isArray(e.index.text_encoder_2) && e.index.text_encoder_2[0] !== null) signs.push('model_index.json lists text_encoder_2');
  if (e.hasTextEncoder2) signs.push('text_encoder_2/ is present');
  if (e.unetConfig?.addition_embed_type === 'text_time') signs.push('unet/config.json addition_embed_type text_time');
  return signs;
}

/** Reasons the folder is SD 2.x rather than SD 1.x (empty: it is SD 1.x). */
function sd2Signs(e: FamilyEvidence): string[] {
  const signs: string[] = [];
  if (e.tokenizerPad === '!') signs.push('the tokenizer pads with "!" (OpenCLIP)');
  if (e.predictionType === 'v_prediction') signs.push('scheduler prediction_type v_prediction');
  if (e.unetConfig?.cross_attention_dim === 1024) signs.push('unet/config.json cross_attention_dim 1024');
  if (e.textEncoderConfig?.hidden_act === 'gelu') signs.push('text_encoder/config.json hidden_act gelu (OpenCLIP)');
  return signs;
}

/** The family of a folder (see the file header); never throws for an SD-like folder (SD 1.x is the fallback). */
export function detectFamily(e: FamilyEvidence): ModelFamily {
  let name: FamilyName;
  let evidence: string[];
  if (e.declared !== undefined) [name, evidence] = [e.declared, ['model_index.json divbind.family']];
  else if (sdxlSigns(e).length > 0) [name, evidence] = ['sdxl', sdxlSigns(e)];
  else if (sd2Signs(e).length > 0) [name, evidence] = ['sd2', sd2Signs(e)];
  else [name, evidence] = ['sd1', ['no SD 2.x or SDXL sign (EOT padding, ε-prediction, one text encoder)']];
  const traits = TRAITS[name];
  const sampleSize = e.unetConfig?.sample_size;
  const defaultLatentSide =
    typeof sampleSize === 'number' && Number.isInteger(sampleSize) && sampleSize > 0
      ? sampleSize
      : name === 'sd2' && e.predictionType === 'v_prediction'
        ? SD2_V_LATENT_SIDE
        : traits.latentSide;
  return { ...traits, evidence, defaultLatentSide };
}

/** The traits of a family by name (docs, tests). */
export function familyTraits(name: FamilyName): FamilyTraits {
  return TRAITS[name];
}

/** model_index.json "divbind": what a folder may declare about D&B on it; each value wins over the family's. */
export interface DeclaredDivbind {
  family?: FamilyName;
  attentionResolution?: number;
  attributeResolutions?: number[];
  tokenSlice?: TokenSlice;
  defaults?: Record<string, unknown>;
  modeDefaults?: Record<string, Record<string, unknown>>;
}

function declaredError(key: string, expected: string, value: unknown): DivbindError {
  return new DivbindError('MODEL_INVALID', `model_index.json "divbind.${key}" must be ${expected} but is ${JSON.stringify(value)}`, {
    field: `model_index.json divbind.${key}`,
    fix: "correct or remove the value in the model folder's model_index.json",
  });
}

const isResolution = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 4096;

/** Reads and checks model_index.json "divbind" (the generate option values in defaults are checked by lib/options). */
export function readDeclaredDivbind(index: Record<string, unknown>): DeclaredDivbind {
  const raw = index.divbind ?? {};
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw declaredError('', 'an object', raw);
  const d = raw as Record<string, unknown>;
  const out: DeclaredDivbind = {};
  if (d.family !== undefined) {
    if (!(FAMILY_NAMES as readonly unknown[]).includes(d.family)) throw declaredError('family', `one of ${FAMILY_NAMES.join(', ')}`, d.family);
    out.family = d.family as FamilyName;
  }
  if (d.attentionResolution !== undefined) {
    if (!isResolution(d.attentionResolution) || (d.attentionResolution as number) < 2)
      throw declaredError('attentionResolution', 'an integer between 2 and 4096', d.attentionResolution);
    out.attentionResolution = d.attentionResolution as number;
  }
  if (d.attributeResolutions !== undefined) {
    const a = d.attributeResolutions;
    if (!Array.isArray(a) || a.length === 0 || !a.every(isResolution))
      throw declaredError('attributeResolutions', 'a non-empty array of integers between 1 and 4096', a);
    out.attributeResolutions = [...a] as number[];
  }
  if (d.tokenSlice !== undefined) {
    if (!(TOKEN_SLICES as readonly unknown[]).includes(d.tokenSlice)) throw declaredError('tokenSlice', `one of ${TOKEN_SLICES.join(', ')}`, d.tokenSlice);
    out.tokenSlice = d.tokenSlice as TokenSlice;
  }
  for (const key of ['defaults', 'modeDefaults'] as const) {
    const v = d[key];
    if (v === undefined) continue;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw declaredError(key, 'an object of generate options', v);
    out[key] = v as Record<string, Record<string, unknown>>;
  }
  return out;
}

/** The D&B map resolutions at an image height: the caller's, else the folder's declared ones, else the family rule. */
export function familyResolutions(
  family: Pick<FamilyTraits, 'attributeFactors'>,
  declared: Pick<DeclaredDivbind, 'attentionResolution' | 'attributeResolutions'>,
  height: number,
  given: { attentionResolution?: number; attributeResolutions?: number[] } = {},
): { attentionResolution: number; attributeResolutions: number[] } {
  const attentionResolution = given.attentionResolution ?? declared.attentionResolution ?? Math.ceil(height / ATTENTION_DIVISOR);
  const attributeResolutions = given.attributeResolutions ?? declared.attributeResolutions ?? family.attributeFactors.map((f) => f * attentionResolution);
  return { attentionResolution, attributeResolutions };
}

/** The generate options the family sets (below the folder's declared defaults and the caller's options). */
export function familyGenerateDefaults(family: FamilyTraits, declared: Pick<DeclaredDivbind, 'tokenSlice'>): Record<string, unknown> {
  return { guidanceScale: family.guidanceScale, loss: { tokenSlice: declared.tokenSlice ?? family.tokenSlice } };
}

/**
 * SDXL's `time_ids` for one image: original size (h, w), crop top-left (0, 0), target size (h, w), as
 * StableDiffusionXLPipeline builds them when the caller gives no sizes (original = target = the image size).
 */
export function sdxlTimeIds(height: number, width: number): Float32Array {
  return Float32Array.of(height, width, 0, 0, height, width);
}
