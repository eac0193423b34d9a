/**
 * Redis connections and names shared by API nodes and workers. Two kinds of connection:
 *   - 'api': fails fast while Redis is away (no offline queue), so a submission gets 503 instead of hanging, and a
 *     202 always means the job is in Redis;
 *   - 'worker': waits for Redis to come back (offline queue, no retry limit), so a job that finishes during a
 *     Redis restart still writes its result.
 * Both reconnect forever, at most 2 s apart.
 */
import { Redis } from 'ioredis';
import { DivbindError } from '../errors';

/** BullMQ queue name and key prefix: keys are divbind:bull:generate:*, apart from the job store's divbind:*. */
export const QUEUE_NAME = 'generate';
export const BULL_PREFIX = 'divbind:bull';
/** Pub/sub channel of cancellations (message: job id), and the key that marks a job cancelled. */
export const CANCEL_CHANNEL = 'divbind:cancel';
export const cancelKey = (id: string) => `divbind:cancel:${id}`;

export type ConnectionRole = 'api' | 'worker';

const retryStrategy = (times: number) => Math.min(200 * times, 2000);

export interface RoleOptions {
  enableOfflineQueue: boolean;
  maxRetriesPerRequest: number | null;
  retryStrategy: (times: number) => number;
}

/** ioredis options for a role (BullMQ takes the same, with `url`). */
export function connectionOptions(role: ConnectionRole): RoleOptions {
  return role === 'api'
    ? { enableOfflineQueue: false, maxRetriesPerRequest: 1, retryStrategy }
    : { enableOfflineQueue: true, maxRetriesPerRequest: null, retryStrategy };
}

/** Checks a redis:// or rediss:// URL before anything connects. */
export function checkRedisUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new DivbindError('BAD_INPUT', `Expected a Redis URL for --redis but received ${JSON.stringify(url)}`, {
      field: '--redis',
      fix: 'e.g. --redis redis://127.0.0.1:6379',
    });
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    throw new DivbindError('BAD_INPUT', `Expected a redis:// or rediss:// URL for --redis but received ${parsed.protocol}//…`, {
      field: '--redis',
      fix: 'e.g. --redis redis://127.0.0.1:6379',
    });
  }
  return url;
}

/** A connected client; rejects when Redis cannot be reached within `timeoutMs`. */
export async function connectRedis(url: string, role: ConnectionRole, timeoutMs = 10_000): Promise<Redis> {
  const redis = new Redis(url, { ...connectionOptions(role), lazyConnect: true });
  // ioredis reports errors while reconnecting as 'error' events; the state is read where it matters (readyz).
  redis.on('error', () => {});
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      redis.connect(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } catch (err) {
    redis.disconnect();
    throw new DivbindError('BAD_INPUT', `cannot reach Redis at ${redactUrl(url)}: ${(err as Error).message}`, {
      field: '--redis',
      fix: 'start redis-server, or check the URL and password',
    });
  } finally {
    clearTimeout(timer);
  }
  return redis;
}

/** The URL without its password, for messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '<invalid url>';
  }
}
