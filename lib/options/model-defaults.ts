/**
 * Generate options a model folder declares as its own defaults (model_index.json "divbind": `defaults` for every
 * mode, `modeDefaults.<mode>` for one). They sit between the caller's options and the global defaults of
 * definitions.ts: a small model trained here needs other step sizes and thresholds than SD 1.5, whose values the
 * global defaults keep. A bad value is the model's fault (MODEL_INVALID naming model_index.json), not the caller's.
 */
import { DivbindError, isDivbindError } from '../errors';
import { familyGenerateDefaults, type DeclaredDivbind, type FamilyTraits } from '../model/family';
import { GUIDANCE_MODES, type GuidanceMode } from '../pipeline/guidance';
import { definitionOf, GENERATE_OPTIONS, type GenerateOptionName } from './definitions';
import { checkKeys, plainObject } from './kinds';

/** What a model may set: how to sample and guide, never what to draw (prompt, tokens, seed, size, outputs). */
export const MODEL_DEFAULT_OPTIONS: readonly GenerateOptionName[] = [
  'mode',
  'guidanceScale',
  'steps',
  'scheduler',
  'maxIterToAlter',
  'scaleFactor',
  'scaleRange',
  'thresholds',
  'refinement',
  'loss',
];

export interface ModelDefaults {
  all: Record<string, unknown>;
  byMode: Partial<Record<GuidanceMode, Record<string, unknown>>>;
}

function checkGroup(values: Record<string, unknown>, where: string): Record<string, unknown> {
  try {
    checkKeys(values, MODEL_DEFAULT_OPTIONS, where);
    for (const [name, value] of Object.entries(values)) definitionOf(name as GenerateOptionName).kind.check(value, name);
  } catch (err) {
    if (!isDivbindError(err)) throw err;
    throw new DivbindError('MODEL_INVALID', `model_index.json ${where}: ${err.message}`, {
      field: `model_index.json ${where}${err.field ? `.${err.field}` : ''}`,
      fix: "correct or remove the value in the model folder's model_index.json",
      cause: err,
    });
  }
  return values;
}

/**
 * Checks the declared defaults once, when a pipeline loads the folder. With the folder's `family`, the family's
 * generate defaults (guidance scale, token slice: lib/model/family.ts) sit below the declared ones.
 */
export function readModelDefaults(declared: DeclaredDivbind, family?: FamilyTraits): ModelDefaults {
  const own = checkGroup(declared.defaults ?? {}, 'divbind.defaults');
  const all = family === undefined ? own : mergeLayer(familyGenerateDefaults(family, declared), own);
  const byMode: ModelDefaults['byMode'] = {};
  for (const [mode, values] of Object.entries(declared.modeDefaults ?? {})) {
    if (!(GUIDANCE_MODES as readonly string[]).includes(mode) || !plainObject(values)) {
      throw new DivbindError('MODEL_INVALID', `model_index.json divbind.modeDefaults: "${mode}" is not a guidance mode with an object of options`, {
        field: `model_index.json divbind.modeDefaults.${mode}`,
        fix: `use the modes ${GUIDANCE_MODES.join(', ')}`,
      });
    }
    byMode[mode as GuidanceMode] = checkGroup(values, `divbind.modeDefaults.${mode}`);
  }
  return { all, byMode };
}

/** `upper` over `lower`, loss parameters key by key; undefined values in `upper` keep `lower`'s. */
function mergeLayer(lower: Record<string, unknown>, upper: Record<string, unknown>): Record<string, unknown> {
  const merged: Record<string, unknown> = { ...lower };
  for (const [key, value] of Object.entries(upper)) if (value !== undefined) merged[key] = value;
  if (plainObject(lower.loss) && plainObject(upper.loss)) merged.loss = { ...lower.loss, ...upper.loss };
  return merged;
}

/**
 * The caller's options over the model's defaults for the mode that will run. `loss` merges key by key, so a
 * caller setting one loss parameter keeps the model's others.
 */
export function withModelDefaults(options: Record<string, unknown>, defaults: ModelDefaults): Record<string, unknown> {
  const mode = (options.mode ?? defaults.all.mode ?? GENERATE_OPTIONS.mode.default) as GuidanceMode;
  return mergeLayer(mergeLayer(defaults.all, defaults.byMode[mode] ?? {}), options);
}
