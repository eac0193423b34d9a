/**
 * What `serve` and `worker` are configured with, checked once: the models by name, the queue, the limits.
 * Requests name a model by its configured name only; the folder behind a name never comes from a request.
 */
import * as path from 'node:path';
import { DivbindError } from '../errors';

/** A configured model: the name requests use, and the folder only this process reads. */
export interface ModelConfig {
  name: string;
  dir: string;
  /** The library's default model (no --model/--models): loaded as DivBindPipeline.load() loads it. */
  isDefault?: boolean;
}

export interface LimitsConfig {
  /** Jobs waiting (not yet running) before submissions are refused with 429. */
  maxQueue: number;
  /** Submissions per client (IP address) per minute; 0 = no limit. */
  rateLimit: number;
}

export interface WorkerConfig {
  models: ModelConfig[];
  /** Jobs one process runs at once. */
  concurrency: number;
  /** onnxruntime intra-op threads per session (undefined = the library's default). */
  threads?: number;
  /** Prepare the UNet for guided modes when it is not prepared yet (LoadOptions.prepare). */
  prepare?: boolean;
  /** How long running jobs may take to finish on SIGTERM before they are requeued (Redis) or cancelled. */
  graceMs: number;
  /** BullMQ lock duration: a job whose worker is silent this long goes to another worker (after about twice it). */
  lockMs: number;
}

export interface ServeConfig extends WorkerConfig, LimitsConfig {
  host: string;
  port: number;
  /** BullMQ on this Redis; undefined = the embedded in-process queue. */
  redisUrl?: string;
  /** Run no jobs here (a pure API node); only with redisUrl. */
  noWorker: boolean;
  /** Required in `Authorization: Bearer <key>` (or X-API-Key) when set. */
  apiKey?: string;
  /** Origins allowed by CORS; empty = CORS off (no CORS headers at all). */
  corsOrigins: string[];
  /** How long results (PNGs, logs, records) are kept. */
  resultTtlSeconds: number;
}

/** Model names: what a URL, a Redis key and a log line can carry unescaped. */
const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export const DEFAULTS = {
  port: 7860,
  host: '127.0.0.1',
  concurrency: 1,
  maxQueue: 1000,
  rateLimit: 600,
  graceSeconds: 30,
  lockSeconds: 30,
  resultTtlSeconds: 24 * 3600,
} as const;

function checkModelName(name: string, field: string): string {
  if (!MODEL_NAME.test(name)) {
    throw new DivbindError(
      'BAD_INPUT',
      `Expected a model name of letters, digits, ".", "_" or "-" (at most 64, not starting with a symbol) for ${field} but received ${JSON.stringify(name)}`,
      {
        field,
        fix: 'e.g. --models shapes=models/shapes-sd,sd15=/models/sd15',
      },
    );
  }
  return name;
}

/** The default name of a folder given with --model: its base name, made a valid model name. */
export function modelNameOf(dir: string): string {
  const base = path
    .basename(path.resolve(dir))
    .replace(/[^A-Za-z0-9._-]/g, '-')
    .replace(/^[^A-Za-z0-9]+/, '');
  return base.slice(0, 64) || 'model';
}

/** `name=DIR,name=DIR` → models; names unique, folders resolved against the working directory. */
export function parseModelList(text: string): ModelConfig[] {
  const entries = text.split(',').map((s) => s.trim());
  const models: ModelConfig[] = [];
  entries.forEach((entry, i) => {
    const eq = entry.indexOf('=');
    if (eq <= 0 || eq === entry.length - 1) {
      throw new DivbindError('BAD_INPUT', `Expected name=DIR for --models entry ${i + 1} but received ${JSON.stringify(entry)}`, {
        field: '--models',
        fix: 'e.g. --models shapes=models/shapes-sd,sd15=/models/sd15',
      });
    }
    const name = checkModelName(entry.slice(0, eq).trim(), '--models');
    if (models.some((m) => m.name === name)) {
      throw new DivbindError('BAD_INPUT', `--models names model "${name}" twice`, {
        field: '--models',
        fix: 'give each model its own name',
      });
    }
    models.push({ name, dir: path.resolve(entry.slice(eq + 1).trim()) });
  });
  return models;
}

/** The models of --model DIR or --models list (not both); neither = the default model folder. */
export function modelsFromFlags(flags: { model?: string; models?: string }, defaultDir: () => string): ModelConfig[] {
  if (flags.model !== undefined && flags.models !== undefined) {
    throw new DivbindError('BAD_INPUT', 'use either --model DIR or --models name=DIR,…, not both', {
      field: '--models',
    });
  }
  if (flags.models !== undefined) return parseModelList(flags.models);
  const dir = path.resolve(flags.model ?? defaultDir());
  return [{ name: modelNameOf(dir), dir, ...(flags.model === undefined ? { isDefault: true } : {}) }];
}
