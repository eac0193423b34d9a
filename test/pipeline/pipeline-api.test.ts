/**
 * DivBindPipeline API behaviour on the tiny reference model: determinism, concurrent generate() calls on one loaded
 * pipeline, cancellation, progress events, bad input.
 */
import test from 'ava';
import { DivbindError } from '../../lib/errors';
import { DivBindPipeline, type GenerateOptions } from '../../lib/pipeline/pipeline';
import type { StepEvent } from '../../lib/pipeline/sampler';
import { preparedFixtureModel, removeDir } from './prepared-model';

let dir = '';
let pipe: DivBindPipeline;
test.before(async () => {
  dir = await preparedFixtureModel();
  pipe = await DivBindPipeline.load(dir, { session: { intraOpNumThreads: 1 } });
});
test.after.always(async () => {
  await pipe?.release();
  if (dir) removeDir(dir);
});

const base: GenerateOptions = { prompt: 'a red cat and a blue dog', steps: 3, seed: 9, tokens: { objects: ['cat', 'dog'], attributes: ['red', 'blue'] } };

test.serial('concurrent generate() calls equal sequential ones (shared sessions, separate state)', async (t) => {
  const seqA = await pipe.generate({ ...base, mode: 'tv_bind', tokens: { objects: ['cat', 'dog'], attributes: ['red', 'blue'] } });
  const seqB = await pipe.generate({ ...base, seed: 10, mode: 'max', tokens: { objects: ['cat', 'dog'] } });
  const [parA, parB] = await Promise.all([
    pipe.generate({ ...base, mode: 'tv_bind', tokens: { objects: ['cat', 'dog'], attributes: ['red', 'blue'] } }),
    pipe.generate({ ...base, seed: 10, mode: 'max', tokens: { objects: ['cat', 'dog'] } }),
  ]);
  t.deepEqual(parA.images[0].latents, seqA.images[0].latents);
  t.deepEqual(parB.images[0].latents, seqB.images[0].latents);
  t.notDeepEqual(seqA.images[0].latents, seqB.images[0].latents);
});

test.serial('progress: one event per timestep with loss, θ and phase timings', async (t) => {
  const events: StepEvent[] = [];
  const r = await pipe.generate({ ...base, mode: 'tv', tokens: { objects: ['cat', 'dog'] }, onStep: (e) => events.push(e) });
  t.is(events.length, 4); // PNDM: 3 steps → 4 timesteps
  t.deepEqual(
    events.map((e) => e.index),
    [0, 1, 2, 3],
  );
  for (const e of events) {
    t.true(Number.isFinite(e.loss!));
    t.true(Number.isFinite(e.indicator!));
    t.true(e.ms.total >= e.ms.cfg);
    t.true(e.updates >= 1); // every step is below maxIterToAlter, and L ≠ 0 for random maps
  }
  t.is(r.images.length, 1);
  t.is(r.images[0].rgb.length, 256 * 256 * 3);
});

test.serial('plain SD ignores the guidance and is deterministic per seed', async (t) => {
  const a = await pipe.generate({ prompt: 'a red cat', mode: 'none', steps: 2, seed: 3 });
  const b = await pipe.generate({ prompt: 'a red cat', mode: 'none', steps: 2, seed: 3 });
  t.deepEqual(a.images[0].rgb, b.images[0].rgb);
  t.is(a.tokens, null);
  t.true(a.images[0].steps.every((s) => s.loss === null));
});

test.serial('imagesPerPrompt draws one noise batch and returns one image per latent', async (t) => {
  const r = await pipe.generate({ prompt: 'a red cat', mode: 'none', steps: 2, seed: 4, imagesPerPrompt: 2 });
  t.is(r.images.length, 2);
  t.notDeepEqual(r.images[0].latents, r.images[1].latents);
});

test.serial('AbortSignal cancels a running generation', async (t) => {
  const ac = new AbortController();
  const p = pipe.generate({ ...base, mode: 'tv', tokens: { objects: ['cat'] }, steps: 10, signal: ac.signal, onStep: () => ac.abort() });
  const err = await t.throwsAsync(p, { instanceOf: DivbindError });
  t.is((err as DivbindError).code, 'ABORTED');
});

test('bad input gives a DivbindError naming the field, before anything runs', async (t) => {
  const cases: Array<[Record<string, unknown>, string, RegExp]> = [
    [{ steps: 0 }, 'steps', /between 1 and 1000/],
    [{ guidanceScale: Number.NaN }, 'guidanceScale', /guidanceScale/],
    [{ mode: 'bogus' }, 'mode', /mode/],
    [{ height: 300 }, 'height', /multiple of 8/],
    [{ height: 512, width: 512 }, 'height', /exported for only 256×256/],
    [{ tokens: { objects: [60] } }, 'tokens', /objects\[0\]/],
    [{ latents: new Float32Array(7) }, 'latents', /latents/],
    [{ refinement: 'fast' }, 'refinement', /refinement/],
    [{ stpes: 3 }, 'stpes', /did you mean steps\?/],
    [{ refinement: { initStep: 0, other: 3 } }, 'refinement.initStep', /between 1 and 1000/],
  ];
  for (const [bad, field, message] of cases) {
    const err = await t.throwsAsync(pipe.generate({ ...base, ...bad } as GenerateOptions), { instanceOf: DivbindError, message });
    t.is((err as DivbindError).code, 'BAD_INPUT');
    t.is((err as DivbindError).field, field);
  }
});
