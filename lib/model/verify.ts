/**
 * The check run of `prepare`: each written graph runs once on pseudo-random inputs, and its outputs must have the
 * declared dims, be finite, and (for the attention maps) have rows that sum to 1.
 */
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { createSession } from '../onnx/model-io';
import { sessionOptions } from '../pipeline/ort';
import { dataTypeName, ortTypeOf } from '../onnx/proto';
import type { InstrumentResult } from '../onnx/attention';
import type { ShapeMap } from '../onnx/shapes';
import type { Manifest } from './manifest';

/** Deterministic pseudo-random values in [-1, 1) (xorshift). */
function pseudoRandom(n: number, seed: number): Float32Array {
  let x = (seed * 2654435761) >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = (x / 4294967296) * 2 - 1;
  }
  return out;
}

function feedFor(name: string, elemType: number, dims: number[], seed: number, timestep = 500): ort.Tensor {
  const n = dims.reduce((a, b) => a * b, 1);
  const type = ortTypeOf(elemType);
  if (name === 'timestep' || /time/.test(name)) {
    if (type === 'int64')
      return new ort.Tensor(
        'int64',
        BigInt64Array.from({ length: n }, () => BigInt(timestep)),
        dims,
      );
    if (type === 'int32')
      return new ort.Tensor(
        'int32',
        Int32Array.from({ length: n }, () => timestep),
        dims,
      );
    if (type === 'float32')
      return new ort.Tensor(
        'float32',
        Float32Array.from({ length: n }, () => timestep),
        dims,
      );
  }
  if (type !== 'float32') throw new Error(`Cannot make a check input for '${name}' of type ${dataTypeName(elemType)}`);
  return new ort.Tensor('float32', pseudoRandom(n, seed), dims);
}

function assertFinite(data: ArrayLike<number>, what: string): void {
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) throw new Error(`Check run failed: ${what} has a non-finite value at element ${i}`);
  }
}

/**
 * The pipeline's session settings (no memory arena, weights read from the mapped file, no spin-waiting), so the check
 * needs no more memory than a guidance step: with onnxruntime's default arena the check of SDXL's full-size UNet at
 * 1024² ran out of 24 GB where the step itself peaks at 12 GB of anonymous memory. 'basic': the check needs
 * correctness, not speed, and 'all' takes longer to create sessions for big VJP graphs.
 */
const checkSession = () => sessionOptions({ graphOptimizationLevel: 'basic' });

type Memory = Array<{ location: string; source: string }>;

async function runGraph(dir: string, file: string, available: Record<string, ort.Tensor>, memory: Memory): Promise<ort.InferenceSession.OnnxValueMapType> {
  const sess = await createSession(path.join(dir, file), checkSession(), { externalData: memory });
  try {
    const feeds: Record<string, ort.Tensor> = {};
    for (const n of sess.inputNames) {
      const v = available[n];
      if (v === undefined) throw new Error(`Check run failed: no value for input '${n}' of ${file}`);
      feeds[n] = v;
    }
    return await sess.run(feeds);
  } finally {
    await sess.release();
  }
}

/** `graph` returns every map of `outputs`, finite, each row a probability distribution (or a mean of them). */
async function checkMaps(
  dir: string,
  graph: string,
  outputs: string[],
  feeds: Record<string, ort.Tensor>,
  headAverage: boolean,
  memory: Memory,
): Promise<ort.InferenceSession.OnnxValueMapType> {
  const res = await runGraph(dir, graph, feeds, memory);
  for (const o of outputs) {
    const got = res[o];
    if (got === undefined) throw new Error(`Check run failed: the instrumented UNet did not return '${o}'`);
    const data = got.data as Float32Array;
    assertFinite(data, o);
    const T = got.dims[got.dims.length - 1]!;
    for (let r = 0; r < data.length; r += T) {
      let s = 0;
      for (let k = 0; k < T; k++) s += data[r + k]!;
      if (Math.abs(s - 1) > 1e-3) {
        throw new Error(`Check run failed: a row of '${o}' sums to ${s}, not 1 (${headAverage ? 'averaged' : 'raw'} probabilities expected)`);
      }
    }
  }
  return res;
}

function checkGradient(out: ort.InferenceSession.OnnxValueMapType, gradient: string, want: readonly number[]): void {
  const g = out[gradient];
  if (g === undefined) throw new Error(`Check run failed: the VJP graph did not return '${gradient}'`);
  if (g.dims.join(',') !== want.join(',')) throw new Error(`Check run failed: '${gradient}' has dims [${g.dims.join(', ')}], expected [${want.join(', ')}]`);
  assertFinite(g.data as Float32Array, gradient);
}

/** Each layer subset's forward returns its maps (and residuals); its backward, fed them, a finite gradient. */
async function checkLayerSets(
  dir: string,
  sets: readonly LayerSetToCheck[],
  feeds: Record<string, ort.Tensor>,
  cot: Record<string, ort.Tensor>,
  check: { headAverage: boolean; gradient: string; dims: readonly number[] },
  memory: Memory,
): Promise<void> {
  for (const set of sets) {
    const maps = await checkMaps(dir, set.forward, set.outputs, feeds, check.headAverage, memory);
    checkGradient(await runGraph(dir, set.backward, { ...feeds, ...maps, ...cot }, memory), check.gradient, check.dims);
  }
}

/** A layer subset's graph files and the maps its forward returns. */
export interface LayerSetToCheck {
  forward: string;
  backward: string;
  outputs: string[];
}

/** Runs the graphs written in `dir` once (see the file header). */
export async function verifyPrepared(
  dir: string,
  files: Manifest['files'],
  built: { inst: InstrumentResult; shapes: ShapeMap },
  inputDims: Record<string, number[]>,
  headAverage: boolean,
  names: { cotangents: Record<string, string>; gradient: string },
  sets: readonly LayerSetToCheck[] = [],
): Promise<void> {
  const memory = files.externalData.filter((e) => e.method === 'memory').map((e) => ({ location: e.location, source: e.source }));
  const shapes = built.inst.shapes;
  const feeds: Record<string, ort.Tensor> = {};
  let seed = 1;
  for (const [name, dims] of Object.entries(inputDims)) feeds[name] = feedFor(name, shapes.get(name)!.elemType, dims, seed++);
  await checkMaps(dir, files.unet, built.inst.outputs, feeds, headAverage, memory);

  const cot: Record<string, ort.Tensor> = {};
  for (const o of built.inst.outputs) {
    const dims = shapes.get(o)?.dims ?? [];
    cot[names.cotangents[o]!] = new ort.Tensor(
      'float32',
      pseudoRandom(
        dims.reduce((a, b) => a * b, 1),
        seed++,
      ),
      dims,
    );
  }
  const out =
    files.vjp !== undefined
      ? await runGraph(dir, files.vjp, { ...feeds, ...cot }, memory)
      : await runGraph(dir, files.backward!, { ...feeds, ...(await runGraph(dir, files.forward!, feeds, memory)), ...cot }, memory);
  const want = inputDims.sample ?? out[names.gradient]?.dims ?? [];
  checkGradient(out, names.gradient, want);
  await checkLayerSets(dir, sets, feeds, cot, { headAverage, gradient: names.gradient, dims: want }, memory);
}
