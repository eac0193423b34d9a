/**
 * VJP benchmark: the cost of one guidance step (the maps, then ∂L/∂sample) against one plain UNet forward, for both
 * VJP designs, on the full layer set and on the layer subsets `prepare` builds (tv/max: the object-resolution
 * layers; tv_bind with attributes: those and the attribute layers), with each mode's peak RSS. The graphs are
 * built as `prepare` builds them (head-averaged instrumentation, lib/model/prepare.ts buildLayerSet) and saved with
 * the weights hard-linked, so sessions map one weights file. Writes bench/results/vjp.json (or --out).
 *
 * A mode's step: forward part (residuals: the forward with residual outputs; recompute: the maps forward) + run part
 * (the backward, or the VJP graph). Reported per mode, ÷ the plain forward:
 *   vjpOverForward  = (step − the full maps forward) / forward: what a guidance step adds to the forward that computes
 *                     the maps anyway (the issue's "VJP ÷ forward"; a pruned forward is cheaper than the full one);
 *   stepOverForward = step / forward: one refinement iteration (forward + VJP) in forwards.
 *
 * Timing: one child holds every session and runs the modes round-robin (machine load hits all alike), wall and
 * process CPU time; peak RSS: one fresh child per mode.
 *
 *   node dist/bench/vjp.bench.js [--model path/to/unet.onnx] [--size 512] [--iterations 20] [--threads 2]
 *     [--private-weights] [--out bench/results/vjp.json]
 */
import { fork } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { findCrossAttention, instrumentUnet } from '../lib/onnx/attention';
import { createSession, loadModel, saveModel } from '../lib/onnx/model-io';
import type { ModelProto } from '../lib/onnx/proto';
import { inferStaticShapes, realGraphInputs } from '../lib/onnx/shapes';
import { buildVjp, gradName } from '../lib/onnx/vjp';
import { familyResolutions, familyTraits } from '../lib/model/family';
import { preparedLayerSets } from '../lib/model/layer-sets';
import { buildLayerSet } from '../lib/model/prepare';
import { sessionOptions } from '../lib/pipeline/ort';

const ROOT = path.resolve(__dirname, '../..');
const DEFAULT_MODEL = path.join(ROOT, 'test/fixtures/models/tiny-sd/unet/model.onnx');
const MODES = ['forward', 'forward-maps', 'recompute', 'residuals', 'recompute-objects', 'residuals-objects', 'residuals-attributes'] as const;
type Mode = (typeof MODES)[number];

export interface VjpBenchOptions {
  model?: string;
  /** Image size in pixels (latent size / 8); default: the UNet's static size, else 256. */
  size?: number;
  iterations?: number;
  threads?: number;
  shareWeights?: boolean;
  out?: string;
}

/** The graph files of one mode, in the bench's temp folder, and what they need. */
interface ModeGraphs {
  /** Forward part (absent for 'forward', whose run part is the plain UNet). */
  forward?: string;
  run: string;
  /** Cotangent inputs of the run graph: map output → its dims. */
  cotangents: Record<string, number[]>;
  layers: number;
  residualMB?: number;
  buildMs?: number;
  nodes?: number;
}

interface Built {
  dir: string;
  inputs: Record<string, { dims: number[]; type: 'float32' | 'int64' }>;
  modes: Record<Mode, ModeGraphs>;
}

/** Latent and text dims for `size` pixels: the UNet's static dims where it fixes them. */
function inputDims(model: ModelProto, size: number | undefined): Record<string, number[]> {
  const dims = (name: string) =>
    (model.graph!.input.find((i) => i.name === name)?.type?.tensor_type?.shape?.dim ?? []).map((d) =>
      d.dim_value != null && Number(d.dim_value) > 0 ? Number(d.dim_value) : undefined,
    );
  const s = dims('sample');
  const latent = size !== undefined ? size / 8 : (s[2] ?? 32);
  const t = dims('encoder_hidden_states');
  return { sample: [1, s[1] ?? 4, latent, latent], encoder_hidden_states: [1, t[1] ?? 77, t[2]!] };
}

function save(dir: string, file: string, model: ModelProto, sourceDir: string): string {
  saveModel(model, path.join(dir, file), { sourceDir });
  return file;
}

const cotangentsOf = (outputs: string[], shapes: Map<string, { dims: number[] }>) => Object.fromEntries(outputs.map((o) => [o, shapes.get(o)!.dims]));

/** Builds every mode's graphs as prepare does, and saves them into `dir` (weights hard-linked). */
export async function buildBenchGraphs(modelPath: string, size: number | undefined, dir: string): Promise<Built> {
  const loaded = loadModel(modelPath);
  const dims = inputDims(loaded.model, size);
  const shapes = await inferStaticShapes(loaded.model, dims);
  const layers = findCrossAttention(loaded.model, shapes, {});
  const inst = instrumentUnet(loaded.model, shapes, { layers });
  const src = loaded.dir;
  const full = {
    recompute: buildVjp(inst.model, { wrt: 'sample', outputs: inst.outputs, shapes: inst.shapes, design: 'recompute' }),
    residuals: buildVjp(inst.model, { wrt: 'sample', outputs: inst.outputs, shapes: inst.shapes, design: 'residuals' }),
  };
  const allCot = cotangentsOf(inst.outputs, inst.shapes);
  const n = inst.outputs.length;
  const stat = (s: { buildMs: number; backwardNodes: number; forwardNodes: number; residualBytes: number }) => ({
    buildMs: s.buildMs,
    nodes: s.backwardNodes + s.forwardNodes,
    residualMB: s.residualBytes / 2 ** 20,
  });
  const modes = {
    forward: { run: save(dir, 'plain.onnx', loaded.model, src), cotangents: {}, layers: 0 },
    'forward-maps': { run: save(dir, 'unet.onnx', inst.model, src), cotangents: {}, layers: n },
    recompute: { forward: 'unet.onnx', run: save(dir, 'vjp.onnx', full.recompute.vjp!, src), cotangents: allCot, layers: n, ...stat(full.recompute.stats) },
    residuals: {
      forward: save(dir, 'forward.onnx', full.residuals.forward!, src),
      run: save(dir, 'backward.onnx', full.residuals.backward!, src),
      cotangents: allCot,
      layers: n,
      ...stat(full.residuals.stats),
    },
  } as Record<Mode, ModeGraphs>;
  const height = dims.sample![2]! * 8;
  const sets = preparedLayerSets(
    inst.layers.map((l) => ({ heads: 1, resolution: l.resolution ?? 0 })),
    dims.encoder_hidden_states![1]!,
    familyResolutions(familyTraits('sd1'), {}, height),
  );
  const [objects, attributes] = [sets[0], sets[1]];
  if (objects !== undefined) {
    const r = buildLayerSet(inst, 'sample', objects, 'recompute');
    modes['recompute-objects'] = {
      forward: save(dir, 'maps-objects.onnx', r.forward, src),
      run: save(dir, 'vjp-objects.onnx', r.backward, src),
      cotangents: cotangentsOf(r.outputs, inst.shapes),
      layers: objects.length,
      ...stat(r.stats),
    };
  }
  for (const [mode, set] of [
    ['residuals-objects', objects],
    ['residuals-attributes', attributes],
  ] as const) {
    if (set === undefined) continue;
    const r = buildLayerSet(inst, 'sample', set, 'residuals');
    modes[mode] = {
      forward: save(dir, `forward-${mode}.onnx`, r.forward, src),
      run: save(dir, `backward-${mode}.onnx`, r.backward, src),
      cotangents: cotangentsOf(r.outputs, inst.shapes),
      layers: set.length,
      ...stat(r.stats),
    };
  }
  const ts = realGraphInputs(loaded.model.graph!).find((i) => i.name === 'timestep');
  const inputs = {
    sample: { dims: dims.sample!, type: 'float32' as const },
    encoder_hidden_states: { dims: dims.encoder_hidden_states!, type: 'float32' as const },
    timestep: {
      dims: (ts?.type?.tensor_type?.shape?.dim ?? []).map(() => 1),
      type: ts?.type?.tensor_type?.elem_type === 7 ? ('int64' as const) : ('float32' as const),
    },
  };
  return { dir, inputs, modes };
}

/** Deterministic values in [-1, 1). */
function values(n: number, seed: number): Float32Array {
  let x = seed >>> 0 || 1;
  return Float32Array.from({ length: n }, () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return (x / 4294967296) * 2 - 1;
  });
}

const count = (dims: readonly number[]) => dims.reduce((a, b) => a * b, 1);

function benchFeeds(built: Built): Record<string, ort.Tensor> {
  const { sample, encoder_hidden_states: text, timestep } = built.inputs;
  return {
    sample: new ort.Tensor('float32', values(count(sample!.dims), 3), sample!.dims),
    encoder_hidden_states: new ort.Tensor('float32', values(count(text!.dims), 5), text!.dims),
    timestep:
      timestep!.type === 'int64'
        ? new ort.Tensor('int64', BigInt64Array.of(500n), timestep!.dims)
        : new ort.Tensor('float32', Float32Array.of(500), timestep!.dims),
  };
}

interface Step {
  /** One step: forward part then run part; their wall times (ms). */
  run(): Promise<{ f: number; r: number }>;
  release(): Promise<void>;
}

const pick = (s: ort.InferenceSession, from: Record<string, ort.Tensor>) => Object.fromEntries(s.inputNames.map((n) => [n, from[n]!]));

/** Opens one mode's sessions (the pipeline's session options) with its feeds and random cotangents. */
async function openMode(built: Built, mode: Mode, threads: number, shareWeights: boolean): Promise<Step> {
  const g = built.modes[mode];
  const options = sessionOptions({ intraOpNumThreads: threads, shareWeights });
  const fwd = g.forward !== undefined ? await createSession(path.join(built.dir, g.forward), options) : undefined;
  const run = await createSession(path.join(built.dir, g.run), options);
  const feeds = benchFeeds(built);
  let seed = 11;
  for (const [o, dims] of Object.entries(g.cotangents))
    feeds[gradName(o)] = new ort.Tensor(
      'float32',
      values(count(dims), seed++).map((v) => 1e-3 * v),
      dims,
    );
  return {
    run: async () => {
      const t0 = performance.now();
      const out = fwd ? await fwd.run(pick(fwd, feeds)) : {};
      const t1 = performance.now();
      await run.run(pick(run, { ...feeds, ...out }));
      return { f: t1 - t0, r: performance.now() - t1 };
    },
    release: async () => {
      await fwd?.release();
      await run.release();
    },
  };
}

interface Timing {
  mode: Mode;
  /** Median wall time of one step (forward part + run part). */
  medianMs: number;
  p10Ms: number;
  p90Ms: number;
  /** Median process CPU time (user + system) of one step. */
  cpuMedianMs: number;
  forwardPartMs: number;
  runPartMs: number;
  /** Layers whose maps the step computes and differentiates (0: plain forward). */
  layers: number;
  residualMB?: number;
  buildMs?: number;
  nodes?: number;
}

const quantile = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]!;

interface ChildArgs {
  dir: string;
  built: Built;
  modes: Mode[];
  iterations: number;
  threads: number;
  shareWeights: boolean;
}

/** Child: every mode round-robin after two warm-up rounds. */
async function timeInterleaved(a: ChildArgs): Promise<Timing[]> {
  const steps = new Map<Mode, Step>();
  for (const m of a.modes) steps.set(m, await openMode(a.built, m, a.threads, a.shareWeights));
  const rec = new Map<Mode, { wall: number[]; cpu: number[]; f: number[]; r: number[] }>(a.modes.map((m) => [m, { wall: [], cpu: [], f: [], r: [] }]));
  for (let k = 0; k < a.iterations + 2; k++) {
    for (const m of a.modes) {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      const parts = await steps.get(m)!.run();
      const wall = performance.now() - t0;
      const c = process.cpuUsage(c0);
      if (k < 2) continue;
      const r = rec.get(m)!;
      r.wall.push(wall);
      r.cpu.push((c.user + c.system) / 1000);
      r.f.push(parts.f);
      r.r.push(parts.r);
    }
  }
  const out: Timing[] = [];
  for (const m of a.modes) {
    const r = rec.get(m)!;
    const g = a.built.modes[m];
    out.push({
      mode: m,
      medianMs: quantile(r.wall, 0.5),
      p10Ms: quantile(r.wall, 0.1),
      p90Ms: quantile(r.wall, 0.9),
      cpuMedianMs: quantile(r.cpu, 0.5),
      forwardPartMs: quantile(r.f, 0.5),
      runPartMs: quantile(r.r, 0.5),
      layers: g.layers,
      ...(g.residualMB !== undefined ? { residualMB: g.residualMB } : {}),
      ...(g.buildMs !== undefined ? { buildMs: g.buildMs, nodes: g.nodes } : {}),
    });
    await steps.get(m)!.release();
  }
  return out;
}

/** Child: one mode alone, three steps, its peak RSS (MB). */
async function peakRss(a: ChildArgs): Promise<number> {
  const s = await openMode(a.built, a.modes[0]!, a.threads, a.shareWeights);
  for (let k = 0; k < 3; k++) await s.run();
  await s.release();
  return process.resourceUsage().maxRSS / 1024;
}

function inChild<T>(kind: 'time' | 'rss', a: ChildArgs): Promise<T> {
  return new Promise((resolve, reject) => {
    const child = fork(__filename, ['--child', kind, JSON.stringify(a)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let result: T | undefined;
    child.on('message', (m) => {
      result = m as T;
    });
    child.on('error', reject);
    child.on('exit', (code) => (result !== undefined ? resolve(result) : reject(new Error(`vjp bench child ${kind} exited with ${code}`))));
  });
}

export interface VjpBenchResult {
  model: string;
  size: number;
  date: string;
  threads: number;
  iterations: number;
  shareWeights: boolean;
  cpus: string;
  /** 1/5/15-minute load averages at the end: wall times are only comparable at similar load. */
  loadAverage: number[];
  timings: Timing[];
  /** Peak RSS (MB) of a process that only opens and runs that mode. */
  peakRssMB: Partial<Record<Mode, number>>;
  /** Per guidance mode: see the file header. From wall time, and from process CPU time. */
  ratios: Partial<Record<Mode, { vjpOverForward: number; stepOverForward: number; vjpOverForwardCpu: number }>>;
  /** The issue's numbers: VJP ÷ forward of the full residuals design (before) and of the object-layer subset (after). */
  summary: { before: number; afterObjects?: number; afterAttributes?: number; target: number };
  fastest: Mode;
}

function ratios(timings: Timing[]): VjpBenchResult['ratios'] {
  const get = (m: Mode) => timings.find((t) => t.mode === m)!;
  const [fwd, maps] = [get('forward'), get('forward-maps')];
  const out: VjpBenchResult['ratios'] = {};
  for (const t of timings.filter((x) => x.mode !== 'forward' && x.mode !== 'forward-maps')) {
    out[t.mode] = {
      vjpOverForward: (t.medianMs - maps.medianMs) / fwd.medianMs,
      stepOverForward: t.medianMs / fwd.medianMs,
      vjpOverForwardCpu: (t.cpuMedianMs - maps.cpuMedianMs) / fwd.cpuMedianMs,
    };
  }
  return out;
}

function report(r: VjpBenchResult): void {
  for (const t of r.timings) {
    const q = r.ratios[t.mode];
    console.log(
      `${t.mode.padEnd(21)} ${t.layers.toString().padStart(2)} layers  step ${t.medianMs.toFixed(1)} ms [forward ${t.forwardPartMs.toFixed(1)} + run ${t.runPartMs.toFixed(1)}]` +
        ` (p10 ${t.p10Ms.toFixed(1)}, p90 ${t.p90Ms.toFixed(1)}), CPU ${t.cpuMedianMs.toFixed(1)} ms, peak RSS ${(r.peakRssMB[t.mode] ?? 0).toFixed(0)} MB` +
        `${t.residualMB !== undefined ? `, residuals ${t.residualMB.toFixed(1)} MB` : ''}` +
        `${q ? `; VJP ÷ forward ${q.vjpOverForward.toFixed(2)}, step ÷ forward ${q.stepOverForward.toFixed(2)}` : ''}`,
    );
  }
  const s = r.summary;
  console.log(
    `VJP ÷ forward (residuals): full set ${s.before.toFixed(2)}, object layers ${s.afterObjects?.toFixed(2) ?? '–'}, ` +
      `tv_bind layers ${s.afterAttributes?.toFixed(2) ?? '–'} (target ≤ ${s.target}); load ${r.loadAverage.map((l) => l.toFixed(1)).join('/')}`,
  );
}

/** Builds the graphs, times every mode in one child, measures each mode's peak RSS in its own, writes the JSON. */
export async function runVjpBench(o: VjpBenchOptions = {}): Promise<VjpBenchResult> {
  const model = path.resolve(o.model ?? DEFAULT_MODEL);
  const dir = fs.mkdtempSync(path.join(path.dirname(model), '.vjp-bench-'));
  try {
    const built = await buildBenchGraphs(model, o.size, dir);
    const modes = MODES.filter((m) => built.modes[m] !== undefined);
    const args: ChildArgs = { dir, built, modes, iterations: o.iterations ?? 20, threads: o.threads ?? 2, shareWeights: o.shareWeights ?? true };
    const timings = await inChild<Timing[]>('time', args);
    const peakRssMB: VjpBenchResult['peakRssMB'] = {};
    for (const m of modes) peakRssMB[m] = await inChild<number>('rss', { ...args, modes: [m] });
    const q = ratios(timings);
    const steps = timings.filter((t) => t.layers > 0 && t.mode !== 'forward-maps');
    const result: VjpBenchResult = {
      model: path.relative(ROOT, model),
      size: built.inputs.sample!.dims[2]! * 8,
      date: new Date().toISOString(),
      threads: args.threads,
      iterations: args.iterations,
      shareWeights: args.shareWeights,
      cpus: `${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}`,
      loadAverage: os.loadavg(),
      timings,
      peakRssMB,
      ratios: q,
      summary: {
        before: q.residuals!.vjpOverForward,
        afterObjects: q['residuals-objects']?.vjpOverForward,
        afterAttributes: q['residuals-attributes']?.vjpOverForward,
        target: 1.8,
      },
      fastest: steps.reduce((a, b) => (b.medianMs < a.medianMs ? b : a)).mode,
    };
    report(result);
    const out = o.out ?? path.join(ROOT, 'bench/results/vjp.json');
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
    return result;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

if (require.main === module) {
  const fail = (err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  };
  const child = arg('--child');
  if (child !== undefined) {
    const a = JSON.parse(process.argv[process.argv.indexOf('--child') + 2]!) as ChildArgs;
    (child === 'time' ? timeInterleaved(a) : peakRss(a)).then((t) => process.send!(t), fail);
  } else {
    const num = (k: string) => (arg(k) === undefined ? undefined : Number(arg(k)));
    runVjpBench({
      model: arg('--model'),
      size: num('--size'),
      iterations: num('--iterations'),
      threads: num('--threads'),
      shareWeights: !process.argv.includes('--private-weights'),
      out: arg('--out'),
    }).catch(fail);
  }
}
