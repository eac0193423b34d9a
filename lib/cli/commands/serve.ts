/**
 * `divbind-native serve`: the HTTP service (lib/server): the native API under /v1, AUTOMATIC1111's
 * /sdapi/v1/txt2img and /sdapi/v1/progress, probes and Prometheus metrics. Embedded in-process queue by default;
 * `--redis URL` queues jobs in BullMQ for any number of `divbind-native worker` processes, and `--no-worker`
 * makes this process a pure API node. SIGTERM (or Ctrl-C) stops it gracefully and exits 0; a second signal
 * exits at once with 130. See docs/serve.md.
 */
import { Command } from 'commander';
import { DEFAULTS } from '../../server/config';
import { type ServeFlags, addWorkerFlags, serveConfig } from '../../server/flags';
import { redactUrl } from '../../server/redis';
import { startServer } from '../../server/serve';
import { handleCliError } from '../errors';
import { onShutdownSignal } from './worker';

const log = (message: string) => process.stderr.write(`${message}\n`);

export function makeServeCommand(): Command {
  const command = new Command('serve')
    .description('HTTP service: /v1/generations with live progress (SSE), A1111 /sdapi/v1/txt2img, scale-out on Redis with BullMQ')
    .option('--port <n>', `port to listen on, 0 = any free port (default: ${DEFAULTS.port})`)
    .option('--host <addr>', `address to listen on (default: ${DEFAULTS.host}; 0.0.0.0 for every interface)`)
    .option('--redis <url>', 'queue jobs in BullMQ on this Redis (redis://HOST:6379) instead of in this process')
    .option('--no-worker', 'run no jobs here: a pure API node (needs --redis and `divbind-native worker` processes)')
    .option('--max-queue <n>', `jobs waiting before submissions get 429 (default: ${DEFAULTS.maxQueue})`)
    .option('--api-key <key>', 'require this key (Authorization: Bearer <key>); default: env DIVBIND_API_KEY, else none')
    .option('--rate-limit <n>', `submissions per client per minute, 0 = no limit (default: ${DEFAULTS.rateLimit})`)
    .option('--cors <origins>', 'allow these origins (comma-separated) by CORS; default: CORS off');
  return addWorkerFlags(command).action(async (flags: ServeFlags) => {
    try {
      const config = serveConfig(flags);
      const server = await startServer(config, log);
      const queue = config.redisUrl
        ? `BullMQ on ${redactUrl(config.redisUrl)}${config.noWorker ? ', no worker here' : `, ${config.concurrency} job(s) at a time here`}`
        : `embedded queue, ${config.concurrency} job(s) at a time`;
      log(`divbind-native serve: listening on ${server.url} (${queue}; models: ${config.models.map((m) => m.name).join(', ')})`);
      onShutdownSignal(() => server.close(), log);
    } catch (err) {
      handleCliError(err);
    }
  });
}
