/**
 * lib/model pieces on their own: the manifest validator (every rule, with a recomputed checksum so that the rule
 * itself is what fires), the size and cache rules, the prepare command, and how `prepare` writes (temp folder and
 * swap, abandoned temp folders, dead sets, the format-1 flat layout).
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DivbindError } from '../../lib/errors';
import { cacheDirFor, cacheRoot } from '../../lib/model/cache';
import { checkComponentsAgree, type TextEncoderIo, type UnetIo, type VaeDecoderIo } from '../../lib/model/components';
import { readUnetFolder } from '../../lib/model/folder';
import { MANIFEST_FILE, MANIFEST_VERSION, readManifest, withChecksum, type Manifest } from '../../lib/model/manifest';
import { prepareModel } from '../../lib/model/prepare';
import { listPrepared, locatePrepared, prepareCommand, sourceIdentity } from '../../lib/model/prepared';
import { defaultImageSize, resolveImageSize, sizeRule } from '../../lib/model/size';
import { modelCopy, tempDir } from './model-folders';

let preparedDir = '';
let manifest: Manifest;
test.before(async () => {
  const t = { teardown: (fn: () => void) => process.once('exit', fn) };
  const r = await prepareModel(modelCopy(t), { verify: false });
  preparedDir = r.dir;
  manifest = r.manifest;
});

/** Writes `edit(copy of the manifest)` with a valid checksum into a scratch dir and reads it back. */
function readEdited(t: { teardown(fn: () => void): void }, edit: (m: any) => void, keepChecksum = false) {
  const d = tempDir(t);
  const m = structuredClone(manifest) as any;
  edit(m);
  fs.writeFileSync(path.join(d, MANIFEST_FILE), JSON.stringify(keepChecksum ? m : withChecksum(m)));
  return readManifest(d);
}

test('manifest: every field the readers rely on is checked, naming the field', (t) => {
  t.deepEqual(readManifest(preparedDir), { state: 'ok', manifest });
  t.deepEqual(readManifest(tempDir(t)), { state: 'missing' });
  const cases: Array<[string, (m: any) => void, string]> = [
    [
      'doubled resolution',
      (m) => {
        m.attention.layers[0].resolution *= 2;
      },
      'attention.layers[0].resolution is 64 but the layer is 32×32',
    ],
    [
      'no layers',
      (m) => {
        m.attention.layers = [];
      },
      'attention.layers must be an array of at least 1 entries but is []',
    ],
    [
      'null source',
      (m) => {
        m.source = null;
      },
      'source must be an object but is null',
    ],
    [
      'layer dims',
      (m) => {
        m.attention.layers[1].dims = [1, 256, 76];
      },
      'attention.layers[1].dims is [1,256,76] but must be [1,256,77]',
    ],
    [
      'duplicate output',
      (m) => {
        m.attention.layers[1].output = 'attn_0';
      },
      'attention.layers[1].output "attn_0" must be a unique tensor name',
    ],
    [
      'graph outside the set',
      (m) => {
        m.files.unet = '../unet.onnx';
      },
      'files.unet must be a file name in the prepared directory but is "../unet.onnx"',
    ],
    [
      'no stamp',
      (m) => {
        m.files.graphs = m.files.graphs.filter((g: { file: string }) => g.file !== 'backward.onnx');
      },
      'files.graphs has no stamp for backward.onnx',
    ],
    [
      'link outside',
      (m) => {
        m.files.externalData = [{ location: '../w.bin', source: '/w.bin', method: 'hardlink' }];
      },
      'files.externalData[0].location must stay inside the model folder',
    ],
    [
      'size vs factor',
      (m) => {
        m.height = 252;
      },
      'height 252 and width 256 must be multiples of vaeScaleFactor 8',
    ],
    [
      'sample dims',
      (m) => {
        m.inputs.sample.dims = [1, 4, 16, 32];
      },
      'inputs.sample.dims is [1,4,16,32] but must be [1,4,32,32]',
    ],
    [
      'cotangent',
      (m) => {
        delete m.vjp.cotangents.attn_3;
      },
      'vjp.cotangents.attn_3 must be a non-empty string but is undefined',
    ],
    [
      'design',
      (m) => {
        m.vjp.design = 'fast';
      },
      "vjp.design must be 'recompute' or 'residuals' but is \"fast\"",
    ],
    [
      'hash',
      (m) => {
        m.source.sourceHash = 'abc';
      },
      'source.sourceHash must be a sha256 hex digest',
    ],
    [
      'version',
      (m) => {
        m.formatVersion = 99;
      },
      `written for manifest format 99; this divbind-native reads format ${MANIFEST_VERSION}`,
    ],
    [
      'layer set order',
      (m) => {
        m.vjp.layerSets[0].layers.reverse();
      },
      'vjp.layerSets[0].layers must be ascending without repeats',
    ],
    [
      'layer set index',
      (m) => {
        m.vjp.layerSets[0].layers.push(10);
      },
      'vjp.layerSets[0].layers[3] must be a layer index below 10 but is 10',
    ],
    [
      'layer set size',
      (m) => {
        m.vjp.layerSets[0].layers = m.attention.layers.map((_: unknown, k: number) => k);
      },
      'vjp.layerSets[0].layers must be a proper subset of attention.layers',
    ],
    [
      'layer set stamp',
      (m) => {
        m.files.graphs = m.files.graphs.filter((g: { file: string }) => g.file !== 'backward-set1.onnx');
      },
      'files.graphs has no stamp for backward-set1.onnx',
    ],
    [
      'layer set residuals',
      (m) => {
        delete m.vjp.layerSets[1].residuals;
      },
      'vjp.layerSets[1].residuals must be an array of at least 0 entries but is undefined',
    ],
    [
      'format',
      (m) => {
        m.format = 'other';
      },
      'not a divbind-native manifest (format "other")',
    ],
  ];
  for (const [name, edit, reason] of cases) {
    t.deepEqual(readEdited(t, edit), { state: 'invalid', reason: `${MANIFEST_FILE}: ${reason}` }, name);
  }
  t.deepEqual(
    readEdited(
      t,
      (m) => {
        m.batch = 1;
        m.createdAt = 'yesterday';
      },
      true,
    ),
    { state: 'invalid', reason: `${MANIFEST_FILE}: edited after prepare (checksum mismatch)` },
    'any hand edit',
  );
  const d = tempDir(t);
  fs.writeFileSync(path.join(d, MANIFEST_FILE), '{"format": ');
  t.regex((readManifest(d) as { reason: string }).reason, /^divbind-manifest\.json is not valid JSON/);
});

test('size rule: a fixed export allows its size only, a dynamic one multiples of the VAE factor', (t) => {
  const fixed = sizeRule(['batch', 4, 32, 32], 8);
  t.deepEqual(defaultImageSize(fixed), { height: 256, width: 256 });
  t.deepEqual(resolveImageSize(fixed, 256), { height: 256, width: 256 });
  const err = t.throws(() => resolveImageSize(fixed, 128, 128), { instanceOf: DivbindError });
  t.is(
    err?.message,
    'unet/model.onnx is exported for only 256×256; 128×128 was requested: pass height 256 and width 256 or leave them out ' +
      '(other sizes need a UNet exported with dynamic height/width)',
  );
  t.is((err as DivbindError).code, 'BAD_INPUT');
  const dynamic = sizeRule(['batch', 4, 'height', 'width'], 8);
  t.deepEqual(defaultImageSize(dynamic), { height: 512, width: 512 });
  t.deepEqual(resolveImageSize(dynamic, 384), { height: 384, width: 384 }, 'width follows height');
  t.deepEqual(resolveImageSize(dynamic, undefined, 640), { height: 640, width: 640 });
  t.deepEqual(resolveImageSize(dynamic, 256, 640), { height: 256, width: 640 });
  t.throws(() => resolveImageSize(dynamic, 100), {
    message: "Expected a multiple of 8 between 8 and 8192 for height but received 100 (8 is the VAE's scale factor)",
  });
  t.throws(() => resolveImageSize(sizeRule([1, 4, 'h', 'w'], 4), 6), { message: /multiple of 4/ });
  t.deepEqual(resolveImageSize(sizeRule([1, 4, 'h', 'w'], 4), 36), { height: 36, width: 36 });
  const halfFixed = sizeRule([1, 4, 32, 'w'], 8);
  t.deepEqual(resolveImageSize(halfFixed, undefined, 512), { height: 256, width: 512 });
  t.throws(() => resolveImageSize(halfFixed, 512, 512), { message: /exported for only height 256 \(any width that is a multiple of 8\)/ });
});

test('cache rule: the option, else $XDG_CACHE_HOME, else ~/.cache; one folder per absolute model path', (t) => {
  const saved = process.env.XDG_CACHE_HOME;
  t.teardown(() => {
    if (saved === undefined) delete process.env.XDG_CACHE_HOME;
    else process.env.XDG_CACHE_HOME = saved;
  });
  process.env.XDG_CACHE_HOME = '/xdg';
  t.is(cacheRoot(), '/xdg/divbind-native');
  t.is(cacheRoot('rel'), path.resolve('rel'));
  process.env.XDG_CACHE_HOME = 'relative/ignored';
  t.is(cacheRoot(), path.join(require('node:os').homedir(), '.cache', 'divbind-native'));
  t.regex(cacheDirFor('/models/sd15', '/c'), /^\/c\/sd15-[0-9a-f]{16}$/);
  t.is(cacheDirFor('/models/sd15', '/c'), cacheDirFor('/models/x/../sd15', '/c'));
  t.not(cacheDirFor('/a/sd15', '/c'), cacheDirFor('/b/sd15', '/c'));
});

test('prepare command: size flags only when they differ from the default, --force only when asked', (t) => {
  const size = { height: 256, width: 256 };
  t.is(prepareCommand('/m'), 'divbind-native prepare "/m"');
  t.is(prepareCommand('/m', { size, defaultSize: size, force: true }), 'divbind-native prepare "/m" --force');
  t.is(
    prepareCommand('/m', { size: { height: 512, width: 768 }, defaultSize: size, batch: 2, cacheDir: '/c' }),
    'divbind-native prepare "/m" --height 512 --width 768 --batch 2 --cache-dir "/c"',
  );
});

test('components must fit together: hidden size, latent channels, VAE factor', (t) => {
  const spec = (name: string, shape: Array<number | string>) => ({ name, type: 'float32' as const, shape });
  const te: TextEncoderIo = { ids: { name: 'input_ids', type: 'int32', shape: ['b', 77] }, hidden: spec('last_hidden_state', ['b', 77, 32]) };
  const unet: UnetIo = {
    sample: spec('sample', ['b', 4, 32, 32]),
    timestep: spec('timestep', [1]),
    encoderHiddenStates: spec('encoder_hidden_states', ['b', 77, 32]),
    output: spec('out_sample', ['b', 4, 32, 32]),
  };
  const vae: VaeDecoderIo = { latent: spec('latent_sample', ['b', 4, 'h', 'w']), image: spec('sample', ['b', 3, 'H', 'W']) };
  t.notThrows(() => checkComponentsAgree({ vaeScaleFactor: 8 }, te, unet, vae));
  t.throws(() => checkComponentsAgree({ vaeScaleFactor: 8 }, { ...te, hidden: spec('h', ['b', 77, 768]) }, unet, vae), {
    message:
      /^text_encoder\/model\.onnx does not fit the UNet: its hidden size is 768, the UNet's encoder_hidden_states take 32: use the components of one export/,
  });
  t.throws(() => checkComponentsAgree({ vaeScaleFactor: 8 }, te, unet, { ...vae, latent: spec('l', ['b', 16, 'h', 'w']) }), {
    message: /takes 16 latent channels, the UNet's sample has 4/,
  });
  const staticVae = { latent: spec('l', [1, 4, 32, 32]), image: spec('sample', [1, 3, 128, 128]) };
  t.throws(() => checkComponentsAgree({ vaeScaleFactor: 8 }, te, unet, staticVae), {
    message: /turns 32 latent rows into 128 image rows, but the folder's VAE scale factor is 8: set "vae_scale_factor": 4/,
  });
  t.notThrows(() => checkComponentsAgree({ vaeScaleFactor: 4 }, te, unet, staticVae));
});

test('an interrupted prepare leaves the previous set, or nothing, and no temp folder', async (t) => {
  const dir = modelCopy(t);
  const key = { height: 256, width: 256, batch: 1 };
  const stopAt = (stage: string) => ({
    verify: true,
    onProgress: (p: { stage: string }) => {
      if (p.stage === stage) throw new Error(`stopped at ${stage}`);
    },
  });
  await t.throwsAsync(prepareModel(dir, stopAt('verify')), { message: 'stopped at verify' });
  const root = path.join(dir, 'unet', 'divbind');
  t.deepEqual(fs.readdirSync(root), [], 'no half-written set, no temp folder');
  t.throws(() => locatePrepared(readUnetFolder(dir), key), { instanceOf: DivbindError, message: /is not prepared for 256×256: run/ });

  const first = await prepareModel(dir, { verify: false });
  await t.throwsAsync(prepareModel(dir, { ...stopAt('verify'), force: true }), { message: 'stopped at verify' });
  t.deepEqual(fs.readdirSync(root), ['256x256']);
  t.is(locatePrepared(readUnetFolder(dir), key).manifest.checksum, first.manifest.checksum, 'the previous set is untouched');
});

test('prepare removes temp folders of dead runs, sets whose UNet changed, and the format-1 flat layout', async (t) => {
  const dir = modelCopy(t, 'opset17-int64-dynhw');
  const root = path.join(dir, 'unet', 'divbind');
  await prepareModel(dir, { height: 128, width: 128, verify: false });
  const deadPid = spawnSync(process.execPath, ['-e', '0']).pid!;
  fs.mkdirSync(path.join(root, `.tmp-256x256-${deadPid}-abcdef`));
  fs.writeFileSync(path.join(root, MANIFEST_FILE), '{"format": "divbind-manifest", "formatVersion": 1}');
  fs.writeFileSync(path.join(root, 'unet.onnx'), 'old flat-layout graph');
  const unet = path.join(dir, 'unet', 'model.onnx');
  fs.appendFileSync(unet, Buffer.from([0xc0, 0x3e, 0x07])); // same graph, new bytes: the 128×128 set is stale
  const folder = readUnetFolder(dir);
  t.deepEqual(
    listPrepared(folder, sourceIdentity(folder)).map((s) => s.state.state),
    ['stale'],
  );

  await prepareModel(dir, { height: 256, width: 256, verify: false });
  t.deepEqual(fs.readdirSync(root).sort(), ['256x256']);
  t.deepEqual(
    listPrepared(folder, sourceIdentity(folder)).map((s) => `${s.size.width}×${s.size.height} ${s.state.state}`),
    ['256×256 ready'],
  );
});
