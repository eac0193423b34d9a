import test from 'ava';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { createSession, createSessionFromModel, loadModel, saveModel } from '../../lib/onnx/model-io';
import { encodeModel } from '../../lib/onnx/proto';
import { readNpy } from '../../lib/util/npy';

const ROOT = path.resolve(__dirname, '../../..');
const VARIANTS = path.join(ROOT, 'test/fixtures/models/unet-variants');
const GOLDEN = path.join(ROOT, 'test/fixtures/golden/unet');
const EXT_ONNXDATA = path.join(VARIANTS, 'opset17-int64-external-onnxdata');
const EXT_WEIGHTSPB = path.join(VARIANTS, 'opset14-int64-weightspb');

function tmpDir(t: { teardown(fn: () => void): void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-io-test-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

/** out_sample of a session on the golden batch-1 inputs (int64 timestep 801). */
async function runGolden(session: ort.InferenceSession): Promise<Float32Array> {
  const sample = readNpy(path.join(GOLDEN, 'sample.npy'));
  const ehs = readNpy(path.join(GOLDEN, 'encoder_hidden_states.npy'));
  const out = await session.run({
    sample: new ort.Tensor('float32', sample.data as Float32Array, sample.shape),
    timestep: new ort.Tensor('int64', BigInt64Array.of(801n), [1]),
    encoder_hidden_states: new ort.Tensor('float32', ehs.data as Float32Array, ehs.shape),
  });
  return out.out_sample!.data as Float32Array;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

test('loadModel hashes the .onnx bytes and records external data without reading it', (t) => {
  for (const [dir, location] of [
    [EXT_ONNXDATA, 'model.onnx_data'],
    [EXT_WEIGHTSPB, 'weights.pb'],
  ] as const) {
    const file = path.join(dir, 'model.onnx');
    const loaded = loadModel(file);
    t.is(loaded.sha256, crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex'));
    t.is(loaded.dir, dir);
    t.is(loaded.externalData.length, 1);
    const e = loaded.externalData[0]!;
    t.is(e.location, location);
    t.is(e.size, fs.statSync(path.join(dir, location)).size);
    t.true(e.tensors > 10);
    t.true(e.bytesReferenced <= e.size);
    t.regex(loaded.sourceHash, /^[0-9a-f]{64}$/);
    t.not(loaded.sourceHash, loaded.sha256);
  }
  const inline = loadModel(path.join(VARIANTS, 'opset17-int64-static/model.onnx'));
  t.deepEqual(inline.externalData, []);
});

test('loadModel errors: missing model, directory, missing and truncated data file', (t) => {
  const d = tmpDir(t);
  t.throws(() => loadModel(path.join(d, 'nope.onnx')), {
    message: `ONNX model not found: ${path.join(d, 'nope.onnx')}`,
  });
  t.throws(() => loadModel(d), { message: `${d} is a directory; expected an .onnx file` });
  fs.copyFileSync(path.join(EXT_ONNXDATA, 'model.onnx'), path.join(d, 'model.onnx'));
  t.throws(() => loadModel(path.join(d, 'model.onnx')), {
    message: new RegExp(
      `^External data file 'model.onnx_data' used by \\d+ tensor\\(s\\) of .*model.onnx is missing \\(expected at ${path.join(d, 'model.onnx_data').replace(/[.]/g, '\\.')}\\)`,
    ),
  });
  fs.writeFileSync(path.join(d, 'model.onnx_data'), Buffer.alloc(100));
  t.throws(() => loadModel(path.join(d, 'model.onnx')), {
    message: /has 100 bytes but .* references bytes up to \d+: the weights file is truncated/,
  });
  t.throws(() => loadModel(''), { instanceOf: TypeError });
});

test('ORT 1.30 refuses external data outside the model directory (why saveModel hard-links)', async (t) => {
  const d = tmpDir(t);
  const loaded = loadModel(path.join(EXT_ONNXDATA, 'model.onnx'));
  const rel = path.relative(path.join(d, 'sub'), path.join(EXT_ONNXDATA, 'model.onnx_data'));
  for (const location of [rel, path.join(EXT_ONNXDATA, 'model.onnx_data')]) {
    for (const x of loaded.model.graph!.initializer) for (const e of x.external_data ?? []) if (e.key === 'location') e.value = location;
    fs.mkdirSync(path.join(d, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(d, 'sub/model.onnx'), encodeModel(loaded.model));
    await t.throwsAsync(ort.InferenceSession.create(path.join(d, 'sub/model.onnx')), {
      message: /escapes model directory|Absolute path not allowed/,
    });
  }
});

test('saveModel to another directory hard-links the data file: no bytes copied, ORT output unchanged', async (t) => {
  const d = tmpDir(t);
  const loaded = loadModel(path.join(EXT_ONNXDATA, 'model.onnx'));
  const ref = await runGolden(await createSession(loaded.path));
  const saved = saveModel(loaded.model, path.join(d, 'copy/unet.onnx'), { sourceDir: loaded.dir });
  t.is(saved.externalData.length, 1);
  t.is(saved.externalData[0]!.method, 'hardlink');
  const src = fs.statSync(path.join(EXT_ONNXDATA, 'model.onnx_data'));
  const dst = fs.statSync(path.join(d, 'copy/model.onnx_data'));
  t.is(dst.ino, src.ino); // the same file: nothing copied
  t.true(src.nlink >= 2);
  t.true(Buffer.from(fs.readFileSync(saved.path)).equals(fs.readFileSync(loaded.path)), 'model bytes unchanged');
  const out = await runGolden(await createSession(saved.path));
  t.is(maxAbsDiff(out, ref), 0);
  // Saving again reuses the link.
  t.is(saveModel(loaded.model, path.join(d, 'copy/unet2.onnx'), { sourceDir: loaded.dir }).externalData[0]!.method, 'hardlink');
});

test('saveModel into the source directory leaves the reference alone', (t) => {
  const d = tmpDir(t);
  fs.copyFileSync(path.join(EXT_WEIGHTSPB, 'model.onnx'), path.join(d, 'model.onnx'));
  fs.copyFileSync(path.join(EXT_WEIGHTSPB, 'weights.pb'), path.join(d, 'weights.pb'));
  const loaded = loadModel(path.join(d, 'model.onnx'));
  const saved = saveModel(loaded.model, path.join(d, 'again.onnx'), { sourceDir: d });
  t.deepEqual(
    saved.externalData.map((e) => e.method),
    ['same-directory'],
  );
  t.throws(() => saveModel(loaded.model, path.join(d, 'x.onnx')), {
    instanceOf: TypeError,
    message: /pass opts.sourceDir/,
  });
  const other = tmpDir(t);
  fs.writeFileSync(path.join(other, 'weights.pb'), 'not the weights');
  t.throws(() => saveModel(loaded.model, path.join(other, 'x.onnx'), { sourceDir: d }), {
    message: /exists and is not/,
  });
});

test('createSession feeds unreachable data files from memory; createSessionFromModel too', async (t) => {
  const d = tmpDir(t);
  const loaded = loadModel(path.join(EXT_WEIGHTSPB, 'model.onnx'));
  const ref = await runGolden(await createSession(loaded.path));
  fs.copyFileSync(loaded.path, path.join(d, 'model.onnx')); // no weights.pb next to it
  await t.throwsAsync(createSession(path.join(d, 'model.onnx')), { message: /onnxruntime could not load/ });
  const s = await createSession(path.join(d, 'model.onnx'), {}, { externalData: [{ location: 'weights.pb', source: path.join(EXT_WEIGHTSPB, 'weights.pb') }] });
  t.is(maxAbsDiff(await runGolden(s), ref), 0);
  const s2 = await createSessionFromModel(loaded.model, {}, loaded.dir);
  t.is(maxAbsDiff(await runGolden(s2), ref), 0);
  await t.throwsAsync(createSessionFromModel(loaded.model), { instanceOf: TypeError });
});

test('saveModel across filesystems falls back to "memory" (no copy) and createSession then works', async (t) => {
  // /dev/shm is a tmpfs: a hard link from there into the temp dir on another filesystem fails with EXDEV.
  if (!fs.existsSync('/dev/shm') || fs.statSync('/dev/shm').dev === fs.statSync(os.tmpdir()).dev) {
    t.log('no second filesystem (/dev/shm) here: skipped');
    t.pass();
    return;
  }
  const shm = fs.mkdtempSync('/dev/shm/divbind-io-test-');
  t.teardown(() => fs.rmSync(shm, { recursive: true, force: true }));
  for (const f of ['model.onnx', 'weights.pb']) fs.copyFileSync(path.join(EXT_WEIGHTSPB, f), path.join(shm, f));
  const loaded = loadModel(path.join(shm, 'model.onnx'));
  const ref = await runGolden(await createSession(loaded.path));
  const d = tmpDir(t);
  const saved = saveModel(loaded.model, path.join(d, 'unet.onnx'), { sourceDir: shm });
  t.deepEqual(
    saved.externalData.map((e) => [e.location, e.method, e.target]),
    [['weights.pb', 'memory', path.join(shm, 'weights.pb')]],
  );
  t.false(fs.existsSync(path.join(d, 'weights.pb')), 'nothing copied');
  const s = await createSession(saved.path, {}, { externalData: saved.externalData.map((e) => ({ location: e.location, source: e.source })) });
  t.is(maxAbsDiff(await runGolden(s), ref), 0);
});

test('loadModel lists conventional data files the model does not reference', (t) => {
  const d = tmpDir(t);
  fs.copyFileSync(path.join(VARIANTS, 'opset17-int64-static/model.onnx'), path.join(d, 'model.onnx'));
  fs.writeFileSync(path.join(d, 'weights.pb'), 'stale');
  t.deepEqual(loadModel(path.join(d, 'model.onnx')).unreferencedDataFiles, ['weights.pb']);
});
