/**
 * Generate defaults a model folder declares (model_index.json "divbind".defaults / .modeDefaults): they replace the
 * global defaults, per mode where given, and the caller's options replace them (loss parameters key by key). A bad
 * declared value is the model's fault: MODEL_INVALID naming model_index.json, at load.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DivbindError } from '../../lib/errors';
import { GENERATE_OPTIONS, readModelDefaults, withModelDefaults } from '../../lib/options/index';
import { DivBindPipeline } from '../../lib/pipeline/pipeline';
import { preparedFixtureModel, removeDir } from '../pipeline/prepared-model';

const declared = {
  defaults: { guidanceScale: 3, scaleFactor: 40, loss: { temperature: 50 } },
  modeDefaults: { tv_bind: { thresholds: { 0: 0.01, 10: 0.02 } }, max: { thresholds: { 0: 0.2 }, scaleFactor: 10 } },
};

test('the caller over the mode defaults over the model defaults; loss parameters merge key by key', (t) => {
  const d = readModelDefaults(declared);
  const plain = withModelDefaults({ prompt: 'x' }, d);
  t.deepEqual(plain, { prompt: 'x', guidanceScale: 3, scaleFactor: 40, loss: { temperature: 50 }, thresholds: { 0: 0.01, 10: 0.02 } });
  const max = withModelDefaults({ prompt: 'x', mode: 'max', scaleFactor: 5, loss: { sigma: 1 } }, d);
  t.is(max.scaleFactor, 5);
  t.deepEqual(max.thresholds, { 0: 0.2 });
  t.deepEqual(max.loss, { temperature: 50, sigma: 1 });
  // An option left undefined by the caller keeps the model's value.
  t.is(withModelDefaults({ prompt: 'x', guidanceScale: undefined }, d).guidanceScale, 3);
});

test('bad declared defaults are MODEL_INVALID naming model_index.json and the option', (t) => {
  const bad: Array<[object, RegExp]> = [
    [{ defaults: { guidanceScale: -1 } }, /divbind\.defaults\.guidanceScale/],
    [{ defaults: { prompt: 'a cat' } }, /divbind\.defaults\.prompt/],
    [{ modeDefaults: { fast: { steps: 3 } } }, /divbind\.modeDefaults\.fast/],
    [{ modeDefaults: { tv: { thresholds: [] } } }, /divbind\.modeDefaults\.tv\.thresholds/],
  ];
  for (const [d, field] of bad) {
    const err = t.throws(() => readModelDefaults(d), { instanceOf: DivbindError });
    t.is(err?.code, 'MODEL_INVALID');
    t.regex(err?.field ?? '', field);
  }
});

test("a pipeline plans with the folder's declared defaults and refuses a folder whose defaults are invalid", async (t) => {
  const dir = await preparedFixtureModel();
  const indexFile = path.join(dir, 'model_index.json');
  const index = JSON.parse(fs.readFileSync(indexFile, 'utf8'));
  try {
    fs.writeFileSync(indexFile, JSON.stringify({ ...index, divbind: { ...index.divbind, ...declared } }));
    const pipe = await DivBindPipeline.load(dir, { session: { intraOpNumThreads: 1 } });
    try {
      const plan = pipe.plan({ prompt: 'a red cat and a blue dog' });
      t.is(plan.guidanceScale, 3);
      t.deepEqual(plan.thresholds, { 0: 0.01, 10: 0.02 });
      t.is(plan.loss?.temperature, 50);
      t.is(plan.steps, GENERATE_OPTIONS.steps.default);
      t.is(pipe.plan({ prompt: 'a red cat', guidanceScale: 9 }).guidanceScale, 9);
    } finally {
      await pipe.release();
    }
    fs.writeFileSync(indexFile, JSON.stringify({ ...index, divbind: { ...index.divbind, defaults: { steps: 0 } } }));
    const err = await t.throwsAsync(DivBindPipeline.load(dir, { session: { intraOpNumThreads: 1 } }), { instanceOf: DivbindError });
    t.is((err as DivbindError).code, 'MODEL_INVALID');
  } finally {
    removeDir(dir);
  }
});
