/**
 * The fastify application: limits, key check, rate limit, CORS (off unless origins are given), one error shape,
 * and the routes. Request order: key (401) → rate limit (429) → body size (413) and JSON (400) → schema (400,
 * naming the field) → the library's checks (400/422) → the queue (429 when full). A request refused anywhere on
 * the way is never queued, so it never reaches a worker.
 */
import cors from '@fastify/cors';
import rateLimit from '@fastify/rate-limit';
import Fastify, { type FastifyError, type FastifyInstance } from 'fastify';
import type { Redis } from 'ioredis';
import { requireApiKey } from './auth';
import { HttpError, toHttpError } from './http-errors';
import { registerA1111Routes } from './routes/a1111';
import type { ServerContext } from './routes/context';
import { registerOpsRoutes } from './routes/ops';
import { registerV1Routes } from './routes/v1';
import { requestError } from './validation';

/** Body limit of every route but /v1/generations (which takes uploaded latents). */
export const BODY_LIMIT = 256 * 1024;

function sendError(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  const fastifyError = err as FastifyError;
  if (typeof fastifyError?.code === 'string' && fastifyError.code.startsWith('FST_')) {
    const mapped = requestError(fastifyError);
    if (mapped) return mapped;
  }
  return toHttpError(err);
}

export async function buildApp(ctx: ServerContext, options: { rateLimitRedis?: Redis } = {}): Promise<FastifyInstance> {
  const app = Fastify({
    logger: false,
    bodyLimit: BODY_LIMIT,
    // Unknown properties are refused (not stripped), nothing is coerced or defaulted: the body reaches the checks
    // as the client sent it.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false } },
    // SSE streams are ended by the preClose hook; other connections go as soon as they are idle.
    forceCloseConnections: 'idle',
  });

  // JSON only: fastify would otherwise take text/plain bodies too.
  app.removeContentTypeParser('text/plain');
  app.setErrorHandler((err, _request, reply) => {
    const http = sendError(err);
    if (http.status === 500 && http.code === 'INTERNAL') process.stderr.write(`divbind-native serve: ${(err as Error)?.stack ?? String(err)}\n`);
    reply
      .code(http.status)
      .headers(http.details.headers ?? {})
      .send(http.body());
  });
  app.setNotFoundHandler((request, reply) => {
    reply.code(404).send(new HttpError(404, 'NOT_FOUND', `no route ${request.method} ${request.url.split('?', 1)[0]}`).body());
  });

  if (ctx.config.apiKey) app.addHook('onRequest', requireApiKey(ctx.config.apiKey));
  await app.register(rateLimit, {
    global: false,
    keyGenerator: (request) => request.ip,
    ...(options.rateLimitRedis ? { redis: options.rateLimitRedis, nameSpace: 'divbind:ratelimit:', skipOnError: true } : {}),
    errorResponseBuilder: (_request, context) =>
      new HttpError(429, 'RATE_LIMITED', `more than ${context.max} submissions per minute from this client`, {
        fix: `retry in ${context.after}`,
      }),
  });
  if (ctx.config.corsOrigins.length > 0) await app.register(cors, { origin: ctx.config.corsOrigins });

  app.addHook('preClose', async () => ctx.streams.closeAll());
  registerV1Routes(app, ctx);
  registerA1111Routes(app, ctx);
  registerOpsRoutes(app, ctx);
  return app;
}
