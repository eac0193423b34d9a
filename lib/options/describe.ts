/**
 * The record of a generation: every recorded option of the plan as used (defaults resolved, the random seed
 * included), as result.parameters and the PNG's "parameters" text chunk carry it. JSON-safe: bigints become
 * decimal strings, the latents their source.
 */
import { LOSS_DEFAULTS } from '../loss/validate';
import { GENERATE_LOSS_KEYS, GENERATE_OPTION_NAMES, definitionOf, type GenerateOptionName } from './definitions';
import type { GenerationPlan } from './plan';

/** How options whose plan value is not plain JSON are recorded; the others are recorded as they are. */
const RECORD: Partial<Record<GenerateOptionName, (plan: GenerationPlan) => unknown>> = {
  tokens: (p) =>
    p.tokens && {
      tokenIndices: p.tokens.tokenIndices,
      attributeIndices: p.tokens.attributeIndices,
      choices: p.tokens.choices.map((c) => `${c.role} ${c.word}@${c.index}`),
    },
  seed: (p) => (p.seed === null ? null : String(p.seed)),
  latents: (p) => p.latentsSource,
  loss: (p) => p.loss && recordLoss(p.loss),
};

/** Every loss parameter as the loss core will use it: the plan's, else the loss core's default. */
function recordLoss(loss: NonNullable<GenerationPlan['loss']>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of GENERATE_LOSS_KEYS) out[key] = loss[key] ?? LOSS_DEFAULTS[key as keyof typeof LOSS_DEFAULTS];
  if (loss.eotIndex !== undefined) out.eotIndex = loss.eotIndex;
  return out;
}

/** The parameters of a plan, for image `image` of it. */
export function describeGenerationPlan(plan: GenerationPlan, image = 0): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const name of GENERATE_OPTION_NAMES) {
    if (definitionOf(name).record === false) continue;
    const record = RECORD[name];
    out[name] = record ? record(plan) : plan[name as keyof GenerationPlan];
  }
  return { ...out, refinementCaps: plan.caps, timesteps: plan.timesteps, image, model: plan.model };
}
