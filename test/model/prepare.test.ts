import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { Command } from 'commander';
import { makePrepareCommand } from '../../lib/cli/commands/prepare';
import { DivbindError } from '../../lib/errors';
import { readUnetFolder } from '../../lib/model/folder';
import { MANIFEST_FILE, readManifest } from '../../lib/model/manifest';
import { prepareModel, type PrepareProgress } from '../../lib/model/prepare';
import { locatePrepared } from '../../lib/model/prepared';
import { loadModel } from '../../lib/onnx/model-io';
import { DataType, encodeModel, makeValueInfo } from '../../lib/onnx/proto';
import { readNpy } from '../../lib/util/npy';

const ROOT = path.resolve(__dirname, '../../..');
const TINY = path.join(ROOT, 'test/fixtures/models/tiny-sd');
const VARIANTS = path.join(ROOT, 'test/fixtures/models/unet-variants');
const GOLDEN = path.join(ROOT, 'test/fixtures/golden/unet');

function tmpDir(t: { teardown(fn: () => void): void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-prepare-test-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

/** An SD folder in a temp dir: model_index.json + unet/ (from `unetDir`, all files). Never writes into fixtures. */
function sdFolder(t: { teardown(fn: () => void): void }, unetDir = path.join(TINY, 'unet')): string {
  const d = tmpDir(t);
  fs.copyFileSync(path.join(TINY, 'model_index.json'), path.join(d, 'model_index.json'));
  fs.mkdirSync(path.join(d, 'unet'));
  for (const f of fs.readdirSync(unetDir)) {
    if (fs.statSync(path.join(unetDir, f)).isFile()) fs.copyFileSync(path.join(unetDir, f), path.join(d, 'unet', f));
  }
  return d;
}

test('prepare writes the instrumented UNet, VJP graph and manifest; a second run is a no-op; --force rebuilds', async (t) => {
  const dir = sdFolder(t);
  const stages: PrepareProgress[] = [];
  const r = await prepareModel(dir, { onProgress: (p) => stages.push(p) });
  t.false(r.skipped);
  t.is(r.dir, path.join(dir, 'unet', 'divbind', '256x256'));
  const m = r.manifest;
  t.is(m.format, 'divbind-manifest');
  t.is(m.source.sourceHash, loadModel(path.join(dir, 'unet/model.onnx')).sourceHash);
  t.deepEqual([m.height, m.width, m.batch, m.textLength], [256, 256, 1, 77]);
  t.deepEqual(m.inputs.sample, { elemType: 'FLOAT', dims: [1, 4, 32, 32] });
  t.is(m.attention.layers.length, 10);
  t.true(m.attention.headAveraged);
  t.deepEqual(
    m.attention.layers.map((l) => l.output),
    [...Array(10).keys()].map((i) => `attn_${i}`),
  );
  t.deepEqual(
    m.attention.layers.map((l) => [l.place, l.resolution, l.heads]),
    [
      ['down', 32, 2],
      ['down', 16, 2],
      ['down', 8, 2],
      ['mid', 4, 2],
      ['up', 8, 2],
      ['up', 8, 2],
      ['up', 16, 2],
      ['up', 16, 2],
      ['up', 32, 2],
      ['up', 32, 2],
    ],
  );
  t.is(m.vjp.design, 'residuals');
  t.is(m.vjp.gradient, 'grad_sample');
  t.is(m.vjp.cotangents.attn_0, 'grad_attn_0');
  t.true((m.vjp.residuals ?? []).length > 0);
  for (const f of [m.files.unet, m.files.forward!, m.files.backward!]) t.true(fs.existsSync(path.join(r.dir, f)), f);
  t.deepEqual(readManifest(r.dir), { state: 'ok', manifest: JSON.parse(JSON.stringify(m)) });
  t.deepEqual([...new Set(stages.map((s) => s.stage))], ['validate', 'load', 'shapes', 'attention', 'vjp', 'save', 'verify', 'done']);
  t.true(stages.every((s, i) => i === 0 || s.fraction >= stages[i - 1]!.fraction));

  // The instrumented UNet still computes out_sample as exported (golden batch-1, ≤ 1e-5: PyTorch vs ORT fp32).
  const s = await ort.InferenceSession.create(path.join(r.dir, m.files.unet));
  const sample = readNpy(path.join(GOLDEN, 'sample.npy'));
  const ehs = readNpy(path.join(GOLDEN, 'encoder_hidden_states.npy'));
  const out = await s.run({
    sample: new ort.Tensor('float32', sample.data as Float32Array, sample.shape),
    timestep: new ort.Tensor('int64', BigInt64Array.of(801n), [1]),
    encoder_hidden_states: new ort.Tensor('float32', ehs.data as Float32Array, ehs.shape),
  });
  const ref = readNpy(path.join(GOLDEN, 'out_sample.npy')).data as Float32Array;
  let diff = 0;
  (out.out_sample!.data as Float32Array).forEach((x, i) => {
    diff = Math.max(diff, Math.abs(x - ref[i]!));
  });
  t.true(diff <= 1e-5, `out_sample max |diff| ${diff}`);

  const mtime = fs.statSync(path.join(r.dir, m.files.unet)).mtimeMs;
  const again = await prepareModel(dir);
  t.true(again.skipped);
  t.is(fs.statSync(path.join(r.dir, m.files.unet)).mtimeMs, mtime);
  const other = await prepareModel(dir, { headAverage: false, verify: false });
  t.false(other.skipped, 'different options rebuild');
  t.false(other.manifest.attention.headAveraged);
  t.deepEqual(other.manifest.attention.layers[0]!.dims, [2, 1024, 77]);
  t.false((await prepareModel(dir, { headAverage: false, verify: false, force: true })).skipped);

  // The pipeline's lookup: found for the prepared size, the reason and the command otherwise.
  const key = { height: 256, width: 256, batch: 1 };
  t.is(locatePrepared(readUnetFolder(dir), key).dir, r.dir);
  const model = fs.readFileSync(path.join(dir, 'unet/model.onnx'));
  fs.writeFileSync(path.join(dir, 'unet/model.onnx'), Buffer.concat([model, Buffer.from([0xc0, 0x3e, 0x07])])); // same graph, new bytes
  t.throws(() => locatePrepared(readUnetFolder(dir), key), {
    instanceOf: DivbindError,
    message: `${dir} is not prepared for 256×256: unet/model.onnx changed since prepare: run \`divbind-native prepare "${dir}" --height 256 --width 256 --force\``,
  });
  t.false((await prepareModel(dir, { headAverage: false, verify: false })).skipped, 'a changed UNet is re-prepared');
  const fresh = sdFolder(t);
  t.throws(() => locatePrepared(readUnetFolder(fresh), key, { defaultSize: key }), {
    instanceOf: DivbindError,
    message: `${fresh} is not prepared for 256×256: run \`divbind-native prepare "${fresh}"\``,
  });
});

test('external data: the prepared graphs hard-link model.onnx_data, no weight bytes copied', async (t) => {
  const dir = sdFolder(t, path.join(VARIANTS, 'opset17-int64-external-onnxdata'));
  const r = await prepareModel(dir, { height: 256, width: 256 });
  const src = fs.statSync(path.join(dir, 'unet/model.onnx_data'));
  const link = fs.statSync(path.join(r.dir, 'model.onnx_data'));
  t.is(link.ino, src.ino);
  t.deepEqual(
    r.manifest.files.externalData.map((e) => [e.location, e.method]),
    [['model.onnx_data', 'hardlink']],
  );
  // The written graphs reference the weights instead of holding them.
  t.true(fs.statSync(path.join(r.dir, r.manifest.files.unet)).size < src.size);
  t.deepEqual(
    r.manifest.source.externalData.map((e) => e.location),
    ['model.onnx_data'],
  );
});

test('a read-only model folder falls back to cacheDir', async (t) => {
  const dir = sdFolder(t);
  // unet/divbind exists as a file, so nothing can be written beside the model (chmod would not stop root).
  fs.writeFileSync(path.join(dir, 'unet', 'divbind'), '');
  const cache = tmpDir(t);
  const r = await prepareModel(dir, { cacheDir: cache, verify: false });
  t.true(r.dir.startsWith(cache + path.sep));
  t.true(fs.existsSync(path.join(r.dir, MANIFEST_FILE)));
});

test('folder errors say what is missing and what layout is expected', async (t) => {
  const d = tmpDir(t);
  const layout = "pass a Stable Diffusion ONNX folder in the layout of diffusers' OnnxStableDiffusionPipeline / Optimum exports";
  await t.throwsAsync(prepareModel(path.join(d, 'nope')), {
    instanceOf: DivbindError,
    code: 'MODEL_MISSING',
    message: `model folder not found: ${path.join(d, 'nope')}: ${layout}: model_index.json, text_encoder/model.onnx, unet/model.onnx, vae_decoder/model.onnx, tokenizer/, scheduler/ (SDXL also text_encoder_2/model.onnx and tokenizer_2/)`,
  } as never);
  await t.throwsAsync(prepareModel(d), {
    instanceOf: DivbindError,
    message: `${d} is not a Stable Diffusion ONNX folder: model_index.json is missing: ${layout}: model_index.json, text_encoder/model.onnx, unet/model.onnx, vae_decoder/model.onnx, tokenizer/, scheduler/ (SDXL also text_encoder_2/model.onnx and tokenizer_2/)`,
  });
  fs.writeFileSync(path.join(d, 'model_index.json'), '{}');
  await t.throwsAsync(prepareModel(d), {
    instanceOf: DivbindError,
    message: new RegExp(`^unet/model\\.onnx is missing from ${d.replace(/[.]/g, '\\.')}: ${layout}`),
  });
  fs.mkdirSync(path.join(d, 'unet'));
  fs.writeFileSync(path.join(d, 'unet/model.onnx'), 'garbage');
  const garbage = await t.throwsAsync(prepareModel(d), {
    instanceOf: DivbindError,
    message: /^unet\/model\.onnx cannot be used: Cannot decode .*model\.onnx as an ONNX ModelProto.*: restore unet\/model\.onnx/,
  });
  t.is((garbage as DivbindError).code, 'MODEL_INVALID');
  t.is((garbage as DivbindError).field, 'unet/model.onnx');
});

test('fp16 UNets are refused with the fix', async (t) => {
  const dir = sdFolder(t);
  const loaded = loadModel(path.join(dir, 'unet/model.onnx'));
  loaded.model.graph!.input = loaded.model.graph!.input.map((v) => (v.name === 'sample' ? makeValueInfo('sample', DataType.FLOAT16, ['batch', 4, 32, 32]) : v));
  fs.writeFileSync(path.join(dir, 'unet/model.onnx'), encodeModel(loaded.model));
  const err = await t.throwsAsync(prepareModel(dir), {
    instanceOf: DivbindError,
    message: /^unet\/model\.onnx is an fp16 UNet\. The gradient pass needs fp32: export the UNet in fp32/,
  });
  t.is((err as DivbindError).code, 'MODEL_UNSUPPORTED');
});

test('option errors are DivbindError BAD_INPUT naming the option', async (t) => {
  const dir = sdFolder(t);
  const bad = async (opts: object, field: string, message: string | RegExp) => {
    const err = await t.throwsAsync(prepareModel(dir, opts as never), { instanceOf: DivbindError, message });
    t.is((err as DivbindError).code, 'BAD_INPUT');
    t.is((err as DivbindError).field, field);
  };
  await bad({ height: 100 }, 'height', "Expected a multiple of 8 between 8 and 8192 for height but received 100 (8 is the VAE's scale factor)");
  await bad({ batch: 1.5 }, 'batch', 'Expected an integer between 1 and 64 for batch but received 1.5 of type number');
  await bad({ heigth: 512 }, 'heigth', /^Unknown prepareModel option 'heigth'/);
  await bad({ design: 'fast' }, 'design', "Expected 'recompute' or 'residuals' for design but received \"fast\"");
  await bad(
    { width: 384 },
    'width',
    'unet/model.onnx is exported for only 256×256; 384×256 was requested: pass height 256 and width 256 or leave them out ' +
      '(other sizes need a UNet exported with dynamic height/width)',
  );
  t.deepEqual(fs.readdirSync(path.join(dir, 'unet')), ['model.onnx'], 'nothing written for a failed prepare');
});

async function runCli(args: string[]): Promise<{ code: number | undefined; stdout: string; stderr: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const ow = process.stdout.write.bind(process.stdout);
  const ew = process.stderr.write.bind(process.stderr);
  const saved = process.exitCode;
  process.exitCode = undefined;
  process.stdout.write = ((c: string) => {
    out.push(String(c));
    return true;
  }) as typeof process.stdout.write;
  process.stderr.write = ((c: string) => {
    err.push(String(c));
    return true;
  }) as typeof process.stderr.write;
  try {
    const program = new Command('divbind-native').exitOverride();
    program.addCommand(makePrepareCommand());
    await program.parseAsync(['node', 'divbind-native', 'prepare', ...args]);
    return { code: process.exitCode as number | undefined, stdout: out.join(''), stderr: err.join('') };
  } finally {
    process.stdout.write = ow;
    process.stderr.write = ew;
    process.exitCode = saved;
  }
}

test.serial('CLI: --json prints the manifest, exit codes 0 / 3 / 4', async (t) => {
  const dir = sdFolder(t);
  const ok = await runCli([dir, '--json', '--no-verify']);
  t.is(ok.code, 0);
  const parsed = JSON.parse(ok.stdout) as { dir: string; skipped: boolean; manifest: { attention: { layers: unknown[] } } };
  t.is(parsed.manifest.attention.layers.length, 10);
  t.regex(ok.stderr, /\[100%\] done: prepared 10 attention layers/);
  const text = await runCli([dir]);
  t.is(text.code, 0);
  t.regex(text.stdout, /^Already prepared: .*\n {2}model .*\n[\s\S]*attn_9 up 32×32 2 heads \(averaged\) \[1, 1024, 77\]/);
  const missing = await runCli([path.join(dir, 'nope')]);
  t.is(missing.code, 4);
  t.regex(missing.stderr, /error: model folder not found/);
  const bad = await runCli([dir, '--design', 'fast']);
  t.is(bad.code, 3);
  t.regex(bad.stderr, /Expected 'recompute' or 'residuals' for --design but received 'fast'/);
});
