/**
 * Memory per onnxruntime session of a guided run, in a fresh process: the CFG UNet, then the guided forward and
 * backward graphs (full layer set), each opened and run once; the process's memory after each (bench/memory.ts).
 * With shared weights the three sessions read one mapped copy of the weights file; with private weights each
 * session repacks its own.
 *
 *   node dist/bench/sessions.js --model DIR --size 512 [--private-weights] [--threads N]
 */
import { fork } from 'node:child_process';
import * as path from 'node:path';
import { readUnetFolder } from '../lib/model/folder';
import { locatePrepared } from '../lib/model/prepared';
import { CfgUnet, OrtGuidedUnet } from '../lib/pipeline/unet';
import { readMemory, type MemorySample } from './memory';

export interface SessionMemory extends MemorySample {
  /** What the process holds at this point. */
  after: string;
  seconds: number;
}

async function measure(modelDir: string, size: number, shareWeights: boolean, threads: number): Promise<SessionMemory[]> {
  const rows: SessionMemory[] = [];
  let t = performance.now();
  const note = (after: string) => {
    rows.push({ after, seconds: (performance.now() - t) / 1000, ...readMemory()! });
    t = performance.now();
  };
  note('start');
  const session = { intraOpNumThreads: threads, shareWeights };
  const folder = readUnetFolder(modelDir);
  const prepared = locatePrepared(folder, { height: size, width: size, batch: 1 });
  const [[, h], [T, D]] = [prepared.files.latentDims, prepared.files.textDims];
  const cfg = await CfgUnet.load(folder.unetFile, session);
  note('CFG UNet opened');
  const text = new Float32Array(T * D).fill(0.01);
  const bound = CfgUnet.bind(cfg, [4, h, h], text, text, [T, D]);
  const z = Float32Array.from({ length: 4 * h * h }, (_, k) => Math.sin(k));
  await bound.predict(z, 500, 7.5);
  note('CFG UNet run (batch 2)');
  const guided = await OrtGuidedUnet.load(prepared, session);
  try {
    const all = guided.layers.map((_, k) => k);
    const full = await guided.forLayers(all);
    note('guided forward + backward opened (full layer set)');
    const fwd = await full.forward(z, 500, text);
    note('guided forward run');
    await full.vjp(
      fwd,
      fwd.maps.map((m) => m.map(() => 1e-3)),
    );
    note('guided backward run');
  } finally {
    await guided.release();
    await cfg.session.release();
  }
  return rows;
}

/** Runs `measure` in a fresh process. */
export function measureSessions(modelDir: string, size: number, shareWeights: boolean, threads: number): Promise<SessionMemory[]> {
  return new Promise((resolve, reject) => {
    const child = fork(__filename, ['--child', JSON.stringify({ modelDir, size, shareWeights, threads })], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let rows: SessionMemory[] | undefined;
    child.on('message', (m) => {
      rows = m as SessionMemory[];
    });
    child.on('error', reject);
    child.on('exit', (code) => (rows ? resolve(rows) : reject(new Error(`sessions child exited with ${code}`))));
  });
}

function print(rows: SessionMemory[], label: string): void {
  console.log(label);
  for (const r of rows) {
    console.log(
      `  ${r.after.padEnd(52)} anon ${r.anonMB.toFixed(0).padStart(6)} MB  file ${r.fileMB.toFixed(0).padStart(6)} MB  ` +
        `PSS ${r.pssMB.toFixed(0).padStart(6)} MB  RSS ${r.rssMB.toFixed(0).padStart(6)} MB  (${r.seconds.toFixed(1)} s)`,
    );
  }
}

if (require.main === module) {
  const argv = process.argv.slice(2);
  const fail = (err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  };
  if (argv[0] === '--child') {
    const o = JSON.parse(argv[1]!) as { modelDir: string; size: number; shareWeights: boolean; threads: number };
    measure(o.modelDir, o.size, o.shareWeights, o.threads).then((r) => process.send!(r), fail);
  } else {
    const get = (k: string) => (argv.includes(k) ? argv[argv.indexOf(k) + 1] : undefined);
    const model = path.resolve(get('--model') ?? 'models/sd15');
    const shared = !argv.includes('--private-weights');
    measureSessions(model, Number(get('--size') ?? 512), shared, Number(get('--threads') ?? 2)).then(
      (rows) => print(rows, `${model}: ${shared ? 'shared' : 'private'} weights`),
      fail,
    );
  }
}
