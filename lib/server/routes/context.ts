/** What the routes share: the queue, the request checks, the open event streams, the configuration. */
import type { ServeConfig } from '../config';
import type { JobQueue } from '../queue';
import type { RequestChecker } from '../requests';
import type { EventStreams } from '../sse';

export interface ServerContext {
  config: ServeConfig;
  queue: JobQueue;
  checker: RequestChecker;
  streams: EventStreams;
  /** Route config of @fastify/rate-limit for submissions; false = no limit. */
  rateLimit: { max: number; timeWindow: number } | false;
  version: string;
}
