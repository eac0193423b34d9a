/**
 * The native API:
 *   POST   /v1/generations                     generate options (+ model, latents) → 202, Location
 *   GET    /v1/generations/:id                 state, queue position, progress; the log when finished
 *   GET    /v1/generations/:id/events          Server-Sent Events: queued, running, step, image, done | failed | cancelled
 *   GET    /v1/generations/:id/images/:n.png   PNG n (A1111 `parameters` infotext + our `divbind-parameters` JSON)
 *   DELETE /v1/generations/:id                 cancel (a running job stops within one denoising step)
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { HttpError, notFound } from '../http-errors';
import { type JobEvent, type JobStatus, isFinal } from '../jobs';
import { MAX_LATENT_BYTES } from '../latents';
import { generationSchema, splitBody, v1Options } from '../requests';
import { schemaError } from '../validation';
import type { ServerContext } from './context';

/** Body limit of a generation request: the largest latents upload in base64, plus room for the options. */
export const GENERATION_BODY_LIMIT = Math.ceil(MAX_LATENT_BYTES / 3) * 4 + 256 * 1024;

const ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export const jobPath = (id: string) => `/v1/generations/${id}`;
export const imagePath = (id: string, n: number) => `${jobPath(id)}/images/${n}.png`;

/** A job status as the API answers it, with links. */
export function statusBody(status: JobStatus): Record<string, unknown> {
  const { record, ...rest } = status;
  const images = record?.state === 'succeeded' ? Array.from({ length: record.images }, (_, n) => imagePath(status.id, n)) : undefined;
  return {
    ...rest,
    ...(record ? { startedAt: record.startedAt, finishedAt: record.finishedAt } : {}),
    ...(record?.progress ? { progress: record.progress } : {}),
    ...(record?.cancelledAt ? { cancelledAt: record.cancelledAt } : {}),
    ...(images ? { images } : {}),
    ...(record?.log ? { log: record.log } : {}),
    links: { self: jobPath(status.id), events: `${jobPath(status.id)}/events` },
  };
}

/** The SSE data of an event. */
function eventPayload(id: string): (event: JobEvent) => Record<string, unknown> {
  return (event) => {
    switch (event.type) {
      case 'queued':
        return { id, ...(event.position !== undefined ? { position: event.position } : {}) };
      case 'step':
        return { id, ...event.progress };
      case 'image':
        return { id, index: event.index, url: imagePath(id, event.index) };
      case 'done':
        return statusBody({
          id,
          model: event.record.model,
          state: 'succeeded',
          createdAt: event.record.createdAt,
          record: event.record,
        });
      case 'failed':
        return { id, error: event.error };
      default:
        return { id };
    }
  };
}

export function registerV1Routes(app: FastifyInstance, ctx: ServerContext): void {
  const jobOf = async (request: FastifyRequest<{ Params: { id: string } }>): Promise<JobStatus> => {
    const { id } = request.params;
    const status = ID.test(id) ? await ctx.queue.status(id) : null;
    if (!status) throw notFound(`generation ${JSON.stringify(id)}`);
    return status;
  };

  app.post(
    '/v1/generations',
    {
      schema: { body: generationSchema() },
      attachValidation: true,
      bodyLimit: GENERATION_BODY_LIMIT,
      config: { rateLimit: ctx.rateLimit },
    },
    async (request, reply) => {
      if (request.validationError) throw schemaError(request.validationError.validation as never, v1Options(request.body));
      const { options, model, latents } = splitBody(request.body as Record<string, unknown>);
      const job = ctx.checker.check(options, model, latents);
      await ctx.queue.submit(job);
      const status = (await ctx.queue.status(job.id)) ?? {
        id: job.id,
        model: job.model,
        state: 'queued' as const,
        createdAt: job.createdAt,
      };
      return reply.code(202).header('location', jobPath(job.id)).send(statusBody(status));
    },
  );

  app.get<{ Params: { id: string } }>('/v1/generations/:id', async (request) => statusBody(await jobOf(request)));

  app.get<{ Params: { id: string } }>('/v1/generations/:id/events', async (request, reply) => {
    const status = await jobOf(request);
    ctx.streams.stream(reply, ctx.queue, status, eventPayload(status.id));
  });

  app.get<{ Params: { id: string; file: string } }>('/v1/generations/:id/images/:file', async (request, reply) => {
    const status = await jobOf(request);
    const n = /^(\d{1,3})\.png$/.exec(request.params.file)?.[1];
    const png = n === undefined || !status.record ? null : await ctx.queue.store.image(status.id, Number(n));
    if (!png) throw notFound(`image ${JSON.stringify(request.params.file)} of generation ${status.id}`);
    return reply.type('image/png').header('cache-control', 'private, max-age=86400, immutable').send(png);
  });

  app.delete<{ Params: { id: string } }>('/v1/generations/:id', async (request, reply) => {
    const before = await jobOf(request);
    if (isFinal(before.state)) {
      throw new HttpError(409, 'CONFLICT', `generation ${before.id} has already ${before.state === 'cancelled' ? 'been cancelled' : before.state}`);
    }
    const after = (await ctx.queue.cancel(before.id)) ?? before;
    // 200 once it has stopped; 202 while a running job is still on its way to the next step.
    return reply.code(isFinal(after.state) ? 200 : 202).send(statusBody(after));
  });
}
