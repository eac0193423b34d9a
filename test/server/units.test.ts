/**
 * The server's pieces that need no model and no network: request schemas (compiled by ajv as fastify does),
 * A1111 mapping and infotext, error fields, latents uploads, the memory store, metrics text, configuration.
 */
import test from 'ava';
import Ajv from 'ajv';
import { DivbindError } from '../../lib/errors';
import { generateOptionsJsonSchema } from '../../lib/index';
import { encodeNpy } from '../../lib/util/npy';
import { fromTxt2img, infotext, progressResponse, txt2imgInfo, txt2imgSchema } from '../../lib/server/a1111';
import { presentedKey } from '../../lib/server/auth';
import { modelNameOf, modelsFromFlags, parseModelList } from '../../lib/server/config';
import { serveConfig } from '../../lib/server/flags';
import { HttpError, ownMessage } from '../../lib/server/http-errors';
import { finalEvents, type JobEvent, type JobRecord } from '../../lib/server/jobs';
import { MAX_LATENT_BYTES, decodeLatents } from '../../lib/server/latents';
import { STEP_BUCKETS, bucketOf, emptyHistogram, observe, renderMetrics } from '../../lib/server/metrics';
import { EventHub } from '../../lib/server/queue';
import { generationSchema, v1Options } from '../../lib/server/requests';
import { MemoryStore } from '../../lib/server/store';
import { fieldOf, schemaError } from '../../lib/server/validation';
import { parseMetrics } from './harness';

/** ajv as fastify configures it in lib/server/app.ts. */
function compile(schema: object) {
  const ajv = new Ajv({
    removeAdditional: false,
    coerceTypes: false,
    useDefaults: false,
    allErrors: false,
    strict: false,
  });
  return ajv.compile(schema);
}

function bodyError(schema: object, body: unknown): HttpError | null {
  const validate = compile(schema);
  if (validate(body)) return null;
  return schemaError(validate.errors as never, v1Options(body));
}

// ------------------------------------------------------------------------------------------- request schemas

test('the generation schema takes the generate options, a model name and latents, and refuses anything else', (t) => {
  const validate = compile(generationSchema());
  t.true(
    validate({
      prompt: 'a cat',
      steps: 3,
      mode: 'tv_bind',
      tokens: { objects: ['cat'] },
      model: 'shapes',
      seed: '18446744073709551615',
    }),
  );
  t.false(validate({ prompt: 'a cat', stepz: 3 }));
  t.false(validate({ prompt: 'a cat', latents: 'not base64!' }));
  t.false(validate({ steps: 3 }), 'the prompt is required');
  // Every generate option with a JSON form is in the server's schema, from the one definition.
  const options = Object.keys(generateOptionsJsonSchema().properties as object);
  t.deepEqual(Object.keys(generationSchema().properties as object), [...options, 'model', 'latents']);
});

test("a schema error becomes a 400 in the library's words, naming the field", (t) => {
  const schema = generationSchema();
  const misspelt = bodyError(schema, { prompt: 'a cat', stepz: 3 });
  t.is(misspelt?.status, 400);
  t.is(misspelt?.details.field, 'stepz');
  t.regex(misspelt?.message ?? '', /Unknown option "stepz"/);
  t.is(misspelt?.details.fix, 'did you mean steps?');
  const range = bodyError(schema, { prompt: 'a cat', steps: 0 });
  t.is(range?.message, 'Expected an integer between 1 and 1000 for steps but received 0');
  t.is(range?.details.field, 'steps');
  const nested = bodyError(schema, { prompt: 'a cat', tokens: { objects: ['cat', 7.5] } });
  t.is(nested?.details.field, 'tokens.objects[1]');
  const mode = bodyError(schema, { prompt: 'a cat', mode: 'tv_bnd' });
  t.is(mode?.details.fix, "did you mean 'tv_bind'?");
});

test('fieldOf turns ajv paths into field names', (t) => {
  t.is(fieldOf({ keyword: 'type', instancePath: '/tokens/objects/0', params: {} }), 'tokens.objects[0]');
  t.is(fieldOf({ keyword: 'required', instancePath: '', params: { missingProperty: 'prompt' } }), 'prompt');
  t.is(fieldOf({ keyword: 'additionalProperties', instancePath: '/divbind', params: { additionalProperty: 'stepz' } }), 'divbind.stepz');
  t.is(fieldOf({ keyword: 'type', instancePath: '/a~1b', params: {} }), 'a/b');
});

// ----------------------------------------------------------------------------------------------- A1111

test('txt2img maps A1111 fields to generate options; -1 is a random seed; samplers map to schedulers', (t) => {
  const { options, model } = fromTxt2img({
    prompt: 'a red cat',
    negative_prompt: 'blurry',
    seed: -1,
    steps: 20,
    cfg_scale: 6.5,
    width: 512,
    height: 384,
    batch_size: 2,
    sampler_name: 'Euler',
    styles: [],
    override_settings: { sd_model_checkpoint: 'shapes' },
    divbind: { mode: 'tv', tokens: { objects: ['cat'] } },
  });
  t.deepEqual(options, {
    mode: 'tv',
    tokens: { objects: ['cat'] },
    prompt: 'a red cat',
    negativePrompt: 'blurry',
    steps: 20,
    guidanceScale: 6.5,
    width: 512,
    height: 384,
    imagesPerPrompt: 2,
    scheduler: 'euler',
  });
  t.is(model, 'shapes');
  t.deepEqual(fromTxt2img({ prompt: 'x', seed: 12, sampler_index: 'PLMS' }).options, {
    prompt: 'x',
    seed: 12,
    scheduler: 'pndm',
  });
  t.deepEqual(fromTxt2img({ prompt: 'x', alwayson_scripts: { divbind: { args: [{ mode: 'max' }] } } }).options, {
    mode: 'max',
    prompt: 'x',
  });
  const sampler = t.throws(() => fromTxt2img({ prompt: 'x', sampler_name: 'Euler a' }), { instanceOf: HttpError });
  t.is(sampler.details.field, 'sampler_name');
  t.is(
    t.throws(() => fromTxt2img({ prompt: 'x', alwayson_scripts: { controlnet: { args: [] } } }), {
      instanceOf: HttpError,
    }).details.field,
    'alwayson_scripts.controlnet',
  );
  t.is(
    t.throws(() => fromTxt2img({ prompt: 'x', divbind: {}, alwayson_scripts: { divbind: { args: [{}] } } }), {
      instanceOf: HttpError,
    }).details.field,
    'divbind',
  );
});

test('the txt2img schema: the generate ranges under A1111 names, neutral-only fields, a checked extension', (t) => {
  const schema = txt2imgSchema(generateOptionsJsonSchema());
  const validate = compile(schema);
  t.true(
    validate({
      prompt: 'x',
      steps: 20,
      cfg_scale: 7,
      seed: -1,
      n_iter: 1,
      enable_hr: false,
      send_images: true,
      styles: [],
    }),
  );
  t.false(validate({ prompt: 'x', steps: 0 }));
  t.false(validate({ prompt: 'x', enable_hr: true }));
  t.false(validate({ prompt: 'x', divbind: { stepz: 1 } }));
  t.false(validate({ prompt: 'x', divbind: { steps: 3 } }), 'steps is an A1111 field, not an extension option');
  const hr = schemaError(
    ((): never => {
      validate({ prompt: 'x', enable_hr: true });
      return validate.errors as never;
    })(),
    null,
  );
  t.is(hr.details.field, 'enable_hr');
  t.is(hr.message, 'Expected false for enable_hr');
});

/** A1111's reading of an infotext (modules/infotext_utils.parse_generation_parameters, simplified). */
function parseInfotext(text: string): { prompt: string; negative: string; params: Record<string, string> } {
  const lines = text.split('\n');
  const last = lines.pop() ?? '';
  const negativeAt = lines.findIndex((l) => l.startsWith('Negative prompt: '));
  const prompt = (negativeAt >= 0 ? lines.slice(0, negativeAt) : lines).join('\n');
  const negative = negativeAt >= 0 ? lines.slice(negativeAt).join('\n').slice('Negative prompt: '.length) : '';
  const params: Record<string, string> = {};
  for (const m of last.matchAll(/\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)/g)) {
    params[m[1]] = m[2].startsWith('"') ? JSON.parse(m[2]) : m[2];
  }
  return { prompt, negative, params };
}

test('the infotext reads back as A1111 reads it', (t) => {
  const parameters = {
    prompt: 'a red cat, on a mat',
    negativePrompt: 'blurry',
    steps: 20,
    scheduler: 'ddim',
    guidanceScale: 7.5,
    seed: '42',
    width: 64,
    height: 64,
    imagesPerPrompt: 2,
    mode: 'tv_bind',
  };
  const parsed = parseInfotext(infotext(parameters, 1, 'shapes', '0.1.0'));
  t.is(parsed.prompt, 'a red cat, on a mat');
  t.is(parsed.negative, 'blurry');
  t.deepEqual(parsed.params, {
    Steps: '20',
    Sampler: 'DDIM',
    'CFG scale': '7.5',
    Seed: '42',
    Size: '64x64',
    Model: 'shapes',
    'Batch size': '2',
    'Batch pos': '1',
    'Divide and Bind': 'tv_bind',
    Version: 'divbind-native 0.1.0',
  });
  const plain = parseInfotext(infotext({ ...parameters, negativePrompt: '', imagesPerPrompt: 1, mode: 'none', seed: null }, 0, 'm,1', '0.1.0'));
  t.is(plain.negative, '');
  t.false('Seed' in plain.params, 'latents given: no seed');
  t.is(plain.params.Model, 'm,1', 'a value with a comma is quoted');
});

test("txt2img info and progress have A1111's fields", (t) => {
  const log = {
    parameters: {
      prompt: 'p',
      negativePrompt: '',
      seed: '7',
      width: 64,
      height: 64,
      scheduler: 'pndm',
      guidanceScale: 7.5,
      steps: 5,
      mode: 'none',
    },
    timings: {},
    tokens: null,
    images: [],
    infotexts: ['a', 'b'],
  };
  const info = JSON.parse(txt2imgInfo(log, 'shapes', Date.UTC(2026, 0, 2, 3, 4, 5), '0.1.0'));
  t.deepEqual(info.all_seeds, [7, 7]);
  t.is(info.sampler_name, 'PLMS');
  t.is(info.job_timestamp, '20260102030405');
  t.deepEqual(info.infotexts, ['a', 'b']);
  const idle = progressResponse(null);
  t.is(idle.progress, 0);
  const busy = progressResponse({
    progress: { image: 1, images: 2, step: 3, steps: 4, loss: null, theta: null, seconds: 0.1 },
    startedAt: Date.now() - 1000,
    createdAt: 0,
    jobCount: 3,
  });
  t.is(busy.progress, (1 * 4 + 3) / 8);
  t.is((busy.state as { sampling_step: number }).sampling_step, 3);
  t.is((busy.state as { job_count: number }).job_count, 3);
});

// ------------------------------------------------------------------------------------------------ latents

function npyBase64(values: Float32Array | Float64Array, shape: number[]): string {
  return encodeNpy(values, shape).toString('base64');
}

test('uploaded latents: a float .npy of [images, C, h, w] is read; anything else is refused naming latents', (t) => {
  const values = Float32Array.from({ length: 2 * 4 * 2 * 2 }, (_, i) => i / 10);
  t.deepEqual(decodeLatents(npyBase64(values, [2, 4, 2, 2]), 2), values);
  t.deepEqual(decodeLatents(npyBase64(Float64Array.from(values), [2, 4, 2, 2]), 2), values);
  const refusals: Array<[string, RegExp]> = [
    [Buffer.from('not numpy').toString('base64'), /not a \.npy file/],
    [npyBase64(values, [2, 4, 4]), /4-D shape/],
    [npyBase64(Int32Array.from(values) as never, [2, 4, 2, 2]), /Expected float32 or float64 latents but received int32/],
  ];
  for (const [text, pattern] of refusals) {
    const err = t.throws(() => decodeLatents(text, 2), { instanceOf: DivbindError });
    t.is(err.field, 'latents');
    t.regex(err.message, pattern);
  }
  t.regex(t.throws(() => decodeLatents(npyBase64(values, [2, 4, 2, 2]), 1))?.message ?? '', /hold 2 image\(s\) but imagesPerPrompt is 1/);
  const nan = Float32Array.from(values);
  nan[5] = Number.NaN;
  t.regex(t.throws(() => decodeLatents(npyBase64(nan, [2, 4, 2, 2]), 2))?.message ?? '', /non-finite value \(NaN\) at flat index 5/);
  const big = Buffer.alloc(MAX_LATENT_BYTES + 1).toString('base64');
  t.regex(t.throws(() => decodeLatents(big, 1))?.message ?? '', /more than the \d+ accepted/);
});

// ----------------------------------------------------------------------------------------------- the store

function record(id: string, state: JobRecord['state'] = 'succeeded', images = 1): JobRecord {
  return { id, model: 'm', state, createdAt: 1, startedAt: 2, finishedAt: 3, images };
}

test('the memory store writes a result once, forgets it after its TTL, and keeps within its byte budget', async (t) => {
  const store = new MemoryStore(60_000, 10);
  t.true(await store.finish(record('a'), [Buffer.from('AAAA')]));
  t.false(await store.finish(record('a', 'failed'), [Buffer.from('BBBB')]), 'a second result for the same job is dropped');
  t.is((await store.record('a'))?.state, 'succeeded');
  t.deepEqual(await store.image('a', 0), Buffer.from('AAAA'));
  t.is((await store.stats()).finished.succeeded, 1);
  t.is((await store.stats()).finished.failed, 0);
  await store.finish(record('b'), [Buffer.from('BBBBBBBB')]);
  t.is(await store.record('a'), null, 'over the budget: the oldest result goes');
  t.truthy(await store.record('b'));
  await store.finish(record('c'), [Buffer.alloc(50)]);
  t.truthy(await store.record('c'), 'the newest stays even when it alone is over the budget');
  const short = new MemoryStore(1, 1000);
  await short.finish(record('x'), []);
  await new Promise((resolve) => setTimeout(resolve, 5));
  t.is(await short.record('x'), null);
});

test('finalEvents: images then done; failed and cancelled alone', (t) => {
  t.deepEqual(
    finalEvents(record('a', 'succeeded', 2)).map((e) => e.type),
    ['image', 'image', 'done'],
  );
  t.deepEqual(finalEvents({ ...record('a', 'failed', 0), error: { code: 'NUMERIC', message: 'x' } }), [
    { type: 'failed', error: { code: 'NUMERIC', message: 'x' } },
  ]);
  t.deepEqual(finalEvents(record('a', 'cancelled', 0)), [{ type: 'cancelled' }]);
});

test('EventHub gives each listener one final event and drops it after', (t) => {
  const hub = new EventHub();
  const seen: JobEvent[] = [];
  hub.subscribe('j', (e) => seen.push(e));
  hub.emit('j', { type: 'running' });
  hub.emit('j', { type: 'cancelled' });
  hub.emit('j', { type: 'cancelled' });
  hub.emit('j', { type: 'running' });
  t.deepEqual(
    seen.map((e) => e.type),
    ['running', 'cancelled'],
  );
  t.false(hub.has('j'));
});

// ------------------------------------------------------------------------------------------------- metrics

test('metrics: cumulative histogram buckets, counts, and text Prometheus parses', (t) => {
  const steps = emptyHistogram();
  for (const s of [0.005, 0.2, 0.2, 3, 1000]) observe(steps, s);
  t.is(bucketOf(0.01), 0, 'upper bounds are inclusive');
  t.is(bucketOf(61), STEP_BUCKETS.length);
  const samples = parseMetrics(renderMetrics({ queued: 2, running: 1, finished: { succeeded: 5, failed: 1, cancelled: 0 }, steps, workers: 3 }));
  t.is(samples.get('divbind_queue_depth'), 2);
  t.is(samples.get('divbind_jobs{state="running"}'), 1);
  t.is(samples.get('divbind_jobs_finished_total{state="succeeded"}'), 5);
  t.is(samples.get('divbind_step_duration_seconds_bucket{le="0.01"}'), 1);
  t.is(samples.get('divbind_step_duration_seconds_bucket{le="0.25"}'), 3);
  t.is(samples.get('divbind_step_duration_seconds_bucket{le="5"}'), 4);
  t.is(samples.get('divbind_step_duration_seconds_bucket{le="60"}'), 4);
  t.is(samples.get('divbind_step_duration_seconds_bucket{le="+Inf"}'), 5);
  t.is(samples.get('divbind_step_duration_seconds_count'), 5);
  t.true(Math.abs((samples.get('divbind_step_duration_seconds_sum') ?? 0) - 1003.405) < 1e-9);
  t.is(samples.get('divbind_workers'), 3);
});

// ------------------------------------------------------------------------------------------- configuration

test('models: name=DIR lists, folder names, and refusals naming --models', (t) => {
  t.deepEqual(
    parseModelList('a=/m/a, b.2=/m/b').map((m) => m.name),
    ['a', 'b.2'],
  );
  t.is(modelNameOf('/x/shapes-sd/'), 'shapes-sd');
  t.is(modelNameOf('/x/my model!'), 'my-model-');
  for (const bad of ['a', '=/x', 'a=', 'a=/x,a=/y', '../x=/y', 'a b=/y']) {
    const err = t.throws(() => parseModelList(bad), { instanceOf: DivbindError }, bad);
    t.is(err.field, '--models');
  }
  t.throws(() => modelsFromFlags({ model: '/a', models: 'b=/b' }, () => '/d'), {
    message: /either --model DIR or --models/,
  });
  t.deepEqual(
    modelsFromFlags({}, () => '/models/shapes-sd'),
    [{ name: 'shapes-sd', dir: '/models/shapes-sd', isDefault: true }],
  );
  t.deepEqual(
    modelsFromFlags({ model: '/models/x' }, () => '/models/shapes-sd'),
    [{ name: 'x', dir: '/models/x' }],
  );
});

test('serve flags: strict numbers naming the flag; --no-worker needs --redis', (t) => {
  const base = { worker: true, model: '/m/tiny' };
  const config = serveConfig({
    ...base,
    port: '0',
    concurrency: '2',
    maxQueue: '5',
    rateLimit: '0',
    cors: 'https://a.example, https://b.example',
  });
  t.is(config.port, 0);
  t.is(config.concurrency, 2);
  t.is(config.rateLimit, 0);
  t.deepEqual(config.corsOrigins, ['https://a.example', 'https://b.example']);
  t.deepEqual(serveConfig(base).corsOrigins, [], 'CORS is off by default');
  t.is(t.throws(() => serveConfig({ ...base, port: '80x' }), { instanceOf: DivbindError }).field, '--port');
  t.is(t.throws(() => serveConfig({ ...base, concurrency: '0' }), { instanceOf: DivbindError }).field, '--concurrency');
  t.is(t.throws(() => serveConfig({ ...base, worker: false }), { instanceOf: DivbindError }).field, '--no-worker');
  t.is(t.throws(() => serveConfig({ ...base, redis: 'http://x' }), { instanceOf: DivbindError }).field, '--redis');
});

test('the API key is read from Bearer, X-API-Key or Basic (A1111 --api-auth) headers', (t) => {
  const req = (headers: Record<string, string>) => ({ headers }) as never;
  t.is(presentedKey(req({ authorization: 'Bearer s3cret' })), 's3cret');
  t.is(presentedKey(req({ 'x-api-key': 's3cret' })), 's3cret');
  t.is(presentedKey(req({ authorization: `Basic ${Buffer.from('user:s3:cret').toString('base64')}` })), 's3:cret');
  t.is(presentedKey(req({})), undefined);
});

test('ownMessage drops the fix DivbindError appends (the answer carries it apart)', (t) => {
  t.is(ownMessage(new DivbindError('BAD_INPUT', 'bad steps', { fix: 'use 1-1000' })), 'bad steps');
  t.is(ownMessage(new DivbindError('BAD_INPUT', 'bad steps')), 'bad steps');
});
