/**
 * The embedded queue: jobs wait in this process (FIFO) and run on the models loaded here, `concurrency` at a
 * time; results go to the in-memory store. Nothing survives a restart: on SIGTERM queued jobs are cancelled and
 * running ones get the grace period to finish, then are cancelled. Scale-out needs Redis (redis-queue.ts).
 */
import type { DivBindPipeline } from '../index';
import { HttpError } from './http-errors';
import { type JobProgress, type JobRecord, type JobRequest, type JobStatus, type JobEvent, cancelledRecord, finalEvents } from './jobs';
import { CANCEL_WAIT_MS, EventHub, RETRY_AFTER_SECONDS, settledWithin, statusOfRecord, type JobQueue, type QueueOverview } from './queue';
import type { AbortReason, JobRunner, RunOutcome } from './runner';
import type { MemoryStore } from './store';

interface Running {
  request: JobRequest;
  controller: AbortController;
  startedAt: number;
  progress: JobProgress | null;
  done: Promise<void>;
}

export class EmbeddedQueue implements JobQueue {
  private readonly waiting: JobRequest[] = [];
  private readonly running = new Map<string, Running>();
  private readonly hub = new EventHub();
  private closing = false;

  constructor(
    readonly store: MemoryStore,
    private readonly runner: JobRunner,
    readonly pipelines: ReadonlyMap<string, DivBindPipeline>,
    private readonly limits: { concurrency: number; maxQueue: number },
    /** One line per finished job. */
    private readonly log: (message: string) => void = () => {},
  ) {}

  async submit(request: JobRequest): Promise<void> {
    if (this.closing)
      throw new HttpError(503, 'UNAVAILABLE', 'the server is shutting down', {
        headers: { 'retry-after': String(RETRY_AFTER_SECONDS) },
      });
    if (this.waiting.length >= this.limits.maxQueue) {
      throw new HttpError(429, 'QUEUE_FULL', `the queue is full (${this.limits.maxQueue} jobs waiting)`, {
        fix: 'retry after the Retry-After seconds',
        headers: { 'retry-after': String(RETRY_AFTER_SECONDS) },
      });
    }
    this.waiting.push(request);
    this.pump();
  }

  async status(id: string): Promise<JobStatus | null> {
    const record = await this.store.record(id);
    if (record) return statusOfRecord(record);
    const running = this.running.get(id);
    if (running) {
      const { request, progress } = running;
      return {
        id,
        model: request.model,
        state: 'running',
        createdAt: request.createdAt,
        ...(progress ? { progress } : {}),
      };
    }
    const position = this.waiting.findIndex((r) => r.id === id);
    if (position < 0) return null;
    const request = this.waiting[position];
    return { id, model: request.model, state: 'queued', createdAt: request.createdAt, position };
  }

  async cancel(id: string): Promise<JobStatus | null> {
    const position = this.waiting.findIndex((r) => r.id === id);
    if (position >= 0) {
      const [request] = this.waiting.splice(position, 1);
      await this.end(
        {
          id,
          model: request.model,
          state: 'cancelled',
          createdAt: request.createdAt,
          startedAt: null,
          finishedAt: Date.now(),
          images: 0,
        },
        [],
      );
    } else {
      const running = this.running.get(id);
      running?.controller.abort('cancelled' satisfies AbortReason);
      // The job stops at its next denoising step; answer with its final state when that comes soon.
      if (running) await settledWithin(running.done, CANCEL_WAIT_MS);
    }
    return this.status(id);
  }

  subscribe(id: string, listener: (event: JobEvent) => void): () => void {
    return this.hub.subscribe(id, listener);
  }

  async overview(): Promise<QueueOverview> {
    const running = [...this.running.values()]
      .map((r) => ({
        id: r.request.id,
        model: r.request.model,
        createdAt: r.request.createdAt,
        startedAt: r.startedAt,
        progress: r.progress,
      }))
      .sort((a, b) => a.startedAt - b.startedAt);
    return { queued: this.waiting.length, running };
  }

  async ready(): Promise<{ ok: boolean; reason?: string }> {
    return this.closing ? { ok: false, reason: 'shutting down' } : { ok: true };
  }

  async close(graceMs: number): Promise<void> {
    this.closing = true;
    for (const request of this.waiting.splice(0)) {
      await this.end({ ...cancelledRecord(request), error: { code: 'SHUTDOWN', message: 'the server shut down before the job started' } }, []);
    }
    const all = Promise.all([...this.running.values()].map((r) => r.done));
    const timer = setTimeout(() => {
      for (const r of this.running.values()) r.controller.abort('shutdown' satisfies AbortReason);
    }, graceMs);
    await all;
    clearTimeout(timer);
  }

  /** Starts waiting jobs while there is a free slot. */
  private pump(): void {
    while (!this.closing && this.running.size < this.limits.concurrency && this.waiting.length > 0) {
      this.start(this.waiting.shift()!);
    }
  }

  private start(request: JobRequest): void {
    const controller = new AbortController();
    const entry: Running = { request, controller, startedAt: Date.now(), progress: null, done: Promise.resolve() };
    this.running.set(request.id, entry);
    this.hub.emit(request.id, { type: 'running' });
    const onProgress = (progress: JobProgress) => {
      entry.progress = progress;
      void this.store.observeStep(progress.seconds);
      this.hub.emit(request.id, { type: 'step', progress });
    };
    entry.done = this.runner
      .run(request, { signal: controller.signal, onProgress })
      .then((outcome) => this.settle(entry, outcome))
      .catch((err: unknown) => this.log(`job ${request.id}: could not be ended: ${(err as Error).message}`))
      .finally(() => {
        // Only now: status() finds the stored record first, so the job is never missing in between.
        this.running.delete(request.id);
        this.pump();
      });
  }

  /** Stores a run's end; a shutdown abort ends as cancelled (the embedded queue cannot requeue: nothing outlives it). */
  private async settle(entry: Running, outcome: RunOutcome | 'interrupted'): Promise<void> {
    const { request } = entry;
    const result: RunOutcome =
      outcome !== 'interrupted'
        ? outcome
        : {
            record: {
              id: request.id,
              model: request.model,
              state: 'cancelled',
              createdAt: request.createdAt,
              startedAt: entry.startedAt,
              finishedAt: Date.now(),
              images: 0,
              error: { code: 'SHUTDOWN', message: 'the server shut down while the job ran' },
            },
            images: [],
          };
    const seconds = ((result.record.finishedAt - entry.startedAt) / 1000).toFixed(1);
    this.log(`job ${request.id}: ${result.record.state} in ${seconds} s`);
    await this.end(result.record, result.images);
  }

  private async end(record: JobRecord, images: Buffer[]): Promise<void> {
    if (await this.store.finish(record, images)) {
      for (const event of finalEvents(record)) this.hub.emit(record.id, event);
    }
  }
}
