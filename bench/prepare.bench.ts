/**
 * prepare benchmark, on the tiny fixture SD folder (copied to a temp dir):
 *   1. peak RSS and wall time of one `prepareModel` run (fresh child process);
 *   2. ORT run time of the instrumented UNet and of the VJP graph with raw per-head attention outputs versus
 *      head-averaged ones (the InstrumentOptions.headAverage choice), batch 1, CPU EP, level 'all'. Each variant
 *      runs in its own child process, in alternating rounds so that load from other processes hits both alike.
 * Writes bench/results/prepare.json.
 *
 *   node dist/bench/prepare.bench.js [--iterations 20] [--rounds 3] [--threads 2]
 */
import { fork } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { readUnetFolder } from '../lib/model/folder';
import { prepareModel } from '../lib/model/prepare';
import { locatePrepared } from '../lib/model/prepared';

const ROOT = path.resolve(__dirname, '../..');
const TINY = path.join(ROOT, 'test/fixtures/models/tiny-sd');

interface ChildRequest {
  kind: 'prepare' | 'run';
  dir: string;
  headAverage?: boolean;
  iterations?: number;
  threads?: number;
}
interface RunResult {
  unetMs: number[];
  vjpMs: number[];
  maxRssMB: number;
}
interface PrepareResultMsg {
  wallMs: number;
  maxRssMB: number;
  timings: Record<string, number>;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function copySdFolder(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-prepare-bench-'));
  fs.cpSync(TINY, d, { recursive: true, filter: (src) => !src.includes(`${path.sep}divbind`) });
  return d;
}

function pseudo(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x / 2147483648 - 1;
  }
  return out;
}

async function child(req: ChildRequest): Promise<PrepareResultMsg | RunResult> {
  if (req.kind === 'prepare') {
    const t0 = performance.now();
    // The recompute design: one VJP graph per variant, so raw vs head-averaged outputs compare graph for graph.
    const r = await prepareModel(req.dir, { force: true, design: 'recompute' });
    return {
      wallMs: performance.now() - t0,
      maxRssMB: process.resourceUsage().maxRSS / 1024,
      timings: r.manifest.timings,
    };
  }
  // The tiny UNet is exported for 256×256 only.
  const { dir, manifest: m } = locatePrepared(readUnetFolder(req.dir), { height: 256, width: 256, batch: 1 });
  const opts: ort.InferenceSession.SessionOptions = {
    graphOptimizationLevel: 'all',
    intraOpNumThreads: req.threads ?? 2,
    interOpNumThreads: 1,
  };
  const feeds: Record<string, ort.Tensor> = {};
  let seed = 1;
  for (const [name, info] of Object.entries(m.inputs)) {
    const n = info.dims.reduce((a, b) => a * b, 1);
    feeds[name] =
      info.elemType === 'INT64'
        ? new ort.Tensor(
            'int64',
            BigInt64Array.from({ length: n }, () => 500n),
            info.dims,
          )
        : new ort.Tensor('float32', name === 'timestep' ? Float32Array.from({ length: n }, () => 500) : pseudo(n, seed++), info.dims);
  }
  const cot: Record<string, ort.Tensor> = {};
  for (const l of m.attention.layers)
    cot[m.vjp.cotangents[l.output]!] = new ort.Tensor(
      'float32',
      pseudo(
        l.dims.reduce((a, b) => a * b, 1),
        seed++,
      ),
      l.dims,
    );
  const time = async (s: ort.InferenceSession, f: Record<string, ort.Tensor>): Promise<number[]> => {
    for (let i = 0; i < 3; i++) await s.run(f);
    const ts: number[] = [];
    for (let i = 0; i < (req.iterations ?? 20); i++) {
      const t0 = performance.now();
      await s.run(f);
      ts.push(performance.now() - t0);
    }
    return ts;
  };
  const unet = await ort.InferenceSession.create(path.join(dir, m.files.unet), opts);
  const unetMs = await time(unet, feeds);
  await unet.release();
  const vjp = await ort.InferenceSession.create(path.join(dir, m.files.vjp!), opts);
  const vjpFeeds = Object.fromEntries(vjp.inputNames.map((n) => [n, feeds[n] ?? cot[n]!]));
  const vjpMs = await time(vjp, vjpFeeds);
  await vjp.release();
  return { unetMs, vjpMs, maxRssMB: process.resourceUsage().maxRSS / 1024 };
}

function inChild<T>(req: ChildRequest): Promise<T> {
  return new Promise((resolve, reject) => {
    const p = fork(__filename, ['--child'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    p.once('message', (msg) => {
      const m = msg as { ok: boolean; value?: T; error?: string };
      if (m.ok) resolve(m.value as T);
      else reject(new Error(m.error));
    });
    p.once('error', reject);
    p.send(req);
  });
}

async function main(): Promise<void> {
  const arg = (k: string, d: number) => {
    const i = process.argv.indexOf(k);
    return i >= 0 ? Number(process.argv[i + 1]) : d;
  };
  const iterations = arg('--iterations', 20);
  const rounds = arg('--rounds', 3);
  const threads = arg('--threads', 2);
  const rawDir = copySdFolder();
  const avgDir = copySdFolder();
  try {
    const prep = await inChild<PrepareResultMsg>({ kind: 'prepare', dir: avgDir });
    console.log(`prepare (head-averaged, with check run): ${prep.wallMs.toFixed(0)} ms, peak RSS ${prep.maxRssMB.toFixed(0)} MB`, prep.timings);
    await prepareModel(rawDir, { headAverage: false, design: 'recompute' });
    const acc = {
      raw: { unet: [] as number[], vjp: [] as number[] },
      averaged: { unet: [] as number[], vjp: [] as number[] },
    };
    for (let r = 0; r < rounds; r++) {
      for (const [key, dir] of (r % 2 === 0
        ? [
            ['raw', rawDir],
            ['averaged', avgDir],
          ]
        : [
            ['averaged', avgDir],
            ['raw', rawDir],
          ]) as Array<['raw' | 'averaged', string]>) {
        const res = await inChild<RunResult>({ kind: 'run', dir, iterations, threads });
        acc[key].unet.push(median(res.unetMs));
        acc[key].vjp.push(median(res.vjpMs));
        console.log(`round ${r + 1} ${key.padEnd(8)} UNet ${median(res.unetMs).toFixed(1)} ms, VJP ${median(res.vjpMs).toFixed(1)} ms`);
      }
    }
    const result = {
      date: new Date().toISOString(),
      machine: `${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}`,
      node: process.version,
      threads,
      iterations,
      rounds,
      prepare: { wallMs: Math.round(prep.wallMs), maxRssMB: Math.round(prep.maxRssMB), timings: prep.timings },
      instrumentedUnetMedianMs: { raw: median(acc.raw.unet), averaged: median(acc.averaged.unet) },
      vjpMedianMs: { raw: median(acc.raw.vjp), averaged: median(acc.averaged.vjp) },
      perRound: acc,
    };
    console.log(JSON.stringify(result, null, 2));
    const out = path.join(ROOT, 'bench/results/prepare.json');
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
  } finally {
    fs.rmSync(rawDir, { recursive: true, force: true });
    fs.rmSync(avgDir, { recursive: true, force: true });
  }
}

if (process.argv.includes('--child')) {
  process.once('message', (req) => {
    child(req as ChildRequest)
      .then((value) => process.send!({ ok: true, value }, () => process.exit(0)))
      .catch((err: unknown) => process.send!({ ok: false, error: String((err as Error).stack ?? err) }, () => process.exit(1)));
  });
} else if (require.main === module) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
