/**
 * The generate options, defined once (definitions.ts) and read by everything that takes them:
 *   checkGenerateOptions(options)            model-free checks, fixed defaults (a server's first gate)
 *   resolveGenerationPlan(options, context)  the plan generate() runs (DivBindPipeline.plan builds the context)
 *   describeGenerationPlan(plan, image?)     the record in result.parameters and the PNG
 *   generateOptionsJsonSchema()              JSON Schema of a request body
 *   addGenerateFlags / generateOptionsFromFlags   the CLI's flags
 */
export { GENERATE_OPTIONS, GENERATE_OPTION_NAMES, GENERATE_LOSS_KEYS } from './definitions';
export type { CheckedGenerateOptions, GenerateLossOptions, GenerateOptionName, GenerateOptions, OptionDefinition } from './definitions';
export { checkGenerateOptions } from './check';
export { buildScheduler, checkLossAgainstLayers, isGenerationPlan, resolveGenerationPlan } from './plan';
export type { GenerationPlan, PlanContext } from './plan';
export { describeGenerationPlan } from './describe';
export { MODEL_DEFAULT_OPTIONS, readModelDefaults, withModelDefaults } from './model-defaults';
export type { ModelDefaults } from './model-defaults';
export { generateOptionsJsonSchema } from './schema';
export { addGenerateFlags, generateOptionsFromFlags, THREADS } from './cli';
export type { JsonSchema, Kind } from './kinds';
