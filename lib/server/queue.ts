/**
 * The job queue as the HTTP layer uses it, with two implementations: the embedded in-process queue
 * (embedded-queue.ts) and BullMQ on Redis (redis-queue.ts). Both give the same states, positions, progress and
 * events; only where jobs wait and run differs.
 */
import type { DivBindPipeline } from '../index';
import type { JobEvent, JobProgress, JobRecord, JobRequest, JobStatus } from './jobs';
import type { JobStore } from './store';

export interface RunningJob {
  id: string;
  model: string;
  createdAt: number;
  startedAt: number | null;
  progress: JobProgress | null;
}

export interface QueueOverview {
  queued: number;
  /** Running jobs, oldest first. */
  running: RunningJob[];
  /** Worker processes connected (Redis mode). */
  workers?: number;
}

export interface JobQueue {
  readonly store: JobStore;
  /** Queues a checked job; HttpError 429 (Retry-After) when the queue is full, 503 when it cannot be reached. */
  submit(request: JobRequest): Promise<void>;
  status(id: string): Promise<JobStatus | null>;
  /** Cancels a queued or running job (a running one stops within one denoising step); null for an unknown id. */
  cancel(id: string): Promise<JobStatus | null>;
  /** Live events of one job; returns the unsubscribe function. A listener gets at most one final event. */
  subscribe(id: string, listener: (event: JobEvent) => void): () => void;
  overview(): Promise<QueueOverview>;
  /** Whether jobs can be accepted and run now, and if not why. */
  ready(): Promise<{ ok: boolean; reason?: string }>;
  /** Models loaded in this process (empty on a pure API node). */
  readonly pipelines: ReadonlyMap<string, DivBindPipeline>;
  /** Stops accepting; running jobs get `graceMs` to finish, then are requeued (Redis) or cancelled; closes. */
  close(graceMs: number): Promise<void>;
}

/** How long a client should wait before retrying a refused submission, in seconds. */
export const RETRY_AFTER_SECONDS = 5;

/** Per-job event fan-out inside one process. */
export class EventHub {
  private readonly listeners = new Map<string, Set<(event: JobEvent) => void>>();

  subscribe(id: string, listener: (event: JobEvent) => void): () => void {
    let set = this.listeners.get(id);
    if (!set) {
      set = new Set();
      this.listeners.set(id, set);
    }
    let ended = false;
    const once = (event: JobEvent) => {
      if (ended) return;
      if (event.type === 'done' || event.type === 'failed' || event.type === 'cancelled') {
        ended = true;
        unsubscribe();
      }
      listener(event);
    };
    set.add(once);
    const unsubscribe = () => {
      const current = this.listeners.get(id);
      current?.delete(once);
      if (current?.size === 0) this.listeners.delete(id);
    };
    return unsubscribe;
  }

  emit(id: string, event: JobEvent): void {
    for (const listener of [...(this.listeners.get(id) ?? [])]) listener(event);
  }

  /** Job ids someone listens to. */
  ids(): string[] {
    return [...this.listeners.keys()];
  }

  has(id: string): boolean {
    return this.listeners.has(id);
  }
}

/** How long DELETE waits for a running job to reach its next step before answering with the current state. */
export const CANCEL_WAIT_MS = 5000;

/** Resolves when `promise` settles or after `ms`, whichever comes first. */
export async function settledWithin(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  await Promise.race([
    promise.then(
      () => undefined,
      () => undefined,
    ),
    timeout,
  ]);
  clearTimeout(timer);
}

export function statusOfRecord(record: JobRecord): JobStatus {
  return {
    id: record.id,
    model: record.model,
    state: record.state,
    createdAt: record.createdAt,
    ...(record.error ? { error: record.error } : {}),
    record,
  };
}
