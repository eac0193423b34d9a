/**
 * `serve` with the embedded queue, over real HTTP, on a prepared private copy of the tiny model (loaded once and
 * shared by the servers of this file). Every refusal is checked to leave the queue untouched. Serial: the
 * servers share one model and the machine.
 */
import test from 'ava';
import { PNG } from 'pngjs';
import { DivBindPipeline, randnTorchCpu } from '../../lib/index';
import { readPngText } from '../../lib/pipeline/image';
import type { ServeConfig } from '../../lib/server/config';
import { PNG_PARAMETERS_KEY } from '../../lib/server/runner';
import { type RunningServer, startServer } from '../../lib/server/serve';
import { encodeNpy } from '../../lib/util/npy';
import { copyFixtureModel, removeDir } from '../pipeline/prepared-model';
import {
  CLI,
  type SseEvent,
  finalState,
  getBytes,
  postDeclaredSize,
  http,
  parseMetrics,
  preparedTinyModel,
  readEvents,
  startProcess,
  startServe,
  stopAll,
  waitFor,
} from './harness';

let modelDir = '';
let pipeline: DivBindPipeline;
const servers: RunningServer[] = [];

function config(overrides: Partial<ServeConfig> = {}): ServeConfig {
  return {
    models: [{ name: 'tiny', dir: modelDir }],
    concurrency: 1,
    threads: 1,
    graceMs: 60_000,
    lockMs: 30_000,
    host: '127.0.0.1',
    port: 0,
    noWorker: false,
    maxQueue: 100,
    rateLimit: 0,
    corsOrigins: [],
    resultTtlSeconds: 3600,
    ...overrides,
  };
}

async function server(overrides: Partial<ServeConfig> = {}): Promise<string> {
  const s = await startServer(config(overrides), () => {}, new Map([['tiny', pipeline]]));
  servers.push(s);
  return s.url;
}

async function metrics(base: string): Promise<Map<string, number>> {
  const r = await http<string>('GET', `${base}/metrics`);
  return parseMetrics(r.body);
}

test.before(async () => {
  modelDir = preparedTinyModel();
  pipeline = await DivBindPipeline.load(modelDir, { session: { intraOpNumThreads: 1 } });
});

test.after.always(async () => {
  for (const s of servers) await s.close().catch(() => {});
  await pipeline?.release();
  await stopAll();
});

const PROMPT = 'a red cat and a blue dog';

test.serial('a generation: 202 + Location, SSE events in order, status with progress, PNGs with A1111 and our parameters', async (t) => {
  const base = await server();
  const submitted = await http('POST', `${base}/v1/generations`, {
    prompt: PROMPT,
    steps: 3,
    seed: 11,
    mode: 'tv_bind',
    imagesPerPrompt: 2,
  });
  t.is(submitted.status, 202, JSON.stringify(submitted.body));
  const id = submitted.body.id as string;
  t.is(submitted.headers.get('location'), `/v1/generations/${id}`);
  t.true(['queued', 'running'].includes(submitted.body.state));
  const events = await readEvents(`${base}/v1/generations/${id}/events`);
  const types = events.map((e) => e.event);
  // PNDM: 3 steps → 4 timesteps, per image.
  t.deepEqual(types.filter((e) => e === 'step').length, 8);
  t.deepEqual(types.slice(-3), ['image', 'image', 'done']);
  t.true(types.indexOf('running') < types.indexOf('step'));
  const steps = events.filter((e) => e.event === 'step').map((e) => e.data);
  t.deepEqual(
    steps.map((s) => `${s.image}:${s.step}/${s.steps}`),
    ['0:1/4', '0:2/4', '0:3/4', '0:4/4', '1:1/4', '1:2/4', '1:3/4', '1:4/4'],
  );
  t.true(
    steps.every((s) => Number.isFinite(s.loss) && Number.isFinite(s.theta)),
    'guided steps report L and θ',
  );

  const status = await http('GET', `${base}${submitted.headers.get('location')}`);
  t.is(status.body.state, 'succeeded');
  t.deepEqual(status.body.images, [`/v1/generations/${id}/images/0.png`, `/v1/generations/${id}/images/1.png`]);
  t.is(status.body.log.parameters.seed, '11');
  t.is(status.body.log.parameters.model, 'tiny', 'the configured name, never the folder');
  t.is(status.body.log.images[1].steps.length, 4);

  const png = await getBytes(`${base}/v1/generations/${id}/images/1.png`);
  t.is(png.type, 'image/png');
  t.is(PNG.sync.read(png.bytes).width, 256);
  const text = readPngText(png.bytes);
  t.is(text.parameters, status.body.log.infotexts[1]);
  t.regex(
    text.parameters,
    /^a red cat and a blue dog\nSteps: 3, Sampler: PLMS, CFG scale: 7\.5, Seed: 11, Size: 256x256, Model: tiny, Batch size: 2, Batch pos: 1, Divide and Bind: tv_bind/,
  );
  const ours = JSON.parse(text[PNG_PARAMETERS_KEY]);
  t.is(ours.image, 1);
  t.is(ours.prompt, PROMPT);
  t.is(ours.mode, 'tv_bind');
  t.is((await getBytes(`${base}/v1/generations/${id}/images/2.png`)).status, 404);
  // A late subscriber gets the final events at once.
  t.deepEqual(
    (await readEvents(`${base}/v1/generations/${id}/events`)).map((e) => e.event),
    ['image', 'image', 'done'],
  );
});

test.serial("the server makes the pixels the API makes; uploaded latents equal to the seed's noise make the same image", async (t) => {
  const base = await server();
  const request = { prompt: 'a red cat', steps: 2, mode: 'none' as const, seed: 5 };
  const bySeed = await http('POST', `${base}/v1/generations`, request);
  await finalState(base, bySeed.body.id);
  const served = PNG.sync.read((await getBytes(`${base}/v1/generations/${bySeed.body.id}/images/0.png`)).bytes).data;
  const direct = await pipeline.generate(request);
  t.true(Buffer.from(direct.images[0].rgb).equals(rgbOf(served)), 'server and API give the same pixels');

  const noise = randnTorchCpu(5, [1, 4, 32, 32]);
  const latents = encodeNpy(noise, [1, 4, 32, 32]).toString('base64');
  const byLatents = await http('POST', `${base}/v1/generations`, {
    prompt: 'a red cat',
    steps: 2,
    mode: 'none',
    latents,
  });
  t.is(byLatents.status, 202, JSON.stringify(byLatents.body));
  const done = await finalState(base, byLatents.body.id);
  t.is(done.log.parameters.seed, null);
  const fromLatents = PNG.sync.read((await getBytes(`${base}/v1/generations/${byLatents.body.id}/images/0.png`)).bytes).data;
  t.true(fromLatents.equals(served));
});

/** RGBA (pngjs) → RGB. */
function rgbOf(rgba: Buffer): Buffer {
  const out = Buffer.alloc((rgba.length / 4) * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) rgba.copy(out, j, i, i + 3);
  return out;
}

test.serial('queue positions; a running job stops within one step of DELETE; a queued one never starts', async (t) => {
  const base = await server();
  const long = await http('POST', `${base}/v1/generations`, { prompt: PROMPT, steps: 60, mode: 'tv_bind', seed: 1 });
  const waiting = [
    await http('POST', `${base}/v1/generations`, { prompt: 'a cat', steps: 2, mode: 'none' }),
    await http('POST', `${base}/v1/generations`, { prompt: 'a dog', steps: 2, mode: 'none' }),
  ];
  t.deepEqual(
    waiting.map((w) => w.body.position),
    [0, 1],
  );
  t.is((await http('GET', `${base}/v1/generations/${waiting[1].body.id}`)).body.position, 1);

  const cancelQueued = await http('DELETE', `${base}/v1/generations/${waiting[0].body.id}`);
  t.is(cancelQueued.status, 200);
  t.is(cancelQueued.body.state, 'cancelled');
  t.is((await http('GET', `${base}/v1/generations/${waiting[1].body.id}`)).body.position, 0, 'the next one moved up');
  t.deepEqual(
    (await readEvents(`${base}/v1/generations/${waiting[0].body.id}/events`)).map((e) => e.event),
    ['cancelled'],
  );

  let lastStep = 0;
  const stream = readEvents(`${base}/v1/generations/${long.body.id}/events`, (e: SseEvent) => {
    if (e.event === 'step') lastStep = e.data.step;
  });
  await waitFor('two steps of the long job', () => (lastStep >= 2 ? true : undefined));
  const running = await http('GET', `${base}/v1/generations/${long.body.id}`);
  t.is(running.body.state, 'running');
  t.true(running.body.progress.step >= 2);
  t.is(running.body.progress.steps, 61);
  const cancelled = await http('DELETE', `${base}/v1/generations/${long.body.id}`);
  const events = await stream;
  t.is(cancelled.status, 200);
  t.is(cancelled.body.state, 'cancelled');
  t.is(events.at(-1)?.event, 'cancelled');
  // The worker notes the last step done when the cancellation reached it: the step being computed then may
  // finish, no further one starts.
  const { progress, cancelledAt } = cancelled.body;
  t.true(progress.step - cancelledAt.step <= 1, `stopped at step ${progress.step}, cancelled at ${cancelledAt.step}`);
  t.true(progress.step < 61);
  t.is(lastStep, progress.step);
  t.is((await http('DELETE', `${base}/v1/generations/${long.body.id}`)).status, 409);
  t.is((await http('DELETE', `${base}/v1/generations/00000000-0000-4000-8000-000000000000`)).status, 404);
  t.is((await finalState(base, waiting[1].body.id)).state, 'succeeded', 'the queue goes on');
});

test.serial('bad requests: 400 naming the field, 404, 413, 415; none reaches the queue', async (t) => {
  const base = await server();
  const before = await metrics(base);
  const post = (body: unknown, headers: Record<string, string> = {}) => http('POST', `${base}/v1/generations`, body, headers);
  const cases: Array<[unknown, number, string | undefined, RegExp]> = [
    [{ prompt: 'a cat', steps: 0 }, 400, 'steps', /Expected an integer between 1 and 1000 for steps but received 0/],
    [{ prompt: 'a cat', stepz: 3 }, 400, 'stepz', /Unknown option "stepz"/],
    [{ steps: 3 }, 400, 'prompt', /prompt is missing/],
    [{ prompt: 'a cat', mode: 3 }, 400, 'mode', /for mode but received 3/],
    [{ prompt: 'a cat', seed: 1.5 }, 400, 'seed', /seed/],
    [{ prompt: 'a cat', model: 'other' }, 404, 'model', /model "other"/],
    [{ prompt: 'a cat', model: '../../etc' }, 404, 'model', /not found/],
    [{ prompt: 'a cat', latents: 'AAAA' }, 400, 'latents', /not a \.npy file/],
    [{ prompt: 'a cat', tokens: { objects: ['dog'] } }, 400, 'tokens', /"dog" is not a word of the prompt/],
    [{ prompt: 'a cat', width: 200 }, 400, 'width', /exported for only 256×256/],
    [{ prompt: `a ${'very '.repeat(80)}cat` }, 400, 'prompt', /tokens long but the text encoder takes at most 75/],
    ['{"prompt": "a cat",', 400, 'body', /not valid JSON/],
    ['[1, 2]', 400, 'body', /Expected an options object|must be object/],
  ];
  for (const [body, status, field, message] of cases) {
    const r = await post(body);
    t.is(r.status, status, JSON.stringify(body));
    t.is(r.body.error.field, field, JSON.stringify(body));
    t.regex(r.body.error.message, message, JSON.stringify(body));
  }
  const tooBig = await postDeclaredSize(`${base}/v1/generations`, 12 * 1024 * 1024);
  t.is(tooBig.status, 413);
  t.is(tooBig.body.error.code, 'PAYLOAD_TOO_LARGE');
  const a1111TooBig = await postDeclaredSize(`${base}/sdapi/v1/txt2img`, 300 * 1024);
  t.is(a1111TooBig.status, 413);
  const text = await http('POST', `${base}/v1/generations`, 'prompt=a cat', { 'content-type': 'text/plain' });
  t.is(text.status, 415);
  t.is((await http('GET', `${base}/v1/generations/not-an-id`)).status, 404);
  t.is((await getBytes(`${base}/v1/generations/00000000-0000-4000-8000-000000000000/images/0.png`)).status, 404);
  const after = await metrics(base);
  for (const key of [
    'divbind_queue_depth',
    'divbind_jobs{state="running"}',
    'divbind_jobs_finished_total{state="succeeded"}',
    'divbind_jobs_finished_total{state="failed"}',
  ]) {
    t.is(after.get(key), before.get(key), key);
  }
});

test.serial('a guided request on an unprepared model: the job fails with MODEL_NOT_PREPARED, txt2img answers 422', async (t) => {
  const unpreparedDir = copyFixtureModel('tiny-sd');
  const unprepared = await DivBindPipeline.load(unpreparedDir, { session: { intraOpNumThreads: 1 } });
  try {
    const s = await startServer(config({ models: [{ name: 'raw', dir: unpreparedDir }] }), () => {}, new Map([['raw', unprepared]]));
    servers.push(s);
    // The prepared graphs are per image size and opened when a job needs them: the job finds out.
    const guided = await http('POST', `${s.url}/v1/generations`, { prompt: PROMPT, mode: 'tv_bind', steps: 1 });
    t.is(guided.status, 202);
    const failed = await finalState(s.url, guided.body.id);
    t.is(failed.state, 'failed');
    t.is(failed.error.code, 'MODEL_NOT_PREPARED');
    t.regex(failed.error.fix, /divbind-native prepare/);
    const a1111 = await http('POST', `${s.url}/sdapi/v1/txt2img`, {
      prompt: PROMPT,
      steps: 1,
      divbind: { mode: 'tv_bind' },
    });
    t.is(a1111.status, 422);
    t.is(a1111.body.error.code, 'MODEL_NOT_PREPARED');
    const plain = await http('POST', `${s.url}/v1/generations`, { prompt: PROMPT, mode: 'none', steps: 1 });
    t.is(plain.status, 202);
    t.is((await finalState(s.url, plain.body.id)).state, 'succeeded');
    t.deepEqual((await http('GET', `${s.url}/v1/models`)).body.models, [{ name: 'raw', default: true, loaded: true, guided: false }]);
  } finally {
    await unprepared.release();
    removeDir(unpreparedDir);
  }
});

test.serial('A1111: txt2img answers base64 PNGs and info; progress, samplers and models; a client that leaves cancels', async (t) => {
  const base = await server();
  const body = {
    prompt: 'a red cat',
    negative_prompt: 'blurry',
    steps: 2,
    seed: 9,
    cfg_scale: 6,
    batch_size: 2,
    sampler_name: 'DDIM',
    send_images: true,
    divbind: { mode: 'none' },
  };
  const r = await http('POST', `${base}/sdapi/v1/txt2img`, body);
  t.is(r.status, 200, JSON.stringify(r.body));
  t.deepEqual(r.body.parameters, body);
  t.is(r.body.images.length, 2);
  const info = JSON.parse(r.body.info);
  t.is(info.seed, 9);
  t.is(info.sampler_name, 'DDIM');
  t.is(info.cfg_scale, 6);
  const png = Buffer.from(r.body.images[1], 'base64');
  t.is(readPngText(png).parameters, info.infotexts[1]);
  t.regex(
    info.infotexts[1],
    /^a red cat\nNegative prompt: blurry\nSteps: 2, Sampler: DDIM, CFG scale: 6, Seed: 9, Size: 256x256, Model: tiny, Batch size: 2, Batch pos: 1, Version: divbind-native /,
  );

  t.deepEqual(
    (await http('GET', `${base}/sdapi/v1/sd-models`)).body.map((m: { model_name: string }) => m.model_name),
    ['tiny'],
  );
  t.deepEqual(
    (await http('GET', `${base}/sdapi/v1/samplers`)).body.map((s: { name: string }) => s.name),
    ['PLMS', 'DDIM', 'Euler'],
  );
  const bad = await http('POST', `${base}/sdapi/v1/txt2img`, { prompt: 'x', sampler_name: 'Euler a' });
  t.is(bad.status, 400);
  t.is(bad.body.error.field, 'sampler_name');

  const before = await metrics(base);
  const leaving = new AbortController();
  const request = fetch(`${base}/sdapi/v1/txt2img`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    signal: leaving.signal,
    body: JSON.stringify({ prompt: PROMPT, steps: 60, divbind: { mode: 'tv_bind' } }),
  }).catch(() => null);
  const progress = await waitFor('A1111 progress of the running job', async () => {
    const p = (await http('GET', `${base}/sdapi/v1/progress`)).body;
    return p.state.sampling_step >= 1 ? p : undefined;
  });
  t.is(progress.state.sampling_steps, 61);
  t.true(progress.progress > 0 && progress.progress < 1);
  t.is(progress.state.job_count, 1);
  leaving.abort();
  await request;
  await waitFor('the abandoned job to be cancelled', async () => {
    const m = await metrics(base);
    return m.get('divbind_jobs_finished_total{state="cancelled"}') === (before.get('divbind_jobs_finished_total{state="cancelled"}') ?? 0) + 1
      ? true
      : undefined;
  });
  t.pass();
});

test.serial('metrics count what ran; models, healthz and readyz answer', async (t) => {
  const base = await server();
  const r = await http('POST', `${base}/v1/generations`, {
    prompt: 'a cat',
    steps: 3,
    mode: 'none',
    imagesPerPrompt: 2,
  });
  await finalState(base, r.body.id);
  const m = await metrics(base);
  t.is(m.get('divbind_jobs_finished_total{state="succeeded"}'), 1);
  t.is(m.get('divbind_step_duration_seconds_count'), 8, 'PNDM 3 steps = 4 timesteps, × 2 images');
  t.is(m.get('divbind_step_duration_seconds_bucket{le="+Inf"}'), 8);
  t.is(m.get('divbind_queue_depth'), 0);
  const models = await http('GET', `${base}/v1/models`);
  t.deepEqual(models.body, { models: [{ name: 'tiny', default: true, loaded: true, guided: true }] });
  t.deepEqual((await http('GET', `${base}/healthz`)).body, { status: 'ok' });
  t.deepEqual((await http('GET', `${base}/readyz`)).body, { ready: true });
  const type = (await fetch(`${base}/metrics`)).headers.get('content-type');
  t.regex(type ?? '', /^text\/plain; version=0\.0\.4/);
});

test.serial('protection: API key (401), full queue and rate limit (429 + Retry-After), CORS off unless configured', async (t) => {
  const key = 'k-123';
  const base = await server({ apiKey: key, maxQueue: 1, rateLimit: 3 });
  const auth = { authorization: `Bearer ${key}` };
  t.is((await http('GET', `${base}/v1/models`)).status, 401);
  t.is((await http('GET', `${base}/v1/models`, undefined, { authorization: 'Bearer wrong' })).status, 401);
  t.is((await http('POST', `${base}/v1/generations`, { prompt: 'a cat' })).status, 401);
  t.is((await http('GET', `${base}/metrics`)).status, 401);
  t.is((await http('GET', `${base}/v1/models`, undefined, auth)).status, 200);
  t.is((await http('GET', `${base}/v1/models`, undefined, { 'x-api-key': key })).status, 200);
  t.is(
    (
      await http('GET', `${base}/v1/models`, undefined, {
        authorization: `Basic ${Buffer.from(`user:${key}`).toString('base64')}`,
      })
    ).status,
    200,
  );
  t.is((await http('GET', `${base}/healthz`)).status, 200, 'probes need no key');
  const unauthorised = await http('GET', `${base}/v1/models`, undefined, { origin: 'https://evil.example' });
  t.is(unauthorised.headers.get('www-authenticate'), 'Bearer realm="divbind-native"');

  const running = await http('POST', `${base}/v1/generations`, { prompt: PROMPT, steps: 60, mode: 'tv_bind' }, auth);
  t.is(running.status, 202);
  await waitFor('the first job to run', async () =>
    (await http('GET', `${base}/v1/generations/${running.body.id}`, undefined, auth)).body.state === 'running' ? true : undefined,
  );
  t.is((await http('POST', `${base}/v1/generations`, { prompt: 'a cat', mode: 'none' }, auth)).status, 202, 'one may wait');
  const full = await http('POST', `${base}/v1/generations`, { prompt: 'a cat', mode: 'none' }, auth);
  t.is(full.status, 429);
  t.is(full.body.error.code, 'QUEUE_FULL');
  t.true(Number(full.headers.get('retry-after')) > 0);
  const limited = await http('POST', `${base}/v1/generations`, { prompt: 'a cat', mode: 'none' }, auth);
  t.is(limited.status, 429, 'the 4th submission within a minute (the 401 did not count)');
  t.is(limited.body.error.code, 'RATE_LIMITED');
  t.true(Number(limited.headers.get('retry-after')) > 0);
  const models = await http('GET', `${base}/v1/models`, undefined, { ...auth, origin: 'https://evil.example' });
  t.is(models.headers.get('access-control-allow-origin'), null, 'no CORS headers by default');
  await http('DELETE', `${base}/v1/generations/${running.body.id}`, undefined, auth);

  const open = await server({ corsOrigins: ['https://app.example'] });
  const allowed = await http('GET', `${open}/v1/models`, undefined, { origin: 'https://app.example' });
  t.is(allowed.headers.get('access-control-allow-origin'), 'https://app.example');
  const other = await http('GET', `${open}/v1/models`, undefined, { origin: 'https://evil.example' });
  t.not(other.headers.get('access-control-allow-origin'), 'https://evil.example');
});

test.serial('the CLI: serve refuses bad flags with exit codes; SIGTERM lets the running job finish and exits 0', async (t) => {
  // Spawned serve processes load the model: on a busy machine that may outlast AVA's 10-minute idle limit.
  t.timeout(20 * 60_000);
  const bad = await startProcessExit(['--port', '70000', '--model', modelDir]);
  t.is(bad.code, 3);
  t.regex(bad.output, /--port/);
  const noRedis = await startProcessExit(['--no-worker', '--model', modelDir]);
  t.is(noRedis.code, 3);
  t.regex(noRedis.output, /--no-worker needs --redis/);

  const serve = await startServe(['--model', modelDir, '--threads', '1', '--grace', '600']);
  const job = await http('POST', `${serve.url}/v1/generations`, { prompt: PROMPT, steps: 8, mode: 'tv_bind' });
  await waitFor('the job to run', async () => ((await http('GET', `${serve.url}/v1/generations/${job.body.id}`)).body.state === 'running' ? true : undefined));
  serve.signal('SIGTERM');
  t.is(await serve.exited, 0, serve.output());
  t.regex(serve.output(), new RegExp(`SIGTERM: shutting down[^]*job ${job.body.id}: succeeded[^]*stopped`));
  const refused = await fetch(`${serve.url}/healthz`).then(
    () => 'answered',
    () => 'refused',
  );
  t.is(refused, 'refused', 'the port is closed');
});

async function startProcessExit(args: string[]): Promise<{ code: number | string; output: string }> {
  const proc = startProcess(process.execPath, [CLI, 'serve', ...args]);
  return { code: await proc.exited, output: proc.output() };
}
