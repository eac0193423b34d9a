/**
 * Performance where users run it: the pipeline on an SD 1.5-size model (tools/make_sd15_bench_model.py: SD 1.5's
 * UNet, 859,520,964 parameters, random weights) and on the tiny fixture model, mode by mode (none, max, tv,
 * tv_bind), with the PyTorch peer (bench/torch_peer.py: the same loop in PyTorch eager with autograd on the same
 * weights) timed in the same run. Writes bench/results/sd15.json:
 *   { size, modes: { <mode>: { secondsPerImage, ratioVsPlain, peakRssMB, peakPssMB, … } }, bySize, tiny, peer, sessions }
 * (the top-level size/modes are the largest SD 1.5 size run).
 *
 * Every mode runs in its own child process (peak RSS is a process high-water mark), after one warm-up image of
 * `--warmup-steps` steps (first runs page the weights in); the parent samples the child's Pss during the load and the
 * warm-up only, never during the timed images (bench/sd15-run.ts says why; bench/memory.ts why both peaks are
 * reported). Settings: `--steps` steps, maxIterToAlter `--max-iter`, no refinement, the
 * same initial latents and tokens for every mode and for the peer. The allocator A/B (`releasedFreedMemory`) runs
 * `--allocator-modes` again with SessionOptions.retainFreedMemory false, in the same run.
 *
 *   node dist/bench/sd15.bench.js --model /work/perf-models/sd15 [--sizes 256,512] [--modes none,max,tv,tv_bind]
 *     [--steps 10] [--max-iter 5] [--repeats 1] [--warmup-steps 1] [--threads N] [--peer-modes none,tv_bind]
 *     [--no-tiny] [--no-peer] [--no-sessions] [--private-weights] [--release-freed-memory] [--allocator-modes none,tv_bind]
 *     [--out bench/results/sd15.json]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { GuidanceMode } from '../lib/pipeline/guidance';
import { randnTorchCpu } from '../lib/pipeline/noise';
import { writeNpy } from '../lib/util/npy';
import { MemoryPeaks } from './memory';
import { runPeer, type PeerResult } from './peer';
import { measureSessions, type SessionMemory } from './sessions';
import { prepareInChild, runModeInChild, type ModeRun, type RunSettings } from './sd15-run';
import { hugePagesState, relaunchWithHugePages } from '../lib/pipeline/huge-pages';

const ROOT = path.resolve(__dirname, '../..');
const TINY = path.join(ROOT, 'test/fixtures/models/tiny-sd');

export interface Sd15BenchOptions {
  model: string;
  sizes: number[];
  modes: GuidanceMode[];
  peerModes: GuidanceMode[];
  settings: Omit<RunSettings, 'modelDir' | 'size' | 'mode' | 'latentsFile'>;
  tiny: boolean;
  peer: boolean;
  /** Modes also run with freed memory released (the allocator A/B); [] skips it. */
  allocatorModes: GuidanceMode[];
  /** Measure each session's memory with shared and private weights (bench/sessions.ts). */
  sessions: boolean;
  out: string;
}

interface ModeResult extends Omit<ModeRun, 'finalLatentsFile'> {
  ratioVsPlain: number;
  peakPssMB: number;
}

interface SizeResult {
  size: number;
  modes: Record<string, ModeResult>;
  /** The allocator A/B: modes run with retainFreedMemory false; retainedSpeedup = their time ÷ the default's. */
  releasedFreedMemory: Record<string, ModeResult> | null;
  peer: PeerResult | null;
}

/** Each mode in its own child; the parent samples its Pss during the load and the warm-up. */
async function runModes(
  modes: readonly GuidanceMode[],
  base: Omit<RunSettings, 'mode'>,
  label: string,
): Promise<{ results: Record<string, ModeResult>; finals: Record<string, string> }> {
  const results: Record<string, ModeResult> = {};
  const finals: Record<string, string> = {};
  for (const mode of modes) {
    let peaks: MemoryPeaks | undefined;
    let peakPssMB = 0;
    const stopSampling = () => {
      if (peaks !== undefined) peakPssMB = Math.max(peakPssMB, peaks.stop().peakPssMB);
      peaks = undefined;
    };
    const run = await runModeInChild(
      { ...base, mode },
      {
        onStart: (pid) => {
          peaks = new MemoryPeaks(pid);
        },
        onTimed: stopSampling,
      },
    );
    stopSampling();
    const { finalLatentsFile, ...rest } = run;
    finals[mode] = finalLatentsFile;
    results[mode] = { ...rest, ratioVsPlain: Number.NaN, peakPssMB };
    console.log(
      `${label} ${mode.padEnd(8)} ${run.secondsPerImage.toFixed(2)} s/image, peak RSS ${run.peakRssMB.toFixed(0)} MB, peak PSS ${peakPssMB.toFixed(0)} MB`,
    );
  }
  const plain = results.none;
  for (const r of Object.values(results)) {
    r.ratioVsPlain = plain ? r.secondsPerImage / plain.secondsPerImage : Number.NaN;
    if (plain) Object.assign(r, { rssVsPlain: r.peakRssMB / plain.peakRssMB, pssVsPlain: r.peakPssMB / plain.peakPssMB });
  }
  return { results, finals };
}

/** The modes, the allocator A/B (SD 1.5 size only) and the PyTorch peer at one size. The guided modes need the size prepared first (its own child). */
async function runSize(modelDir: string, kind: 'sd15' | 'tiny', size: number, o: Sd15BenchOptions, scratch: string): Promise<SizeResult> {
  const prepareSeconds = o.modes.some((m) => m !== 'none') ? await prepareInChild(modelDir, size) : 0;
  if (prepareSeconds > 0) console.log(`prepared ${modelDir} for ${size}² in ${prepareSeconds.toFixed(0)} s`);
  const latentsFile = path.join(scratch, `latents-${path.basename(modelDir)}-${size}.npy`);
  writeNpy(latentsFile, randnTorchCpu(o.settings.seed, [1, 4, size / 8, size / 8]), [1, 4, size / 8, size / 8]);
  const base = { ...o.settings, modelDir, size, latentsFile };
  const label = `${path.basename(modelDir)} ${size}²`;
  const { results: modes, finals } = await runModes(o.modes, base, label);
  // The same modes with glibc free to hand freed memory back (SessionOptions.retainFreedMemory false).
  const abModes = kind === 'sd15' && o.settings.retainFreedMemory ? o.allocatorModes.filter((m) => o.modes.includes(m)) : [];
  const released = abModes.length > 0 ? (await runModes(abModes, { ...base, retainFreedMemory: false }, `${label} freed memory released`)).results : null;
  for (const [mode, r] of Object.entries(released ?? {})) Object.assign(r, { retainedSpeedup: r.secondsPerImage / modes[mode]!.secondsPerImage });
  const peerModes = o.modes.filter((m) => o.peerModes.includes(m));
  const tokens = Object.values(modes).find((m) => m.tokens !== null)?.tokens ?? null;
  const peer =
    o.peer && peerModes.length > 0
      ? await runPeer({ kind, size, modes: peerModes, settings: o.settings, latentsFile, tokens, nodeLatents: finals, nodeSeconds: modes, scratch })
      : null;
  return { size, modes, releasedFreedMemory: released, peer };
}

function meta(o: Sd15BenchOptions): Record<string, unknown> {
  return {
    date: new Date().toISOString(),
    cpus: `${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}`,
    loadAverage: os.loadavg(),
    node: process.version,
    hugePages: hugePagesState(), // children inherit the parent's environment
    settings: { ...o.settings, modes: o.modes, peerModes: o.peerModes, refinement: 'none (thresholds {})' },
    targets: { tvBindRatioVsPlain: 1.8, peakMemoryVsPlain: 1.3 },
  };
}

/** Runs everything and writes the JSON (see the file header). */
export async function runSd15Bench(o: Sd15BenchOptions): Promise<Record<string, unknown>> {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-sd15-bench-'));
  try {
    const bySize: Record<string, SizeResult> = {};
    for (const size of o.sizes) bySize[size] = await runSize(o.model, 'sd15', size, o, scratch);
    // A copy of the tiny fixture: preparing it must not write into test/fixtures.
    const tinyDir = path.join(scratch, 'tiny-sd');
    if (o.tiny) fs.cpSync(TINY, tinyDir, { recursive: true, filter: (p) => !p.split(path.sep).includes('divbind') });
    const tiny = o.tiny ? await runSize(tinyDir, 'tiny', 256, o, scratch) : null;
    const sessions: Record<string, SessionMemory[]> = {};
    const largest = o.sizes.length > 0 ? Math.max(...o.sizes) : undefined;
    for (const shareWeights of largest !== undefined && o.sessions ? [true, false] : []) {
      sessions[shareWeights ? 'sharedWeights' : 'privateWeights'] = await measureSessions(o.model, largest!, shareWeights, o.settings.threads);
    }
    const top = largest !== undefined ? bySize[largest]! : undefined;
    const result = { size: top?.size, modes: top?.modes, bySize, tiny, peer: top?.peer, sessions, meta: { ...meta(o), loadAverageAfter: os.loadavg() } };
    fs.mkdirSync(path.dirname(o.out), { recursive: true });
    fs.writeFileSync(o.out, `${JSON.stringify(result, null, 2)}\n`);
    console.log(`wrote ${o.out}`);
    return result;
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

function parseArgs(argv: string[]): Sd15BenchOptions {
  const get = (k: string) => {
    const i = argv.indexOf(k);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const list = (k: string, d: string) => (get(k) ?? d).split(',').filter((x) => x !== '');
  const num = (k: string, d: number) => (get(k) === undefined ? d : Number(get(k)));
  const model = get('--model');
  if (model === undefined) throw new Error('pass --model <SD 1.5-size folder> (tools/make_sd15_bench_model.py makes one)');
  return {
    model: path.resolve(model),
    sizes: list('--sizes', '256,512').map(Number), // --sizes '' runs the tiny model only
    modes: list('--modes', 'none,max,tv,tv_bind') as GuidanceMode[],
    peerModes: list('--peer-modes', 'none,tv_bind') as GuidanceMode[],
    settings: {
      steps: num('--steps', 10),
      maxIterToAlter: num('--max-iter', 5),
      repeats: num('--repeats', 1),
      warmupSteps: num('--warmup-steps', 1),
      threads: num('--threads', os.cpus().length),
      seed: num('--seed', 42),
      shareWeights: !argv.includes('--private-weights'),
      retainFreedMemory: !argv.includes('--release-freed-memory'),
      prompt: 'a red cat and a blue dog',
      tokens: { objects: ['cat', 'dog'], attributes: ['red', 'blue'] },
    },
    tiny: !argv.includes('--no-tiny'),
    peer: !argv.includes('--no-peer'),
    allocatorModes: list('--allocator-modes', 'none,tv_bind') as GuidanceMode[],
    sessions: !argv.includes('--no-sessions'),
    out: path.resolve(get('--out') ?? path.join(ROOT, 'bench/results/sd15.json')),
  };
}

if (require.main === module && process.argv[2] !== '--child') {
  relaunchWithHugePages(); // as the CLI does; DIVBIND_HUGE_PAGES=0 for the run without
  runSd15Bench(parseArgs(process.argv.slice(2))).catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
