/**
 * v-prediction in every scheduler, built as generate() builds it: from tiny-sd2's scheduler_config.json (SD 2.1
 * 768-v as shipped: DDIM, prediction_type v_prediction), with the class swapped for PNDM and Euler as
 * `--scheduler` does. Oracle: test/fixtures/golden-sd2/schedulers/ (tools/make_scheduler_golden.py --config sd21,
 * an independent float64 implementation checked against an (x₀, ε) oracle). Each step gets the fixture's inputs,
 * so errors do not accumulate. Tolerances as test/schedulers/schedulers.test.ts: timesteps and σ exact,
 * prev_sample / pred_original_sample / scaled_model_input within 1e-5 + 1e-5·|ref| (float32 vs float64).
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fromConfig, type EulerScheduler, type SchedulerName } from '../../lib/schedulers/index';
import { readNpy } from '../../lib/util/npy';
import { assertAllClose } from '../helpers/assert-close';
import { fixturePath } from '../helpers/fixtures';

const FIX = fixturePath('golden-sd2', 'schedulers');
const CONFIG = JSON.parse(fs.readFileSync(fixturePath('models', 'tiny-sd2', 'scheduler', 'scheduler_config.json'), 'utf8')) as Record<string, unknown>;

interface Run {
  scheduler: SchedulerName;
  timestepSpacing: string;
  numInferenceSteps: number;
  numTimesteps: number;
  initNoiseSigma: number;
  files: Record<string, string>;
}
const index = JSON.parse(fs.readFileSync(path.join(FIX, 'index.json'), 'utf8')) as { config: { predictionType: string }; runs: Run[] };
const tol = { atol: 1e-5, rtol: 1e-5 };

test("tiny-sd2 ships SD 2.1's v-prediction DDIM config, and the fixture is made for it", (t) => {
  t.is(CONFIG._class_name, 'DDIMScheduler');
  t.is(CONFIG.prediction_type, 'v_prediction');
  t.is(index.config.predictionType, 'v_prediction');
  t.deepEqual(index.runs.map((r) => r.scheduler).sort(), ['ddim', 'euler', 'pndm']);
});

for (const run of index.runs) {
  test(`${run.scheduler} (${run.timestepSpacing}, ${run.numInferenceSteps} steps) with the model's v-prediction config matches every golden step`, (t) => {
    const s = fromConfig({ ...CONFIG, timestep_spacing: run.timestepSpacing }, { name: run.scheduler });
    t.is(s.config.prediction_type, 'v_prediction');
    s.setTimesteps(run.numInferenceSteps);
    const load = (k: string) => readNpy(path.join(FIX, run.files[k]!));
    t.deepEqual(s.timesteps, Array.from(load('timesteps').data as ArrayLike<number | bigint>, Number), 'timesteps');
    t.is(s.timesteps.length, run.numTimesteps);
    t.true(Math.abs(s.initNoiseSigma - run.initNoiseSigma) <= 1e-6 * run.initNoiseSigma, `initNoiseSigma ${s.initNoiseSigma} vs ${run.initNoiseSigma}`);
    if (run.files.sigmas) t.deepEqual(Array.from((s as EulerScheduler).sigmas), Array.from(load('sigmas').data as Float32Array), 'sigmas');
    const [sampleIn, modelOut] = [load('sample_in').data as Float32Array, load('model_output').data as Float32Array];
    const prev = load('prev_sample').data as Float64Array;
    const x0 = run.files.pred_original_sample ? (load('pred_original_sample').data as Float64Array) : null;
    const scaled = run.files.scaled_model_input ? (load('scaled_model_input').data as Float64Array) : null;
    const n = sampleIn.length / s.timesteps.length;
    s.timesteps.forEach((ts, i) => {
      const at = <T extends Float32Array | Float64Array>(a: T) => a.subarray(i * n, (i + 1) * n) as T;
      const xIn = Float32Array.from(at(sampleIn));
      if (scaled) assertAllClose(t, s.scaleModelInput(xIn, ts), at(scaled), tol, `scaleModelInput ${i}`);
      const r = s.step(Float32Array.from(at(modelOut)), ts, xIn);
      assertAllClose(t, r.prevSample, at(prev), tol, `prev_sample ${i}`);
      if (x0) assertAllClose(t, r.predOriginalSample!, at(x0), tol, `pred_original_sample ${i}`);
    });
  });
}
