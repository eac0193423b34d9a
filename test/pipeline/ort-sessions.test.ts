/**
 * Session options of lib/pipeline/ort.ts: weights shared through the mapped external data file (one copy for every
 * session of a guided run), and execution providers refused with the provider's name and the install command.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { DivbindError } from '../../lib/errors';
import { DataType, encodeModel, makeNode, makeValueInfo, type TensorProto } from '../../lib/onnx/proto';
import { DivBindPipeline } from '../../lib/pipeline/pipeline';
import { checkExecutionProvider, GPU_PROVIDERS_INSTALL, knownExecutionProviders, probeExecutionProvider, sessionOptions } from '../../lib/pipeline/ort';
import { REPO_ROOT } from '../helpers/fixtures';
import { copyFixtureModel, removeDir } from './prepared-model';

const N = 4096; // a 4096 × 4096 float weight: 64 MiB
const WEIGHT_MB = 64;

/** y = x · W with W (64 MiB) in model.onnx_data, as big exports store their weights. */
function externalWeightModel(dir: string): string {
  const w = new Float32Array(N * N).map((_, k) => Math.sin(k));
  fs.writeFileSync(path.join(dir, 'model.onnx_data'), Buffer.from(w.buffer));
  const weight: TensorProto = {
    name: 'W',
    data_type: DataType.FLOAT,
    dims: [N, N],
    data_location: 1,
    external_data: [
      { key: 'location', value: 'model.onnx_data' },
      { key: 'offset', value: '0' },
      { key: 'length', value: String(w.byteLength) },
    ],
  };
  const file = path.join(dir, 'model.onnx');
  fs.writeFileSync(
    file,
    encodeModel({
      ir_version: 8,
      opset_import: [{ domain: '', version: 17 }],
      graph: {
        name: 'g',
        node: [makeNode('MatMul', ['x', 'W'], ['y'])],
        initializer: [weight],
        input: [makeValueInfo('x', DataType.FLOAT, [16, N])],
        output: [makeValueInfo('y', DataType.FLOAT, [16, N])],
        value_info: [],
      },
    }),
  );
  return file;
}

function memory(dataFile: string): { anonMB: number; mappings: number } {
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  const mappings = fs
    .readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.endsWith(dataFile)).length;
  return { anonMB: Number(/RssAnon:\s+(\d+)/.exec(status)![1]) / 1024, mappings };
}

/** Opens three sessions (a guided run's CFG UNet, forward and backward) on the model and runs each once. */
async function threeSessions(file: string, shareWeights: boolean): Promise<{ anonGrowthMB: number; mappings: number }> {
  const before = memory(path.join(path.dirname(file), 'model.onnx_data'));
  const sessions: ort.InferenceSession[] = [];
  for (let k = 0; k < 3; k++) {
    const s = await ort.InferenceSession.create(file, sessionOptions({ intraOpNumThreads: 1, shareWeights }));
    await s.run({ x: new ort.Tensor('float32', new Float32Array(16 * N).fill(0.5), [16, N]) });
    sessions.push(s);
  }
  const after = memory(path.join(path.dirname(file), 'model.onnx_data'));
  await Promise.all(sessions.map((s) => s.release()));
  return { anonGrowthMB: after.anonMB - before.anonMB, mappings: after.mappings - before.mappings };
}

test.serial('shared weights: every session maps the one weights file instead of keeping a repacked copy', async (t) => {
  if (!fs.existsSync('/proc/self/maps')) return t.pass('no /proc: nothing to observe');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-weights-'));
  try {
    const file = externalWeightModel(dir);
    const shared = await threeSessions(file, true);
    const own = await threeSessions(file, false);
    t.log(
      `3 sessions, ${WEIGHT_MB} MiB of weights: shared → +${shared.anonGrowthMB.toFixed(1)} MB anonymous, ${shared.mappings} mappings; ` +
        `private → +${own.anonGrowthMB.toFixed(1)} MB, ${own.mappings} mappings`,
    );
    t.true(shared.mappings >= 3, 'each session maps the weights file');
    t.true(shared.anonGrowthMB < WEIGHT_MB / 2, 'less than half a copy of the weights in private memory');
    t.is(own.mappings, 0, 'repacked weights leave the file unmapped');
    t.true(own.anonGrowthMB >= 2.5 * WEIGHT_MB, 'three repacked copies');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

const cudaInstalled = () => {
  try {
    checkExecutionProvider('cuda');
    return true;
  } catch {
    return false;
  }
};

test('execution providers: an unknown name lists the known ones; cpu is always there', async (t) => {
  const names = knownExecutionProviders().map((p) => p.name);
  t.true(names.includes('cpu'));
  const err = t.throws(() => checkExecutionProvider('cudaa'), { instanceOf: DivbindError });
  t.is(err?.code, 'BAD_INPUT');
  t.is(err?.field, 'executionProvider');
  t.regex(err?.message ?? '', /Expected one of 'cpu'.* for executionProvider but received "cudaa"/);
  await t.notThrowsAsync(probeExecutionProvider('cpu'));
});

test('execution providers: cuda without its libraries is refused naming it and the install flag', async (t) => {
  if (cudaInstalled()) return t.pass('this onnxruntime-node has the CUDA provider installed');
  for (const name of ['cuda', 'tensorrt']) {
    const err = await t.throwsAsync(probeExecutionProvider(name), { instanceOf: DivbindError }, name);
    t.is(err?.code, 'BAD_INPUT');
    t.regex(err?.message ?? '', new RegExp(`The '${name}' execution provider is not available here: onnxruntime-node was installed without it`));
    t.true(err?.message.includes(GPU_PROVIDERS_INSTALL), name);
  }
  const dir = copyFixtureModel();
  try {
    const load = await t.throwsAsync(DivBindPipeline.load(dir, { executionProvider: 'cuda' }), { instanceOf: DivbindError });
    t.is(load?.code, 'BAD_INPUT');
    const cli = spawnSync(
      process.execPath,
      [
        path.join(REPO_ROOT, 'dist/lib/cli/index.js'),
        'generate',
        'a red cat',
        '--model',
        dir,
        '--mode',
        'none',
        '--steps',
        '1',
        '--execution-provider',
        'cuda',
        '--out',
        path.join(dir, 'out'),
      ],
      { encoding: 'utf8' },
    );
    t.is(cli.status, 3, cli.stderr);
    t.regex(cli.stderr, /'cuda' execution provider is not available here/);
    t.regex(cli.stderr, /--onnxruntime-node-install=cuda12/);
    const bad = spawnSync(
      process.execPath,
      [path.join(REPO_ROOT, 'dist/lib/cli/index.js'), 'generate', 'a red cat', '--model', dir, '--execution-provider', 'gpu', '--out', path.join(dir, 'out')],
      { encoding: 'utf8' },
    );
    t.is(bad.status, 3, bad.stderr);
    t.regex(bad.stderr, /--execution-provider/);
  } finally {
    removeDir(dir);
  }
});

test('execution providers: a bundled provider that cannot start here is the same clear error, not a crash', async (t) => {
  if (!knownExecutionProviders().some((p) => p.name === 'webgpu')) return t.pass('no webgpu provider in this build');
  try {
    await probeExecutionProvider('webgpu');
    t.pass('webgpu starts on this machine');
  } catch (err) {
    t.true(err instanceof DivbindError);
    t.is((err as DivbindError).code, 'BAD_INPUT');
    t.regex((err as DivbindError).message, /The 'webgpu' execution provider is not available here: onnxruntime could not start it/);
  }
});
