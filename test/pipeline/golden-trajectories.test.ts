/**
 * Full sampling trajectories against the PyTorch reference loop (tools/reference_pipeline.py, float64) on the tiny
 * reference model: same initial latent → same final latent (≤ 1e-3 relative L2), same per-step loss and θ of the
 * gradient pass, same refinement iteration counts, same decoded image (±2 levels per channel).
 * Modes: plain SD ('none'), A&E ('max'), D&B 'tv' and 'tv_bind'. Fixture format: test/fixtures/README.md.
 */
import test from 'ava';
import { relativeL2 } from '../helpers/assert-close';
import * as fs from 'node:fs';
import { DivBindPipeline, type GenerateOptions } from '../../lib/pipeline/pipeline';
import type { GuidanceMode } from '../../lib/pipeline/guidance';
import { readNpy } from '../../lib/util/npy';
import { fixturePath } from '../helpers/fixtures';
import { preparedFixtureModel, removeDir } from './prepared-model';

interface StepRecord {
  i: number;
  t: number;
  loss?: number;
  indicator?: number;
  refinement?: { iterations: number } | Array<unknown>;
  refinementIterations?: number;
  lossAfterRefinement?: number;
  indicatorAfterRefinement?: number;
  updated?: boolean;
}

interface TrajectoryCase {
  name: string;
  options: Record<string, unknown> & { prompt: string; mode: GuidanceMode; numInferenceSteps: number; guidanceScale: number };
  record: { timesteps: number[]; stepSizes: number[]; steps: StepRecord[] };
  files: { latents: string; guidedLatents: string; image: string };
}

const DIR = fixturePath('golden', 'trajectories');
const index = JSON.parse(fs.readFileSync(`${DIR}/index.json`, 'utf8')) as { version: number; cases: TrajectoryCase[] };

let modelDir = '';
let pipe: DivBindPipeline;
test.before(async () => {
  modelDir = await preparedFixtureModel();
  pipe = await DivBindPipeline.load(modelDir);
});
test.after.always(async () => {
  await pipe?.release();
  if (modelDir) removeDir(modelDir);
});

/** Maps the reference options (camelCase, see the fixture README) to GenerateOptions. */
function generateOptions(c: TrajectoryCase): GenerateOptions {
  const o = c.options as Record<string, any>;
  const initial = readNpy(`${DIR}/${o.initialLatent as string}`).data as Float32Array;
  const g: GenerateOptions = {
    prompt: o.prompt,
    negativePrompt: o.negativePrompt ?? '',
    mode: o.mode,
    steps: o.numInferenceSteps,
    guidanceScale: o.guidanceScale,
    latents: initial,
  };
  if (o.mode !== 'none') {
    g.tokens = { objects: o.tokenIndices, attributes: o.attributeIndices ?? undefined };
    if (o.thresholds) g.thresholds = o.thresholds;
    if (o.maxRefinementStepsInitStep !== undefined) g.refinement = { initStep: o.maxRefinementStepsInitStep, other: o.maxRefinementSteps };
    if (o.maxIterToAlter !== undefined) g.maxIterToAlter = o.maxIterToAlter;
    if (o.scaleFactor !== undefined) g.scaleFactor = o.scaleFactor;
    if (o.scaleRange !== undefined) g.scaleRange = o.scaleRange;
    // The reference's 'max' reports D&B's value L = −min m; A&E's hinge 1 − min m has the same gradient while m < 1.
    g.loss = { ...(o.mode === 'max' ? { maxVariant: 'divbind' as const } : {}), ...(o.lossOptions ?? {}) };
  }
  return g;
}

test('the fixture covers plain SD, A&E and both D&B modes', (t) => {
  t.is(index.version, 1);
  t.deepEqual(index.cases.map((c) => c.options.mode).sort(), ['max', 'none', 'tv', 'tv_bind']);
});

for (const c of index.cases) {
  test.serial(`trajectory ${c.name}: final latent, per-step L/θ and refinement counts match PyTorch`, async (t) => {
    const res = await pipe.generate(generateOptions(c));
    const img = res.images[0];
    t.deepEqual(
      img.steps.map((s) => s.timestep),
      c.record.timesteps,
    );
    const latents = readNpy(`${DIR}/${c.files.latents}`);
    const steps = c.record.timesteps.length;
    const finalRef = (latents.data as Float32Array).subarray((steps - 1) * img.latents.length, steps * img.latents.length);
    const err = relativeL2(img.latents, finalRef);
    t.log(`${c.name}: final latent relative L2 error ${err.toExponential(2)}`);
    t.true(err <= 1e-3, `final latent relative L2 ${err} > 1e-3`);
    for (const ref of c.record.steps) {
      const got = img.steps[ref.i];
      if (ref.loss === undefined) {
        t.is(got.loss, null, `step ${ref.i}: no gradient pass in the reference`);
        continue;
      }
      const refIters = ref.refinementIterations ?? (Array.isArray(ref.refinement) ? ref.refinement.length : (ref.refinement?.iterations ?? 0));
      t.is(got.refinementIterations, refIters, `step ${ref.i}: refinement iterations`);
      // The event reports L/θ after refinement when it ran, else of the gradient pass.
      const refL = refIters > 0 ? ref.lossAfterRefinement! : ref.loss;
      const refTheta = refIters > 0 ? ref.indicatorAfterRefinement! : ref.indicator!;
      t.true(Math.abs(got.loss! - refL) <= 1e-4 + 1e-3 * Math.abs(refL), `step ${ref.i}: L ${got.loss} vs ${refL}`);
      t.true(Math.abs(got.indicator! - refTheta) <= 1e-4 + 1e-3 * Math.abs(refTheta), `step ${ref.i}: θ ${got.indicator} vs ${refTheta}`);
    }
    const image = readNpy(`${DIR}/${c.files.image}`).data as Uint8Array;
    let maxDiff = 0;
    for (let k = 0; k < image.length; k++) maxDiff = Math.max(maxDiff, Math.abs(image[k] - img.rgb[k]));
    t.true(maxDiff <= 2, `decoded image differs by up to ${maxDiff} levels`);
  });
}
