/**
 * Attention-loss benchmark: forward + backward per call, native addon vs the TypeScript twin side by side
 * (benny), on three input sizes, against a memory-bandwidth floor measured in the same run.
 *
 *   node dist/bench/loss.bench.js [--quick] [--out bench/results/loss.json]
 *
 * Cases: 'native' and 'js' through attentionLoss (validation included) writing every gradient float;
 * 'native-reuse' and 'js-reuse' the same with gradOutReuse (kept buffers, only the regions where a gradient can be
 * non-zero are written); 'native-raw' and 'native-raw-reuse' = the addon alone on pre-normalized options (the
 * difference to 'native' / 'native-reuse' is the TypeScript side: validation, reuse bookkeeping). Sizes (T = 77, caller-owned
 * gradients; two objects with attributes, mode tv_bind, unless noted):
 *   sd15-512       SD 1.x at 512²: 5 layers × 8 heads at 16², 5 at 32², 5 at 64², 1 mid at 8²
 *   sd15-512-tv    the same in mode 'tv' (only the 16² layers get a gradient: where reuse saves most)
 *   sd15-512-h1    the same with head-averaged inputs (heads = 1)
 *   small          a small model: 3 layers × 2 heads at 16², 3 × 2 heads at 32²
 *
 * Two floors, both over trafficBandwidth = 2 × (bytes copied per second by Buffer.copy / TypedArray.set on a
 * 256 MiB buffer, best of 5), since a copy reads and writes each byte once:
 *   floorMs      = (every input float + every gradient float) · 4 B / trafficBandwidth: a call that reads all
 *                  its input and writes the whole gradient (the contract without reuse);
 *   trueFloorMs  = (the floats the loss must read + the non-zero gradient floats) · 4 B / trafficBandwidth: the
 *                  kept tokens of the rows the aggregation samples (all 16² pixels, the nearest-sampled pixels
 *                  of the attribute layers), and the gradient entries that are not zero (counted in a real
 *                  gradient of the case). Only a call with reuse can approach it (issue 14 target: ≤ 1.3×).
 *
 * Also measured: the longest event-loop block while calls run (wall and CPU time between the turns of a
 * setImmediate spinner), sync vs async, per backend, on the SD size.
 */
import b from 'benny';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { attentionLoss, attentionLossAsync, availableBackends, normalizeLossOptions } from '../lib/loss/index';
import { tryLoadNativeBinding } from '../lib/loss/binding';
import type { NormalizedLossOptions } from '../lib/loss/native-types';
import { makePlan, readPixels } from '../lib/loss/plan';
import type { AttentionLayer, LayerPlace, LossBackend, LossOptions } from '../lib/loss/types';

const ROOT = path.resolve(__dirname, '../..');

export interface LossBenchOptions {
  /** Output JSON path; default bench/results/loss.json. */
  out?: string;
  /** Fewer samples (CI smoke run). */
  quick?: boolean;
  /** Print progress (benny's cycle lines). Default true. */
  verbose?: boolean;
}

interface Size {
  name: string;
  description: string;
  layers: Array<{ resolution: number; heads: number; place: LayerPlace }>;
}

export interface LossBenchCase {
  size: string;
  /** 'native-raw' = binding.attentionLoss on pre-normalized options (no TS validation); '-reuse': gradOutReuse. */
  backend: LossBackend | 'native-raw' | 'native-raw-reuse' | 'native-reuse' | 'js-reuse';
  meanMs: number;
  medianMs: number;
  rmePercent: number;
  samples: number;
  /** meanMs ÷ floorMs. */
  timesFloor: number;
  /** meanMs ÷ trueFloorMs. */
  timesTrueFloor: number;
  /** Process CPU time per call (robust to other load on the machine). */
  cpuMs: number;
}

export interface LossBenchSize {
  name: string;
  description: string;
  floats: number;
  inputMB: number;
  gradMB: number;
  floorMs: number;
  /** Floats the loss reads (kept tokens of the sampled rows), in MB. */
  readMB: number;
  /** Non-zero gradient floats of the case, in MB. */
  nonZeroGradMB: number;
  trueFloorMs: number;
}

export interface LossBenchResult {
  date: string;
  node: string;
  cpus: string;
  loadAverage: number[];
  addon: string | null;
  bandwidth: { bufferCopyGBps: number; typedArraySetGBps: number; trafficGBps: number; bytes: number };
  floorFormula: string;
  trueFloorFormula: string;
  sizes: LossBenchSize[];
  cases: LossBenchCase[];
  eventLoop: Array<{
    backend: LossBackend;
    mode: 'sync' | 'async' | 'async-reuse';
    calls: number;
    maxBlockWallMs: number;
    maxBlockCpuMs: number;
    meanCallMs: number;
  }>;
}

function sdSpecs(heads: number): Size['layers'] {
  const specs: Size['layers'] = [];
  for (const r of [64, 64, 32, 32, 16, 16]) specs.push({ resolution: r, heads, place: 'down' });
  specs.push({ resolution: 8, heads, place: 'mid' });
  for (const r of [16, 16, 16, 32, 32, 32, 64, 64, 64]) specs.push({ resolution: r, heads, place: 'up' });
  return specs;
}

const SIZES: Size[] = [
  { name: 'sd15-512', description: 'SD 1.x 512²: 5×16², 5×32², 5×64², 1×8² layers, 8 heads, T = 77', layers: sdSpecs(8) },
  { name: 'sd15-512-tv', description: "SD 1.x 512², mode 'tv' (gradient only at 16²), 8 heads, T = 77", layers: sdSpecs(8) },
  { name: 'sd15-512-h1', description: 'SD 1.x 512², head-averaged inputs (heads = 1), T = 77', layers: sdSpecs(1) },
  {
    name: 'small',
    description: 'small model: 3×16² and 3×32² layers, 2 heads, T = 77',
    layers: [
      { resolution: 32, heads: 2, place: 'down' },
      { resolution: 16, heads: 2, place: 'down' },
      { resolution: 16, heads: 2, place: 'mid' },
      { resolution: 16, heads: 2, place: 'up' },
      { resolution: 32, heads: 2, place: 'up' },
      { resolution: 32, heads: 2, place: 'up' },
    ],
  },
];

const T = 77;
const OPTIONS: Record<string, LossOptions> = {
  'sd15-512': { mode: 'tv_bind', tokenIndices: [3, 7], attributeIndices: [2, 6], stepIndex: 10 },
  'sd15-512-tv': { mode: 'tv', tokenIndices: [3, 7] },
  'sd15-512-h1': { mode: 'tv_bind', tokenIndices: [3, 7], attributeIndices: [2, 6], stepIndex: 10 },
  small: { mode: 'tv_bind', tokenIndices: [3, 7], attributeIndices: [2, 6], stepIndex: 10, attributeResolutions: [32] },
};

/** Deterministic pseudo-probabilities (a softmax per row is not needed for timing). */
function makeLayers(size: Size): AttentionLayer[] {
  let state = 12345;
  return size.layers.map((s) => {
    const data = new Float32Array(s.heads * s.resolution * s.resolution * T);
    for (let i = 0; i < data.length; i++) {
      state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
      data[i] = (state / 4294967296) * (2 / T);
    }
    return { data, heads: s.heads, resolution: s.resolution, place: s.place };
  });
}

/**
 * Bytes of the true floor: the floats the loss reads (kept tokens of every row the aggregation samples: all
 * pixels of the object layers, the nearest-sampled pixels of the attribute layers) and the non-zero floats of
 * the case's gradient (counted in `grads`, a gradient of this very call).
 */
export function trueFloorBytes(layers: AttentionLayer[], normalized: NormalizedLossOptions, grads: Float32Array[]): { read: number; nonZero: number } {
  const plan = makePlan(layers, normalized);
  let read = 0;
  layers.forEach((l, i) => {
    read += l.heads * readPixels(plan, i, l.resolution).length * plan.K * 4;
  });
  let nonZero = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) if (g[i] !== 0) nonZero += 4;
  return { read, nonZero };
}

/**
 * Process CPU time (user + system) per call: on a machine shared with other jobs the wall time includes
 * waiting for a core, the CPU time does not. Native calls at SD size use two threads (DIVBIND_THREADS=1: one), so
 * their CPU time can exceed the wall time.
 */
function cpuPerCall(fn: () => void, calls: number): number {
  fn();
  const start = process.cpuUsage();
  for (let i = 0; i < calls; i++) fn();
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1000 / calls;
}

/** Bytes copied per second, best of `repeats`, for a copy function over a 256 MiB buffer. */
function copyBandwidth(copy: (dst: Uint8Array, src: Uint8Array) => void, repeats: number): number {
  const bytes = 256 * 2 ** 20;
  const src = Buffer.alloc(bytes, 1);
  const dst = Buffer.alloc(bytes);
  copy(dst, src); // fault the pages in
  let best = Infinity;
  for (let i = 0; i < repeats; i++) {
    const t0 = process.hrtime.bigint();
    copy(dst, src);
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return bytes / best;
}

/**
 * Longest event-loop block while `calls` calls run: a setImmediate spinner records the gap between its
 * turns, as wall time and as process CPU time (user + system). On a loaded machine the wall gaps include
 * preemption by other processes; the CPU gaps do not, but for 'native' async they include the libuv pool
 * thread's work running in parallel (so there the wall number is the meaningful one).
 */
async function eventLoopBlock(backend: LossBackend, mode: 'sync' | 'async' | 'async-reuse', layers: AttentionLayer[], options: LossOptions, calls: number) {
  const gradOut = layers.map((l) => new Float32Array(l.data.length));
  const gradOutReuse = mode === 'async-reuse';
  attentionLoss(layers, options, { backend, gradOut, gradOutReuse }); // warm-up: faults the gradient pages in, JIT
  let maxWall = 0;
  let maxCpu = 0;
  let running = true;
  let lastWall = performance.now();
  let lastCpu = process.cpuUsage();
  const spin = () => {
    const wall = performance.now();
    const cpu = process.cpuUsage(lastCpu);
    maxWall = Math.max(maxWall, wall - lastWall);
    maxCpu = Math.max(maxCpu, (cpu.user + cpu.system) / 1000);
    lastWall = wall;
    lastCpu = process.cpuUsage();
    if (running) setImmediate(spin);
  };
  setImmediate(spin);
  await new Promise((r) => setImmediate(r));
  maxWall = 0;
  maxCpu = 0;
  const t0 = performance.now();
  for (let i = 0; i < calls; i++) {
    if (mode === 'sync') {
      attentionLoss(layers, options, { backend, gradOut });
      await new Promise((r) => setImmediate(r));
    } else {
      await attentionLossAsync(layers, options, { backend, gradOut, gradOutReuse });
    }
  }
  const meanCallMs = (performance.now() - t0) / calls;
  running = false;
  await new Promise((r) => setImmediate(r));
  return { backend, mode, calls, maxBlockWallMs: maxWall, maxBlockCpuMs: maxCpu, meanCallMs };
}

/**
 * One input size: its two floors, then every runner timed by benny (full writes, reuse, the raw addon), each
 * also as process CPU time per call.
 */
async function benchSize(
  size: Size,
  result: LossBenchResult,
  ctx: { traffic: number; quick: boolean; verbose: boolean; log: (s: string) => void },
): Promise<void> {
  const { traffic, quick, verbose, log } = ctx;
  const { binding } = tryLoadNativeBinding();
  const backends = availableBackends().filter((x) => x === 'native' || x === 'js');
  const layers = makeLayers(size);
  const lossOptions = OPTIONS[size.name];
  const floats = layers.reduce((a, l) => a + l.data.length, 0);
  const floorMs = ((floats * 4 + floats * 4) / traffic) * 1000;
  const normalized = normalizeLossOptions(layers, lossOptions);
  const gradOut = layers.map((l) => new Float32Array(l.data.length));
  // Fault the gradient pages in before timing (the first write to fresh memory costs page faults).
  for (const backend of backends) attentionLoss(layers, lossOptions, { backend, gradOut });
  const { read, nonZero } = trueFloorBytes(layers, normalized, gradOut);
  const trueFloorMs = ((read + nonZero) / traffic) * 1000;
  result.sizes.push({
    name: size.name,
    description: size.description,
    floats,
    inputMB: (floats * 4) / 2 ** 20,
    gradMB: (floats * 4) / 2 ** 20,
    floorMs,
    readMB: read / 2 ** 20,
    nonZeroGradMB: nonZero / 2 ** 20,
    trueFloorMs,
  });
  const runners: Record<string, () => void> = {};
  for (const backend of backends) {
    runners[backend] = () => {
      attentionLoss(layers, lossOptions, { backend, gradOut });
    };
    // Kept buffers of their own: the first call writes them in full, the timed ones only where it can matter.
    const kept = layers.map((l) => new Float32Array(l.data.length));
    attentionLoss(layers, lossOptions, { backend, gradOut: kept, gradOutReuse: true });
    runners[`${backend}-reuse`] = () => {
      attentionLoss(layers, lossOptions, { backend, gradOut: kept, gradOutReuse: true });
    };
  }
  // The addon alone on pre-validated options: the difference to 'native' is the TS-side overhead.
  if (binding) {
    runners['native-raw'] = () => {
      binding.attentionLoss(layers, normalized, gradOut, null, null);
    };
    // ... and with kept buffers, carrying the states the addon reports from call to call (what gradOutReuse does).
    const kept = layers.map((l) => new Float32Array(l.data.length));
    let states = Uint8Array.from(binding.attentionLoss(layers, normalized, kept, null, null).gradStates ?? []);
    runners['native-raw-reuse'] = () => {
      states = Uint8Array.from(binding.attentionLoss(layers, normalized, kept, null, null, states).gradStates ?? []);
    };
  }
  const summary = await b.suite(
    `attention loss fwd+bwd: ${size.name}`,
    b.configure({ cases: quick ? { minSamples: 3, maxTime: 0.5 } : { minSamples: 10, maxTime: 4 } }),
    ...Object.entries(runners).map(([name, fn]) => b.add(name, fn)),
    ...(verbose ? [b.cycle()] : []),
  );
  for (const r of summary.results) {
    const meanMs = r.details.mean * 1000;
    const cpuMs = cpuPerCall(runners[r.name], quick ? 3 : 10);
    result.cases.push({
      size: size.name,
      backend: r.name as LossBenchCase['backend'],
      meanMs,
      medianMs: r.details.median * 1000,
      rmePercent: r.details.relativeMarginOfError,
      samples: r.samples,
      timesFloor: meanMs / floorMs,
      timesTrueFloor: meanMs / trueFloorMs,
      cpuMs,
    });
    log(
      `  ${size.name} ${r.name}: mean ${meanMs.toFixed(2)} ms (±${r.details.relativeMarginOfError.toFixed(1)} %), CPU ${cpuMs.toFixed(2)} ms/call, ` +
        `${(meanMs / floorMs).toFixed(2)}× floor ${floorMs.toFixed(2)} ms, ${(meanMs / trueFloorMs).toFixed(2)}× true floor ${trueFloorMs.toFixed(2)} ms (wall)`,
    );
  }
}

export async function runLossBench(options: LossBenchOptions = {}): Promise<LossBenchResult> {
  const out = options.out ?? path.join(ROOT, 'bench', 'results', 'loss.json');
  const verbose = options.verbose ?? true;
  const quick = options.quick ?? false;
  const log = (s: string) => {
    if (verbose) console.log(s);
  };
  const { binding } = tryLoadNativeBinding();
  const backends = availableBackends().filter((x) => x === 'native' || x === 'js');

  const bufferCopy = copyBandwidth((d, s) => {
    (s as Buffer).copy(d);
  }, 5);
  const typedSet = copyBandwidth((d, s) => {
    d.set(s);
  }, 5);
  const traffic = 2 * Math.max(bufferCopy, typedSet);
  log(
    `memcpy: Buffer.copy ${(bufferCopy / 1e9).toFixed(2)} GB/s, TypedArray.set ${(typedSet / 1e9).toFixed(2)} GB/s → traffic ${(traffic / 1e9).toFixed(2)} GB/s`,
  );

  const result: LossBenchResult = {
    date: new Date().toISOString(),
    node: process.version,
    cpus: `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'unknown'}`,
    loadAverage: os.loadavg(),
    addon: binding ? binding.features.build : null,
    bandwidth: { bufferCopyGBps: bufferCopy / 1e9, typedArraySetGBps: typedSet / 1e9, trafficGBps: traffic / 1e9, bytes: 256 * 2 ** 20 },
    floorFormula: 'floorMs = (inputFloats·4 B + gradFloats·4 B) / (2 · max(Buffer.copy, TypedArray.set) bytes per second) · 1000',
    trueFloorFormula: 'trueFloorMs = (readFloats·4 B + nonZeroGradFloats·4 B) / (2 · max(Buffer.copy, TypedArray.set) bytes per second) · 1000',
    sizes: [],
    cases: [],
    eventLoop: [],
  };

  for (const size of SIZES) await benchSize(size, result, { traffic, quick, verbose, log });

  const sd = makeLayers(SIZES[0]);
  for (const backend of backends) {
    for (const mode of ['sync', 'async', 'async-reuse'] as const) {
      const e = await eventLoopBlock(backend, mode, sd, OPTIONS['sd15-512'], quick ? 3 : 10);
      result.eventLoop.push(e);
      log(
        `  event loop, SD size, ${backend} ${mode}: longest block ${e.maxBlockWallMs.toFixed(2)} ms wall / ${e.maxBlockCpuMs.toFixed(2)} ms CPU, ${e.meanCallMs.toFixed(2)} ms per call`,
      );
    }
  }

  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
  log(`wrote ${path.relative(process.cwd(), out)}`);
  return result;
}

if (require.main === module) {
  const args = process.argv.slice(2);
  const outIndex = args.indexOf('--out');
  runLossBench({ quick: args.includes('--quick'), out: outIndex >= 0 ? path.resolve(args[outIndex + 1]) : undefined }).catch((e) => {
    console.error(e);
    process.exitCode = 1;
  });
}
