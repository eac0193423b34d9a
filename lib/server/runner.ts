/**
 * Runs one job on a loaded pipeline: the generate options of the request, cancellation through `signal`,
 * progress through `onStep`; then the PNGs get A1111's `parameters` infotext next to our JSON parameters, and
 * the job's final record and log are made. Shared by the embedded worker and the BullMQ worker.
 */
import type { DivBindPipeline, GenerateOptions, GenerateResult, StepEvent } from '../index';
import { checkGenerateOptions } from '../index';
import { encodePng } from '../pipeline/image';
import { infotext } from './a1111';
import { type GenerationLog, type JobProgress, type JobRecord, type JobRequest, jobErrorOf } from './jobs';
import { decodeLatents } from './latents';

/**
 * Why a running job's signal fired: a client cancelled it; this process is shutting down; or (BullMQ) the job's
 * lock was lost, so another worker may be running it.
 */
export type AbortReason = 'cancelled' | 'shutdown' | 'lock-lost';

export interface RunHooks {
  signal: AbortSignal;
  onProgress(progress: JobProgress): void;
}

export interface RunOutcome {
  record: JobRecord;
  images: Buffer[];
}

/** PNG text keyword of our JSON parameters (A1111's infotext has `parameters`). */
export const PNG_PARAMETERS_KEY = 'divbind-parameters';

function progressOf(e: StepEvent & { image: number }, images: number): JobProgress {
  return {
    image: e.image,
    images,
    step: e.index + 1,
    steps: e.total,
    loss: e.loss,
    theta: e.indicator,
    seconds: e.ms.total / 1000,
  };
}

export class JobRunner {
  constructor(
    private readonly pipelines: ReadonlyMap<string, DivBindPipeline>,
    private readonly version: string,
  ) {}

  get models(): string[] {
    return [...this.pipelines.keys()];
  }

  /**
   * Runs the job; never throws for the job's own failure (that is a 'failed' record). Returns 'interrupted' when
   * the signal fired for another reason than 'cancelled' (signal.reason says which): the job did not end, and
   * the caller requeues or drops it.
   */
  async run(request: JobRequest, hooks: RunHooks): Promise<RunOutcome | 'interrupted'> {
    const startedAt = Date.now();
    const base = { id: request.id, model: request.model, createdAt: request.createdAt, startedAt };
    let last: JobProgress | undefined;
    let atCancel: JobProgress | undefined;
    hooks.signal.addEventListener(
      'abort',
      () => {
        atCancel = last;
      },
      { once: true },
    );
    const where = () => ({ ...(last ? { progress: last } : {}), ...(atCancel ? { cancelledAt: atCancel } : {}) });
    try {
      const pipeline = this.pipelines.get(request.model);
      if (!pipeline) throw new Error(`this worker does not serve model "${request.model}" (it serves ${this.models.join(', ')})`);
      const images = checkGenerateOptions(request.options).imagesPerPrompt;
      const options = {
        ...request.options,
        ...(request.latents !== undefined ? { latents: decodeLatents(request.latents, images) } : {}),
        signal: hooks.signal,
        onStep: (e: StepEvent & { image: number }) => {
          last = progressOf(e, images);
          hooks.onProgress(last);
        },
      } as GenerateOptions;
      const result = await pipeline.generate(options);
      return this.succeeded(base, result);
    } catch (err) {
      if (hooks.signal.aborted) {
        if (hooks.signal.reason !== ('cancelled' satisfies AbortReason)) return 'interrupted';
        return { record: { ...base, state: 'cancelled', finishedAt: Date.now(), images: 0, ...where() }, images: [] };
      }
      return {
        record: { ...base, state: 'failed', finishedAt: Date.now(), images: 0, error: jobErrorOf(err), ...where() },
        images: [],
      };
    }
  }

  private succeeded(base: Omit<JobRecord, 'state' | 'finishedAt' | 'images'>, result: GenerateResult): RunOutcome {
    // The configured name, not the folder: paths stay inside the server.
    const parameters: Record<string, unknown> = { ...result.parameters, model: base.model };
    const infotexts = result.images.map((_, n) => infotext(parameters, n, base.model, this.version));
    const pngs = result.images.map((img, n) =>
      encodePng(img.rgb, img.width, img.height, {
        parameters: infotexts[n],
        [PNG_PARAMETERS_KEY]: JSON.stringify({ ...parameters, image: n }),
        Software: `divbind-native ${this.version}`,
      }),
    );
    const seed = parameters.seed === null || parameters.seed === undefined ? null : String(parameters.seed);
    const log: GenerationLog = {
      parameters,
      timings: result.timings,
      tokens: result.tokens,
      images: result.images.map((img) => ({
        index: img.index,
        seed,
        steps: img.steps.map((s) => ({
          index: s.index,
          timestep: s.timestep,
          loss: s.loss,
          indicator: s.indicator,
          refinementIterations: s.refinementIterations,
          updates: s.updates,
          ms: s.ms.total,
        })),
      })),
      infotexts,
    };
    return { record: { ...base, state: 'succeeded', finishedAt: Date.now(), images: pngs.length, log }, images: pngs };
  }
}
