/**
 * JSON Schema (draft-07) of a generate request, from the option definitions: what a JSON body may carry.
 * Options JSON cannot carry are left out: `latents` (a file path must never come from a request; a server
 * takes uploaded latents separately), `signal` and `onStep`. A server validating with it should refuse
 * unknown properties (ajv `removeAdditional: false`) and still resolve the plan (pipeline.plan), which checks
 * what needs the model: sizes, token indices, the scheduler's step limit, the prompt's token length.
 */
import { GENERATE_OPTION_NAMES, definitionOf } from './definitions';
import type { JsonSchema } from './kinds';

export function generateOptionsJsonSchema(): JsonSchema {
  const properties: Record<string, JsonSchema> = {};
  for (const name of GENERATE_OPTION_NAMES) {
    const def = definitionOf(name);
    if (!def.kind.schema) continue;
    const defaultText = def.defaultFrom !== undefined ? ` (default: ${def.defaultFrom})` : '';
    properties[name] = {
      ...structuredClone(def.kind.schema),
      description: `${def.doc}${defaultText}`,
      ...(def.default !== undefined ? { default: structuredClone(def.default) } : {}),
    };
  }
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    title: 'divbind-native generate options',
    type: 'object',
    properties,
    required: ['prompt'],
    additionalProperties: false,
  };
}
