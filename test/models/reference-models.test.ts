/**
 * The tiny SD reference models (test/fixtures/models, made by tools/make_reference_models.py) run in
 * onnxruntime-node and reproduce the PyTorch outputs stored by tools/make_model_golden.py.
 *
 * Tolerances (absolute, per element): UNet out_sample 1e-5 (|values| ≤ ~2.5), text encoder 1e-5 (|values| ≤ ~4),
 * VAE decoder 1e-4 (|values| ≤ ~3.5, 256×256 outputs through ~20 convolutions).
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { readNpy, type NpyArray } from '../../lib/util/npy.js';

const ROOT = path.resolve(__dirname, '../../..');
const MODELS = path.join(ROOT, 'test/fixtures/models');
const GOLDEN = path.join(ROOT, 'test/fixtures/golden');

interface Variant {
  name: string;
  dir: string;
  model: string;
  externalData: string | null;
  opset: number;
  axes: 'batch' | 'batch_hw' | 'static';
  timestep: { dtype: 'int64' | 'float32'; shape: number[] };
}

const variantsFile = JSON.parse(fs.readFileSync(path.join(MODELS, 'unet-variants/variants.json'), 'utf8')) as {
  variants: Variant[];
};
const unetManifest = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'unet/manifest.json'), 'utf8')) as {
  timestep: number;
};

function npy(rel: string): NpyArray {
  return readNpy(path.join(GOLDEN, rel));
}

function f32(a: NpyArray): ort.Tensor {
  if (a.dtype !== 'float32') throw new Error(`expected float32 golden, got ${a.dtype}`);
  return new ort.Tensor('float32', a.data as Float32Array, a.shape);
}

function timestepTensor(v: Variant, t: number): ort.Tensor {
  return v.timestep.dtype === 'int64'
    ? new ort.Tensor('int64', BigInt64Array.of(BigInt(t)), v.timestep.shape)
    : new ort.Tensor('float32', Float32Array.of(t), v.timestep.shape);
}

/** Largest |a − b| over all elements; throws on a length mismatch. */
function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

async function session(file: string): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(file, { intraOpNumThreads: 1, interOpNumThreads: 1 });
}

test('variants.json lists every variant directory with its model files', (t) => {
  const dirs = fs
    .readdirSync(path.join(MODELS, 'unet-variants'))
    .filter((d) => d !== 'variants.json')
    .sort();
  const listed = variantsFile.variants
    .map((v) => v.dir)
    .filter((d) => !d.startsWith('..'))
    .sort();
  t.deepEqual(listed, dirs);
  for (const v of variantsFile.variants) {
    const dir = path.join(MODELS, 'unet-variants', v.dir);
    const model = fs.statSync(path.join(dir, v.model));
    if (v.externalData) {
      const data = fs.statSync(path.join(dir, v.externalData));
      // The weights (~1.4 MB of float32) must live in the data file, not in the graph.
      t.true(data.size > 1_000_000, `${v.name}: ${v.externalData} holds the weights`);
      t.true(model.size < 1_000_000, `${v.name}: model.onnx without the large weights`);
    } else {
      t.true(model.size > 1_000_000, `${v.name}: self-contained model`);
    }
  }
});

for (const v of variantsFile.variants) {
  test(`UNet variant ${v.name} reproduces PyTorch out_sample (batch 1${v.axes === 'static' ? '' : ' and 2'})`, async (t) => {
    const s = await session(path.join(MODELS, 'unet-variants', v.dir, v.model));
    t.deepEqual([...s.inputNames].sort(), ['encoder_hidden_states', 'sample', 'timestep']);
    t.deepEqual([...s.outputNames], ['out_sample']);
    const ts = timestepTensor(v, unetManifest.timestep);
    const expected = npy('unet/out_sample.npy');
    const r1 = await s.run({ sample: f32(npy('unet/sample.npy')), timestep: ts, encoder_hidden_states: f32(npy('unet/encoder_hidden_states.npy')) });
    t.deepEqual([...r1.out_sample.dims], expected.shape);
    const d1 = maxAbsDiff(r1.out_sample.data as Float32Array, expected.data as Float32Array);
    t.log(`batch 1 max |ort − torch| = ${d1.toExponential(2)}`);
    t.true(d1 <= 1e-5, `batch 1: max |ort − torch| = ${d1}`);
    if (v.axes !== 'static') {
      const expected2 = npy('unet/out_sample_batch2.npy');
      const r2 = await s.run({
        sample: f32(npy('unet/sample_batch2.npy')),
        timestep: ts,
        encoder_hidden_states: f32(npy('unet/encoder_hidden_states_batch2.npy')),
      });
      t.deepEqual([...r2.out_sample.dims], expected2.shape);
      const d2 = maxAbsDiff(r2.out_sample.data as Float32Array, expected2.data as Float32Array);
      t.log(`batch 2 max |ort − torch| = ${d2.toExponential(2)}`);
      t.true(d2 <= 1e-5, `batch 2: max |ort − torch| = ${d2}`);
      // Row 0 of batch 2 is the batch-1 input with another text embedding: the outputs must differ.
      t.true(maxAbsDiff((r2.out_sample.data as Float32Array).subarray(0, 4096), expected.data as Float32Array) > 1e-3);
    }
    await s.release();
  });
}

test('UNet with dynamic height/width runs a 16×16 latent', async (t) => {
  const v = variantsFile.variants.find((x) => x.axes === 'batch_hw');
  if (!v) return t.fail('no batch_hw variant listed');
  const s = await session(path.join(MODELS, 'unet-variants', v.dir, v.model));
  // Top-left 16×16 crop of the golden sample; only the shape contract is checked (no 16×16 golden exists).
  const full = npy('unet/sample.npy').data as Float32Array;
  const crop = new Float32Array(4 * 16 * 16);
  for (let c = 0; c < 4; c++) for (let y = 0; y < 16; y++) for (let x = 0; x < 16; x++) crop[c * 256 + y * 16 + x] = full[c * 1024 + y * 32 + x];
  const r = await s.run({
    sample: new ort.Tensor('float32', crop, [1, 4, 16, 16]),
    timestep: timestepTensor(v, 501),
    encoder_hidden_states: f32(npy('unet/encoder_hidden_states.npy')),
  });
  t.deepEqual([...r.out_sample.dims], [1, 4, 16, 16]);
  t.true((r.out_sample.data as Float32Array).every(Number.isFinite));
  await s.release();
});

test('text encoder reproduces last_hidden_state and pooler_output', async (t) => {
  const s = await session(path.join(MODELS, 'tiny-sd/text_encoder/model.onnx'));
  const ids = npy('text_encoder/input_ids.npy');
  t.is(ids.dtype, 'int32');
  const r = await s.run({ input_ids: new ort.Tensor('int32', ids.data as Int32Array, ids.shape) });
  for (const name of ['last_hidden_state', 'pooler_output']) {
    const exp = npy(`text_encoder/${name}.npy`);
    t.deepEqual([...r[name].dims], exp.shape, name);
    const d = maxAbsDiff(r[name].data as Float32Array, exp.data as Float32Array);
    t.log(`${name} max |ort − torch| = ${d.toExponential(2)}`);
    t.true(d <= 1e-5, `${name}: max |ort − torch| = ${d}`);
  }
  await s.release();
});

test('VAE decoder reproduces the decoded sample', async (t) => {
  const s = await session(path.join(MODELS, 'tiny-sd/vae_decoder/model.onnx'));
  const z = npy('vae/latent_sample.npy');
  const exp = npy('vae/sample.npy');
  const r = await s.run({ latent_sample: f32(z) });
  t.deepEqual([...r.sample.dims], [1, 3, 256, 256]);
  const d = maxAbsDiff(r.sample.data as Float32Array, exp.data as Float32Array);
  t.log(`max |ort − torch| = ${d.toExponential(2)}`);
  t.true(d <= 1e-4, `max |ort − torch| = ${d}`);
  await s.release();
});

test('tiny-sd folder follows the OnnxStableDiffusionPipeline layout', (t) => {
  const sd = path.join(MODELS, 'tiny-sd');
  const index = JSON.parse(fs.readFileSync(path.join(sd, 'model_index.json'), 'utf8'));
  t.is(index._class_name, 'OnnxStableDiffusionPipeline');
  t.deepEqual(index.divbind, { attentionResolution: 8, attributeResolutions: [32, 16] });
  const sched = JSON.parse(fs.readFileSync(path.join(sd, 'scheduler/scheduler_config.json'), 'utf8'));
  t.like(sched, {
    _class_name: 'PNDMScheduler',
    beta_start: 0.00085,
    beta_end: 0.012,
    beta_schedule: 'scaled_linear',
    num_train_timesteps: 1000,
    set_alpha_to_one: false,
    skip_prk_steps: true,
    steps_offset: 1,
  });
  const cfg = JSON.parse(fs.readFileSync(path.join(sd, 'tokenizer/tokenizer_config.json'), 'utf8'));
  t.is(cfg.model_max_length, 77);
  t.is(cfg.pad_token, '<|endoftext|>');
});

test("tokenizer files use CLIP's layout and agree with the golden token ids", (t) => {
  const dir = path.join(MODELS, 'tiny-sd/tokenizer');
  const vocab = JSON.parse(fs.readFileSync(path.join(dir, 'vocab.json'), 'utf8')) as Record<string, number>;
  const merges = fs
    .readFileSync(path.join(dir, 'merges.txt'), 'utf8')
    .split('\n')
    .filter((l) => l.length > 0);
  t.true(merges[0].startsWith('#version'));
  const n = Object.keys(vocab).length;
  t.is(n, 512 + (merges.length - 1) + 2);
  t.is(vocab['<|endoftext|>'], n - 1);
  t.is(vocab['<|startoftext|>'], n - 2);
  t.is(vocab['!'], 0);
  t.is(vocab['!</w>'], 256);
  // Merge k (1-based line k) creates entry 512 + k − 1, the concatenation of its pair.
  merges.slice(1).forEach((line, k) => {
    const [a, b] = line.split(' ');
    t.is(vocab[a + b], 512 + k, line);
  });
  const golden = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'tokenizer/tokens.json'), 'utf8')) as {
    sot: number;
    eot: number;
    cases: { prompt: string; pieces: string[]; ids: number[] }[];
  };
  t.is(golden.sot, n - 2);
  t.is(golden.eot, n - 1);
  for (const c of golden.cases) {
    t.is(c.ids.length, 77, c.prompt);
    const body = c.pieces.slice(0, 75).map((p) => vocab[p]);
    t.deepEqual(c.ids.slice(1, 1 + body.length), body, c.prompt);
    t.is(c.ids[0], golden.sot);
    t.true(
      c.ids.slice(1 + body.length).every((id) => id === golden.eot),
      c.prompt,
    );
  }
});

/**
 * The trajectory fixture is consistent with the exported models: for mode 'none', ORT's text encoder + CFG UNet
 * pass at the first timestep + PNDM's first step (formula (9), t → t − 100) reproduce latents[0], and the VAE
 * decodes the final latent to image.npy. The few scheduler lines here only serve as an oracle for the fixture.
 * Tolerances: latents[0] 1e-4 absolute (|values| ≤ ~4; float32 ORT vs the float64 golden), image ±1 level.
 */
test('trajectory fixture (mode none) matches the ONNX models: first PNDM step and decoded image', async (t) => {
  const TRAJ = path.join(GOLDEN, 'trajectories');
  const index = JSON.parse(fs.readFileSync(path.join(TRAJ, 'index.json'), 'utf8')) as {
    cases: { name: string; options: { prompt: string; guidanceScale: number }; record: { timesteps: number[] } }[];
  };
  const none = index.cases.find((c) => c.name === 'none');
  if (!none) return t.fail('trajectories/index.json has no "none" case');
  const tokens = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'tokenizer/tokens.json'), 'utf8')) as {
    cases: { prompt: string; ids: number[] }[];
  };
  const idsOf = (p: string): number[] => {
    const c = tokens.cases.find((x) => x.prompt === p);
    if (!c) throw new Error(`no golden token ids for ${JSON.stringify(p)}`);
    return c.ids;
  };
  const te = await session(path.join(MODELS, 'tiny-sd/text_encoder/model.onnx'));
  const ids = Int32Array.from([...idsOf(''), ...idsOf(none.options.prompt)]);
  const ehs = (await te.run({ input_ids: new ort.Tensor('int32', ids, [2, 77]) })).last_hidden_state;
  await te.release();

  const unet = await session(path.join(MODELS, 'tiny-sd/unet/model.onnx'));
  const z0 = readNpy(path.join(TRAJ, 'initial_latent.npy')).data as Float32Array;
  const n = z0.length;
  const batch = new Float32Array(2 * n);
  batch.set(z0, 0);
  batch.set(z0, n);
  const t0 = none.record.timesteps[0];
  const out = await unet.run({
    sample: new ort.Tensor('float32', batch, [2, 4, 32, 32]),
    timestep: new ort.Tensor('int64', BigInt64Array.of(BigInt(t0)), [1]),
    encoder_hidden_states: ehs,
  });
  await unet.release();
  const eps2 = out.out_sample.data as Float32Array;

  // alphas_cumprod of SD 1.5's scaled_linear schedule; PNDM (9) from t0 to t0 − 1000/10.
  const acp: number[] = [];
  let prod = 1;
  for (let i = 0; i < 1000; i++) {
    const b = (Math.sqrt(0.00085) + (i / 999) * (Math.sqrt(0.012) - Math.sqrt(0.00085))) ** 2;
    prod *= 1 - b;
    acp.push(prod);
  }
  const a = acp[t0];
  const ap = acp[t0 - 100];
  const denom = a * Math.sqrt(1 - ap) + Math.sqrt(a * (1 - a) * ap);
  const expected = readNpy(path.join(TRAJ, 'none/latents.npy')).data as Float32Array;
  let d = 0;
  for (let i = 0; i < n; i++) {
    const eps = eps2[i] + none.options.guidanceScale * (eps2[n + i] - eps2[i]);
    const x = Math.sqrt(ap / a) * z0[i] - ((ap - a) * eps) / denom;
    d = Math.max(d, Math.abs(x - expected[i]));
  }
  t.log(`latents[0] max |ort − golden| = ${d.toExponential(2)}`);
  t.true(d <= 1e-4, `latents[0]: ${d}`);

  const vae = await session(path.join(MODELS, 'tiny-sd/vae_decoder/model.onnx'));
  const zFinal = (expected as Float32Array).subarray(10 * n, 11 * n).map((v) => v / 0.18215);
  const img = (await vae.run({ latent_sample: new ort.Tensor('float32', Float32Array.from(zFinal), [1, 4, 32, 32]) })).sample.data as Float32Array;
  await vae.release();
  const golden = readNpy(path.join(TRAJ, 'none/image.npy'));
  t.deepEqual(golden.shape, [256, 256, 3]);
  const g8 = golden.data as Uint8Array;
  let worst = 0;
  for (let y = 0; y < 256; y++)
    for (let x = 0; x < 256; x++)
      for (let c = 0; c < 3; c++) {
        const v = Math.round(255 * Math.min(1, Math.max(0, img[c * 65536 + y * 256 + x] / 2 + 0.5)));
        worst = Math.max(worst, Math.abs(v - g8[(y * 256 + x) * 3 + c]));
      }
  t.log(`image max |ort − golden| = ${worst}/255`);
  t.true(worst <= 1, `image differs by ${worst}/255`);
});
