/**
 * Command-line flags of `serve` and `worker`, parsed strictly (a bad value is a DivbindError 'BAD_INPUT' naming
 * the flag) into the configuration. The flags both commands share are defined once here.
 */
import { type Command, Option } from 'commander';
import { DivbindError } from '../errors';
import { defaultModelDir } from '../index';
import { integer } from '../options/kinds';
import { THREADS } from '../options/index';
import { DEFAULTS, type ServeConfig, type WorkerConfig, modelsFromFlags } from './config';
import { checkRedisUrl } from './redis';

export interface WorkerFlags {
  model?: string;
  models?: string;
  concurrency?: string;
  threads?: string;
  prepare?: boolean;
  grace?: string;
  lockTimeout?: string;
  resultTtl?: string;
  redis?: string;
}

export interface ServeFlags extends WorkerFlags {
  port?: string;
  host?: string;
  worker: boolean;
  maxQueue?: string;
  apiKey?: string;
  rateLimit?: string;
  cors?: string;
}

/** The flags a worker process needs (serve has them too: it runs a worker unless --no-worker). */
export function addWorkerFlags(command: Command): Command {
  return command
    .option('--model <dir>', 'model folder, served under its folder name (default: the bundled model)')
    .option('--models <list>', 'several models: name=DIR,name=DIR (requests choose one by name)')
    .option('--concurrency <n>', `jobs this process runs at once (default: ${DEFAULTS.concurrency})`)
    .addOption(new Option('--threads <n>', 'onnxruntime threads per model session (default: the number of cores)'))
    .option('--prepare', 'prepare the UNet for guided modes when it is not prepared yet (once per model; the bundled model always does)')
    .option('--grace <seconds>', `on SIGTERM, how long running jobs may take to finish before they are requeued (default: ${DEFAULTS.graceSeconds})`)
    .option('--lock-timeout <seconds>', `Redis: a job whose worker is silent this long goes to another worker (default: ${DEFAULTS.lockSeconds})`)
    .option('--result-ttl <seconds>', `how long results (PNGs, logs) are kept (default: ${DEFAULTS.resultTtlSeconds})`);
}

const int = (flag: string, value: string | undefined, min: number, max: number, fallback: number): number =>
  value === undefined ? fallback : integer(min, max).parse!(value, flag);

export function workerConfig(flags: WorkerFlags): WorkerConfig & { resultTtlSeconds: number } {
  return {
    models: modelsFromFlags(flags, defaultModelDir),
    concurrency: int('--concurrency', flags.concurrency, 1, 256, DEFAULTS.concurrency),
    ...(flags.threads !== undefined ? { threads: THREADS.parse!(flags.threads, '--threads') } : {}),
    ...(flags.prepare ? { prepare: true } : {}),
    graceMs: int('--grace', flags.grace, 0, 24 * 3600, DEFAULTS.graceSeconds) * 1000,
    lockMs: int('--lock-timeout', flags.lockTimeout, 1, 3600, DEFAULTS.lockSeconds) * 1000,
    resultTtlSeconds: int('--result-ttl', flags.resultTtl, 60, 30 * 24 * 3600, DEFAULTS.resultTtlSeconds),
  };
}

export function serveConfig(flags: ServeFlags): ServeConfig {
  const redisUrl = flags.redis === undefined ? undefined : checkRedisUrl(flags.redis);
  if (!flags.worker && redisUrl === undefined) {
    throw new DivbindError('BAD_INPUT', '--no-worker needs --redis URL: without Redis this process is the only worker', {
      field: '--no-worker',
      fix: 'add --redis redis://HOST:6379 and start workers with `divbind-native worker --redis …`, or drop --no-worker',
    });
  }
  const apiKey = flags.apiKey ?? process.env.DIVBIND_API_KEY;
  return {
    ...workerConfig(flags),
    host: flags.host ?? DEFAULTS.host,
    port: int('--port', flags.port, 0, 65535, DEFAULTS.port),
    ...(redisUrl !== undefined ? { redisUrl } : {}),
    noWorker: !flags.worker,
    ...(apiKey ? { apiKey } : {}),
    maxQueue: int('--max-queue', flags.maxQueue, 1, 1_000_000, DEFAULTS.maxQueue),
    rateLimit: int('--rate-limit', flags.rateLimit, 0, 1_000_000, DEFAULTS.rateLimit),
    corsOrigins:
      flags.cors === undefined
        ? []
        : flags.cors
            .split(',')
            .map((s) => s.trim())
            .filter((s) => s.length > 0),
  };
}
