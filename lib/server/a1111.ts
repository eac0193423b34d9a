/**
 * AUTOMATIC1111 compatibility: `/sdapi/v1/txt2img` takes A1111's field names and answers with base64 PNGs and
 * A1111's `info`; PNGs carry A1111's `parameters` infotext. Divide & Bind options go in the extension object
 * `divbind` (or `alwayson_scripts.divbind.args[0]`), checked against the generate options' own schema.
 */
import type { JsonSchema } from '../options/index';
import type { SchedulerName } from '../schedulers/index';
import { HttpError } from './http-errors';
import type { GenerationLog, JobProgress } from './jobs';

/** A1111 field → generate option. Omitted fields take the generate defaults (the model's size, 50 steps, …). */
const FIELD_OPTIONS = {
  prompt: 'prompt',
  negative_prompt: 'negativePrompt',
  steps: 'steps',
  cfg_scale: 'guidanceScale',
  width: 'width',
  height: 'height',
  batch_size: 'imagesPerPrompt',
} as const;

/** A1111 sampler names of our schedulers: diffusers' PNDM with skip_prk_steps is A1111's PLMS. */
export const SAMPLER_OF_SCHEDULER: Record<SchedulerName, string> = { pndm: 'PLMS', ddim: 'DDIM', euler: 'Euler' };
const SCHEDULER_OF_SAMPLER: Record<string, SchedulerName> = {
  PLMS: 'pndm',
  PNDM: 'pndm',
  DDIM: 'ddim',
  Euler: 'euler',
};

/** A1111 fields that change the result in ways this engine does not do: accepted only at their neutral value. */
const NEUTRAL_ONLY: Record<string, { value: unknown; why: string }> = {
  n_iter: { value: 1, why: 'use batch_size for several images' },
  enable_hr: { value: false, why: 'hires fix is not supported' },
  restore_faces: { value: false, why: 'face restoration is not supported' },
  tiling: { value: false, why: 'tiling is not supported' },
  subseed_strength: { value: 0, why: 'variation seeds are not supported' },
};

/** The D&B options the A1111 fields do not already cover: the generate schema without the mapped options. */
function extensionSchema(generate: JsonSchema): JsonSchema {
  const properties = { ...(generate.properties as Record<string, JsonSchema>) };
  for (const option of [...Object.values(FIELD_OPTIONS), 'seed', 'scheduler']) delete properties[option];
  return { type: 'object', properties, additionalProperties: false };
}

/** JSON Schema of a txt2img body: the A1111 fields we take, with the generate options' own ranges. */
export function txt2imgSchema(generate: JsonSchema): JsonSchema {
  const props = generate.properties as Record<string, JsonSchema>;
  const properties: Record<string, JsonSchema> = {};
  for (const [field, option] of Object.entries(FIELD_OPTIONS)) properties[field] = props[option];
  const extension = extensionSchema(generate);
  Object.assign(properties, {
    seed: { anyOf: [{ const: -1 }, props.seed] },
    sampler_name: { type: 'string', maxLength: 100 },
    sampler_index: { type: 'string', maxLength: 100 },
    divbind: extension,
    alwayson_scripts: {
      type: 'object',
      properties: {
        divbind: {
          type: 'object',
          properties: { args: { type: 'array', items: extension, maxItems: 1 } },
          required: ['args'],
        },
      },
    },
    override_settings: { type: 'object', properties: { sd_model_checkpoint: { type: 'string', maxLength: 100 } } },
  });
  for (const [field, { value }] of Object.entries(NEUTRAL_ONLY)) properties[field] = { const: value };
  // Other A1111 fields (styles, send_images, save_images, …) are ignored, as A1111's own API ignores unknown ones.
  return { type: 'object', properties, required: ['prompt'], additionalProperties: true };
}

/** The fix for a refused txt2img field: a neutral-only field's reason, or the A1111 field of a mapped option. */
export function a1111Fix(field: string): string | undefined {
  if (NEUTRAL_ONLY[field]) return NEUTRAL_ONLY[field].why;
  const option = /^(?:divbind|alwayson_scripts\.divbind\.args\[0\])\.(\w+)$/.exec(field)?.[1];
  const a1111 =
    Object.entries(FIELD_OPTIONS).find(([, o]) => o === option)?.[0] ?? (option === 'seed' ? 'seed' : option === 'scheduler' ? 'sampler_name' : undefined);
  return a1111 ? `give it as the A1111 field "${a1111}"` : undefined;
}

export interface Txt2imgRequest {
  options: Record<string, unknown>;
  /** The model the body names (override_settings.sd_model_checkpoint), if any. */
  model?: string;
}

function samplerScheduler(name: string, field: string): SchedulerName {
  const scheduler = SCHEDULER_OF_SAMPLER[name];
  if (scheduler) return scheduler;
  throw new HttpError(
    400,
    'BAD_INPUT',
    `Expected one of ${Object.keys(SCHEDULER_OF_SAMPLER)
      .map((s) => `'${s}'`)
      .join(', ')} for ${field} but received ${JSON.stringify(name)}`,
    {
      field,
      fix: 'divbind-native runs PNDM (PLMS), DDIM and Euler',
    },
  );
}

function extensionOf(body: Record<string, unknown>): Record<string, unknown> {
  const direct = body.divbind as Record<string, unknown> | undefined;
  const scripts = body.alwayson_scripts as Record<string, { args: Array<Record<string, unknown>> }> | undefined;
  for (const name of Object.keys(scripts ?? {})) {
    if (name !== 'divbind') {
      throw new HttpError(400, 'BAD_INPUT', `always-on script "${name}" is not available here`, {
        field: `alwayson_scripts.${name}`,
        fix: 'the one extension is "divbind"',
      });
    }
  }
  const viaScripts = scripts?.divbind?.args[0];
  if (direct !== undefined && viaScripts !== undefined) {
    throw new HttpError(400, 'BAD_INPUT', 'give the Divide & Bind options once: in divbind or in alwayson_scripts.divbind', { field: 'divbind' });
  }
  return direct ?? viaScripts ?? {};
}

/** A schema-checked txt2img body → generate options (A1111 fields mapped, the extension merged). */
export function fromTxt2img(body: Record<string, unknown>): Txt2imgRequest {
  const options: Record<string, unknown> = { ...extensionOf(body) };
  for (const [field, option] of Object.entries(FIELD_OPTIONS)) if (body[field] !== undefined) options[option] = body[field];
  // A1111's seed -1 is "random": leave the seed out and the server draws one.
  if (body.seed !== undefined && body.seed !== -1) options.seed = body.seed;
  const sampler = body.sampler_name ?? body.sampler_index;
  if (typeof sampler === 'string') options.scheduler = samplerScheduler(sampler, body.sampler_name !== undefined ? 'sampler_name' : 'sampler_index');
  const model = (body.override_settings as { sd_model_checkpoint?: string } | undefined)?.sd_model_checkpoint;
  return { options, ...(model !== undefined ? { model } : {}) };
}

/** A1111 quotes values that hold its separators. */
function quoteInfo(value: string): string {
  return /[,:\n]/.test(value) ? JSON.stringify(value) : value;
}

/**
 * A1111's infotext (its PNG `parameters` chunk) for image `image` of a generation:
 * prompt, "Negative prompt: …", then "Steps: …, Sampler: …, CFG scale: …, Seed: …, Size: WxH, Model: …".
 */
export function infotext(parameters: Record<string, unknown>, image: number, model: string, version: string): string {
  const p = parameters;
  const fields: Array<[string, unknown]> = [
    ['Steps', p.steps],
    ['Sampler', SAMPLER_OF_SCHEDULER[p.scheduler as SchedulerName] ?? p.scheduler],
    ['CFG scale', p.guidanceScale],
    ['Seed', p.seed],
    ['Size', `${p.width}x${p.height}`],
    ['Model', model],
  ];
  const images = Number(p.imagesPerPrompt ?? 1);
  if (images > 1) fields.push(['Batch size', images], ['Batch pos', image]);
  if (p.mode !== 'none') fields.push(['Divide and Bind', p.mode]);
  fields.push(['Version', `divbind-native ${version}`]);
  const line = fields
    .filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k}: ${quoteInfo(String(v))}`)
    .join(', ');
  const negative = typeof p.negativePrompt === 'string' && p.negativePrompt !== '' ? `\nNegative prompt: ${p.negativePrompt}` : '';
  return `${String(p.prompt)}${negative}\n${line}`;
}

/** A seed as A1111's JSON carries it: a number when exact, else the decimal string. */
function seedNumber(seed: unknown): number | string | null {
  if (seed === null || seed === undefined) return null;
  const n = Number(seed);
  return Number.isSafeInteger(n) ? n : String(seed);
}

function jobTimestamp(ms: number): string {
  return new Date(ms).toISOString().replace(/[-:T]/g, '').slice(0, 14);
}

/**
 * A1111's `info` (a JSON string) for a finished generation. One noise draw makes the whole batch, so every image
 * has the same seed; the infotexts carry each image's batch position, as A1111's do.
 */
export function txt2imgInfo(log: GenerationLog, model: string, createdAt: number, version: string): string {
  const p = log.parameters;
  const n = log.infotexts.length;
  const seed = seedNumber(p.seed);
  return JSON.stringify({
    prompt: p.prompt,
    all_prompts: Array(n).fill(p.prompt),
    negative_prompt: p.negativePrompt,
    all_negative_prompts: Array(n).fill(p.negativePrompt),
    seed,
    all_seeds: Array(n).fill(seed),
    subseed: seed,
    all_subseeds: Array(n).fill(seed),
    subseed_strength: 0,
    width: p.width,
    height: p.height,
    sampler_name: SAMPLER_OF_SCHEDULER[p.scheduler as SchedulerName] ?? p.scheduler,
    cfg_scale: p.guidanceScale,
    steps: p.steps,
    batch_size: n,
    restore_faces: false,
    sd_model_name: model,
    sd_model_hash: null,
    denoising_strength: null,
    extra_generation_params: p.mode === 'none' ? {} : { 'Divide and Bind': p.mode },
    index_of_first_image: 0,
    infotexts: log.infotexts,
    styles: [],
    job_timestamp: jobTimestamp(createdAt),
    clip_skip: 1,
    version: `divbind-native ${version}`,
    divbind: p,
  });
}

export interface ProgressView {
  progress: JobProgress | null;
  startedAt: number | null;
  createdAt: number;
  /** Jobs queued or running. */
  jobCount: number;
}

/** `/sdapi/v1/progress` for the oldest running job (A1111 runs one job at a time). */
export function progressResponse(view: ProgressView | null): Record<string, unknown> {
  const p = view?.progress ?? null;
  const fraction = p ? (p.image * p.steps + p.step) / (p.images * p.steps) : 0;
  const elapsed = view?.startedAt ? (Date.now() - view.startedAt) / 1000 : 0;
  return {
    progress: fraction,
    eta_relative: fraction > 0 ? elapsed / fraction - elapsed : 0,
    state: {
      skipped: false,
      interrupted: false,
      stopping_generation: false,
      job: view ? 'txt2img' : '',
      job_count: view?.jobCount ?? 0,
      job_timestamp: view ? jobTimestamp(view.createdAt) : '0',
      job_no: 0,
      sampling_step: p ? p.step : 0,
      sampling_steps: p ? p.steps : 0,
    },
    current_image: null,
    textinfo: null,
  };
}
