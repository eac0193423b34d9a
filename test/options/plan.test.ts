/**
 * The generation plan against a loaded model (the tiny reference model, prepared in a temp copy): defaults, the
 * recorded seed, checks that need the model (steps per scheduler, sizes, prompt length, token indices, loss
 * options, latents files), and the numeric faults caught where they happen.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DivbindError, type DivbindErrorCode } from '../../lib/errors';
import { GENERATE_OPTIONS, GENERATE_OPTION_NAMES } from '../../lib/options/index';
import { readPngText } from '../../lib/pipeline/image';
import { DivBindPipeline, type GenerateOptions } from '../../lib/pipeline/pipeline';
import { writeNpy } from '../../lib/util/npy';
import { copyFixtureModel, preparedFixtureModel, removeDir } from '../pipeline/prepared-model';

let dir = '';
let tmp = '';
let pipe: DivBindPipeline;
test.before(async () => {
  dir = await preparedFixtureModel();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-plan-'));
  pipe = await DivBindPipeline.load(dir, { session: { intraOpNumThreads: 1 } });
});
test.after.always(async () => {
  await pipe?.release();
  for (const d of [dir, tmp]) if (d) removeDir(d);
});

const base: GenerateOptions = { prompt: 'a red cat and a blue dog', steps: 2, tokens: { objects: ['cat', 'dog'], attributes: ['red', 'blue'] } };

function refused(t: import('ava').ExecutionContext, fn: () => unknown, code: DivbindErrorCode, field: string, message?: RegExp): DivbindError {
  const err = t.throws(fn, { instanceOf: DivbindError }) as DivbindError;
  t.is(err.code, code, err.message);
  t.is(err.field, field, err.message);
  if (message) t.regex(err.message, message);
  return err;
}

test('a plan resolves every default in one place and describes all recorded options', (t) => {
  const plan = pipe.plan({ prompt: 'a red cat and a blue dog' });
  t.is(plan.steps, GENERATE_OPTIONS.steps.default);
  t.is(plan.guidanceScale, GENERATE_OPTIONS.guidanceScale.default);
  t.is(plan.mode, 'tv_bind');
  t.is(plan.timesteps, 51); // PNDM: steps + 1
  t.deepEqual(plan.latentShape, [1, 4, 32, 32]);
  t.is(plan.height, 256);
  t.is(plan.scheduler, 'pndm');
  t.deepEqual(plan.caps, { initStep: 100, other: 50 });
  t.deepEqual(plan.tokens?.tokenIndices, [3, 7]);
  t.is(plan.loss?.attentionResolution, 8); // declared by the model folder
  t.is(plan.loss?.mode, 'tv_bind');
  t.true(typeof plan.seed === 'bigint');
});

test('generate() without a seed records the seed it drew, and that seed reproduces the image (fault 5)', async (t) => {
  const r = await pipe.generate({ prompt: 'a red cat', mode: 'none', steps: 2 });
  const seed = r.parameters.seed;
  t.regex(String(seed), /^\d+$/);
  const png = JSON.parse(readPngText(r.images[0].png).parameters) as Record<string, unknown>;
  t.is(png.seed, seed);
  const again = await pipe.generate({ prompt: 'a red cat', mode: 'none', steps: 2, seed: String(seed) });
  t.deepEqual(again.images[0].latents, r.images[0].latents);
  for (const name of GENERATE_OPTION_NAMES) {
    if ((GENERATE_OPTIONS[name] as { record?: boolean }).record !== false) t.true(name in r.parameters, name);
  }
});

test('generate() runs a plan as made: the same plan gives the same image', async (t) => {
  const plan = pipe.plan({ prompt: 'a red cat', mode: 'none', steps: 2 });
  const a = await pipe.generate(plan);
  const b = await pipe.generate(plan);
  t.deepEqual(a.images[0].rgb, b.images[0].rgb);
  t.is(a.parameters.seed, String(plan.seed));
});

test('steps beyond what the scheduler allows are refused before anything runs (fault 7)', (t) => {
  refused(t, () => pipe.plan({ ...base, steps: 1000 }), 'BAD_INPUT', 'steps', /between 1 and 999 for the pndm scheduler/);
  refused(t, () => pipe.plan({ ...base, steps: 1000, scheduler: 'ddim' }), 'BAD_INPUT', 'steps', /ddim/);
  t.is(pipe.plan({ ...base, steps: 999 }).timesteps, 1000);
});

test('sizes: multiples of the VAE factor, and a fixed-size UNet does not suggest `prepare`', (t) => {
  refused(t, () => pipe.plan({ ...base, height: 300 }), 'BAD_INPUT', 'height', /multiple of 8/);
  const err = refused(t, () => pipe.plan({ ...base, height: 512, width: 512 }), 'BAD_INPUT', 'height', /exported for only 256×256/);
  t.notRegex(err.message, /prepare/);
});

test('a prompt longer than the text encoder takes is refused, not cut, and never echoed whole (fault 15)', (t) => {
  const long = Array.from({ length: 1200 }, () => 'a red cat').join(' ');
  const err = refused(
    t,
    () => pipe.plan({ prompt: long.slice(0, 3000), tokens: { objects: [80] } }),
    'BAD_INPUT',
    'prompt',
    /prompt is \d+ tokens long but the text encoder takes at most 75/,
  );
  t.true(err.message.length < 400, err.message);
  refused(t, () => pipe.plan({ prompt: long }), 'BAD_INPUT', 'prompt');
  refused(t, () => pipe.plan({ prompt: 'a red cat', negativePrompt: long.slice(0, 1000) }), 'BAD_INPUT', 'negativePrompt');
  t.notThrows(() => pipe.plan({ prompt: Array.from({ length: 25 }, () => 'a red cat').join(' ') })); // exactly 75 tokens
});

test('token indices, loss options and attention-map steps are checked against the model up front', (t) => {
  refused(t, () => pipe.plan({ ...base, tokens: { objects: [60] } }), 'BAD_INPUT', 'tokens', /objects\[0\]/);
  refused(t, () => pipe.plan({ ...base, loss: { attentionResolution: 7 } }), 'BAD_INPUT', 'loss', /attentionResolution/);
  refused(t, () => pipe.plan({ ...base, loss: { tvVertical: 'neighbour' as 'neighbor' } }), 'BAD_INPUT', 'loss', /did you mean 'neighbor'/);
  refused(t, () => pipe.plan({ ...base, attentionMapsAt: [3] }), 'BAD_INPUT', 'attentionMapsAt[0]', /between 0 and 2/);
  refused(t, () => pipe.plan({ ...base, mode: 'none', attentionMapsAt: [0] }), 'BAD_INPUT', 'attentionMapsAt');
  refused(t, () => pipe.plan({ ...base, latents: new Float32Array(7) }), 'BAD_INPUT', 'latents');
  refused(t, () => pipe.plan({ ...base, latents: new Float32Array(4096).fill(Number.NaN) }), 'BAD_INPUT', 'latents', /flat index 0/);
});

test('a latents file is read within the size its shape allows; FIFOs and devices are refused at once (fault 4)', (t) => {
  const big = path.join(tmp, 'big.npy');
  fs.writeFileSync(big, '');
  fs.truncateSync(big, 2 ** 30); // sparse: 1 GiB that must never be read
  refused(t, () => pipe.plan({ ...base, latents: big }), 'BAD_INPUT', 'latents', /1073741824 bytes, more than/);
  refused(t, () => pipe.plan({ ...base, latents: '/dev/zero' }), 'BAD_INPUT', 'latents', /character device/);
  refused(t, () => pipe.plan({ ...base, latents: tmp }), 'BAD_INPUT', 'latents', /a folder|EISDIR/);
  if (process.platform !== 'win32') {
    const fifo = path.join(tmp, 'latents.fifo');
    execFileSync('mkfifo', [fifo]);
    refused(t, () => pipe.plan({ ...base, latents: fifo }), 'BAD_INPUT', 'latents', /is a FIFO/);
  }
  const good = path.join(tmp, 'good.npy');
  writeNpy(good, new Float64Array(4 * 32 * 32).fill(0.5), [1, 4, 32, 32]);
  const plan = pipe.plan({ ...base, latents: good, seed: 3 });
  t.is(plan.seed, null);
  t.is(plan.latentsSource, good);
  t.is(plan.latents?.[0], 0.5);
});

test('diverging numbers stop with a NUMERIC error that says where, not a black image (fault 12)', async (t) => {
  const huge = new Float32Array(4 * 32 * 32).fill(3e38);
  const plain = await t.throwsAsync(pipe.generate({ ...base, mode: 'none', latents: huge }), { instanceOf: DivbindError });
  t.is((plain as DivbindError).code, 'NUMERIC');
  t.regex(plain!.message, /noise prediction .* non-finite at loop index 0/);
  const guided = await t.throwsAsync(pipe.generate({ ...base, mode: 'tv', latents: huge }), { instanceOf: DivbindError });
  t.is((guided as DivbindError).code, 'NUMERIC');
  t.regex(guided!.message, /attention maps .* non-finite at loop index 0/);
  t.notRegex(guided!.message, /attention probabilities/);
});

test('a VAE scaling factor that zeroes or overflows the image is refused (fault 12)', async (t) => {
  for (const [factor, code, message] of [
    [0, 'MODEL_INVALID', /"scaling_factor" must be a positive finite number but is 0/],
    [1e-45, 'NUMERIC', /VAE decoder's input .* not finite/],
  ] as const) {
    const copy = copyFixtureModel();
    try {
      fs.writeFileSync(path.join(copy, 'vae_decoder', 'config.json'), JSON.stringify({ scaling_factor: factor }));
      const err = await t.throwsAsync(
        async () => {
          const p = await DivBindPipeline.load(copy, { session: { intraOpNumThreads: 1 } });
          try {
            await p.generate({ prompt: 'a red cat', mode: 'none', steps: 2, seed: 1 });
          } finally {
            await p.release();
          }
        },
        { instanceOf: DivbindError },
      );
      t.is((err as DivbindError).code, code, err?.message);
      t.regex(err!.message, message);
    } finally {
      removeDir(copy);
    }
  }
});
