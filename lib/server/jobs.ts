/**
 * A generation job as the server sees it: what the queue carries (JSON only), its progress, its final record and
 * the events a client can follow. Shared by the embedded queue, the BullMQ queue and the worker.
 */
import { isDivbindError, type DivbindErrorCode } from '../errors';
import { ownMessage } from './http-errors';

export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';
export type FinalState = Extract<JobState, 'succeeded' | 'failed' | 'cancelled'>;
export const FINAL_STATES: readonly FinalState[] = ['succeeded', 'failed', 'cancelled'];

/** What a queue carries from an API node to a worker: checked at submission, JSON only. */
export interface JobRequest {
  id: string;
  /** A configured model name. */
  model: string;
  /** Generate options (checked), the seed fixed at submission so a rerun after a crash makes the same images. */
  options: Record<string, unknown>;
  /** Uploaded initial latents: a base64 .npy, checked at submission. */
  latents?: string;
  /** ms since the epoch. */
  createdAt: number;
}

/** Progress of a running job: the current image and the step done in it. */
export interface JobProgress {
  /** 0-based image index and the number of images. */
  image: number;
  images: number;
  /** Denoising steps done in this image (1-based) and per image (PNDM: steps + 1). */
  step: number;
  steps: number;
  /** D&B loss and the indicator θ of the step's last gradient pass (null when none ran). */
  loss: number | null;
  theta: number | null;
  /** Seconds the step took. */
  seconds: number;
}

export interface JobError {
  code: DivbindErrorCode | 'FAILED' | 'STALLED' | 'SHUTDOWN';
  message: string;
  field?: string;
  fix?: string;
}

/** The log of a finished generation (as `generate` writes it next to the PNGs). */
export interface GenerationLog {
  parameters: Record<string, unknown>;
  timings: Record<string, number>;
  tokens: unknown;
  images: Array<{ index: number; seed: string | null; steps: Array<Record<string, unknown>> }>;
  /** A1111 infotext of each image (the PNG `parameters` chunk). */
  infotexts: string[];
}

/** A job's final record, written once with its PNGs. */
export interface JobRecord {
  id: string;
  model: string;
  state: FinalState;
  createdAt: number;
  startedAt: number | null;
  finishedAt: number;
  /** Number of PNGs stored. */
  images: number;
  error?: JobError;
  /** Where a job that did not succeed stopped: its last step done (absent when none ran). */
  progress?: JobProgress;
  /** The last step done when the cancellation reached the worker (cancelled while running). */
  cancelledAt?: JobProgress;
  log?: GenerationLog;
}

/** What GET /v1/generations/:id answers. */
export interface JobStatus {
  id: string;
  model: string;
  state: JobState;
  createdAt: number;
  /** Jobs ahead of this one (queued only; 0 = next). */
  position?: number;
  progress?: JobProgress;
  error?: JobError;
  record?: JobRecord;
}

export type JobEvent =
  | { type: 'queued'; position?: number }
  | { type: 'running' }
  | { type: 'step'; progress: JobProgress }
  | { type: 'image'; index: number }
  | { type: 'done'; record: JobRecord }
  | { type: 'failed'; error: JobError }
  | { type: 'cancelled' };

export function isFinal(state: JobState): state is FinalState {
  return (FINAL_STATES as readonly string[]).includes(state);
}

/** The job error of a thrown value: DivbindErrors keep their code and field; anything else is FAILED. */
export function jobErrorOf(err: unknown): JobError {
  if (isDivbindError(err)) {
    return {
      code: err.code,
      message: ownMessage(err),
      ...(err.field ? { field: err.field } : {}),
      ...(err.fix ? { fix: err.fix } : {}),
    };
  }
  return { code: 'FAILED', message: err instanceof Error ? err.message : String(err) };
}

/** The events a finished record replays to a client that subscribes late (or live, at the end). */
export function finalEvents(record: JobRecord): JobEvent[] {
  if (record.state === 'cancelled') return [{ type: 'cancelled' }];
  if (record.state === 'failed') return [{ type: 'failed', error: record.error ?? { code: 'FAILED', message: 'failed' } }];
  const images: JobEvent[] = Array.from({ length: record.images }, (_, index) => ({ type: 'image', index }));
  return [...images, { type: 'done', record }];
}

/** The record of a job cancelled before it started (no images). */
export function cancelledRecord(request: JobRequest): JobRecord {
  return {
    id: request.id,
    model: request.model,
    state: 'cancelled',
    createdAt: request.createdAt,
    startedAt: null,
    finishedAt: Date.now(),
    images: 0,
  };
}
