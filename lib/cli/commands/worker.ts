/**
 * `divbind-native worker --redis URL`: runs jobs from the BullMQ queue that `serve --redis URL` API nodes fill,
 * on the models loaded here (the same --model/--models names as the API nodes). Start one per machine (or per
 * core group with --threads); a killed worker's job goes to another after about twice --lock-timeout. SIGTERM
 * lets running jobs finish for --grace seconds, then requeues them, and exits 0. See docs/serve.md.
 */
import { Command } from 'commander';
import { DivbindError } from '../../errors';
import { type WorkerFlags, addWorkerFlags, workerConfig } from '../../server/flags';
import { checkRedisUrl, redactUrl } from '../../server/redis';
import { startWorker } from '../../server/serve';
import { handleCliError } from '../errors';
import { EXIT } from '../exit-codes';

const log = (message: string) => process.stderr.write(`${message}\n`);

/**
 * Replaces the CLI's default signal handling (exit 130 at once) for a long-running command: the first SIGTERM or
 * SIGINT stops gracefully and exits 0, a second one exits 130 at once.
 */
export function onShutdownSignal(stop: () => Promise<void>, write: (message: string) => void): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals) => {
    if (stopping) process.exit(EXIT.INTERRUPTED);
    stopping = true;
    write(`${signal}: shutting down (a second ${signal} stops at once)`);
    stop().then(
      () => {
        write('stopped');
        process.exit(EXIT.OK);
      },
      (err: unknown) => handleCliError(err),
    );
  };
  process.removeAllListeners('SIGTERM');
  process.removeAllListeners('SIGINT');
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
}

export function makeWorkerCommand(): Command {
  const command = new Command('worker')
    .description('Run jobs from the Redis (BullMQ) queue of `serve --redis URL` API nodes')
    .requiredOption('--redis <url>', 'the Redis the API nodes queue jobs in (redis://HOST:6379)');
  return addWorkerFlags(command).action(async (flags: WorkerFlags) => {
    try {
      if (flags.redis === undefined) throw new DivbindError('BAD_INPUT', 'worker needs --redis URL', { field: '--redis' });
      const config = { ...workerConfig(flags), redisUrl: checkRedisUrl(flags.redis) };
      const worker = await startWorker(config, log);
      log(
        `divbind-native worker: ready on ${redactUrl(config.redisUrl)} (${config.concurrency} job(s) at a time; models: ${config.models.map((m) => m.name).join(', ')})`,
      );
      onShutdownSignal(() => worker.close(), log);
    } catch (err) {
      handleCliError(err);
    }
  });
}
