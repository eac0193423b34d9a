/**
 * Runs a built VJP on onnxruntime-node behind one interface:
 * 'recompute' is one session fed the model inputs + cotangents; 'residuals' runs the forward-with-residuals
 * session (which also yields the model's own outputs, e.g. the attention maps) and then the backward session
 * on the residuals + cotangents.
 */
import type * as ort from 'onnxruntime-node';
import { createSessionFromModel } from '../model-io';
import { type VjpResult, gradName } from './build';

export type Feeds = Record<string, ort.Tensor>;

export interface VjpRunner {
  readonly design: VjpResult['stats']['design'];
  /**
   * Residuals design: runs the forward graph (original outputs + residuals) on `feeds`, keeps the residuals for
   * the next `run`, and returns every output. Recompute design: runs nothing and returns {}.
   */
  forward(feeds: Feeds): Promise<Record<string, ort.Tensor>>;
  /**
   * Gradient w.r.t. `wrt` for the cotangents (keyed by output tensor name) at `feeds`. The residuals design uses
   * the residuals of the last `forward` (which must have been called with the same feeds) or runs it first.
   */
  run(cotangents: Record<string, ort.Tensor>, feeds: Feeds): Promise<ort.Tensor>;
  release(): Promise<void>;
}

export interface VjpRunnerOptions {
  session?: ort.InferenceSession.SessionOptions;
  /** Directory that external-data locations resolve against (the source model's directory). */
  baseDir?: string;
}

/** Creates the ORT sessions of a built VJP (default graphOptimizationLevel 'all'). */
export async function runVjpGraphs(built: VjpResult, opts: VjpRunnerOptions = {}): Promise<VjpRunner> {
  const sessionOptions: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: 'all', ...opts.session };
  const gradOut = (built.vjp ?? built.backward)?.graph?.output[0]?.name ?? '';
  if (built.stats.design === 'recompute') {
    if (!built.vjp) throw new TypeError('runVjpGraphs: the recompute result has no vjp model');
    const s = await createSessionFromModel(built.vjp, sessionOptions, opts.baseDir);
    const inputs = new Set(s.inputNames);
    return {
      design: 'recompute',
      forward: async () => ({}),
      run: async (cot, feeds) => {
        const all: Feeds = {};
        for (const [k, v] of Object.entries(feeds)) if (inputs.has(k)) all[k] = v;
        for (const [k, v] of Object.entries(cot)) all[gradName(k)] = v;
        return (await s.run(all))[gradOut];
      },
      release: () => s.release(),
    };
  }
  if (!built.forward || !built.backward) throw new TypeError('runVjpGraphs: the residuals result needs forward and backward models');
  const fs = await createSessionFromModel(built.forward, sessionOptions, opts.baseDir);
  const bs = await createSessionFromModel(built.backward, sessionOptions, opts.baseDir);
  let last: { feeds: Feeds; outputs: Record<string, ort.Tensor> } | undefined;
  const forward = async (feeds: Feeds) => {
    const outputs = await fs.run(feeds);
    last = { feeds, outputs };
    return outputs;
  };
  return {
    design: 'residuals',
    forward,
    run: async (cot, feeds) => {
      const fwd = last !== undefined && last.feeds === feeds ? last.outputs : await forward(feeds);
      const all: Feeds = {};
      for (const name of bs.inputNames) {
        if (name in feeds) all[name] = feeds[name];
        else if (name in fwd) all[name] = fwd[name];
      }
      for (const [k, v] of Object.entries(cot)) all[gradName(k)] = v;
      return (await bs.run(all))[gradOut];
    },
    release: async () => {
      await fs.release();
      await bs.release();
    },
  };
}
