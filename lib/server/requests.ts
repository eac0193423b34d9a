/**
 * A generation request, from HTTP body to queued job. Three gates, each from the library's own definitions:
 *   1. fastify validates the body against generateOptionsJsonSchema() (plus the server's `model` and `latents`);
 *   2. checkGenerateOptions() runs the model-free checks the API runs;
 *   3. where this process has the model loaded, pipeline.plan() runs every check that needs it (prompt length in
 *      tokens, token words, size against the prepared graphs, scheduler limits).
 * A pure API node (serve --redis --no-worker) runs 1 and 2; the worker runs 3 before any step, and a request that
 * fails there ends as a failed job with the same error. Nothing unchecked reaches a worker.
 */
import { randomInt, randomUUID } from 'node:crypto';
import { type DivBindPipeline, type GenerateOptions, checkGenerateOptions, generateOptionsJsonSchema, type JsonSchema } from '../index';
import type { ModelConfig } from './config';
import { HttpError, notFound } from './http-errors';
import type { JobRequest } from './jobs';
import { LATENTS_SCHEMA, decodeLatents } from './latents';
import type { EmbeddedOptions } from './validation';

/** The body of POST /v1/generations: the generate options, and which model, and uploaded latents. */
export function generationSchema(): JsonSchema {
  const schema = generateOptionsJsonSchema();
  const properties = schema.properties as Record<string, JsonSchema>;
  return {
    ...schema,
    title: 'divbind-native generation request',
    properties: {
      ...properties,
      model: {
        type: 'string',
        maxLength: 64,
        description: 'a configured model name (GET /v1/models); default: the first configured',
      },
      latents: LATENTS_SCHEMA,
    },
  };
}

/** Fields of a request body that are not generate options. */
export const SERVER_FIELDS = ['model', 'latents'] as const;

/** The generate options of a v1 body, for the library's own message about a schema error. */
export function v1Options(body: unknown): EmbeddedOptions | null {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return null;
  const options = { ...(body as Record<string, unknown>) };
  for (const field of SERVER_FIELDS) delete options[field];
  return { options, prefix: '' };
}

/** torch.manual_seed keeps 32 bits of a seed; a random seed is drawn here so that a rerun makes the same images. */
const SEED_RANGE = 2 ** 32;

export class RequestChecker {
  private readonly names: string[];

  /** @param pipelines models loaded in this process, by name (empty on a pure API node) */
  constructor(
    models: ModelConfig[],
    private readonly pipelines: ReadonlyMap<string, DivBindPipeline>,
  ) {
    this.names = models.map((m) => m.name);
  }

  get defaultModel(): string {
    return this.names[0];
  }

  /** A configured model name; 404 for any other. */
  model(name: string | undefined): string {
    if (name === undefined) return this.defaultModel;
    if (!this.names.includes(name)) throw notFound(`model ${JSON.stringify(name)} (configured: ${this.names.join(', ')})`, 'model');
    return name;
  }

  /** Checked options → a job; throws HttpError (404 model) or DivbindError (400/422, naming the field). */
  check(options: Record<string, unknown>, modelName: string | undefined, latentsBase64: string | undefined): JobRequest {
    const model = this.model(modelName);
    const checked = checkGenerateOptions(options);
    const latents = latentsBase64 === undefined ? undefined : decodeLatents(latentsBase64, checked.imagesPerPrompt);
    const fixed: Record<string, unknown> = { ...options };
    if (latents === undefined && fixed.seed === undefined) fixed.seed = randomInt(0, SEED_RANGE);
    const pipeline = this.pipelines.get(model);
    if (pipeline) pipeline.plan({ ...fixed, ...(latents ? { latents } : {}) } as GenerateOptions);
    return {
      id: randomUUID(),
      model,
      options: fixed,
      ...(latentsBase64 !== undefined ? { latents: latentsBase64 } : {}),
      createdAt: Date.now(),
    };
  }
}

/** Splits a v1 body into generate options and the server's fields. */
export function splitBody(body: Record<string, unknown>): {
  options: Record<string, unknown>;
  model?: string;
  latents?: string;
} {
  const { model, latents, ...options } = body;
  if (model !== undefined && typeof model !== 'string') throw new HttpError(400, 'BAD_INPUT', 'Expected a string for model', { field: 'model' });
  return { options, model: model as string | undefined, latents: latents as string | undefined };
}
