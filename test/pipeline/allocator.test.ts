/**
 * SessionOptions.retainFreedMemory (native/addon/allocator.cc): with it, a session's intermediate tensors come back
 * out of memory the previous run freed instead of being faulted in afresh. Each case runs in a fresh process,
 * because the setting is process-wide and one-way.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { attr, DataType, encodeModel, makeNode, makeValueInfo } from '../../lib/onnx/proto';
import { retainFreedMemory } from '../../lib/pipeline/ort';
import { REPO_ROOT } from '../helpers/fixtures';

const N = 4096; // x: 4096 × 4096 floats; the intermediate 2·x is 64 MiB, above glibc's largest mmap threshold (32 MiB)

function doublingModel(dir: string): string {
  const file = path.join(dir, 'double-sum.onnx');
  fs.writeFileSync(
    file,
    encodeModel({
      ir_version: 8,
      opset_import: [{ domain: '', version: 17 }],
      graph: {
        name: 'g',
        node: [makeNode('Add', ['x', 'x'], ['twice']), makeNode('ReduceSum', ['twice'], ['y'], { attributes: [attr.int('keepdims', 0)] })],
        initializer: [],
        input: [makeValueInfo('x', DataType.FLOAT, [N, N])],
        output: [makeValueInfo('y', DataType.FLOAT, [])],
        value_info: [],
      },
    }),
  );
  return file;
}

/**
 * Minor page faults of the sixth run of the model, in a fresh process with the given setting. The first runs grow
 * the heap (64-byte aligned blocks need a little more than the block a run freed), from the fourth run on it is
 * steady.
 */
function faultsOfSixthRun(model: string, retain: boolean): { faults: number; applied: boolean } {
  const script = `
    const ort = require('onnxruntime-node');
    const { sessionOptions, retainFreedMemory } = require(${JSON.stringify(path.join(REPO_ROOT, 'dist/lib/pipeline/ort.js'))});
    (async () => {
      const s = await ort.InferenceSession.create(${JSON.stringify(model)}, sessionOptions({ intraOpNumThreads: 1, retainFreedMemory: ${retain} }));
      const x = new ort.Tensor('float32', new Float32Array(${N * N}).fill(0.25), [${N}, ${N}]);
      for (let k = 0; k < 5; k++) await s.run({ x });
      const before = process.resourceUsage().minorPageFault;
      const out = await s.run({ x });
      const faults = process.resourceUsage().minorPageFault - before;
      if (Math.abs(out.y.data[0] - ${0.5 * N * N}) > 1) throw new Error('wrong sum ' + out.y.data[0]);
      console.log(JSON.stringify({ faults, applied: ${retain} && retainFreedMemory() }));
    })().catch((e) => { console.error(e); process.exit(1); });`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', cwd: REPO_ROOT, env: { ...process.env, DIVBIND_RETAIN_FREED_MEMORY: '' } });
  if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as { faults: number; applied: boolean };
}

const glibc =
  process.platform === 'linux' && (process.report.getReport() as { header: { glibcVersionRuntime?: string } }).header.glibcVersionRuntime !== undefined;

test('retainFreedMemory applies on glibc and is a no-op elsewhere; asking again changes nothing', (t) => {
  t.is(retainFreedMemory(), glibc);
  t.is(retainFreedMemory(), glibc);
});

test('with freed memory retained, a run reuses the previous run’s memory instead of faulting it in again', (t) => {
  if (!glibc) {
    t.pass('not glibc: nothing to retain');
    return;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-allocator-'));
  try {
    const model = doublingModel(dir);
    const retained = faultsOfSixthRun(model, true);
    const released = faultsOfSixthRun(model, false);
    t.log(`minor page faults of the sixth run: retained ${retained.faults}, released ${released.faults} (64 MiB = 16384 pages of 4 KiB)`);
    t.true(retained.applied);
    t.true(retained.faults < 1024, `retained: ${retained.faults} faults, expected < 1024 (4 MiB)`);
    // With transparent huge pages always on, the released run faults 2 MiB pages: fewer, but still more.
    t.true(released.faults > retained.faults, `released: ${released.faults} faults, retained ${retained.faults}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
