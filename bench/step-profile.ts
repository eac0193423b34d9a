/**
 * Where a guidance step's time goes at SD size, by phase, with the process's CPU time split into user and system
 * time and its minor page faults: the CFG UNet call (batch 2), the guided forward (maps + residuals) and VJP of one
 * layer set, both in a row, and the CFG call again after them. Each allocator setting runs in its own process, since
 * both are process-wide and fixed once set: the CLI's default (SessionOptions.retainFreedMemory and huge pages for
 * malloc, lib/pipeline/huge-pages.ts), without huge pages, and without either. Writes bench/results/step-profile.json.
 *
 *   node dist/bench/step-profile.js --model /work/perf-models/sd15 [--size 256] [--set K] [--runs 3]
 *
 * --set: index into the prepared layer sets followed by the full set (for SD 1.5 at 256²: 0 object layers,
 * 1 tv_bind's layers, 2 all layers). Default: the tv_bind set, or the full set when there is none.
 */
import { fork } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { readUnetFolder } from '../lib/model/folder';
import { locatePrepared } from '../lib/model/prepared';
import { environmentWithHugePages, hugePagesState, transparentHugePages } from '../lib/pipeline/huge-pages';
import { retainFreedMemory } from '../lib/pipeline/ort';
import { CfgUnet, OrtGuidedUnet } from '../lib/pipeline/unet';
import { readMemory } from './memory';

interface PhaseRow {
  phase: string;
  wallMs: number;
  userMs: number;
  systemMs: number;
  minorFaults: number;
}

interface ProfileResult {
  retainFreedMemory: boolean;
  hugePages: boolean;
  layers: number;
  residualMiB: number;
  rows: PhaseRow[];
  pssMB: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Median wall, user, system time and faults of `runs` calls after one warm-up call. */
async function phase(name: string, runs: number, f: () => Promise<unknown>): Promise<PhaseRow> {
  await f();
  const samples: PhaseRow[] = [];
  for (let k = 0; k < runs; k++) {
    const r0 = process.resourceUsage();
    const t = performance.now();
    await f();
    const wallMs = performance.now() - t;
    const r1 = process.resourceUsage();
    samples.push({
      phase: name,
      wallMs,
      userMs: (r1.userCPUTime - r0.userCPUTime) / 1e3,
      systemMs: (r1.systemCPUTime - r0.systemCPUTime) / 1e3,
      minorFaults: r1.minorPageFault - r0.minorPageFault,
    });
  }
  const pick = (k: keyof Omit<PhaseRow, 'phase'>) => median(samples.map((s) => s[k]));
  return { phase: name, wallMs: pick('wallMs'), userMs: pick('userMs'), systemMs: pick('systemMs'), minorFaults: pick('minorFaults') };
}

async function profile(model: string, size: number, setIndex: number | undefined, runs: number, retain: boolean): Promise<ProfileResult> {
  const hugePages = hugePagesState().malloc;
  const session = { retainFreedMemory: retain };
  const folder = readUnetFolder(model);
  const prepared = locatePrepared(folder, { height: size, width: size, batch: 1 });
  const [[, h], [T, D]] = [prepared.files.latentDims, prepared.files.textDims];
  const text = Float32Array.from({ length: T * D }, (_, k) => Math.cos(k) * 0.1);
  const z = Float32Array.from({ length: 4 * h * h }, (_, k) => Math.sin(k));
  const cfg = await CfgUnet.load(folder.unetFile, session);
  const guided = await OrtGuidedUnet.load(prepared, session);
  try {
    const bound = CfgUnet.bind(cfg, [4, h, h], text, text, [T, D]);
    const sets = [...prepared.layerSets, prepared.files];
    const files = sets[setIndex ?? Math.min(1, sets.length - 1)]!;
    const set = await guided.forLayers(files.layerIndices);
    const first = await set.forward(z, 500, text);
    const residualBytes = (first.state as { residuals: { data: ArrayBufferView }[] }).residuals.reduce((s, r) => s + r.data.byteLength, 0);
    const cotangents = first.maps.map((m) => m.map((_, k) => 1e-3 * Math.sin(k)));
    const rows = [await phase('CFG UNet (batch 2)', runs, () => bound.predict(z, 500, 7.5))];
    rows.push(await phase('guided forward', runs, () => set.forward(z, 500, text)));
    const latest = await set.forward(z, 500, text);
    rows.push(await phase('VJP', runs, () => set.vjp(latest, cotangents)));
    rows.push(await phase('guided step (forward + VJP)', runs, async () => set.vjp(await set.forward(z, 500, text), cotangents)));
    rows.push(await phase('CFG UNet after the step', runs, () => bound.predict(z, 500, 7.5)));
    return {
      retainFreedMemory: retain && retainFreedMemory(),
      hugePages,
      layers: files.layerIndices.length,
      residualMiB: residualBytes / 2 ** 20,
      rows,
      pssMB: readMemory()?.pssMB ?? Number.NaN,
    };
  } finally {
    await guided.release();
    await cfg.session.release();
  }
}

function inChild(args: unknown[], hugePages: boolean): Promise<ProfileResult> {
  return new Promise((resolve, reject) => {
    const env = environmentWithHugePages(hugePages);
    const child = fork(__filename, ['--child', JSON.stringify(args)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env });
    let r: ProfileResult | undefined;
    child.on('message', (m) => {
      r = m as ProfileResult;
    });
    child.on('error', reject);
    child.on('exit', (code) => (r ? resolve(r) : reject(new Error(`step-profile child exited with ${code}`))));
  });
}

async function main(argv: string[]): Promise<void> {
  const get = (k: string) => (argv.includes(k) ? argv[argv.indexOf(k) + 1] : undefined);
  const model = get('--model');
  if (model === undefined) throw new Error('pass --model <prepared SD 1.5-size folder>');
  const [size, runs] = [Number(get('--size') ?? 256), Number(get('--runs') ?? 3)];
  const setIndex = get('--set') === undefined ? undefined : Number(get('--set'));
  const results: ProfileResult[] = [];
  // The CLI's default (both), then without huge pages, then without either.
  for (const [retain, hugePages] of [
    [true, true],
    [true, false],
    [false, false],
  ]) {
    const r = await inChild([path.resolve(model), size, setIndex, runs, retain], hugePages!);
    results.push(r);
    console.log(
      `freed memory ${retain ? 'retained' : 'released'}, huge pages ${r.hugePages ? 'on' : 'off'} (${r.layers} layers, residuals ${r.residualMiB.toFixed(0)} MiB, PSS at the end ${r.pssMB.toFixed(0)} MB):`,
    );
    for (const row of r.rows) {
      console.log(
        `  ${row.phase.padEnd(28)} ${row.wallMs.toFixed(0).padStart(6)} ms  user ${row.userMs.toFixed(0).padStart(5)} ms  system ${row.systemMs.toFixed(0).padStart(5)} ms  minor faults ${row.minorFaults}`,
      );
    }
  }
  const out = path.resolve(get('--out') ?? path.join(__dirname, '../../bench/results/step-profile.json'));
  fs.writeFileSync(
    out,
    `${JSON.stringify({ model, size, runs, date: new Date().toISOString(), loadAverage: os.loadavg(), transparentHugePages: transparentHugePages(), results }, null, 2)}\n`,
  );
  console.log(`wrote ${out}`);
}

if (require.main === module) {
  const fail = (err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  };
  if (process.argv[2] === '--child') {
    const [model, size, setIndex, runs, retain] = JSON.parse(process.argv[3]!) as [string, number, number | undefined, number, boolean];
    profile(model, size, setIndex, runs, retain).then((r) => process.send!(r), fail);
  } else {
    main(process.argv.slice(2)).catch(fail);
  }
}
