/**
 * VJP benchmark on the reference tiny UNet: the time of one gradient w.r.t. `sample` (every cross-attention map
 * given a cotangent) divided by the time of one plain UNet forward, for both VJP designs, plus each design's peak
 * RSS. Writes bench/results/vjp.json.
 *
 * Timing: one child process holds all four sessions (plain forward, forward with the maps, recompute VJP,
 * residuals VJP) and runs them round-robin, so machine load hits all of them alike; wall time and process CPU
 * time (stable on a shared machine) are both recorded. Peak RSS: one fresh child process per mode.
 *
 *   node dist/bench/vjp.bench.js [--model path/to/unet.onnx] [--iterations 20] [--threads 2]
 */
import { fork } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { sessionOptions } from '../lib/pipeline/ort';
import { createSessionFromModel, loadModel } from '../lib/onnx/model-io';
import type { ModelProto } from '../lib/onnx/proto';
import { inferStaticShapes } from '../lib/onnx/shapes';
import { buildVjp } from '../lib/onnx/vjp';
import { rng } from '../lib/onnx/vjp/gradcheck';
import { runVjpGraphs } from '../lib/onnx/vjp/runner';

const ROOT = path.resolve(__dirname, '../..');
const DEFAULT_MODEL = path.join(ROOT, 'test/fixtures/models/tiny-sd/unet/model.onnx');
const MODES = ['forward', 'forward-maps', 'recompute', 'residuals'] as const;
type Mode = (typeof MODES)[number];

export interface VjpBenchOptions {
  model?: string;
  iterations?: number;
  threads?: number;
  /** Output JSON path; default bench/results/vjp.json. */
  out?: string;
}

interface Timing {
  mode: Mode;
  /** Median wall time of one step: a forward, or (VJP modes) forward() + run() of the runner. */
  medianMs: number;
  p10Ms: number;
  p90Ms: number;
  /** Median process CPU time (user + system) of one step. */
  cpuMedianMs: number;
  /** VJP modes: medians of the runner's forward() (residuals: forward with residual outputs; recompute: 0)
   *  and run() (the VJP graph, or the backward graph). */
  forwardPartMs?: number;
  runPartMs?: number;
  buildMs?: number;
  residualMB?: number;
  nodes?: number;
}

export interface VjpBenchResult {
  model: string;
  date: string;
  threads: number;
  iterations: number;
  cpus: string;
  /** 1/5/15-minute load averages at the end: wall times are only comparable at similar load. */
  loadAverage: number[];
  timings: Timing[];
  /** Peak RSS (MB) of a process that only builds and runs that mode. */
  peakRssMB: Record<Mode, number>;
  /**
   * Extra cost of one guidance step beyond the forward that computes the maps anyway, ÷ the plain forward:
   * recompute = VJP graph / forward; residuals = (forward with residuals + backward − forward with maps) / forward.
   */
  ratio: { recompute: number; residuals: number; residualsBackwardOnly: number };
  /** The same from CPU time. */
  ratioCpu: { recompute: number; residuals: number };
  targets: { recompute: number; residuals: number };
  fastest: 'recompute' | 'residuals';
}

const median = (xs: number[]) => quantile(xs, 0.5);
function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

interface Step {
  run(): Promise<void>;
  release(): Promise<void>;
  parts: { f: number[]; r: number[] };
  extra: Partial<Timing>;
}

/** Sessions and inputs for one mode. */
async function setUp(mode: Mode, modelPath: string, threads: number): Promise<Step> {
  const loaded = loadModel(modelPath);
  const model = loaded.model;
  const graph = model.graph!;
  const r = rng(3);
  const dimsOf = (name: string, fallback: number[]) => {
    const d = graph.input.find((i) => i.name === name)!.type?.tensor_type?.shape?.dim ?? [];
    return d.map((x, k) => (x.dim_value != null && Number(x.dim_value) > 0 ? Number(x.dim_value) : fallback[k]));
  };
  const sampleDims = dimsOf('sample', [1, 4, 32, 32]);
  const ehsDims = dimsOf('encoder_hidden_states', [1, 77, 32]);
  const tsVi = graph.input.find((i) => i.name === 'timestep')!;
  const tsDims = (tsVi.type?.tensor_type?.shape?.dim ?? []).map(() => 1);
  const rand = (dims: number[]) => Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, () => 2 * r() - 1);
  const feeds: Record<string, ort.Tensor> = {
    sample: new ort.Tensor('float32', rand(sampleDims), sampleDims),
    encoder_hidden_states: new ort.Tensor('float32', rand(ehsDims), ehsDims),
    timestep:
      tsVi.type?.tensor_type?.elem_type === 7
        ? new ort.Tensor('int64', BigInt64Array.of(500n), tsDims)
        : new ort.Tensor('float32', Float32Array.of(500), tsDims),
  };
  // The same session options as the pipeline (lib/pipeline/ort.ts): several sessions live in this process, and
  // ORT's spin-waiting pools would steal the cores from whichever one runs.
  const session: ort.InferenceSession.SessionOptions = sessionOptions({
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
  });
  const maps = graph.node.filter((n) => n.op_type === 'Softmax' && /attn2/.test(n.name ?? '')).map((n) => n.output[0]);
  const parts = { f: [] as number[], r: [] as number[] };
  if (mode === 'forward' || mode === 'forward-maps') {
    const m: ModelProto =
      mode === 'forward'
        ? model
        : { ...model, graph: { ...graph, output: [...graph.output, ...maps.map((name) => ({ name }))] } };
    const s = await createSessionFromModel(m, session, loaded.dir);
    return {
      run: async () => {
        await s.run(feeds);
      },
      release: () => s.release(),
      parts,
      extra: {},
    };
  }
  const shapes = await inferStaticShapes(model, { sample: sampleDims, encoder_hidden_states: ehsDims });
  const built = buildVjp(model, { wrt: 'sample', outputs: maps, shapes, design: mode });
  const extra: Partial<Timing> = {
    buildMs: built.stats.buildMs,
    nodes: built.stats.backwardNodes + built.stats.forwardNodes,
  };
  if (mode === 'residuals') extra.residualMB = built.stats.residualBytes / 2 ** 20;
  const runner = await runVjpGraphs(built, { session, baseDir: loaded.dir });
  const cot: Record<string, ort.Tensor> = {};
  for (const m of maps) {
    const d = shapes.get(m)!.dims;
    cot[m] = new ort.Tensor('float32', rand(d), d);
  }
  return {
    // A guidance step: maps (forward) → loss → cotangents → VJP. The residuals design gets the maps from its
    // forward(); the recompute design's forward() is empty (the maps come from the plain forward-with-maps).
    run: async () => {
      const t0 = performance.now();
      await runner.forward(feeds);
      const t1 = performance.now();
      await runner.run(cot, feeds);
      parts.f.push(t1 - t0);
      parts.r.push(performance.now() - t1);
    },
    release: () => runner.release(),
    parts,
    extra,
  };
}

/** Child: all modes round-robin. */
async function timeInterleaved(modelPath: string, iterations: number, threads: number): Promise<Timing[]> {
  const steps = new Map<Mode, Step>();
  for (const m of MODES) steps.set(m, await setUp(m, modelPath, threads));
  const wall = new Map<Mode, number[]>(MODES.map((m) => [m, []]));
  const cpu = new Map<Mode, number[]>(MODES.map((m) => [m, []]));
  for (let k = 0; k < iterations + 2; k++) {
    for (const m of MODES) {
      const s = steps.get(m)!;
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      await s.run();
      const dt = performance.now() - t0;
      const c = process.cpuUsage(c0);
      if (k < 2) continue; // warm-up
      wall.get(m)!.push(dt);
      cpu.get(m)!.push((c.user + c.system) / 1000);
    }
  }
  const out: Timing[] = [];
  for (const m of MODES) {
    const s = steps.get(m)!;
    const w = wall.get(m)!;
    const t: Timing = {
      mode: m,
      medianMs: median(w),
      p10Ms: quantile(w, 0.1),
      p90Ms: quantile(w, 0.9),
      cpuMedianMs: median(cpu.get(m)!),
      ...s.extra,
    };
    if (s.parts.f.length > 0) {
      t.forwardPartMs = median(s.parts.f.slice(2));
      t.runPartMs = median(s.parts.r.slice(2));
    }
    out.push(t);
    await s.release();
  }
  return out;
}

/** Child: one mode alone, for its peak RSS. */
async function peakRss(mode: Mode, modelPath: string, threads: number): Promise<number> {
  const s = await setUp(mode, modelPath, threads);
  for (let k = 0; k < 3; k++) await s.run();
  await s.release();
  return process.resourceUsage().maxRSS / 1024;
}

function inChild<T>(args: string[]): Promise<T> {
  return new Promise((resolve, reject) => {
    const child = fork(__filename, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let result: T | undefined;
    child.on('message', (m) => {
      result = m as T;
    });
    child.on('error', reject);
    child.on('exit', (code) =>
      result !== undefined
        ? resolve(result)
        : reject(new Error(`vjp bench child ${args.join(' ')} exited with ${code}`)),
    );
  });
}

/** Runs the whole benchmark (in child processes) and writes the JSON result. */
export async function runVjpBench(options: VjpBenchOptions = {}): Promise<VjpBenchResult> {
  const model = path.resolve(options.model ?? DEFAULT_MODEL);
  const iterations = options.iterations ?? 20;
  const threads = options.threads ?? 2;
  const common = ['--model', model, '--threads', String(threads)];
  const timings = await inChild<Timing[]>(['--child', 'time', '--iterations', String(iterations), ...common]);
  const peakRssMB = {} as Record<Mode, number>;
  for (const m of MODES) peakRssMB[m] = await inChild<number>(['--child', 'rss', '--mode', m, ...common]);
  const get = (m: Mode) => timings.find((t) => t.mode === m)!;
  for (const t of timings) {
    const split =
      t.forwardPartMs !== undefined
        ? ` [forward() ${t.forwardPartMs.toFixed(1)} + run() ${t.runPartMs!.toFixed(1)}]`
        : '';
    console.log(
      `${t.mode.padEnd(13)} wall median ${t.medianMs.toFixed(1)} ms${split} (p10 ${t.p10Ms.toFixed(1)}, ` +
        `p90 ${t.p90Ms.toFixed(1)}), CPU ${t.cpuMedianMs.toFixed(1)} ms, peak RSS ${peakRssMB[t.mode].toFixed(0)} MB` +
        `${t.residualMB !== undefined ? `, residuals ${t.residualMB.toFixed(1)} MB` : ''}`,
    );
  }
  const fwd = get('forward');
  const ratio = {
    recompute: get('recompute').medianMs / fwd.medianMs,
    residuals: (get('residuals').medianMs - get('forward-maps').medianMs) / fwd.medianMs,
    residualsBackwardOnly: get('residuals').runPartMs! / fwd.medianMs,
  };
  const ratioCpu = {
    recompute: get('recompute').cpuMedianMs / fwd.cpuMedianMs,
    residuals: (get('residuals').cpuMedianMs - get('forward-maps').cpuMedianMs) / fwd.cpuMedianMs,
  };
  const result: VjpBenchResult = {
    model: path.relative(ROOT, model),
    date: new Date().toISOString(),
    threads,
    iterations,
    cpus: `${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}`,
    loadAverage: os.loadavg(),
    timings,
    peakRssMB,
    ratio,
    ratioCpu,
    targets: { recompute: 3.0, residuals: 2.2 },
    fastest: ratio.recompute <= ratio.residuals ? 'recompute' : 'residuals',
  };
  console.log(
    `VJP ÷ forward (wall): recompute ${ratio.recompute.toFixed(2)} (target ≤ 3.0), residuals ` +
      `${ratio.residuals.toFixed(2)} (target ≤ 2.2; its backward graph alone ${ratio.residualsBackwardOnly.toFixed(2)}); ` +
      `from CPU time: recompute ${ratioCpu.recompute.toFixed(2)}, residuals ${ratioCpu.residuals.toFixed(2)}; ` +
      `load ${result.loadAverage.map((l) => l.toFixed(1)).join('/')}`,
  );
  const out = options.out ?? path.join(ROOT, 'bench/results/vjp.json');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
  return result;
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

if (require.main === module) {
  const child = arg('--child');
  const model = arg('--model');
  const iterations = arg('--iterations') ? Number(arg('--iterations')) : undefined;
  const threads = arg('--threads') ? Number(arg('--threads')) : undefined;
  const fail = (err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  };
  if (child === 'time') timeInterleaved(model!, iterations!, threads!).then((t) => process.send!(t), fail);
  else if (child === 'rss') peakRss(arg('--mode') as Mode, model!, threads!).then((t) => process.send!(t), fail);
  else runVjpBench({ model, iterations, threads }).catch(fail);
}
