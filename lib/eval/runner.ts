/**
 * Image runners of the benchmark: one generate() call per job, in this process (a loaded pipeline) or sharded over
 * child processes (lib/eval/worker.ts), each loading the pipeline once with its own onnxruntime thread count. A tiny
 * model at batch 1 is dominated by threading overhead, so k single-threaded workers on k cores beat one k-threaded
 * process. Jobs carry every generate() option, built by the parent, so a job's image does not depend on which
 * worker ran it.
 */
import { fork, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { DivbindError, type DivbindErrorCode } from '../errors';
import type { DivBindPipeline, GenerateOptions } from '../pipeline/pipeline';

/** generate() options without the non-serialisable ones (signal, callbacks). */
export type JobOptions = Omit<GenerateOptions, 'signal' | 'onStep'>;

export interface ImageJob {
  id: number;
  options: JobOptions;
}

export interface ImageResult {
  id: number;
  rgb: Uint8Array;
  width: number;
  height: number;
  /** Wall time of the generate() call. */
  ms: number;
  /** The process that made the image. */
  pid: number;
  /** generate()'s account of the options it used, defaults resolved. */
  parameters: Record<string, unknown>;
}

export interface ImageRunner {
  /** Whether guided modes are available (the UNet is prepared). */
  readonly canGuide: boolean;
  run(job: ImageJob): Promise<ImageResult>;
  /** Stops the workers (pending jobs are rejected); idempotent. */
  close(): Promise<void>;
}

/** Runs one job on a loaded pipeline (shared by the in-process runner and the worker processes). */
export async function runJob(pipe: DivBindPipeline, job: ImageJob, signal?: AbortSignal): Promise<ImageResult> {
  const t = performance.now();
  const result = await pipe.generate({ ...job.options, imagesPerPrompt: 1, signal });
  const img = result.images[0];
  return { id: job.id, rgb: img.rgb, width: img.width, height: img.height, ms: performance.now() - t, pid: process.pid, parameters: result.parameters };
}

/**
 * Jobs one after another on a pipeline loaded in this process. close() lets the running job finish (an abort
 * reaches it through the signal), drops the queued ones, then calls `release` (e.g. the pipeline's).
 */
export function inProcessRunner(pipe: DivBindPipeline, signal?: AbortSignal, release?: () => Promise<void>): ImageRunner {
  let chain: Promise<unknown> = Promise.resolve();
  let closing: Promise<void> | null = null;
  return {
    canGuide: pipe.canGuide,
    run(job) {
      const next = chain.then(() => {
        if (closing) throw new DivbindError('ABORTED', 'the benchmark stopped before this image was made');
        return runJob(pipe, job, signal);
      });
      chain = next.catch(() => undefined);
      return next;
    },
    close() {
      closing ??= chain.then(() => release?.());
      return closing;
    },
  };
}

/** What a worker needs to load the pipeline (passed as its argument, JSON). */
export interface WorkerInit {
  modelDir: string;
  prepare: boolean;
  cacheDir?: string;
  threads: number;
}

/** Serialised error (structured clone loses the class of an Error). */
export interface WireError {
  name: string;
  message: string;
  code?: DivbindErrorCode;
  field?: string;
}

export type ParentMessage = { type: 'job'; job: ImageJob } | { type: 'stop' };
export type WorkerMessage =
  | { type: 'ready'; canGuide: boolean }
  | { type: 'note'; message: string }
  | { type: 'result'; result: ImageResult }
  | { type: 'failed'; error: WireError };

export function toWire(err: unknown): WireError {
  if (err instanceof DivbindError) return { name: err.name, message: err.message, code: err.code, field: err.field };
  if (err instanceof Error) return { name: err.name, message: err.message };
  return { name: 'Error', message: String(err) };
}

export function fromWire(e: WireError, context: string): Error {
  if (e.code !== undefined) return new DivbindError(e.code, e.message, e.field !== undefined ? { field: e.field } : {});
  const err = e.name === 'TypeError' ? new TypeError(e.message) : e.name === 'RangeError' ? new RangeError(e.message) : new Error(e.message);
  // Keep the name: the CLI maps some error classes by name.
  if (err.name !== e.name) err.name = e.name;
  if (!(err instanceof TypeError || err instanceof RangeError) && context) err.message = `${context}: ${e.message}`;
  return err;
}

interface Pending {
  job: ImageJob;
  resolve: (r: ImageResult) => void;
  reject: (e: Error) => void;
}

/** One child process: loads the pipeline, then runs one job at a time. */
class Worker {
  readonly child: ChildProcess;
  busy: Pending | null = null;
  private stderr = '';
  readonly ready: Promise<boolean>;

  constructor(
    readonly index: number,
    init: WorkerInit,
    private readonly onMessage: (w: Worker, m: WorkerMessage) => void,
    onExit: (w: Worker, why: Error) => void,
  ) {
    this.child = fork(path.join(__dirname, 'worker.js'), [JSON.stringify(init)], {
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      serialization: 'advanced',
      execArgv: [],
    });
    this.child.stderr?.on('data', (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-4000)));
    this.ready = new Promise<boolean>((resolve, reject) => {
      this.child.on('message', (m: WorkerMessage) => {
        if (m.type === 'ready') resolve(m.canGuide);
        else if (m.type === 'failed' && this.busy === null) reject(fromWire(m.error, `worker ${index}`));
        else this.onMessage(this, m);
      });
      this.child.on('exit', (code, signal) => {
        const why = new Error(
          `eval worker ${index} exited (${signal ?? `code ${code}`})${this.stderr ? `; its stderr ends with:\n${this.stderr.trim()}` : ''}`,
        );
        reject(why);
        onExit(this, why);
      });
    });
  }

  send(m: ParentMessage): void {
    this.child.send(m);
  }
}

export interface PoolOptions extends WorkerInit {
  workers: number;
  onNote?: (message: string) => void;
}

/**
 * Starts `workers` child processes. The first one loads (and, with `prepare`, prepares) the model alone, so the
 * others never race on writing the prepared graphs; then the rest start together.
 */
export async function startWorkerPool(o: PoolOptions): Promise<ImageRunner> {
  const queue: Pending[] = [];
  const workers: Worker[] = [];
  let closed = false;
  let failure: Error | null = null;
  const failAll = (err: Error) => {
    failure ??= err;
    for (const p of queue.splice(0)) p.reject(failure);
    for (const w of workers) {
      w.busy?.reject(failure);
      w.busy = null;
    }
  };
  const dispatch = () => {
    for (const w of workers) {
      if (w.busy !== null || queue.length === 0 || !w.child.connected) continue;
      w.busy = queue.shift() as Pending;
      w.send({ type: 'job', job: w.busy.job });
    }
  };
  const onMessage = (w: Worker, m: WorkerMessage) => {
    // Every worker loads the same model; the first one's notes (including preparing) are enough.
    if (m.type === 'note') {
      if (w.index === 0) o.onNote?.(m.message);
    } else if (m.type === 'result' && w.busy) {
      w.busy.resolve(m.result);
      w.busy = null;
      dispatch();
    } else if (m.type === 'failed') failAll(fromWire(m.error, `worker ${w.index}`));
  };
  const onExit = (_w: Worker, why: Error) => {
    if (!closed) failAll(why);
  };
  const close = async () => {
    closed = true;
    failAll(new DivbindError('ABORTED', 'the benchmark stopped before this image was made'));
    await Promise.all(
      workers.map((w) =>
        w.child.exitCode !== null || w.child.signalCode !== null
          ? undefined
          : new Promise<void>((resolve) => {
              w.child.once('exit', () => resolve());
              if (w.child.connected) w.send({ type: 'stop' });
              else w.child.kill('SIGTERM');
            }),
      ),
    );
  };
  const init: WorkerInit = { modelDir: o.modelDir, prepare: o.prepare, cacheDir: o.cacheDir, threads: o.threads };
  try {
    workers.push(new Worker(0, init, onMessage, onExit));
    const canGuide = await workers[0].ready;
    for (let i = 1; i < o.workers; i++) workers.push(new Worker(i, { ...init, prepare: false }, onMessage, onExit));
    await Promise.all(workers.map((w) => w.ready));
    return {
      canGuide,
      run(job) {
        if (failure) return Promise.reject(failure);
        return new Promise<ImageResult>((resolve, reject) => {
          queue.push({ job, resolve, reject });
          dispatch();
        });
      },
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
