/**
 * The AUTOMATIC1111 API subset existing clients use:
 *   POST /sdapi/v1/txt2img     A1111 fields (+ `divbind` extension) → { images: base64 PNGs, parameters, info }
 *   GET  /sdapi/v1/progress    progress of the oldest running job
 *   GET  /sdapi/v1/sd-models   the configured model names, as A1111 lists checkpoints
 *   GET  /sdapi/v1/samplers    the samplers txt2img takes
 * txt2img goes through the same queue, checks and limits as /v1/generations; it answers when the job ends, and
 * a client that disconnects first cancels its job.
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import { generateOptionsJsonSchema } from '../../index';
import { SAMPLER_OF_SCHEDULER, a1111Fix, fromTxt2img, progressResponse, txt2imgInfo, txt2imgSchema } from '../a1111';
import { HttpError, statusOfCode } from '../http-errors';
import { type JobStatus, isFinal } from '../jobs';
import { type EmbeddedOptions, schemaError } from '../validation';
import type { ServerContext } from './context';

/**
 * Resolves with the job's final status. A client that goes away first cancels the job; a server shutting down
 * answers 503 (the job itself is finished or requeued by the shutdown).
 */
function finalStatus(ctx: ServerContext, id: string, reply: FastifyReply): Promise<JobStatus> {
  return new Promise((resolve, reject) => {
    const stop = () => {
      off();
      release();
    };
    const settle = () => {
      ctx.queue.status(id).then((s) => {
        if (s && isFinal(s.state)) {
          stop();
          resolve(s);
        }
      }, reject);
    };
    const off = ctx.queue.subscribe(id, (e) => {
      if (e.type === 'done' || e.type === 'failed' || e.type === 'cancelled') settle();
    });
    const release = ctx.streams.track(() => {
      stop();
      reject(new HttpError(503, 'UNAVAILABLE', `the server is shutting down; job ${id} was not finished here`));
    });
    reply.raw.on('close', () => {
      if (reply.raw.writableEnded) return;
      stop();
      void ctx.queue.cancel(id).catch(() => {});
    });
    settle();
  });
}

/** A job that did not succeed, as the txt2img answer: its own error code and status, 409 when cancelled. */
function jobFailure(status: JobStatus): HttpError {
  if (status.state === 'cancelled') return new HttpError(409, 'CONFLICT', 'the job was cancelled');
  const error = status.error ?? { code: 'FAILED', message: 'the job failed' };
  if (error.code === 'FAILED' || error.code === 'STALLED' || error.code === 'SHUTDOWN') return new HttpError(500, 'INTERNAL', error.message);
  return new HttpError(statusOfCode(error.code), error.code, error.message, { field: error.field, fix: error.fix });
}

async function txt2imgAnswer(ctx: ServerContext, status: JobStatus, body: unknown): Promise<Record<string, unknown>> {
  const record = status.record;
  if (!record?.log || record.state !== 'succeeded') throw jobFailure(status);
  const images = await Promise.all(Array.from({ length: record.images }, (_, n) => ctx.queue.store.image(record.id, n)));
  if (images.some((png) => png === null)) throw new HttpError(500, 'INTERNAL', `the images of job ${record.id} are gone (result TTL)`);
  return {
    images: images.map((png) => png!.toString('base64')),
    parameters: body,
    info: txt2imgInfo(record.log, record.model, record.createdAt, ctx.version),
  };
}

/** The D&B extension of a txt2img body, with a placeholder prompt (the prompt is an A1111 field). */
function extensionOptions(body: unknown): EmbeddedOptions | null {
  const extension = (body as { divbind?: unknown } | null)?.divbind;
  if (typeof extension !== 'object' || extension === null || Array.isArray(extension)) return null;
  return { options: { prompt: '', ...(extension as Record<string, unknown>) }, prefix: 'divbind.' };
}

export function registerA1111Routes(app: FastifyInstance, ctx: ServerContext): void {
  app.post(
    '/sdapi/v1/txt2img',
    {
      schema: { body: txt2imgSchema(generateOptionsJsonSchema()) },
      attachValidation: true,
      config: { rateLimit: ctx.rateLimit },
    },
    async (request, reply) => {
      if (request.validationError) throw schemaError(request.validationError.validation as never, extensionOptions(request.body), a1111Fix);
      const body = request.body as Record<string, unknown>;
      const { options, model } = fromTxt2img(body);
      const job = ctx.checker.check(options, model, undefined);
      await ctx.queue.submit(job);
      return txt2imgAnswer(ctx, await finalStatus(ctx, job.id, reply), body);
    },
  );

  app.get('/sdapi/v1/progress', async () => {
    const overview = await ctx.queue.overview();
    const oldest = overview.running[0];
    return progressResponse(
      oldest
        ? {
            progress: oldest.progress,
            startedAt: oldest.startedAt,
            createdAt: oldest.createdAt,
            jobCount: overview.queued + overview.running.length,
          }
        : null,
    );
  });

  app.get('/sdapi/v1/sd-models', async () =>
    ctx.config.models.map((m) => ({
      title: m.name,
      model_name: m.name,
      hash: null,
      sha256: null,
      filename: m.name,
      config: null,
    })),
  );

  app.get('/sdapi/v1/samplers', async () =>
    Object.entries(SAMPLER_OF_SCHEDULER).map(([scheduler, name]) => ({
      name,
      aliases: [scheduler],
      options: {},
    })),
  );
}
