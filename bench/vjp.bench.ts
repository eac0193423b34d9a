/**
 * VJP benchmark: time of one gradient w.r.t. `sample` (all cross-attention maps given cotangents) divided by
 * the time of one plain UNet forward, for both VJP designs, on the reference tiny UNet; plus the peak RSS of
 * each design. Every measurement runs in a fresh child process (so peak RSS belongs to that design alone and
 * no session warms another's caches). Writes bench/results/vjp.json.
 *
 *   node dist/bench/vjp.bench.js [--model path/to/unet.onnx] [--iterations 20] [--threads 2]
 */
import { fork } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { createSessionFromModel, loadModel } from '../lib/onnx/model-io';
import { ModelProto } from '../lib/onnx/proto';
import { inferStaticShapes } from '../lib/onnx/shapes';
import { buildVjp } from '../lib/onnx/vjp';
import { runVjpGraphs } from '../lib/onnx/vjp/runner';
import { rng } from '../lib/onnx/vjp/gradcheck';

const ROOT = path.resolve(__dirname, '../..');
const DEFAULT_MODEL = path.join(ROOT, 'test/fixtures/models/tiny-sd/unet/model.onnx');

type Mode = 'forward' | 'forward-maps' | 'recompute' | 'residuals';

export interface VjpBenchOptions {
  model?: string;
  iterations?: number;
  threads?: number;
  /** Output JSON path; default bench/results/vjp.json. */
  out?: string;
}

interface Timing {
  mode: Mode;
  /** One step: forward (forward modes) or forward() + run() (VJP modes). */
  medianMs: number;
  p10Ms: number;
  p90Ms: number;
  /** Median process CPU time (user + system) of one step: stable on a loaded machine where wall time is not. */
  cpuMedianMs: number;
  /** VJP modes: median of the runner's forward() (residuals: forward with residual outputs; recompute: 0). */
  forwardPartMs?: number;
  /** VJP modes: median of run() (the VJP graph, or the backward graph). */
  runPartMs?: number;
  maxRssMB: number;
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
  /** 1/5/15-minute load averages when the run ended: wall times are only comparable at similar load. */
  loadAverage: number[];
  timings: Timing[];
  /**
   * Extra cost of one guidance step over the forward that computes the maps anyway, ÷ the plain forward:
   * recompute = VJP graph / forward; residuals = (forward with residuals + backward − forward with maps) / forward.
   */
  ratio: { recompute: number; residuals: number; residualsBackwardOnly: number };
  /** The same ratios from CPU time (recompute, residuals; no split of the residuals parts). */
  ratioCpu: { recompute: number; residuals: number };
  targets: { recompute: number; residuals: number };
  fastest: 'recompute' | 'residuals';
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function crossAttentionOutputs(model: ModelProto): string[] {
  return model.graph!.node.filter((n) => n.op_type === 'Softmax' && /attn2/.test(n.name ?? '')).map((n) => n.output[0]);
}

/** One measurement, in this process (called in a child). */
async function measure(mode: Mode, modelPath: string, iterations: number, threads: number): Promise<Timing> {
  const loaded = loadModel(modelPath);
  const model = loaded.model;
  const graph = model.graph!;
  const r = rng(3);
  const dimsOf = (name: string, fallback: number[]) => {
    const vi = graph.input.find((i) => i.name === name)!;
    const d = vi.type?.tensor_type?.shape?.dim ?? [];
    return d.map((x, k) => (x.dim_value != null && Number(x.dim_value) > 0 ? Number(x.dim_value) : fallback[k]));
  };
  const sampleDims = dimsOf('sample', [1, 4, 32, 32]);
  const ehsDims = dimsOf('encoder_hidden_states', [1, 77, 32]);
  const tsVi = graph.input.find((i) => i.name === 'timestep')!;
  const tsType = tsVi.type?.tensor_type?.elem_type;
  const tsDims = (tsVi.type?.tensor_type?.shape?.dim ?? []).map(() => 1);
  const rand = (dims: number[]) => Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, () => 2 * r() - 1);
  const feeds: Record<string, ort.Tensor> = {
    sample: new ort.Tensor('float32', rand(sampleDims), sampleDims),
    encoder_hidden_states: new ort.Tensor('float32', rand(ehsDims), ehsDims),
    timestep: tsType === 7 ? new ort.Tensor('int64', BigInt64Array.of(500n), tsDims) : new ort.Tensor('float32', Float32Array.of(500), tsDims),
  };
  const session: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: 'all', intraOpNumThreads: threads, interOpNumThreads: 1 };
  const maps = crossAttentionOutputs(model);
  let step: () => Promise<unknown>;
  const parts = { f: [] as number[], r: [] as number[] };
  let release: () => Promise<void>;
  const extra: Partial<Timing> = {};
  if (mode === 'forward' || mode === 'forward-maps') {
    const m: ModelProto = mode === 'forward' ? model
      : { ...model, graph: { ...graph, output: [...graph.output, ...maps.map((name) => ({ name }))] } };
    const s = await createSessionFromModel(m, session, loaded.dir);
    step = () => s.run(feeds);
    release = () => s.release();
  } else {
    const shapes = await inferStaticShapes(model, { sample: sampleDims, encoder_hidden_states: ehsDims });
    const built = buildVjp(model, { wrt: 'sample', outputs: maps, shapes, design: mode });
    extra.buildMs = built.stats.buildMs;
    extra.nodes = built.stats.backwardNodes + built.stats.forwardNodes;
    if (mode === 'residuals') extra.residualMB = built.stats.residualBytes / 2 ** 20;
    const runner = await runVjpGraphs(built, { session, baseDir: loaded.dir });
    const cot: Record<string, ort.Tensor> = {};
    for (const m of maps) {
      const d = shapes.get(m)!.dims;
      cot[m] = new ort.Tensor('float32', rand(d), d);
    }
    // A guidance step needs the forward (maps → loss → cotangents) then the backward; the residuals design
    // gets the maps from its forward, so one step = forward() + run().
    step = async () => {
      const t0 = performance.now();
      await runner.forward(feeds); // residuals: yields the maps too; recompute: nothing to do
      const t1 = performance.now();
      await runner.run(cot, feeds);
      parts.f.push(t1 - t0);
      parts.r.push(performance.now() - t1);
    };
    release = () => runner.release();
  }
  for (let k = 0; k < 2; k++) await step(); // warm-up
  parts.f.length = 0;
  parts.r.length = 0;
  const times: number[] = [];
  const cpu: number[] = [];
  for (let k = 0; k < iterations; k++) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await step();
    times.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    cpu.push((c.user + c.system) / 1000);
  }
  cpu.sort((a, b) => a - b);
  await release();
  times.sort((a, b) => a - b);
  if (parts.f.length > 0) {
    extra.forwardPartMs = quantile(parts.f.sort((a, b) => a - b), 0.5);
    extra.runPartMs = quantile(parts.r.sort((a, b) => a - b), 0.5);
  }
  return {
    mode, medianMs: quantile(times, 0.5), cpuMedianMs: quantile(cpu, 0.5), p10Ms: quantile(times, 0.1), p90Ms: quantile(times, 0.9),
    maxRssMB: process.resourceUsage().maxRSS / 1024, ...extra,
  };
}

function inChild(mode: Mode, opts: Required<Omit<VjpBenchOptions, 'out'>>): Promise<Timing> {
  return new Promise((resolve, reject) => {
    const child = fork(__filename, ['--child', mode, '--model', opts.model, '--iterations', String(opts.iterations),
      '--threads', String(opts.threads)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let result: Timing | undefined;
    child.on('message', (m) => { result = m as Timing; });
    child.on('error', reject);
    child.on('exit', (code) => (result ? resolve(result) : reject(new Error(`vjp bench child '${mode}' exited with ${code}`))));
  });
}

/** Runs the whole benchmark (each mode in its own process) and writes the JSON result. */
export async function runVjpBench(options: VjpBenchOptions = {}): Promise<VjpBenchResult> {
  const opts = {
    model: path.resolve(options.model ?? DEFAULT_MODEL),
    iterations: options.iterations ?? 20,
    threads: options.threads ?? 2,
  };
  const timings: Timing[] = [];
  for (const mode of ['forward', 'forward-maps', 'recompute', 'residuals'] as Mode[]) {
    const t = await inChild(mode, opts);
    timings.push(t);
    const split = t.forwardPartMs !== undefined ? ` [forward() ${t.forwardPartMs.toFixed(1)} + run() ${t.runPartMs!.toFixed(1)}]` : '';
    console.log(`${mode.padEnd(13)} median ${t.medianMs.toFixed(1)} ms${split}, CPU ${t.cpuMedianMs.toFixed(1)} ms (p10 ${t.p10Ms.toFixed(1)}, p90 ${t.p90Ms.toFixed(1)}), ` +
      `peak RSS ${t.maxRssMB.toFixed(0)} MB${t.residualMB !== undefined ? `, residuals ${t.residualMB.toFixed(1)} MB` : ''}`);
  }
  const fwd = timings.find((t) => t.mode === 'forward')!.medianMs;
  const fwdMaps = timings.find((t) => t.mode === 'forward-maps')!.medianMs;
  const res = timings.find((t) => t.mode === 'residuals')!;
  const ratio = {
    recompute: timings.find((t) => t.mode === 'recompute')!.medianMs / fwd,
    residuals: (res.medianMs - fwdMaps) / fwd,
    residualsBackwardOnly: res.runPartMs! / fwd,
  };
  const cpuOf = (m: Mode) => timings.find((t) => t.mode === m)!.cpuMedianMs;
  const ratioCpu = {
    recompute: cpuOf('recompute') / cpuOf('forward'),
    residuals: (cpuOf('residuals') - cpuOf('forward-maps')) / cpuOf('forward'),
  };
  const os = await import('node:os');
  const result: VjpBenchResult = {
    model: path.relative(ROOT, opts.model), date: new Date().toISOString(), threads: opts.threads, iterations: opts.iterations,
    cpus: `${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}`, loadAverage: os.loadavg(), timings, ratio, ratioCpu,
    targets: { recompute: 3.0, residuals: 2.2 }, fastest: ratio.recompute <= ratio.residuals ? 'recompute' : 'residuals',
  };
  console.log(`VJP ÷ forward: recompute ${ratio.recompute.toFixed(2)} (target ≤ 3.0), residuals ${ratio.residuals.toFixed(2)} ` +
    `(target ≤ 2.2; backward graph alone ${ratio.residualsBackwardOnly.toFixed(2)}); from CPU time: recompute ` +
    `${ratioCpu.recompute.toFixed(2)}, residuals ${ratioCpu.residuals.toFixed(2)}`);
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
  const child = arg('--child') as Mode | undefined;
  const model = arg('--model');
  const iterations = arg('--iterations') ? Number(arg('--iterations')) : undefined;
  const threads = arg('--threads') ? Number(arg('--threads')) : undefined;
  if (child) {
    measure(child, model!, iterations!, threads!).then((t) => {
      process.send!(t);
    }).catch((err) => {
      console.error(err);
      process.exitCode = 1;
    });
  } else {
    runVjpBench({ model, iterations, threads }).catch((err) => {
      console.error(err);
      process.exitCode = 1;
    });
  }
}
