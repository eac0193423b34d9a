/**
 * Scale-out on a real Redis (Debian's redis-server on a free port in a temp dir): `serve --redis … --no-worker`
 * API nodes and `worker` processes of the compiled CLI, each a child process, as an operator runs them. Checked:
 * a worker killed mid-job (kill -9), Redis killed and restarted mid-run (AOF), 200 concurrent submissions,
 * refusals that never reach the queue, cancellation across processes, SIGTERM requeueing. Serial, with generous
 * timeouts: every process loads the model, and the machine may be busy.
 */
import * as fs from 'node:fs';
import test from 'ava';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { PNG } from 'pngjs';
import { readPngText } from '../../lib/pipeline/image';
import type { JobRecord } from '../../lib/server/jobs';
import { BULL_PREFIX, QUEUE_NAME } from '../../lib/server/redis';
import { KEY, RedisStore } from '../../lib/server/redis-store';
import {
  type Proc,
  type RedisServer,
  type SseEvent,
  finalState,
  getBytes,
  http,
  parseMetrics,
  postDeclaredSize,
  preparedTinyModel,
  readEvents,
  sleep,
  startRedis,
  startServe,
  startWorker,
  stopAll,
  stopProcesses,
  waitFor,
  REDIS_SERVER,
} from './harness';

/**
 * Without Debian's redis-server these tests show as skipped (apt-get install redis-server); `.ci/run` installs it
 * and sets DIVBIND_REQUIRE_REDIS=1, so there a missing server fails instead.
 */
const haveRedis = fs.existsSync(REDIS_SERVER) || process.env.DIVBIND_REQUIRE_REDIS === '1';
const redisTest = haveRedis ? test.serial : test.serial.skip;

let modelDir = '';
test.before(() => {
  if (haveRedis) modelDir = preparedTinyModel();
});
test.after.always(stopAll);
// Each test's processes (Redis included) stop when it ends.
test.afterEach.always(stopProcesses);

const PROMPT = 'a red cat and a blue dog';
/** Each test starts processes that load the model; on a busy machine that outlasts AVA's 10-minute idle limit. */
const LONG_TEST_MS = 20 * 60_000;
/** Short locks so a killed worker's job moves on within seconds (the default is 30 s). */
const FAST_LOCK = ['--lock-timeout', '3'];

function workerArgs(redis: RedisServer, extra: string[] = []): string[] {
  return ['--redis', redis.url, '--model', modelDir, '--threads', '1', ...FAST_LOCK, ...extra];
}

async function apiNode(redis: RedisServer, extra: string[] = []): Promise<Proc & { url: string }> {
  return startServe(['--redis', redis.url, '--no-worker', '--model', modelDir, ...extra]);
}

function bullQueue(redis: RedisServer): Queue {
  return new Queue(QUEUE_NAME, { connection: { url: redis.url }, prefix: BULL_PREFIX });
}

async function finished(base: string): Promise<number> {
  const m = parseMetrics((await http<string>('GET', `${base}/metrics`)).body);
  return m.get('divbind_jobs_finished_total{state="succeeded"}') ?? 0;
}

redisTest("the Redis store writes a job's result once: a second writer is dropped", async (t) => {
  const redis = await startRedis();
  const client = new Redis(redis.url);
  try {
    const store = new RedisStore(client, 60);
    const record = (state: JobRecord['state']): JobRecord => ({
      id: 'j1',
      model: 'm',
      state,
      createdAt: 1,
      startedAt: 2,
      finishedAt: 3,
      images: 1,
    });
    t.true(await store.finish(record('succeeded'), [Buffer.from('first')]));
    t.false(await store.finish(record('failed'), [Buffer.from('second')]));
    t.is((await store.record('j1'))?.state, 'succeeded');
    t.deepEqual(await store.image('j1', 0), Buffer.from('first'));
    t.deepEqual((await store.stats()).finished, { succeeded: 1, failed: 0, cancelled: 0 });
    t.true((await client.ttl(KEY.image('j1', 0))) > 0, 'results expire');
  } finally {
    client.disconnect();
  }
});

redisTest('refused requests never reach the queue; queued jobs show their position and cancel without a worker', async (t) => {
  t.timeout(LONG_TEST_MS);
  const redis = await startRedis();
  const key = 'secret-key';
  const api = await apiNode(redis, ['--api-key', key]);
  const queue = bullQueue(redis);
  const auth = { authorization: `Bearer ${key}` };
  try {
    const refused = [
      await http('POST', `${api.url}/v1/generations`, { prompt: 'a cat' }),
      await http('POST', `${api.url}/v1/generations`, { prompt: 'a cat' }, { authorization: 'Bearer nope' }),
      await http('POST', `${api.url}/v1/generations`, '{"prompt": ', auth),
      await http('POST', `${api.url}/v1/generations`, { prompt: 'a cat', steps: 'many' }, auth),
      await http('POST', `${api.url}/v1/generations`, { prompt: 'a cat', guidanceScale: 1e9 }, auth),
      await http('POST', `${api.url}/v1/generations`, { prompt: 'a cat', model: 'other' }, auth),
      await postDeclaredSize(`${api.url}/v1/generations`, 12 * 1024 * 1024, auth),
      await http('POST', `${api.url}/sdapi/v1/txt2img`, { prompt: 'a cat', enable_hr: true }, auth),
    ];
    t.deepEqual(
      refused.map((r) => r.status),
      [401, 401, 400, 400, 400, 404, 413, 400],
    );
    t.is(refused[3].body.error.field, 'steps');
    t.is(refused[4].body.error.field, 'guidanceScale');
    const empty = await queue.getJobCounts('waiting', 'active', 'completed', 'failed', 'delayed');
    t.deepEqual(empty, { waiting: 0, active: 0, completed: 0, failed: 0, delayed: 0 }, 'nothing reached Redis');

    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await http('POST', `${api.url}/v1/generations`, { prompt: 'a cat', steps: 2, mode: 'none' }, auth);
      t.is(r.status, 202);
      t.is(r.body.position, i);
      ids.push(r.body.id);
    }
    t.is(await queue.getWaitingCount(), 3, 'the positive control reached Redis');
    const cancelled = await http('DELETE', `${api.url}/v1/generations/${ids[0]}`, undefined, auth);
    t.is(cancelled.status, 200);
    t.is(cancelled.body.state, 'cancelled');
    t.is((await http('GET', `${api.url}/v1/generations/${ids[2]}`, undefined, auth)).body.position, 1);
    t.is(await queue.getWaitingCount(), 2);
    const models = await http('GET', `${api.url}/v1/models`, undefined, auth);
    t.deepEqual(models.body.models[0], { name: models.body.models[0].name, default: true, loaded: false });
    t.is(models.body.workers, 0);
  } finally {
    await queue.close();
  }
});

redisTest('kill -9 a worker mid-job: another worker takes the job again, and the client gets it exactly once', async (t) => {
  t.timeout(LONG_TEST_MS);
  const redis = await startRedis();
  const api = await apiNode(redis);
  const first = await startWorker(workerArgs(redis));
  const queue = bullQueue(redis);
  try {
    const before = await finished(api.url);
    const request = { prompt: PROMPT, steps: 30, mode: 'tv_bind', seed: 21 };
    const submitted = await http('POST', `${api.url}/v1/generations`, request);
    t.is(submitted.status, 202);
    const id = submitted.body.id as string;
    let steps = 0;
    const stream = readEvents(`${api.url}/v1/generations/${id}/events`, (e: SseEvent) => {
      if (e.event === 'step') steps += 1;
    });
    await waitFor('the first worker to run two steps', () => (steps >= 2 ? true : undefined));
    t.regex(first.output(), new RegExp(`job ${id}: started`));
    first.signal('SIGKILL');
    t.is(await first.exited, 'SIGKILL');
    const second = await startWorker(workerArgs(redis));
    const events = await stream;

    const types = events.map((e) => e.event);
    t.is(types.filter((e) => e === 'done').length, 1, 'one done event');
    t.false(types.includes('failed'));
    t.is(types.at(-1), 'done');
    t.true(types.lastIndexOf('queued') > types.indexOf('step'), 'the job went back to the queue after the kill');
    t.regex(second.output(), new RegExp(`job ${id}: started \\(model \\S+, attempt 2\\)`));
    t.regex(second.output(), new RegExp(`job ${id}: succeeded`));
    const job = await queue.getJob(id);
    t.true((job?.stalledCounter ?? 0) >= 1, 'BullMQ saw it stall');
    t.is(await finished(api.url), before + 1, 'delivered once');
    const status = await http('GET', `${api.url}/v1/generations/${id}`);
    t.is(status.body.state, 'succeeded');
    t.is(status.body.images.length, 1);

    // The rerun made the image the interrupted run would have: the seed was fixed at submission.
    const again = await http('POST', `${api.url}/v1/generations`, request);
    await finalState(api.url, again.body.id);
    const a = (await getBytes(`${api.url}/v1/generations/${id}/images/0.png`)).bytes;
    const b = (await getBytes(`${api.url}/v1/generations/${again.body.id}/images/0.png`)).bytes;
    t.true(PNG.sync.read(a).data.equals(PNG.sync.read(b).data));
    second.signal('SIGTERM');
    t.is(await second.exited, 0);
  } finally {
    await queue.close();
  }
});

redisTest('a cancel on the API node stops the job on the worker within one step; SIGTERM requeues a running job', async (t) => {
  t.timeout(LONG_TEST_MS);
  const redis = await startRedis();
  const api = await apiNode(redis);
  const worker = await startWorker(workerArgs(redis, ['--grace', '0']));
  const running = await http('POST', `${api.url}/v1/generations`, { prompt: PROMPT, steps: 60, mode: 'tv_bind' });
  let step = 0;
  const stream = readEvents(`${api.url}/v1/generations/${running.body.id}/events`, (e: SseEvent) => {
    if (e.event === 'step') step = e.data.step;
  });
  await waitFor('two steps', () => (step >= 2 ? true : undefined));
  const cancelled = await http('DELETE', `${api.url}/v1/generations/${running.body.id}`);
  t.true([200, 202].includes(cancelled.status));
  const end = await finalState(api.url, running.body.id);
  t.is(end.state, 'cancelled');
  t.true(end.progress.step - end.cancelledAt.step <= 1, `stopped at ${end.progress.step}, cancelled at ${end.cancelledAt.step}`);
  t.is((await stream).at(-1)?.event, 'cancelled');

  // What needs the model is checked by the worker (this API node has none): the job fails naming the field.
  const unchecked = await http('POST', `${api.url}/v1/generations`, {
    prompt: 'a cat',
    tokens: { objects: ['dog'] },
  });
  t.is(unchecked.status, 202);
  const failedEvents = await readEvents(`${api.url}/v1/generations/${unchecked.body.id}/events`);
  t.is(failedEvents.at(-1)?.event, 'failed');
  const failed = await http('GET', `${api.url}/v1/generations/${unchecked.body.id}`);
  t.is(failed.body.state, 'failed');
  t.is(failed.body.error.code, 'BAD_INPUT');
  t.is(failed.body.error.field, 'tokens');
  t.regex(failed.body.error.message, /"dog" is not a word of the prompt/);

  // SIGTERM with --grace 0: the running job goes back to the queue, the worker exits 0, another finishes it.
  const requeued = await http('POST', `${api.url}/v1/generations`, { prompt: PROMPT, steps: 30, mode: 'tv_bind' });
  await waitFor('the job to run', async () =>
    (await http('GET', `${api.url}/v1/generations/${requeued.body.id}`)).body.state === 'running' ? true : undefined,
  );
  worker.signal('SIGTERM');
  t.is(await worker.exited, 0, worker.output());
  t.regex(worker.output(), new RegExp(`job ${requeued.body.id}: back to the queue \\(shutdown\\)`));
  t.is((await http('GET', `${api.url}/v1/generations/${requeued.body.id}`)).body.state, 'queued');
  const next = await startWorker(workerArgs(redis));
  t.is((await finalState(api.url, requeued.body.id)).state, 'succeeded');
  next.signal('SIGTERM');
  t.is(await next.exited, 0);
});

redisTest('Redis killed and restarted mid-run (AOF): no accepted job is lost', async (t) => {
  t.timeout(LONG_TEST_MS);
  const redis = await startRedis({ aof: true });
  const api = await apiNode(redis);
  const worker = await startWorker(workerArgs(redis, ['--concurrency', '2']));
  const accepted: string[] = [];
  const submit = async () => {
    const r = await http('POST', `${api.url}/v1/generations`, { prompt: 'a red cat', steps: 4, mode: 'none' }).catch(() => null);
    if (r?.status === 202) accepted.push(r.body.id);
    return r?.status;
  };
  for (let i = 0; i < 6; i++) t.is(await submit(), 202);
  await waitFor('a job to run', async () => ((await http('GET', `${api.url}/v1/generations/${accepted[0]}`)).body.state !== 'queued' ? true : undefined));
  await redis.stop('SIGKILL');
  const whileDown = await submit();
  t.is(whileDown, 503, 'no Redis, no acceptance');
  const down = await http('GET', `${api.url}/v1/generations/${accepted[5]}`);
  t.is(down.status, 503);
  t.truthy(down.headers.get('retry-after'));
  t.is((await http('GET', `${api.url}/readyz`)).status, 503);
  await sleep(1000);
  await redis.restart();
  // Submissions go on after the restart (retried while the API node reconnects).
  for (let i = 0; i < 4; i++) await waitFor('a submission to be accepted', async () => ((await submit()) === 202 ? true : undefined), 120_000, 500);
  t.is(accepted.length, 10);
  for (const id of accepted) t.is((await finalState(api.url, id)).state, 'succeeded', id);
  t.is((await http('GET', `${api.url}/readyz`)).status, 200);
  worker.signal('SIGTERM');
  t.is(await worker.exited, 0);
});

redisTest('200 concurrent submissions on two workers: every job completes once, none duplicated', async (t) => {
  t.timeout(2 * LONG_TEST_MS);
  const redis = await startRedis();
  const api = await apiNode(redis);
  await Promise.all([startWorker(workerArgs(redis)), startWorker(workerArgs(redis))]);
  const queue = bullQueue(redis);
  try {
    const answers = await Promise.all(
      Array.from({ length: 200 }, (_, i) => http('POST', `${api.url}/v1/generations`, { prompt: 'a red cat', steps: 1, mode: 'none', seed: 1000 + i })),
    );
    t.deepEqual([...new Set(answers.map((a) => a.status))], [202]);
    const ids = answers.map((a) => a.body.id as string);
    t.is(new Set(ids).size, 200);
    await waitFor('200 jobs to finish', async () => ((await finished(api.url)) >= 200 ? true : undefined), 1_200_000, 2000);
    await sleep(2000);
    t.is(await finished(api.url), 200, 'each job counted once');
    t.deepEqual(await queue.getJobCounts('waiting', 'active', 'completed', 'failed'), {
      waiting: 0,
      active: 0,
      completed: 200,
      failed: 0,
    });
    const seeds = new Set<string>();
    for (const [i, id] of ids.entries()) {
      const status = await http('GET', `${api.url}/v1/generations/${id}`);
      t.is(status.body.state, 'succeeded');
      t.is(status.body.images.length, 1);
      t.is(status.body.log.parameters.seed, String(1000 + i), 'each id holds its own request');
      seeds.add(status.body.log.parameters.seed);
    }
    t.is(seeds.size, 200);
    const png = (await getBytes(`${api.url}/v1/generations/${ids[199]}/images/0.png`)).bytes;
    t.regex(readPngText(png).parameters, /Seed: 1199/);
  } finally {
    await queue.close();
  }
});
