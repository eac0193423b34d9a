/**
 * The model-lifecycle faults of issue 10, each as a user meets it (CLI exit code and message) and through the API
 * (the DivbindError code). Every folder is a temp copy of the committed fixtures, broken the way a user would.
 * Serial: each test spawns CLI processes, and on a loaded machine running them all at once starves each of them.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DivBindPipeline, prepareModel } from '../../lib/index';
import { DivbindError } from '../../lib/errors';
import { exitCodeFor } from '../../lib/cli/errors';
import { cli, cliGenerate, cliPrepare, damageFile, halvedWeights, modelCopy, replaceFile, tempDir, type Damage } from './model-folders';

const EXTERNAL = 'opset17-int64-external-onnxdata';
const MANIFEST = 'divbind-manifest.json';

interface InfoJson {
  model: { error?: string; prepared?: { state?: string; reason?: string; layers?: string[] }; preparedSizes?: Array<{ size: string; state: string }> };
}

test.serial(
  'fault 1: replacing the external weights after prepare makes the model stale; info says so, generate refuses, prepare rebuilds on the new file',
  (t) => {
    const dir = modelCopy(t, EXTERNAL);
    const prepared = cliPrepare(t, dir);
    const weights = path.join(dir, 'unet', 'model.onnx_data');
    replaceFile(weights, halvedWeights(weights));

    const info = cli(t, ['info', '--model', dir, '--json']);
    t.is(info.status, 0, info.stderr);
    const prep = (JSON.parse(info.stdout) as InfoJson).model.prepared;
    t.is(prep?.state, 'stale');
    t.regex(prep?.reason ?? '', /unet\/model\.onnx_data/);

    const gen = cliGenerate(t, dir);
    t.is(gen.status, 4, gen.stderr);
    t.regex(gen.stderr, /not prepared.*changed.*run `divbind-native prepare ".*" --force`/s);

    const again = cliPrepare(t, dir);
    t.false(again.skipped, 'a stale set is rebuilt, not "already prepared"');
    t.is(fs.statSync(path.join(again.dir, 'model.onnx_data')).ino, fs.statSync(weights).ino, 'the graphs link the new weights');
    t.is(again.dir, prepared.dir);
    t.is(cliGenerate(t, dir).status, 0);
  },
);

test.serial('fault 2: with the manifest deleted and a stale weights link left behind, prepare and prepare --force rebuild', (t) => {
  const dir = modelCopy(t, EXTERNAL);
  const first = cliPrepare(t, dir);
  const weights = path.join(dir, 'unet', 'model.onnx_data');
  replaceFile(weights, halvedWeights(weights));
  fs.rmSync(path.join(first.dir, MANIFEST));

  const plain = cli(t, ['prepare', dir, '--json']);
  t.is(plain.status, 0, plain.stderr);
  const rebuilt = JSON.parse(plain.stdout) as { dir: string; skipped: boolean };
  t.false(rebuilt.skipped);
  t.is(fs.statSync(path.join(rebuilt.dir, 'model.onnx_data')).ino, fs.statSync(weights).ino);

  fs.rmSync(path.join(rebuilt.dir, MANIFEST));
  const forced = cli(t, ['prepare', dir, '--force', '--json']);
  t.is(forced.status, 0, forced.stderr);
  t.is(fs.statSync(path.join((JSON.parse(forced.stdout) as { dir: string }).dir, 'model.onnx_data')).ino, fs.statSync(weights).ino);
});

const COMPONENTS = ['unet', 'text_encoder', 'vae_decoder'] as const;
const DAMAGE: Damage[] = ['truncated', 'empty', 'random'];

test.serial('fault 8: a truncated, empty or random component is MODEL_INVALID naming the file and the fix', async (t) => {
  for (const component of COMPONENTS) {
    for (const how of DAMAGE) {
      const dir = modelCopy(t);
      damageFile(path.join(dir, component, 'model.onnx'), how);
      const err = await t.throwsAsync(DivBindPipeline.load(dir, { prepare: false }), { instanceOf: DivbindError }, `${component} ${how}`);
      t.is((err as DivbindError | undefined)?.code, 'MODEL_INVALID', `${component} ${how}`);
      t.is((err as DivbindError | undefined)?.field, `${component}/model.onnx`, `${component} ${how}`);
      t.regex(err?.message ?? '', new RegExp(`${component}/model\\.onnx.*(export|download)`, 's'), `${component} ${how}`);
    }
  }
});

test.serial('fault 8: a damaged component exits 4 from generate, prepare and info', (t) => {
  const dir = modelCopy(t);
  damageFile(path.join(dir, 'text_encoder', 'model.onnx'), 'truncated');
  const gen = cliGenerate(t, dir, ['--mode', 'none']);
  t.is(gen.status, 4, gen.stderr);
  t.regex(gen.stderr, /text_encoder\/model\.onnx/);
  t.notRegex(gen.stderr, /Protobuf parsing failed\.?\s*$/);
  const info = cli(t, ['info', '--model', dir]);
  t.is(info.status, 4, info.stderr);

  const unet = modelCopy(t);
  damageFile(path.join(unet, 'unet', 'model.onnx'), 'random');
  t.is(cli(t, ['prepare', unet]).status, 4);
  t.is(cliGenerate(t, unet, ['--mode', 'none']).status, 4);
});

test.serial('fault 8: missing external weights are MODEL_MISSING naming the weights file, exit 4', async (t) => {
  const dir = modelCopy(t, EXTERNAL);
  fs.rmSync(path.join(dir, 'unet', 'model.onnx_data'));
  const err = await t.throwsAsync(DivBindPipeline.load(dir, { prepare: false }), { instanceOf: DivbindError });
  t.is((err as DivbindError | undefined)?.code, 'MODEL_MISSING');
  t.is((err as DivbindError | undefined)?.field, 'unet/model.onnx_data');
  t.regex(err?.message ?? '', /unet\/model\.onnx_data.*: restore unet\/model\.onnx_data from the model's export/s);
  const prep = cli(t, ['prepare', dir]);
  t.is(prep.status, 4, prep.stderr);
  t.regex(prep.stderr, /model\.onnx_data/);
  t.is(cliGenerate(t, dir, ['--mode', 'none']).status, 4);
});

test.serial('fault 8: a truncated or random prepared graph is not "already prepared": generate exits 4 with the fix, prepare rebuilds', async (t) => {
  for (const how of ['truncated', 'random'] as const) {
    const dir = modelCopy(t);
    const first = await prepareModel(dir, { verify: false });
    const graph = path.join(first.dir, first.manifest.files.backward ?? first.manifest.files.vjp!);
    damageFile(graph, how);
    const pipe = await DivBindPipeline.load(dir, { prepare: false });
    try {
      t.false(pipe.canGuide, how);
      const err = await t.throwsAsync(pipe.generate({ prompt: 'a red cat', mode: 'tv', steps: 1, seed: 1, tokens: { objects: ['cat'] } }));
      t.is((err as DivbindError | undefined)?.code, 'MODEL_NOT_PREPARED', how);
      t.regex(err?.message ?? '', /divbind-native prepare .*--force/, how);
    } finally {
      await pipe.release();
    }
    t.is(cliGenerate(t, dir).status, 4, how);
    t.false((await prepareModel(dir, { verify: false })).skipped, how);
    t.true((await prepareModel(dir, { verify: false })).skipped, `${how}: the rebuilt set is ready`);
  }
});

test.serial('fault 9: a VAE decoder (or text encoder) that is really a UNet is refused at load, naming the file', async (t) => {
  for (const component of ['vae_decoder', 'text_encoder'] as const) {
    const dir = modelCopy(t);
    fs.copyFileSync(path.join(dir, 'unet', 'model.onnx'), path.join(dir, component, 'model.onnx'));
    const err = await t.throwsAsync(DivBindPipeline.load(dir, { prepare: false }), { instanceOf: DivbindError }, component);
    t.is((err as DivbindError | undefined)?.code, 'MODEL_INVALID', component);
    t.is((err as DivbindError | undefined)?.field, `${component}/model.onnx`, component);
    t.regex(err?.message ?? '', /sample, timestep, encoder_hidden_states/, component);
    const gen = cliGenerate(t, dir, ['--mode', 'none']);
    t.is(gen.status, 4, component);
    t.notRegex(gen.stderr, /timestep' is missing/);
  }
  const dir = modelCopy(t);
  fs.copyFileSync(path.join(dir, 'vae_decoder', 'model.onnx'), path.join(dir, 'unet', 'model.onnx'));
  const err = await t.throwsAsync(DivBindPipeline.load(dir, { prepare: false }), { instanceOf: DivbindError });
  t.is((err as DivbindError | undefined)?.field, 'unet/model.onnx');
});

const MANIFEST_EDITS: Record<string, (m: Record<string, any>) => void> = {
  'doubled resolutions': (m) => {
    for (const l of m.attention.layers) l.resolution *= 2;
  },
  'empty layers': (m) => {
    m.attention.layers = [];
  },
  'source: null': (m) => {
    m.source = null;
  },
  'formatVersion: 99': (m) => {
    m.formatVersion = 99;
  },
};

test.serial('fault 11: a hand-edited manifest means "not prepared: run prepare --force" (exit 4), and prepare rebuilds it', async (t) => {
  for (const [name, edit] of Object.entries(MANIFEST_EDITS)) {
    const dir = modelCopy(t);
    const r = await prepareModel(dir, { verify: false });
    const file = path.join(r.dir, MANIFEST);
    const m = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, any>;
    edit(m);
    fs.writeFileSync(file, JSON.stringify(m, null, 2));

    const gen = cliGenerate(t, dir);
    t.is(gen.status, 4, `${name}: ${gen.stderr}`);
    t.regex(gen.stderr, /not prepared.*run `divbind-native prepare ".*" --force`/s, name);
    if (name === 'doubled resolutions') {
      const pipe = await DivBindPipeline.load(dir, { prepare: false });
      try {
        const err = await t.throwsAsync(pipe.generate({ prompt: 'a red cat', mode: 'tv', steps: 1, seed: 1, tokens: { objects: ['cat'] } }));
        t.is((err as DivbindError | undefined)?.code, 'MODEL_NOT_PREPARED', name);
      } finally {
        await pipe.release();
      }
    }
    const again = await prepareModel(dir, { verify: false });
    t.false(again.skipped, name);
  }
});

test.serial('fault 14: a size a fixed-size UNet cannot run is refused with the sizes that work, not with a prepare command', async (t) => {
  const dir = modelCopy(t);
  await prepareModel(dir, { verify: false });
  for (const mode of ['tv', 'none']) {
    const gen = cliGenerate(t, dir, ['--mode', mode, '--height', '128', '--width', '128']);
    t.is(gen.status, 3, gen.stderr);
    t.regex(gen.stderr, /256×256/);
    t.notRegex(gen.stderr, /divbind-native prepare/);
  }
  const prep = cli(t, ['prepare', dir, '--height', '128', '--width', '128']);
  t.is(prep.status, 3, prep.stderr);
  t.regex(prep.stderr, /256×256/);
});

test.serial('prepared graphs are kept per image size: a dynamic-size UNet prepared at two sizes guides at both', async (t) => {
  const dir = modelCopy(t, 'opset17-int64-dynhw');
  const a = await prepareModel(dir, { height: 256, width: 256, verify: false });
  const b = await prepareModel(dir, { height: 128, width: 128, verify: false });
  t.not(a.dir, b.dir);
  t.true((await prepareModel(dir, { height: 256, width: 256, verify: false })).skipped, 'the first size is still prepared');
  const pipe = await DivBindPipeline.load(dir, { prepare: false });
  try {
    for (const [height, width] of [
      [256, 256],
      [128, 128],
    ] as const) {
      const r = await pipe.generate({ prompt: 'a red cat', mode: 'tv', steps: 1, seed: 1, height, width, tokens: { objects: ['cat'] } });
      t.deepEqual([r.images[0]!.height, r.images[0]!.width], [height, width]);
      t.true(Number.isFinite(r.images[0]!.steps[0]!.loss!));
    }
  } finally {
    await pipe.release();
  }
  const info = JSON.parse(cli(t, ['info', '--model', dir, '--json']).stdout) as InfoJson;
  t.deepEqual(info.model.preparedSizes?.map((s) => `${s.size} ${s.state}`).sort(), ['128×128 ready', '256×256 ready']);
});

test.serial('the VAE factor comes from the model folder: prepare and the pipeline agree on the image size', async (t) => {
  const dir = modelCopy(t);
  const indexFile = path.join(dir, 'model_index.json');
  fs.writeFileSync(indexFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(indexFile, 'utf8')), vae_scale_factor: 4 }));
  const r = await prepareModel(dir, { verify: false });
  t.deepEqual([r.manifest.height, r.manifest.width], [128, 128], 'latent 32 × factor 4');
  t.deepEqual(r.manifest.inputs.sample!.dims, [1, 4, 32, 32]);
  t.true((await prepareModel(dir, { height: 128, width: 128, verify: false })).skipped);
  const pipe = await DivBindPipeline.load(dir, { prepare: false });
  try {
    t.true(pipe.canGuide);
  } finally {
    await pipe.release();
  }
});

test.serial('fault 16: info on a missing folder exits 4; model-folder faults exit 4, not 3', (t) => {
  const nope = path.join(tempDir(t), 'nope');
  const info = cli(t, ['info', '--model', nope]);
  t.is(info.status, 4, info.stdout);
  t.regex(info.stderr, /model folder not found/i);

  const sched = modelCopy(t);
  fs.writeFileSync(path.join(sched, 'scheduler', 'scheduler_config.json'), JSON.stringify({ _class_name: 'NoSuchScheduler' }));
  const s = cliGenerate(t, sched, ['--mode', 'none']);
  t.is(s.status, 4, s.stderr);
  t.regex(s.stderr, /scheduler\/scheduler_config\.json/);

  const tok = modelCopy(t);
  fs.writeFileSync(path.join(tok, 'tokenizer', 'vocab.json'), '{ not json');
  const k = cliGenerate(t, tok, ['--mode', 'none']);
  t.is(k.status, 4, k.stderr);
  t.regex(k.stderr, /tokenizer\/vocab\.json/);

  const vae = modelCopy(t);
  fs.writeFileSync(path.join(vae, 'vae_decoder', 'config.json'), JSON.stringify({ scaling_factor: 0 }));
  const v = cliGenerate(t, vae, ['--mode', 'none']);
  t.is(v.status, 4, v.stderr);
  t.regex(v.stderr, /scaling_factor/);
});

test.serial('the CLI maps every DivbindError code to its exit code', (t) => {
  const expected: Record<DivbindError['code'], number> = {
    BAD_INPUT: 3,
    OUTPUT: 3,
    MODEL_MISSING: 4,
    MODEL_INVALID: 4,
    MODEL_UNSUPPORTED: 4,
    MODEL_NOT_PREPARED: 4,
    NUMERIC: 1,
    ABORTED: 130,
  };
  for (const [code, exit] of Object.entries(expected)) {
    t.is(exitCodeFor(new DivbindError(code as DivbindError['code'], 'x')), exit, code);
  }
});
