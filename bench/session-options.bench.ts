/**
 * What the session options cost and save at SD size: shared weights (mapped file, no repacking) vs private
 * (onnxruntime's prepacking and NCHWc convolutions), and a memory arena per session vs none. Each of the four
 * combinations runs in its own process on a prepared set: the CFG UNet call (batch 2) and a guidance step of the
 * object-layer subset (forward with residuals + backward), `--runs` times after one warm-up; median wall time,
 * process user and system CPU time, and Pss (bench/memory.ts) at the end. Writes bench/results/session-options.json.
 *
 *   node dist/bench/session-options.bench.js --model /work/perf-models/sd15 [--size 256] [--runs 3] [--threads 2]
 */
import { fork } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { readUnetFolder } from '../lib/model/folder';
import { locatePrepared } from '../lib/model/prepared';
import { CfgUnet, OrtGuidedUnet } from '../lib/pipeline/unet';
import { readMemory } from './memory';

interface Config {
  shareWeights: boolean;
  memoryArena: boolean;
}

interface ConfigResult extends Config {
  cfgMs: number;
  guidedStepMs: number;
  userCpuS: number;
  systemCpuS: number;
  pssMB: number;
  peakRssMB: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function timed(runs: number, f: () => Promise<unknown>): Promise<number> {
  await f();
  const ms: number[] = [];
  for (let k = 0; k < runs; k++) {
    const t = performance.now();
    await f();
    ms.push(performance.now() - t);
  }
  return median(ms);
}

async function measure(modelDir: string, size: number, runs: number, threads: number, c: Config): Promise<ConfigResult> {
  const session = { intraOpNumThreads: threads, ...c };
  const folder = readUnetFolder(modelDir);
  const prepared = locatePrepared(folder, { height: size, width: size, batch: 1 });
  const [[, h], [T, D]] = [prepared.files.latentDims, prepared.files.textDims];
  const text = Float32Array.from({ length: T * D }, (_, k) => Math.cos(k) * 0.1);
  const z = Float32Array.from({ length: 4 * h * h }, (_, k) => Math.sin(k));
  const cfg = await CfgUnet.load(folder.unetFile, session);
  const guided = await OrtGuidedUnet.load(prepared, session);
  const cpu0 = process.cpuUsage();
  try {
    const bound = CfgUnet.bind(cfg, [4, h, h], text, text, [T, D]);
    const cfgMs = await timed(runs, () => bound.predict(z, 500, 7.5));
    // The first subset is the object layers' (lib/model/layer-sets.ts preparedLayerSets).
    const set = await guided.forLayers((prepared.layerSets[0] ?? prepared.files).layerIndices);
    const guidedStepMs = await timed(runs, async () => {
      const fwd = await set.forward(z, 500, text);
      await set.vjp(
        fwd,
        fwd.maps.map((m) => m.map(() => 1e-3)),
      );
    });
    const cpu = process.cpuUsage(cpu0);
    return {
      ...c,
      cfgMs,
      guidedStepMs,
      userCpuS: cpu.user / 1e6,
      systemCpuS: cpu.system / 1e6,
      pssMB: readMemory()!.pssMB,
      peakRssMB: process.resourceUsage().maxRSS / 1024,
    };
  } finally {
    await guided.release();
    await cfg.session.release();
  }
}

function inChild(args: unknown[]): Promise<ConfigResult> {
  return new Promise((resolve, reject) => {
    const child = fork(__filename, ['--child', JSON.stringify(args)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let r: ConfigResult | undefined;
    child.on('message', (m) => {
      r = m as ConfigResult;
    });
    child.on('error', reject);
    child.on('exit', (code) => (r ? resolve(r) : reject(new Error(`session-options child exited with ${code}`))));
  });
}

async function main(argv: string[]): Promise<void> {
  const get = (k: string) => (argv.includes(k) ? argv[argv.indexOf(k) + 1] : undefined);
  const model = path.resolve(get('--model') ?? 'models/sd15');
  const [size, runs, threads] = [Number(get('--size') ?? 256), Number(get('--runs') ?? 3), Number(get('--threads') ?? os.cpus().length)];
  const results: ConfigResult[] = [];
  for (const shareWeights of [true, false]) {
    for (const memoryArena of [false, true]) {
      const r = await inChild([model, size, runs, threads, { shareWeights, memoryArena }]);
      results.push(r);
      console.log(
        `${shareWeights ? 'shared ' : 'private'} weights, arena ${memoryArena ? 'on ' : 'off'}: CFG ${r.cfgMs.toFixed(0)} ms, ` +
          `guided step (object layers) ${r.guidedStepMs.toFixed(0)} ms, CPU user ${r.userCpuS.toFixed(1)} s / system ${r.systemCpuS.toFixed(1)} s, ` +
          `PSS ${r.pssMB.toFixed(0)} MB, peak RSS ${r.peakRssMB.toFixed(0)} MB`,
      );
    }
  }
  const out = path.resolve(get('--out') ?? path.join(__dirname, '../../bench/results/session-options.json'));
  fs.writeFileSync(out, `${JSON.stringify({ model, size, runs, threads, date: new Date().toISOString(), loadAverage: os.loadavg(), results }, null, 2)}\n`);
  console.log(`wrote ${out}`);
}

if (require.main === module) {
  const fail = (err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  };
  if (process.argv[2] === '--child') {
    const [model, size, runs, threads, c] = JSON.parse(process.argv[3]!) as [string, number, number, number, Config];
    measure(model, size, runs, threads, c).then((r) => process.send!(r), fail);
  } else {
    main(process.argv.slice(2)).catch(fail);
  }
}
