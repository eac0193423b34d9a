/**
 * The full-size SDXL UNet on this machine: `prepare` (with its check run) and guidance steps (forward with the maps,
 * the loss, the VJP) at 1024² per layer set, each in a fresh process, with wall time, peak RSS (VmHWM) and sampled
 * peak PSS, beside the plain batch-1 forward on the export's example inputs (checked against PyTorch's output).
 * Steps and forwards run `--repeats` times: the first (…Cold) also pages the weights into the process.
 *
 * The UNet is tools/make_full_size_sdxl_unet.py's export (SDXL base's shape, 2,567,463,684 parameters, random
 * weights, ~10.3 GB of external data); this script puts it in an SDXL folder (model_index.json as Optimum writes it,
 * no "divbind" key, so the family's defaults apply; the UNet files are hard-linked, never copied). Only prepare and
 * the UNet run: the folder has no text encoders or VAE, and the conditioning is seeded random data of the right
 * shapes. Writes bench/results/sdxl-full.json.
 *
 *   /usr/bin/python3 tools/make_full_size_sdxl_unet.py /work/perf-models/sdxl-unet
 *   node dist/bench/sdxl-full.js --unet /work/perf-models/sdxl-unet [--folder DIR] [--size 1024] [--repeats 2]
 *     [--prepare verify|no-verify|skip] [--modes tv,tv_bind] [--no-plain] [--threads N]
 *     [--context 2048 --pooled 1280] [--out bench/results/sdxl-full.json]
 */
import { fork } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { attentionLoss } from '../lib/loss';
import type { LossOptions } from '../lib/loss/types';
import { familyResolutions, sdxlTimeIds } from '../lib/model/family';
import { readUnetFolder } from '../lib/model/folder';
import { layersRead } from '../lib/model/layer-sets';
import { prepareModel } from '../lib/model/prepare';
import { locatePrepared } from '../lib/model/prepared';
import { randnTorchCpu } from '../lib/pipeline/noise';
import * as ort from 'onnxruntime-node';
import { createSession } from '../lib/onnx/model-io';
import { sessionOptions } from '../lib/pipeline/ort';
import { OrtGuidedUnet, type ExtraUnetInput } from '../lib/pipeline/unet';
import { readNpy } from '../lib/util/npy';
import { MemoryPeaks, readMemory } from './memory';

const ROOT = path.resolve(__dirname, '../..');
/** SDXL base's conditioning widths (--context, --pooled): the two encoders' penultimate states concatenated, the pooled projection. */
interface Widths {
  context: number;
  pooled: number;
}
const SDXL_BASE: Widths = { context: 2048, pooled: 1280 };
const TEXT_LENGTH = 77;
/** "a red cat and a blue dog": objects cat, dog; attributes red, blue; EOT after dog. */
const TOKENS = { tokenIndices: [3, 7], attributeIndices: [2, 6], eotIndex: 8 };

type Job =
  | { kind: 'prepare'; folder: string; size: number; verify: boolean }
  | { kind: 'plain'; folder: string; unetDir: string; threads: number; repeats: number }
  | StepJob;
interface StepJob {
  kind: 'step';
  folder: string;
  size: number;
  threads: number;
  widths: Widths;
  repeats: number;
  mode: 'tv' | 'tv_bind';
}

interface ChildReport {
  seconds: Record<string, number>;
  peakRssMB: number;
  details?: Record<string, unknown>;
}

/** An SDXL folder around the exported UNet: model_index.json, unet/config.json, the UNet files hard-linked. */
function assembleFolder(unetDir: string, folder: string): void {
  fs.mkdirSync(path.join(folder, 'unet'), { recursive: true });
  const index = JSON.parse(fs.readFileSync(path.join(ROOT, 'test/fixtures/models/tiny-sdxl/model_index.json'), 'utf8'));
  delete index.divbind; // as a real export: the family decides the D&B defaults
  fs.writeFileSync(path.join(folder, 'model_index.json'), `${JSON.stringify(index, null, 2)}\n`);
  const config = { _class_name: 'UNet2DConditionModel', addition_embed_type: 'text_time', sample_size: 128 };
  fs.writeFileSync(path.join(folder, 'unet', 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  for (const name of ['model.onnx', 'model.onnx_data']) {
    const to = path.join(folder, 'unet', name);
    if (fs.existsSync(path.join(unetDir, name)) && !fs.existsSync(to)) fs.linkSync(path.join(unetDir, name), to);
  }
}

/** The conditioning of one image: seeded random context and pooled embedding, SDXL's time_ids at the size. */
function conditioning(size: number, widths: Widths): { cond: Float32Array; uncond: Float32Array; extra: ExtraUnetInput[] } {
  const cond = randnTorchCpu(1, [TEXT_LENGTH, widths.context]);
  const pooled = randnTorchCpu(2, [widths.pooled]);
  const timeIds = sdxlTimeIds(size, size);
  return {
    cond,
    uncond: new Float32Array(cond.length), // force_zeros_for_empty_prompt
    extra: [
      { name: 'text_embeds', uncond: new Float32Array(widths.pooled), cond: pooled, dims: [widths.pooled] },
      { name: 'time_ids', uncond: timeIds, cond: timeIds, dims: [6] },
    ],
  };
}

const seconds = (t0: number) => (performance.now() - t0) / 1000;
const peakRssMB = () => process.resourceUsage().maxRSS / 1024;
/** `name`: the last of `times` (warm), `nameCold`: the first, which also pages the weights into the process. */
const coldAndWarm = (name: string, times: number[]) => ({ [name]: times[times.length - 1]!, [`${name}Cold`]: times[0]! });

/**
 * The plain UNet at batch 1 on the export's example inputs (tools/make_full_size_sdxl_unet.py writes them with
 * PyTorch's output): the forward a guidance step is compared with, and a check that onnxruntime computes what
 * PyTorch did. A CFG step is two such rows.
 */
async function plainForward(job: Extract<Job, { kind: 'plain' }>): Promise<ChildReport> {
  const folder = readUnetFolder(job.folder);
  const example = (name: string) => readNpy(path.join(job.unetDir, 'example', `${name}.npy`));
  let t = performance.now();
  const session = await createSession(folder.unetFile, sessionOptions({ intraOpNumThreads: job.threads }));
  const load = seconds(t);
  try {
    const feeds: Record<string, ort.Tensor> = {};
    for (const name of session.inputNames) {
      const a = example(name);
      feeds[name] = new ort.Tensor(a.data instanceof BigInt64Array ? 'int64' : 'float32', a.data as Float32Array, a.shape);
    }
    const times: number[] = [];
    let out: ort.InferenceSession.ReturnType = {};
    for (let r = 0; r < job.repeats; r++) {
      t = performance.now();
      out = await session.run(feeds);
      times.push(seconds(t));
    }
    const got = out[session.outputNames[0]!]!.data as Float32Array;
    const want = example('out_sample').data as Float32Array;
    let num = 0;
    let den = 0;
    for (let k = 0; k < want.length; k++) {
      num += (got[k]! - want[k]!) ** 2;
      den += want[k]! ** 2;
    }
    return { seconds: { load, ...coldAndWarm('forward', times) }, peakRssMB: peakRssMB(), details: { relativeL2VsPytorch: Math.sqrt(num / den) } };
  } finally {
    await session.release();
  }
}

async function guidedStep(job: StepJob): Promise<ChildReport> {
  const folder = readUnetFolder(job.folder);
  const prepared = locatePrepared(folder, { height: job.size, width: job.size, batch: 1 });
  const guided = await OrtGuidedUnet.load(prepared, { intraOpNumThreads: job.threads });
  try {
    const loss: LossOptions = {
      mode: job.mode,
      ...familyResolutions(folder.family, folder.divbind, job.size),
      tokenSlice: 'until-eot',
      ...TOKENS,
      ...(job.mode === 'tv_bind' ? {} : { attributeIndices: undefined }),
    };
    let t = performance.now();
    const set = await guided.forLayers(layersRead(guided.layers, guided.textLength, loss));
    const open = seconds(t);
    const { cond, extra } = conditioning(job.size, job.widths);
    const side = job.size / 8;
    const times = { forward: [] as number[], loss: [] as number[], vjp: [] as number[] };
    let result: ReturnType<typeof attentionLoss> | undefined;
    let grad: Float32Array = new Float32Array(0);
    for (let r = 0; r < job.repeats; r++) {
      t = performance.now();
      const fwd = await set.forward(randnTorchCpu(0, [4, side, side]), 999, cond, extra);
      times.forward.push(seconds(t));
      t = performance.now();
      const layers = fwd.maps.map((data, k) => ({ data, heads: set.layers[k]!.heads, resolution: set.layers[k]!.resolution, place: set.layers[k]!.place }));
      result = attentionLoss(layers, loss, { computeGrad: true });
      times.loss.push(seconds(t));
      t = performance.now();
      grad = await set.vjp(fwd, result.grads ?? []);
      times.vjp.push(seconds(t));
    }
    const norm = Math.sqrt(grad.reduce((a, v) => a + v * v, 0));
    const memory = readMemory();
    return {
      seconds: { open, ...coldAndWarm('forward', times.forward), ...coldAndWarm('loss', times.loss), ...coldAndWarm('vjp', times.vjp) },
      peakRssMB: peakRssMB(),
      details: {
        layersInSet: set.layers.length,
        layersInModel: guided.layers.length,
        resolutions: [...new Set(set.layers.map((l) => l.resolution))],
        loss: result!.loss,
        indicator: result!.indicator,
        gradientNorm: norm,
        gradientFinite: grad.every(Number.isFinite),
        memoryAtEnd: memory,
      },
    };
  } finally {
    await guided.release();
  }
}

async function prepareStep(job: Extract<Job, { kind: 'prepare' }>): Promise<ChildReport> {
  const t = performance.now();
  const r = await prepareModel(job.folder, {
    height: job.size,
    width: job.size,
    force: true,
    verify: job.verify,
    onProgress: (p) => console.log(`  prepare [${seconds(t).toFixed(0)} s] ${p.message}`),
  });
  const files = fs.readdirSync(r.dir).map((f) => ({ file: f, bytes: fs.statSync(path.join(r.dir, f)).size, links: fs.statSync(path.join(r.dir, f)).nlink }));
  return { seconds: { prepare: seconds(t), ...r.manifest.timings }, peakRssMB: peakRssMB(), details: { dir: r.dir, files } };
}

function runChild(job: Job): Promise<ChildReport & { peakPssMB: number }> {
  return new Promise((resolve, reject) => {
    const child = fork(__filename, ['--child', JSON.stringify(job)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    // Sampling smaps_rollup walks the page tables of a > 10 GB mapping: every 2 s, to stay out of the timings.
    const peaks = new MemoryPeaks(child.pid!, 2000);
    let report: ChildReport | undefined;
    child.on('message', (m) => {
      report = m as ChildReport;
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      const { peakPssMB } = peaks.stop();
      if (report !== undefined) resolve({ ...report, peakPssMB });
      else reject(new Error(`child ${job.kind} exited with ${code ?? signal}`));
    });
  });
}

async function main(argv: string[]): Promise<void> {
  const arg = (k: string, d?: string) => {
    const i = argv.indexOf(k);
    return i >= 0 ? argv[i + 1]! : d;
  };
  const unetDir = arg('--unet');
  if (unetDir === undefined) throw new Error('--unet DIR is required (the output folder of tools/make_full_size_sdxl_unet.py)');
  const folder = arg('--folder', path.join(path.dirname(path.resolve(unetDir)), 'sdxl-folder'))!;
  const size = Number(arg('--size', '1024'));
  const repeats = Number(arg('--repeats', '2'));
  const threads = Number(arg('--threads', String(os.cpus().length)));
  const modes = arg('--modes', 'tv,tv_bind')!.split(',') as StepJob['mode'][];
  const widths: Widths = { context: Number(arg('--context', String(SDXL_BASE.context))), pooled: Number(arg('--pooled', String(SDXL_BASE.pooled))) };
  const out = arg('--out', path.join(ROOT, 'bench/results/sdxl-full.json'))!;
  assembleFolder(unetDir, folder);
  const results: Record<string, unknown> = {};
  const log = (name: string, r: ChildReport & { peakPssMB: number }) => {
    results[name] = r;
    console.log(`${name}: ${JSON.stringify(r.seconds)} peak RSS ${r.peakRssMB.toFixed(0)} MB, peak PSS ${r.peakPssMB.toFixed(0)} MB`);
  };
  const prepare = arg('--prepare', 'verify');
  if (prepare !== 'skip') log('prepare', await runChild({ kind: 'prepare', folder, size, verify: prepare === 'verify' }));
  if (!argv.includes('--no-plain')) log('plainForward', await runChild({ kind: 'plain', folder, unetDir, threads, repeats }));
  for (const mode of modes) log(`step-${mode}`, await runChild({ kind: 'step', folder, size, threads, widths, repeats, mode }));
  const meta = { date: new Date().toISOString(), cpus: `${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}`, memGB: os.totalmem() / 2 ** 30, size, threads };
  fs.writeFileSync(out, `${JSON.stringify({ meta, ...results }, null, 2)}\n`);
  console.log(`wrote ${out}`);
}

async function childMain(job: Job): Promise<ChildReport> {
  if (job.kind === 'prepare') return prepareStep(job);
  if (job.kind === 'plain') return plainForward(job);
  return guidedStep(job);
}

if (require.main === module) {
  const run = process.argv[2] === '--child' ? childMain(JSON.parse(process.argv[3]!) as Job).then((r) => process.send!(r)) : main(process.argv.slice(2));
  run.catch((err) => {
    console.error(err);
    process.exitCode = 1;
  });
}
