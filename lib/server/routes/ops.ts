/**
 * Operations:
 *   GET /v1/models   the configured model names (what `model` may be), and whether this process has them loaded
 *   GET /healthz     the process answers (liveness; no key needed)
 *   GET /readyz      jobs can be accepted and run now: models loaded, Redis reachable, not shutting down
 *   GET /metrics     Prometheus text: queue depth, jobs by state, step latency histogram
 */
import type { FastifyInstance } from 'fastify';
import { renderMetrics } from '../metrics';
import type { ServerContext } from './context';

export function registerOpsRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.get('/v1/models', async () => {
    const overview = ctx.config.redisUrl ? await ctx.queue.overview().catch(() => null) : null;
    return {
      models: ctx.config.models.map((m) => {
        const pipeline = ctx.queue.pipelines.get(m.name);
        return {
          name: m.name,
          default: m.name === ctx.checker.defaultModel,
          loaded: pipeline !== undefined,
          ...(pipeline ? { guided: pipeline.canGuide } : {}),
        };
      }),
      ...(overview?.workers !== undefined ? { workers: overview.workers } : {}),
    };
  });

  app.get('/healthz', async () => ({ status: 'ok' }));

  app.get('/readyz', async (_request, reply) => {
    const ready = await ctx.queue.ready();
    return reply.code(ready.ok ? 200 : 503).send({ ready: ready.ok, ...(ready.reason ? { reason: ready.reason } : {}) });
  });

  app.get('/metrics', async (_request, reply) => {
    const [overview, stats] = await Promise.all([ctx.queue.overview(), ctx.queue.store.stats()]);
    const text = renderMetrics({
      queued: overview.queued,
      running: overview.running.length,
      workers: overview.workers,
      ...stats,
    });
    return reply.type('text/plain; version=0.0.4; charset=utf-8').send(text);
  });
}
