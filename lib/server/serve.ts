/**
 * Starting and stopping what `serve` and `worker` run. serve: models (unless --no-worker), the queue (embedded,
 * or BullMQ with a worker in this process), the HTTP app. worker: models and a BullMQ worker, no HTTP.
 * Shutdown order: stop accepting (the HTTP server closes; event streams and waiting txt2img requests end), then
 * running jobs finish within the grace period or are requeued (Redis) / cancelled (embedded), then models are
 * released.
 */
import type { FastifyInstance } from 'fastify';
import type { DivBindPipeline } from '../index';
import type { Redis } from 'ioredis';
import { buildApp } from './app';
import type { ServeConfig, WorkerConfig } from './config';
import { EmbeddedQueue } from './embedded-queue';
import { loadModels, releaseModels } from './models';
import type { JobQueue } from './queue';
import { connectRedis } from './redis';
import { RedisQueue } from './redis-queue';
import { RedisJobWorker } from './redis-worker';
import { RequestChecker } from './requests';
import { JobRunner } from './runner';
import { EventStreams } from './sse';
import { MemoryStore } from './store';

// eslint-disable-next-line @typescript-eslint/no-var-requires
export const VERSION = (require('../../../package.json') as { version: string }).version;

/** PNG bytes the embedded server keeps in memory at most; the oldest results go first. */
export const MEMORY_RESULT_BYTES = 512 * 1024 * 1024;

export interface RunningServer {
  url: string;
  app: FastifyInstance;
  close(): Promise<void>;
}

async function openQueue(config: ServeConfig, runner: JobRunner, pipelines: Map<string, DivBindPipeline>, log: (message: string) => void): Promise<JobQueue> {
  if (!config.redisUrl) {
    return new EmbeddedQueue(new MemoryStore(config.resultTtlSeconds * 1000, MEMORY_RESULT_BYTES), runner, pipelines, config, log);
  }
  const worker = config.noWorker
    ? null
    : await RedisJobWorker.start(config.redisUrl, runner, {
        concurrency: config.concurrency,
        lockMs: config.lockMs,
        resultTtlSeconds: config.resultTtlSeconds,
        log,
      });
  return RedisQueue.open(config.redisUrl, config, pipelines, worker);
}

/**
 * Starts `serve`. `preloaded` models (by configured name) are used instead of loading them, and are not released
 * on close: for embedding the server in a process that already has the models.
 */
export async function startServer(config: ServeConfig, log: (message: string) => void, preloaded?: Map<string, DivBindPipeline>): Promise<RunningServer> {
  const pipelines: Map<string, DivBindPipeline> = config.noWorker
    ? new Map()
    : (preloaded ?? (await loadModels(config.models, { threads: config.threads, prepare: config.prepare, log })));
  const release = () => (preloaded ? Promise.resolve() : releaseModels(pipelines));
  let queue: JobQueue | undefined;
  let rateLimitRedis: Redis | undefined;
  try {
    queue = await openQueue(config, new JobRunner(pipelines, VERSION), pipelines, log);
    if (config.redisUrl && config.rateLimit > 0) rateLimitRedis = await connectRedis(config.redisUrl, 'api');
    const streams = new EventStreams();
    const app = await buildApp(
      {
        config,
        queue,
        checker: new RequestChecker(config.models, pipelines),
        streams,
        rateLimit: config.rateLimit > 0 ? { max: config.rateLimit, timeWindow: 60_000 } : false,
        version: VERSION,
      },
      { rateLimitRedis },
    );
    const url = await app.listen({ host: config.host, port: config.port });
    const opened = queue;
    return {
      url,
      app,
      close: async () => {
        await app.close();
        await opened.close(config.graceMs);
        await rateLimitRedis?.quit().catch(() => rateLimitRedis?.disconnect());
        await release();
      },
    };
  } catch (err) {
    await queue?.close(0).catch(() => {});
    rateLimitRedis?.disconnect();
    await release();
    throw err;
  }
}

export interface RunningWorker {
  close(): Promise<void>;
}

export async function startWorker(
  config: WorkerConfig & { redisUrl: string; resultTtlSeconds: number },
  log: (message: string) => void,
): Promise<RunningWorker> {
  const pipelines = await loadModels(config.models, { threads: config.threads, prepare: config.prepare, log });
  try {
    const worker = await RedisJobWorker.start(config.redisUrl, new JobRunner(pipelines, VERSION), {
      concurrency: config.concurrency,
      lockMs: config.lockMs,
      resultTtlSeconds: config.resultTtlSeconds,
      log,
    });
    return {
      close: async () => {
        await worker.close(config.graceMs);
        await releaseModels(pipelines);
      },
    };
  } catch (err) {
    await releaseModels(pipelines);
    throw err;
  }
}
