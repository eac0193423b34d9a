/**
 * The bundled model models/shapes-sd (exported by tools/shapes/export.py) on onnxruntime-node against the
 * PyTorch outputs the exporter saved in models/shapes-sd/reference/: text encoder, UNet and VAE decoder on fixed
 * inputs. Tolerance: |Δ| ≤ 1e-4 + 1e-4·|ref| (float32 graphs, different kernels; measured ≈ 2e-6). Also: the TS
 * tokenizer gives the training tokenizer's ids, the folder declares the D&B resolutions, and the folder stays
 * under 20 MB. Set SHAPES_SD_DIR to check another export (e.g. a CPU smoke export in /tmp).
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { readNpy, type NpyArray } from '../../lib/util/npy';
import { ClipTokenizer } from '../../lib/tokenizer/clip';
import { detectObjects } from '../../lib/eval/benchmark';
import { parsePrompt } from '../../lib/eval/prompts';
import { scoreImage } from '../../lib/eval/score';
import { DivBindPipeline } from '../../lib/pipeline/pipeline';

const ROOT = path.resolve(__dirname, '../../..');
const DIR = process.env.SHAPES_SD_DIR ? path.resolve(process.env.SHAPES_SD_DIR) : path.join(ROOT, 'models', 'shapes-sd');
// The trained model is committed (tools/shapes/train.py, then tools/shapes/export.py): its absence is a failure.
const check = test;
const ref = (name: string): NpyArray => readNpy(path.join(DIR, 'reference', `${name}.npy`));

function close(t: import('ava').ExecutionContext, got: ArrayLike<number>, want: ArrayLike<number>, what: string): void {
  t.is(got.length, want.length, `${what}: length`);
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const excess = Math.abs(got[i] - want[i]) - (1e-4 + 1e-4 * Math.abs(want[i]));
    worst = Math.max(worst, excess);
  }
  t.true(worst <= 0, `${what}: exceeds tolerance by ${worst}`);
}

check('the bundled shapes-sd folder is complete and declares its D&B resolutions', (t) => {
  t.true(fs.existsSync(path.join(DIR, 'model_index.json')), `missing ${DIR}: export it with tools/shapes/export.py`);
  const index = JSON.parse(fs.readFileSync(path.join(DIR, 'model_index.json'), 'utf8')) as {
    divbind: { attentionResolution: number; attributeResolutions: number[] };
    shapes_sd: { latent_size: number };
  };
  t.like(index.divbind, { attentionResolution: 16, attributeResolutions: [16] });
  t.is(index.shapes_sd.latent_size, 16);
  let total = 0;
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (!p.includes(`${path.sep}divbind${path.sep}`)) total += fs.statSync(p).size; // prepared graphs excluded
    }
  };
  walk(DIR);
  t.log(`folder size ${(total / 1e6).toFixed(2)} MB`);
  t.true(total <= 20 * 1024 * 1024);
});

check('TS tokenizer = training tokenizer on a benchmark caption and the empty prompt', (t) => {
  const tok = ClipTokenizer.fromDirectory(path.join(DIR, 'tokenizer'));
  const ids = ref('input_ids');
  t.deepEqual(tok.encode('a red circle and a blue square').ids, Array.from(ids.data as Int32Array).slice(0, 77));
  t.deepEqual(tok.encode('').ids, Array.from(ids.data as Int32Array).slice(77, 154));
  // Every caption word is a single token (the model never saw byte pieces of them).
  t.is(tok.encode('an orange triangle, a purple square and a black circle').length, 2 + 11); // 10 words + ','
});

check('onnxruntime matches the PyTorch reference outputs', async (t) => {
  const ids = ref('input_ids');
  const te = await ort.InferenceSession.create(path.join(DIR, 'text_encoder', 'model.onnx'));
  const o1 = await te.run({ input_ids: new ort.Tensor('int32', ids.data as Int32Array, ids.shape) });
  close(t, o1.last_hidden_state.data as Float32Array, ref('last_hidden_state').data as Float32Array, 'text encoder');
  const unet = await ort.InferenceSession.create(path.join(DIR, 'unet', 'model.onnx'));
  const s = ref('sample'),
    ts = ref('timestep'),
    h = ref('last_hidden_state');
  const o2 = await unet.run({
    sample: new ort.Tensor('float32', s.data as Float32Array, s.shape),
    timestep: new ort.Tensor('int64', ts.data as BigInt64Array, ts.shape),
    encoder_hidden_states: new ort.Tensor('float32', h.data as Float32Array, h.shape),
  });
  t.deepEqual(o2.out_sample.dims, [2, 4, 16, 16]);
  close(t, o2.out_sample.data as Float32Array, ref('out_sample').data as Float32Array, 'unet');
  const vae = await ort.InferenceSession.create(path.join(DIR, 'vae_decoder', 'model.onnx'));
  const l = ref('latent_sample');
  const o3 = await vae.run({ latent_sample: new ort.Tensor('float32', l.data as Float32Array, l.shape) });
  t.deepEqual(o3.sample.dims, [1, 3, 64, 64]);
  close(t, o3.sample.data as Float32Array, ref('decoded').data as Float32Array, 'vae decoder');
  await Promise.all([te.release(), unet.release(), vae.release()]);
});

// The plain model (no guidance) on fixed seeds draws the asked shape in the asked colour: a check of the weights,
// not of timing. 3 prompts × 4 seeds, 30 steps; the quality gate of the bundled model is ≥ 80 % (README table).
check.serial('the plain model draws single shapes in the right colour on fixed seeds (≥ 80 %)', async (t) => {
  const pipe = await DivBindPipeline.load(DIR, { session: { intraOpNumThreads: 1 } });
  try {
    const verdicts: string[] = [];
    let correct = 0;
    for (const prompt of ['a red circle', 'a blue square', 'a yellow triangle']) {
      for (const seed of [0, 1, 2, 3]) {
        const { images } = await pipe.generate({ prompt, mode: 'none', seed, steps: 30 });
        const found = detectObjects(images[0]);
        const ok = scoreImage(parsePrompt(prompt).objects, found).success;
        correct += ok ? 1 : 0;
        verdicts.push(`${prompt} seed ${seed}: ${found.map((d) => `${d.colour} ${d.shape}`).join(', ') || 'nothing'}`);
      }
    }
    t.log(verdicts.join('\n'));
    t.true(correct >= 10, `${correct}/12 correct`);
  } finally {
    await pipe.release();
  }
});
