/**
 * The benchmark runner on a real model (a private copy of the eval test model, see helpers.ts): sharding the
 * images over worker processes gives exactly the images, detections and verdicts of a single worker, and both
 * workers take part. Also the option checks and the unprepared-model error.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DivbindError } from '../../lib/errors';
import { runEval, type EvalOptions, type ImageRecord } from '../../lib/eval/benchmark';
import { parsePromptFile } from '../../lib/eval/prompts';
import { checkResultsSchema, copyModel, removeDir } from './helpers';

const PROMPTS = parsePromptFile('a red circle and a blue square\ntwo circles\n', 'inline');
const ONE_PROMPT = PROMPTS.slice(0, 1);
const tmp = (name: string) => fs.mkdtempSync(path.join(os.tmpdir(), `divbind-eval-${name}-`));
const withoutTime = (rs: ImageRecord[]) => rs.map(({ seconds: _s, ...rest }) => rest);

test('workers: 2 processes give exactly the results of 1', async (t) => {
  const model = copyModel();
  const outs = [tmp('w1'), tmp('w2')];
  const notes: string[] = [];
  try {
    const base: Omit<EvalOptions, 'outDir' | 'workers'> = {
      prompts: ONE_PROMPT,
      seeds: [0, 1],
      methods: ['none', 'tv_bind'],
      modelDir: model,
      prepare: true,
      steps: 2,
      threads: 1,
      generate: { refinement: { initStep: 1, other: 1 } },
    };
    const one = await runEval({ ...base, outDir: outs[0], workers: 1 });
    const two = await runEval({ ...base, outDir: outs[1], workers: 2, onProgress: (m) => notes.push(m) });
    t.is(one.records.length, 2 * 2);
    t.deepEqual(withoutTime(two.records), withoutTime(one.records));
    t.is(one.processes, 1);
    t.is(two.processes, 2);
    // Guidance changed the images (so the comparison covers both code paths).
    t.not(one.records[0].imageSha256, one.records[1].imageSha256);
    const grid = 'grids/two_colour-01-a-red-circle-and-a-blue-square.png';
    t.deepEqual(fs.readFileSync(path.join(outs[1], grid)), fs.readFileSync(path.join(outs[0], grid)));
    const strip = (r: typeof one.results) => ({
      ...r,
      config: null,
      methods: Object.fromEntries(Object.entries(r.methods).map(([m, x]) => [m, x.categories])),
    });
    t.deepEqual(strip(two.results), strip(one.results));
    checkResultsSchema(t, JSON.parse(fs.readFileSync(path.join(outs[1], 'results.json'), 'utf8')), ['none', 'tv_bind'], ['two_colour']);
    t.is(two.results.config.workers, 2);
    t.true(
      notes.some((m) => m.startsWith('starting 2 workers × 1 onnxruntime thread(s)')),
      notes.join('\n'),
    );
    t.true(
      notes.some((m) => /^\[4\/4\] 100\.0 % elapsed \d+:\d\d:\d\d ETA 0:00:00 \| /.test(m)),
      notes.join('\n'),
    );
  } finally {
    for (const d of [model, ...outs]) removeDir(d);
  }
});

test('guided methods on an unprepared model fail with the fix', async (t) => {
  const model = copyModel();
  const out = tmp('unprepared');
  try {
    const err = await t.throwsAsync(runEval({ prompts: PROMPTS, seeds: [0], methods: ['none', 'tv'], modelDir: model, outDir: out, workers: 1, steps: 1 }), {
      instanceOf: DivbindError,
    });
    t.is(err?.code, 'MODEL_NOT_PREPARED');
    t.regex(err?.message ?? '', /divbind-native prepare/);
  } finally {
    removeDir(model);
    removeDir(out);
  }
});

test('runEval rejects bad options with clear errors, before loading anything', async (t) => {
  const ok: EvalOptions = { prompts: PROMPTS, seeds: [0], outDir: path.join(os.tmpdir(), 'never-written'), modelDir: '/nonexistent' };
  const bad = async (patch: Partial<EvalOptions>, message: RegExp) => {
    const err = await t.throwsAsync(runEval({ ...ok, ...patch }), { instanceOf: DivbindError, message });
    t.is(err?.code, 'BAD_INPUT');
  };
  await bad({ outDir: '' }, /outDir/);
  await bad({ modelDir: undefined }, /modelDir/);
  await bad({ seeds: [] }, /non-empty array of seeds/);
  await bad({ seeds: [0, -1] }, /seeds\[1\]/);
  await bad({ seeds: [1, 1] }, /seeds repeat/);
  await bad({ methods: ['foo' as 'none'] }, /unknown method "foo"/);
  await bad({ methods: ['tv', 'tv'] }, /methods repeat/);
  await bad({ steps: 0 }, /steps/);
  await bad({ workers: 1.5 }, /workers/);
  await bad({ generate: { seed: 3 } }, /generate\.seed is set by the benchmark/);
  await bad({ generate: { steps: 3 } }, /use steps/);
  await bad({ generate: { perMethod: { foo: {} } as never } }, /unknown method "foo" in generate\.perMethod/);
  await bad({ prompts: path.join(os.tmpdir(), 'no-such-prompts.tsv') }, /cannot read the prompt file/);
  t.false(fs.existsSync(ok.outDir));
});

for (const workers of [1, 2]) {
  test(`${workers} worker(s): an image that fails stops the run with its error; an abort stops it too`, async (t) => {
    const model = copyModel();
    const out = tmp('fail');
    try {
      const base: EvalOptions = { prompts: PROMPTS, seeds: [0, 1, 2, 3], methods: ['none'], modelDir: model, outDir: out, workers, threads: 1, steps: 1 };
      // Rejected by generate() (in a worker, too: the error comes back with its class and message).
      await t.throwsAsync(runEval({ ...base, generate: { guidanceScale: 'x' as unknown as number } }), { instanceOf: DivbindError, message: /guidanceScale/ });
      const controller = new AbortController();
      const progress: string[] = [];
      const err = await t.throwsAsync(
        runEval({
          ...base,
          signal: controller.signal,
          onProgress: (m) => {
            progress.push(m);
            if (m.startsWith('[1/')) controller.abort();
          },
        }),
        { instanceOf: DivbindError },
      );
      t.is(err?.code, 'ABORTED');
      // The queued images were dropped, not made after the abort.
      t.true(progress.filter((m) => m.startsWith('[')).length <= workers, progress.join('\n'));
      t.false(fs.existsSync(path.join(out, 'results.json')));
    } finally {
      removeDir(model);
      removeDir(out);
    }
  });
}
