/**
 * The model-free checks of the generate options: types, ranges, enums and unknown (misspelt) names, each from
 * its definition, and the fixed defaults applied. A server can run this before it queues a request; plan.ts
 * then adds what needs the model (sizes, token indices, scheduler limits).
 */
import { DivbindError } from '../errors';
import { GENERATE_OPTION_NAMES, definitionOf, type CheckedGenerateOptions, type GenerateOptions } from './definitions';
import { checkKeys, plainObject } from './kinds';

/**
 * Checks every option against its definition and applies the fixed defaults. Throws a DivbindError
 * 'BAD_INPUT' naming the first bad field (misspelt names get "did you mean …?").
 */
export function checkGenerateOptions(options: GenerateOptions | unknown): CheckedGenerateOptions {
  if (!plainObject(options)) {
    throw new DivbindError('BAD_INPUT', 'generate: Expected an options object { prompt, … }', { field: 'options' });
  }
  checkKeys(options, GENERATE_OPTION_NAMES, 'generate options');
  if (options.prompt === undefined) {
    throw new DivbindError('BAD_INPUT', 'generate: the prompt is missing', { field: 'prompt', fix: "pass { prompt: 'a red cat and a blue dog' }" });
  }
  const out: Record<string, unknown> = {};
  for (const name of GENERATE_OPTION_NAMES) {
    const def = definitionOf(name);
    const value = options[name];
    // A copy of the default: a caller editing its plan must not edit the definition.
    out[name] = value === undefined ? structuredClone(def.default) : def.kind.check(value, name);
  }
  return out as CheckedGenerateOptions;
}
