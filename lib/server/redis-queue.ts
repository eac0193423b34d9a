/**
 * The BullMQ queue as an API node sees it. Jobs wait in Redis (BullMQ list divbind:bull:generate:wait) and run
 * on any worker process (redis-worker.ts; this process too unless --no-worker); results are read from the Redis
 * job store (redis-store.ts), so any API node answers for any job. Live events come from BullMQ's event stream
 * (QueueEvents) and, as a safety net for events missed while Redis restarts, from polling the store every 2 s
 * for the jobs someone is listening to.
 */
import { Queue, QueueEvents } from 'bullmq';
import type { Redis } from 'ioredis';
import type { DivBindPipeline } from '../index';
import { HttpError } from './http-errors';
import { type JobError, type JobEvent, type JobProgress, type JobRequest, type JobStatus, cancelledRecord, finalEvents } from './jobs';
import { CANCEL_WAIT_MS, EventHub, RETRY_AFTER_SECONDS, settledWithin, statusOfRecord, type JobQueue, type QueueOverview } from './queue';
import { BULL_PREFIX, CANCEL_CHANNEL, QUEUE_NAME, cancelKey, connectRedis, connectionOptions } from './redis';
import { RedisStore } from './redis-store';
import type { JobStore } from './store';
import type { RedisJobWorker } from './redis-worker';

const POLL_MS = 2000;

function unavailable(err: unknown): HttpError {
  return new HttpError(503, 'UNAVAILABLE', `the job queue (Redis) is unavailable: ${(err as Error).message}`, {
    fix: 'retry after the Retry-After seconds',
    headers: { 'retry-after': String(RETRY_AFTER_SECONDS) },
  });
}

/** Runs Redis work; a failure (Redis away or restarting) becomes 503 with Retry-After. */
async function guard<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    throw err instanceof HttpError ? err : unavailable(err);
  }
}

/** The job store as the routes use it: Redis failures are 503, not 500. */
function guardedStore(store: RedisStore): JobStore {
  return {
    finish: (record, images) => guard(() => store.finish(record, images)),
    record: (id) => guard(() => store.record(id)),
    image: (id, n) => guard(() => store.image(id, n)),
    observeStep: (seconds) => guard(() => store.observeStep(seconds)),
    stats: () => guard(() => store.stats()),
  };
}

function isProgress(value: unknown): value is JobProgress {
  return typeof value === 'object' && value !== null && 'step' in value && 'steps' in value;
}

export interface RedisQueueOptions {
  maxQueue: number;
  resultTtlSeconds: number;
}

export class RedisQueue implements JobQueue {
  private readonly hub = new EventHub();
  readonly store: JobStore;
  private closing = false;
  private poller: NodeJS.Timeout | undefined;

  private constructor(
    private readonly redis: Redis,
    private readonly queue: Queue<JobRequest>,
    private readonly events: QueueEvents,
    private readonly results: RedisStore,
    readonly pipelines: ReadonlyMap<string, DivBindPipeline>,
    private readonly worker: RedisJobWorker | null,
    private readonly options: RedisQueueOptions,
  ) {
    this.store = guardedStore(results);
  }

  static async open(
    url: string,
    options: RedisQueueOptions,
    pipelines: ReadonlyMap<string, DivBindPipeline>,
    worker: RedisJobWorker | null,
  ): Promise<RedisQueue> {
    const redis = await connectRedis(url, 'api');
    const queue = new Queue<JobRequest>(QUEUE_NAME, {
      connection: { url, ...connectionOptions('api') },
      prefix: BULL_PREFIX,
    });
    const events = new QueueEvents(QUEUE_NAME, {
      connection: { url, ...connectionOptions('worker') },
      prefix: BULL_PREFIX,
    });
    queue.on('error', () => {});
    events.on('error', () => {});
    await Promise.all([queue.waitUntilReady(), events.waitUntilReady()]);
    const self = new RedisQueue(redis, queue, events, new RedisStore(redis, options.resultTtlSeconds), pipelines, worker, options);
    self.listen();
    return self;
  }

  async submit(request: JobRequest): Promise<void> {
    if (this.closing)
      throw new HttpError(503, 'UNAVAILABLE', 'the server is shutting down', {
        headers: { 'retry-after': String(RETRY_AFTER_SECONDS) },
      });
    let waiting: number;
    try {
      waiting = await this.queue.getWaitingCount();
    } catch (err) {
      throw unavailable(err);
    }
    // Checked per submission: with several API nodes the bound is approximate (off by the racing submissions).
    if (waiting >= this.options.maxQueue) {
      throw new HttpError(429, 'QUEUE_FULL', `the queue is full (${waiting} jobs waiting)`, {
        fix: 'retry after the Retry-After seconds',
        headers: { 'retry-after': String(RETRY_AFTER_SECONDS) },
      });
    }
    const keep = { age: this.options.resultTtlSeconds };
    try {
      await this.queue.add('generate', request, {
        jobId: request.id,
        attempts: 1,
        removeOnComplete: keep,
        removeOnFail: keep,
      });
    } catch (err) {
      throw unavailable(err);
    }
  }

  status(id: string): Promise<JobStatus | null> {
    return guard(() => this.readStatus(id));
  }

  private async readStatus(id: string): Promise<JobStatus | null> {
    const record = await this.results.record(id);
    if (record) return statusOfRecord(record);
    const job = await this.queue.getJob(id);
    if (!job) return null;
    const base = { id, model: job.data.model, createdAt: job.data.createdAt };
    const state = await job.getState();
    if (state === 'active') return { ...base, state: 'running', ...(isProgress(job.progress) ? { progress: job.progress } : {}) };
    if (state === 'failed') return { ...base, state: 'failed', error: failureOf(job.failedReason) };
    if (state === 'completed' || state === 'unknown') {
      // Finished between the two reads: the record is there now.
      const late = await this.results.record(id);
      return late ? statusOfRecord(late) : null;
    }
    const position = await this.position(id);
    return { ...base, state: 'queued', ...(position !== undefined ? { position } : {}) };
  }

  cancel(id: string): Promise<JobStatus | null> {
    return guard(() => this.cancelJob(id));
  }

  private async cancelJob(id: string): Promise<JobStatus | null> {
    const current = await this.readStatus(id);
    if (!current || current.record) return current;
    // Marked first: a worker that takes the job from now on sees the mark; one running it hears the message.
    await this.redis.set(cancelKey(id), '1', 'EX', this.options.resultTtlSeconds);
    await this.redis.publish(CANCEL_CHANNEL, id);
    const job = await this.queue.getJob(id);
    if (job && (await this.queue.remove(id)) === 1) {
      if (await this.results.finish(cancelledRecord(job.data), [])) this.hub.emit(id, { type: 'cancelled' });
    } else {
      const ended = new Promise<void>((resolve) => {
        const off = this.hub.subscribe(id, (e) => {
          if (e.type === 'done' || e.type === 'failed' || e.type === 'cancelled') resolve();
        });
        setTimeout(off, CANCEL_WAIT_MS);
      });
      await settledWithin(ended, CANCEL_WAIT_MS);
    }
    return this.readStatus(id);
  }

  subscribe(id: string, listener: (event: JobEvent) => void): () => void {
    return this.hub.subscribe(id, listener);
  }

  overview(): Promise<QueueOverview> {
    return guard(() => this.readOverview());
  }

  private async readOverview(): Promise<QueueOverview> {
    const [queued, active, workers] = await Promise.all([this.queue.getWaitingCount(), this.queue.getActive(), this.queue.getWorkersCount()]);
    const running = active
      .map((job) => ({
        id: String(job.id),
        model: (job.data as JobRequest).model,
        createdAt: (job.data as JobRequest).createdAt,
        startedAt: job.processedOn ?? null,
        progress: isProgress(job.progress) ? job.progress : null,
      }))
      .sort((a, b) => (a.startedAt ?? 0) - (b.startedAt ?? 0));
    return { queued, running, workers };
  }

  async ready(): Promise<{ ok: boolean; reason?: string }> {
    if (this.closing) return { ok: false, reason: 'shutting down' };
    try {
      await this.redis.ping();
      return { ok: true };
    } catch (err) {
      return { ok: false, reason: `Redis: ${(err as Error).message}` };
    }
  }

  async close(graceMs: number): Promise<void> {
    this.closing = true;
    clearInterval(this.poller);
    await this.worker?.close(graceMs);
    await Promise.allSettled([this.events.close(), this.queue.close()]);
    await this.redis.quit().catch(() => this.redis.disconnect());
  }

  /** Jobs ahead of `id` in the wait list (BullMQ pushes new jobs on the left and takes from the right). */
  private async position(id: string): Promise<number | undefined> {
    const key = this.queue.keys.wait;
    const replies = await this.redis.multi().lpos(key, id).llen(key).exec();
    const index = replies?.[0]?.[1] as number | null;
    const length = replies?.[1]?.[1] as number;
    return index === null || index === undefined ? undefined : length - 1 - index;
  }

  private listen(): void {
    const local = (id: string, event: JobEvent) => {
      if (this.hub.has(id)) this.hub.emit(id, event);
    };
    this.events.on('waiting', ({ jobId }) => local(jobId, { type: 'queued' }));
    this.events.on('active', ({ jobId }) => local(jobId, { type: 'running' }));
    this.events.on('progress', ({ jobId, data }) => {
      if (isProgress(data)) local(jobId, { type: 'step', progress: data });
    });
    this.events.on('completed', ({ jobId }) => void this.deliverFinal(jobId));
    this.events.on('removed', ({ jobId }) => void this.deliverFinal(jobId));
    this.events.on('failed', ({ jobId, failedReason }) => void this.deliverFinal(jobId, failedReason));
    this.poller = setInterval(() => void this.poll(), POLL_MS);
    this.poller.unref();
  }

  private async deliverFinal(id: string, failedReason?: string): Promise<void> {
    if (!this.hub.has(id)) return;
    const record = await this.results.record(id).catch(() => null);
    if (record) for (const event of finalEvents(record)) this.hub.emit(id, event);
    else if (failedReason !== undefined) this.hub.emit(id, { type: 'failed', error: failureOf(failedReason) });
  }

  private async poll(): Promise<void> {
    const ids = this.hub.ids();
    const records = await this.results.records(ids).catch(() => []);
    records.forEach((record) => {
      if (record) for (const event of finalEvents(record)) this.hub.emit(record.id, event);
    });
  }
}

/** A BullMQ failure without our record: the job stalled too often (its workers died), or Redis lost it. */
function failureOf(reason: string | undefined): JobError {
  const message = reason ?? 'failed';
  return { code: /stalled/i.test(message) ? 'STALLED' : 'FAILED', message };
}
