/**
 * A BullMQ worker: takes jobs from Redis, runs them on the models loaded in this process (JobRunner), writes the
 * result to the Redis job store once. What makes a job reach its client exactly once:
 *   - the seed is fixed at submission, so a rerun makes the same images;
 *   - a killed worker stops renewing its job's lock; BullMQ's stalled-job check (in any other worker) puts the job
 *     back in the queue after at most ~2 lock durations;
 *   - the result is written by one Lua script only when the job has no final record yet, and a worker that finds
 *     a record already written (it died after writing, before BullMQ heard) ends the job without running it.
 * Cancellation: the API node sets divbind:cancel:<id> and publishes the id; the worker running it aborts at the
 * next denoising step. On SIGTERM running jobs get the grace period, then go back to the queue.
 */
import { type Job, UnrecoverableError, WaitingError, Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { type JobRequest, cancelledRecord } from './jobs';
import { BULL_PREFIX, CANCEL_CHANNEL, QUEUE_NAME, cancelKey, connectRedis, connectionOptions } from './redis';
import { RedisStore } from './redis-store';
import type { AbortReason, JobRunner } from './runner';

export interface RedisWorkerOptions {
  concurrency: number;
  /** BullMQ lock duration: a job whose worker is silent this long is given to another worker. */
  lockMs: number;
  resultTtlSeconds: number;
  /** One line per job start and end. */
  log(message: string): void;
}

/** A job that stalled this many times (its worker died each time) fails instead of killing more workers. */
const MAX_STALLED = 3;

export class RedisJobWorker {
  private readonly controllers = new Map<string, AbortController>();
  private worker!: Worker<JobRequest>;

  private constructor(
    private readonly runner: JobRunner,
    private readonly redis: Redis,
    private readonly subscriber: Redis,
    private readonly store: RedisStore,
    private readonly log: (message: string) => void,
  ) {}

  static async start(url: string, runner: JobRunner, options: RedisWorkerOptions): Promise<RedisJobWorker> {
    const redis = await connectRedis(url, 'worker');
    const subscriber = await connectRedis(url, 'worker');
    const self = new RedisJobWorker(runner, redis, subscriber, new RedisStore(redis, options.resultTtlSeconds), options.log);
    subscriber.on('message', (_channel: string, id: string) => self.controllers.get(id)?.abort('cancelled' satisfies AbortReason));
    await subscriber.subscribe(CANCEL_CHANNEL);
    self.worker = new Worker<JobRequest>(QUEUE_NAME, (job, token) => self.process(job, token), {
      connection: { url, ...connectionOptions('worker') },
      prefix: BULL_PREFIX,
      concurrency: options.concurrency,
      lockDuration: options.lockMs,
      stalledInterval: options.lockMs,
      maxStalledCount: MAX_STALLED,
    });
    // A lost lock means another worker may run the job now: stop ours (the result would be a duplicate anyway).
    self.worker.on('lockRenewalFailed', (ids: string[]) => {
      for (const id of ids) self.controllers.get(id)?.abort('lock-lost' satisfies AbortReason);
    });
    // Redis going away is reported here while ioredis reconnects; jobs resume when it is back.
    self.worker.on('error', () => {});
    await self.worker.waitUntilReady();
    return self;
  }

  get activeJobs(): number {
    return this.controllers.size;
  }

  private async process(job: Job<JobRequest>, token: string | undefined): Promise<{ state: string }> {
    const request = job.data;
    const existing = await this.store.record(request.id);
    if (existing) {
      this.log(`job ${request.id}: already ${existing.state} (an earlier run wrote its result); not run again`);
      return { state: existing.state };
    }
    if ((await this.redis.exists(cancelKey(request.id))) === 1) {
      await this.store.finish(cancelledRecord(request), []);
      this.log(`job ${request.id}: cancelled before it started`);
      return { state: 'cancelled' };
    }
    this.log(`job ${request.id}: started (model ${request.model}, attempt ${job.attemptsStarted})`);
    const controller = new AbortController();
    this.controllers.set(request.id, controller);
    try {
      const outcome = await this.runner.run(request, {
        signal: controller.signal,
        onProgress: (progress) => {
          // Progress is advisory: a failed write (Redis restarting) must not fail the job.
          job.updateProgress(progress).catch(() => {});
          this.store.observeStep(progress.seconds).catch(() => {});
        },
      });
      if (outcome === 'interrupted') return await this.requeue(job, token, controller.signal.reason as AbortReason);
      const written = await this.store.finish(outcome.record, outcome.images);
      const seconds = ((outcome.record.finishedAt - (outcome.record.startedAt ?? outcome.record.finishedAt)) / 1000).toFixed(1);
      this.log(`job ${request.id}: ${outcome.record.state} in ${seconds} s${written ? '' : ' (a result was written already; this one was dropped)'}`);
      if (outcome.record.state === 'failed') throw new UnrecoverableError(outcome.record.error?.message ?? 'failed');
      return { state: outcome.record.state };
    } finally {
      this.controllers.delete(request.id);
    }
  }

  /** Shutdown: back to the queue for another worker. A lost lock: the job is someone else's now. */
  private async requeue(job: Job<JobRequest>, token: string | undefined, reason: AbortReason): Promise<never> {
    this.log(`job ${job.id}: ${reason === 'shutdown' ? 'back to the queue (shutdown)' : 'stopped (its lock was lost)'}`);
    if (reason === 'shutdown') {
      await job.moveToWait(token);
      throw new WaitingError();
    }
    throw new Error(`job ${job.id}: the lock was lost (another worker took the job)`);
  }

  /**
   * Stops taking jobs; running jobs get `graceMs` to finish, then go back to the queue (another worker, or this
   * one after a restart, runs them from the start with the same seed).
   */
  async close(graceMs: number): Promise<void> {
    const timer = setTimeout(() => {
      for (const controller of this.controllers.values()) controller.abort('shutdown' satisfies AbortReason);
    }, graceMs);
    await this.worker.close();
    clearTimeout(timer);
    await this.subscriber.quit().catch(() => this.subscriber.disconnect());
    await this.redis.quit().catch(() => this.redis.disconnect());
  }
}
