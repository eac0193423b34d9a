/**
 * Model families (lib/model/family.ts): which family a folder is, read off what every export has (real SD 2.x and
 * SDXL exports carry no `divbind` entry), the defaults that follow (size, resolutions, token slice with the EOT
 * index from the ids, guidance), an explicit `divbind` entry winning, and SDXL's components checked at load (a
 * missing, misplaced or mismatched part is a DivbindError naming it, before anything runs).
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DivbindError, type DivbindErrorCode } from '../../lib/errors';
import { detectFamily, type FamilyEvidence } from '../../lib/model/family';
import { readModelFolder, readUnetFolder } from '../../lib/model/folder';
import { loadModel, saveModel } from '../../lib/onnx/model-io';
import { DataType, makeValueInfo } from '../../lib/onnx/proto';
import { DivBindPipeline } from '../../lib/pipeline/pipeline';
import { fixturePath } from '../helpers/fixtures';
import { copyFixtureModel, removeDir } from '../pipeline/prepared-model';

/** A private copy of a fixture folder, removed after the test; `edit` changes its model_index.json. */
function folderCopy(t: ExecutionContext, name: string, edit?: (index: Record<string, unknown>) => void): string {
  const dir = copyFixtureModel(name);
  t.teardown(() => removeDir(dir));
  if (edit) {
    const file = path.join(dir, 'model_index.json');
    const index = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    edit(index);
    fs.writeFileSync(file, JSON.stringify(index, null, 2));
  }
  return dir;
}

/** As a real export: no divbind entry. */
const noDivbind = (index: Record<string, unknown>) => {
  delete index.divbind;
};

async function refusedAtLoad(t: ExecutionContext, dir: string, code: DivbindErrorCode, field: string, message: RegExp): Promise<void> {
  const err = await t.throwsAsync(DivBindPipeline.load(dir, { session: { intraOpNumThreads: 1 } }), { instanceOf: DivbindError });
  t.is(err?.code, code, err?.message);
  t.is(err?.field, field, err?.message);
  t.regex(err?.message ?? '', message);
}

const evidence = (e: Partial<FamilyEvidence>): FamilyEvidence => ({ index: { _class_name: 'OnnxStableDiffusionPipeline' }, hasTextEncoder2: false, ...e });

test('the fixture folders are read as SD 1.x, SD 2.x and SDXL, each with its reasons', (t) => {
  const sd1 = readUnetFolder(fixturePath('models', 'tiny-sd')).family;
  const sd2 = readUnetFolder(fixturePath('models', 'tiny-sd2')).family;
  const xl = readUnetFolder(fixturePath('models', 'tiny-sdxl')).family;
  t.deepEqual([sd1.name, sd2.name, xl.name], ['sd1', 'sd2', 'sdxl']);
  t.deepEqual(sd2.evidence, ['the tokenizer pads with "!" (OpenCLIP)', 'scheduler prediction_type v_prediction']);
  t.true(xl.evidence.includes('text_encoder_2/ is present'));
  t.deepEqual([sd2.defaultLatentSide, xl.defaultLatentSide], [96, 128]);
});

test('detection rules: SD 2.x base vs 768-v, SDXL by class, components or UNet config, the declared family wins', (t) => {
  const sd15 = detectFamily(evidence({ tokenizerPad: '<|endoftext|>', predictionType: 'epsilon' }));
  t.is(sd15.name, 'sd1');
  t.deepEqual([sd15.tokenSlice, sd15.attributeFactors, sd15.guidanceScale, sd15.defaultLatentSide], ['all-but-last', [4, 2], 7.5, 64]);
  const base = detectFamily(evidence({ tokenizerPad: '!', predictionType: 'epsilon' }));
  t.deepEqual([base.name, base.defaultLatentSide, base.tokenSlice], ['sd2', 64, 'until-eot']);
  t.is(detectFamily(evidence({ predictionType: 'v_prediction' })).defaultLatentSide, 96);
  t.is(detectFamily(evidence({ textEncoderConfig: { hidden_act: 'gelu' } })).name, 'sd2');
  t.is(detectFamily(evidence({ unetConfig: { cross_attention_dim: 1024 } })).name, 'sd2');
  const xl = detectFamily(evidence({ index: { _class_name: 'ORTStableDiffusionXLPipeline' }, tokenizerPad: '!' }));
  t.deepEqual([xl.name, xl.attributeFactors, xl.guidanceScale, xl.defaultLatentSide], ['sdxl', [2], 5, 128]);
  t.is(detectFamily(evidence({ hasTextEncoder2: true })).name, 'sdxl');
  t.is(detectFamily(evidence({ unetConfig: { addition_embed_type: 'text_time', sample_size: 96 } })).defaultLatentSide, 96);
  t.deepEqual(detectFamily(evidence({ declared: 'sd1', tokenizerPad: '!' })).evidence, ['model_index.json divbind.family']);
});

test('a real SD 2.x export (no divbind entry): 768², resolutions 24 / [96, 48], until-eot with the EOT index from the ids', async (t) => {
  const dir = folderCopy(t, 'tiny-sd2', noDivbind);
  const pipe = await DivBindPipeline.load(dir, { session: { intraOpNumThreads: 1 } });
  t.teardown(() => pipe.release());
  const plan = pipe.plan({ prompt: 'a red cat and a blue dog', tokens: { objects: ['cat', 'dog'], attributes: ['red', 'blue'] } });
  t.deepEqual([plan.height, plan.width, plan.guidanceScale, plan.scheduler], [768, 768, 7.5, 'ddim']);
  const { attentionResolution, attributeResolutions, tokenSlice, eotIndex } = plan.loss!;
  t.deepEqual(
    { attentionResolution, attributeResolutions, tokenSlice, eotIndex },
    { attentionResolution: 24, attributeResolutions: [96, 48], tokenSlice: 'until-eot', eotIndex: 8 },
  );
  // The EOT index follows the prompt, not the padding ("!" pads after it).
  t.is(pipe.plan({ prompt: 'a cat and a dog', tokens: { objects: ['cat', 'dog'] } }).loss?.eotIndex, 6);
});

test('a real SDXL export (no divbind entry): 1024², resolutions 32 / [64] (16 / [32] at 512²), until-eot, guidance 5', async (t) => {
  const dir = folderCopy(t, 'tiny-sdxl', noDivbind);
  const pipe = await DivBindPipeline.load(dir, { session: { intraOpNumThreads: 1 } });
  t.teardown(() => pipe.release());
  const plan = pipe.plan({ prompt: 'a red cat and a blue dog', tokens: { objects: ['cat', 'dog'], attributes: ['red', 'blue'] } });
  t.deepEqual([plan.height, plan.width, plan.guidanceScale, plan.scheduler], [1024, 1024, 5, 'euler']);
  t.deepEqual([plan.loss?.attentionResolution, plan.loss?.attributeResolutions, plan.loss?.tokenSlice, plan.loss?.eotIndex], [32, [64], 'until-eot', 8]);
  const small = pipe.plan({ prompt: 'a red cat and a blue dog', height: 512, width: 512, tokens: { objects: ['cat', 'dog'], attributes: ['red', 'blue'] } });
  t.deepEqual([small.loss?.attentionResolution, small.loss?.attributeResolutions], [16, [32]]);
  // The caller's options still win over the family's.
  t.is(pipe.plan({ prompt: 'a cat', guidanceScale: 9, loss: { tokenSlice: 'all-but-last' } }).loss?.tokenSlice, 'all-but-last');
});

test('an explicit divbind entry wins over the family: token slice, resolutions, the family itself', async (t) => {
  const dir = folderCopy(t, 'tiny-sd2', (index) => {
    index.divbind = { tokenSlice: 'all-but-last', attributeResolutions: [48], defaults: { guidanceScale: 3 } };
  });
  const pipe = await DivBindPipeline.load(dir, { session: { intraOpNumThreads: 1 } });
  t.teardown(() => pipe.release());
  const plan = pipe.plan({ prompt: 'a red cat and a blue dog', tokens: { objects: ['cat', 'dog'], attributes: ['red', 'blue'] } });
  t.deepEqual(
    [plan.loss?.tokenSlice, plan.loss?.eotIndex, plan.loss?.attentionResolution, plan.loss?.attributeResolutions, plan.guidanceScale],
    ['all-but-last', undefined, 24, [48], 3],
  );
  const declared = folderCopy(t, 'tiny-sd2', (index) => {
    index.divbind = { family: 'sd1' };
  });
  t.is(readUnetFolder(declared).family.name, 'sd1');
});

test('bad divbind entries are MODEL_INVALID naming the key', (t) => {
  const bad: Array<[unknown, string]> = [
    [{ family: 'sd3' }, 'model_index.json divbind.family'],
    [{ tokenSlice: 'all' }, 'model_index.json divbind.tokenSlice'],
    [{ attentionResolution: 1.5 }, 'model_index.json divbind.attentionResolution'],
    [{ attributeResolutions: [] }, 'model_index.json divbind.attributeResolutions'],
    [[], 'model_index.json divbind.'],
  ];
  for (const [divbind, field] of bad) {
    const dir = folderCopy(t, 'tiny-sd2', (index) => {
      index.divbind = divbind;
    });
    const err = t.throws(() => readUnetFolder(dir), { instanceOf: DivbindError });
    t.is(err?.code, 'MODEL_INVALID');
    t.is(err?.field, field);
  }
});

test('SDXL folders need both text encoders and tokenizers; force_zeros_for_empty_prompt is read from model_index.json', (t) => {
  t.true(readModelFolder(fixturePath('models', 'tiny-sdxl')).zeroEmptyNegative);
  t.false(readModelFolder(fixturePath('models', 'tiny-sd2')).zeroEmptyNegative);
  const off = folderCopy(t, 'tiny-sdxl', (index) => {
    index.force_zeros_for_empty_prompt = false;
  });
  t.false(readModelFolder(off).zeroEmptyNegative);
  for (const [part, field] of [
    ['text_encoder_2', 'text_encoder_2/model.onnx'],
    ['tokenizer_2', 'tokenizer_2/vocab.json'],
  ]) {
    const dir = folderCopy(t, 'tiny-sdxl');
    fs.rmSync(path.join(dir, part!), { recursive: true });
    const err = t.throws(() => readModelFolder(dir), { instanceOf: DivbindError });
    t.is(err?.code, 'MODEL_MISSING');
    t.is(err?.field, field);
    t.regex(err?.message ?? '', /the folder is SDXL: model_index\.json _class_name StableDiffusionXLPipeline/);
  }
});

test("SDXL components are checked at load: each text encoder's outputs, the sizes they add up to, the UNet's added inputs", async (t) => {
  const noPooled = folderCopy(t, 'tiny-sdxl');
  fs.copyFileSync(fixturePath('models', 'tiny-sdxl', 'text_encoder', 'model.onnx'), path.join(noPooled, 'text_encoder_2', 'model.onnx'));
  await refusedAtLoad(t, noPooled, 'MODEL_INVALID', 'text_encoder_2/model.onnx', /is not SDXL's second text encoder: expected an output text_embeds/);

  const twice = folderCopy(t, 'tiny-sdxl');
  fs.copyFileSync(fixturePath('models', 'tiny-sdxl', 'text_encoder_2', 'model.onnx'), path.join(twice, 'text_encoder', 'model.onnx'));
  await refusedAtLoad(
    t,
    twice,
    'MODEL_INVALID',
    'text_encoder/model.onnx and text_encoder_2/model.onnx',
    /their hidden sizes 32 \+ 32 = 64, the UNet's encoder_hidden_states take 48/,
  );

  const sd2Unet = folderCopy(t, 'tiny-sdxl');
  fs.copyFileSync(fixturePath('models', 'tiny-sd2', 'unet', 'model.onnx'), path.join(sd2Unet, 'unet', 'model.onnx'));
  await refusedAtLoad(t, sd2Unet, 'MODEL_INVALID', 'unet/model.onnx', /has no text_embeds\/time_ids inputs, but the folder is SDXL/);

  // Only the graph: with SDXL's unet/config.json beside it the folder would read as SDXL (and miss tokenizer_2/).
  const xlUnet = folderCopy(t, 'tiny-sd2');
  fs.copyFileSync(fixturePath('models', 'tiny-sdxl', 'unet', 'model.onnx'), path.join(xlUnet, 'unet', 'model.onnx'));
  await refusedAtLoad(
    t,
    xlUnet,
    'MODEL_MISSING',
    'text_encoder_2/model.onnx',
    /takes SDXL's text_embeds and time_ids, but the folder has no second text encoder \(read as SD 2\.x/,
  );
});

test('a tokenizer_2 with another vocabulary, and a UNet input nothing can feed, are refused at load', async (t) => {
  const vocab = folderCopy(t, 'tiny-sdxl');
  const vocabFile = path.join(vocab, 'tokenizer_2', 'vocab.json');
  const v = JSON.parse(fs.readFileSync(vocabFile, 'utf8')) as Record<string, number>;
  [v['cat</w>'], v['dog</w>']] = [v['dog</w>']!, v['cat</w>']!];
  fs.writeFileSync(vocabFile, JSON.stringify(v));
  await refusedAtLoad(t, vocab, 'MODEL_INVALID', 'tokenizer_2', /does not share tokenizer\/'s vocabulary/);

  const extra = folderCopy(t, 'tiny-sd2');
  const unetFile = path.join(extra, 'unet', 'model.onnx');
  const loaded = loadModel(unetFile);
  loaded.model.graph!.input.push(makeValueInfo('class_labels', DataType.FLOAT, [1]));
  saveModel(loaded.model, unetFile, { sourceDir: loaded.dir });
  await refusedAtLoad(t, extra, 'MODEL_UNSUPPORTED', 'unet/model.onnx', /has inputs divbind-native cannot feed: class_labels/);
});
