/**
 * One family's model (tiny-sd2 / tiny-sdxl) against its PyTorch goldens, through the code generate() runs: the
 * tokenizer(s), the text conditioning, the UNet prepared by `prepareModel` (its instrumented forward and VJP
 * graphs, opened as the pipeline opens them), the CFG pass with the added conditions, the loss core on the
 * prepared maps, and whole D&B trajectories. sd2.test.ts and sdxl.test.ts register it. Tolerances are stated per
 * test, with what they allow for.
 */
import test from 'ava';
import * as path from 'node:path';
import { attentionLoss } from '../../lib/loss/index';
import type { LossOptions } from '../../lib/loss/types';
import { readModelFolder, type ModelFolder } from '../../lib/model/folder';
import { sdxlTimeIds } from '../../lib/model/family';
import { locatePrepared } from '../../lib/model/prepared';
import type { GuidanceMode } from '../../lib/pipeline/guidance';
import { DivBindPipeline, type GenerateOptions } from '../../lib/pipeline/pipeline';
import { TextConditioner } from '../../lib/pipeline/text-encoder';
import { CfgUnet, OrtGuidedUnet, type ExtraUnetInput } from '../../lib/pipeline/unet';
import { ClipTokenizer } from '../../lib/tokenizer/clip';
import { readNpy } from '../../lib/util/npy';
import { assertAllClose, relativeL2 } from '../helpers/assert-close';
import { preparedFixtureModel, removeDir } from '../pipeline/prepared-model';
import { goldenArray, goldenJson, goldenPath, row, type FamilyFixture } from './fixtures';

interface Shared {
  dir: string;
  folder: ModelFolder;
  pipe: DivBindPipeline;
  guided: OrtGuidedUnet;
}

interface UnetManifest {
  timestep: number;
  batch2: { out_sample: string; encoder_hidden_states: string; text_embeds?: string; time_ids?: string };
  attention: { layers: Array<{ resolution: number; heads: number; shape: number[]; file: string; name: string }> };
}

/** Float32 copy of a golden array (model inputs). */
const f32 = (a: { data: Float32Array | Float64Array }) => Float32Array.from(a.data);

/** The batch-1 UNet inputs of golden unet/ (SDXL: also its added conditions, as ExtraUnetInputs with cond rows). */
function unetInputs(f: FamilyFixture): { sample: Float32Array; ehs: Float32Array; extra: ExtraUnetInput[] } {
  const sample = f32(goldenArray(f, 'unet', 'sample.npy'));
  const ehs = f32(goldenArray(f, 'unet', 'encoder_hidden_states.npy'));
  if (f.family !== 'sdxl') return { sample, ehs, extra: [] };
  const pooled = f32(goldenArray(f, 'unet', 'text_embeds.npy'));
  const timeIds = f32(goldenArray(f, 'unet', 'time_ids.npy'));
  return {
    sample,
    ehs,
    extra: [
      { name: 'text_embeds', uncond: pooled, cond: pooled, dims: [pooled.length] },
      { name: 'time_ids', uncond: timeIds, cond: timeIds, dims: [6] },
    ],
  };
}

export function registerGoldenSuite(f: FamilyFixture): void {
  const s = {} as Shared;
  test.before(async () => {
    s.dir = await preparedFixtureModel(f.model);
    s.folder = readModelFolder(s.dir);
    s.pipe = await DivBindPipeline.load(s.dir);
    s.guided = await OrtGuidedUnet.load(locatePrepared(s.folder, { height: f.side, width: f.side, batch: 1 }));
  });
  test.after.always(async () => {
    await s.guided?.release();
    await s.pipe?.release();
    if (s.dir) removeDir(s.dir);
  });

  registerTextTests(f, s);
  registerUnetTests(f, s);
  registerLossTests(f, s);
  registerTrajectoryTests(f, s);
}

// ------------------------------------------------------------------------------------------------ text

interface TokenCase {
  name: string;
  prompt: string;
  pieces: string[];
  ids: number[];
  ids2?: number[];
  eotIndex: number;
  truncated: boolean;
}

function registerTextTests(f: FamilyFixture, s: Shared): void {
  test(`${f.family}: tokenizer ids, padding and EOT index equal the golden (exactly)`, (t) => {
    const golden = goldenJson<{ padId: number; padId2?: number; cases: TokenCase[] }>(f, 'tokenizer', 'tokens.json');
    const tok = ClipTokenizer.fromDirectory(path.join(s.dir, 'tokenizer'));
    const tok2 = f.family === 'sdxl' ? ClipTokenizer.fromDirectory(path.join(s.dir, 'tokenizer_2')) : undefined;
    t.is(tok.padId, golden.padId);
    if (tok2) t.is(tok2.padId, golden.padId2!);
    t.true(golden.cases.length >= 20);
    for (const c of golden.cases) {
      const enc = tok.encode(c.prompt);
      t.deepEqual(enc.tokens, c.pieces, `${c.name} pieces`);
      t.deepEqual(enc.ids, c.ids, `${c.name} ids`);
      t.is(enc.eotIndex, c.eotIndex, `${c.name} eotIndex`);
      t.is(enc.truncated, c.truncated, `${c.name} truncated`);
      if (tok2) t.deepEqual(tok2.encode(c.prompt).ids, c.ids2, `${c.name} tokenizer_2 ids`);
    }
  });

  // ORT float32 against PyTorch float32 on CPU: a few ulps of values up to ~7 (atol 1e-5, rtol 1e-5).
  const tol = { atol: 1e-5, rtol: 1e-5 };
  test(`${f.family}: the text conditioning of each prompt equals the golden encoder outputs (atol 1e-5 + rtol 1e-5)`, async (t) => {
    const conditioner = await TextConditioner.load(s.folder, s.pipe.tokenizer);
    try {
      const prompts = goldenJson<{ prompts: string[] }>(f, 'text_encoder', 'manifest.json').prompts;
      const context =
        f.family === 'sdxl' ? goldenArray(f, 'conditioning', 'encoder_hidden_states.npy') : goldenArray(f, 'text_encoder', 'last_hidden_state.npy');
      for (const [k, prompt] of prompts.entries()) {
        const got = await conditioner.encode(prompt);
        t.deepEqual(got.dims, [77, context.shape[2]]);
        assertAllClose(t, got.context, row(context.data, prompts.length, k), tol, `encoder_hidden_states of ${JSON.stringify(prompt)}`);
        if (f.family !== 'sdxl') continue;
        assertAllClose(
          t,
          got.pooled!,
          row(goldenArray(f, 'conditioning', 'text_embeds.npy').data, prompts.length, k),
          tol,
          `text_embeds of ${JSON.stringify(prompt)}`,
        );
      }
      if (f.family === 'sdxl') t.deepEqual(Array.from(goldenArray(f, 'conditioning', 'time_ids.npy').data.subarray(0, 6)), Array.from(sdxlTimeIds(1024, 1024)));
    } finally {
      await conditioner.release();
    }
  });
}

// ------------------------------------------------------------------------------------------------ UNet

function registerUnetTests(f: FamilyFixture, s: Shared): void {
  const manifest = goldenJson<UnetManifest>(f, 'unet', 'manifest.json');
  test(`${f.family}: prepare finds every cross-attention layer at the golden's resolutions and head counts`, (t) => {
    const layers = manifest.attention.layers;
    t.is(s.guided.layers.length, layers.length);
    t.deepEqual(
      s.guided.layers.map((l) => l.resolution),
      layers.map((l) => l.resolution),
    );
    const prepared = locatePrepared(s.folder, { height: f.side, width: f.side, batch: 1 });
    t.deepEqual(
      prepared.manifest.attention.layers.map((l) => l.heads),
      layers.map((l) => l.heads),
    );
    t.deepEqual(
      prepared.manifest.attention.layers.map((l) => l.scope.replace(/^\//, '').replace(/\//g, '.')),
      layers.map((l) => l.name),
    );
    t.is(prepared.manifest.height, f.side, "prepared at the family's default size");
  });

  // The prepared graph's maps against PyTorch's probabilities (columns 0..9 are stored), head by head where the
  // set keeps raw maps (heads differ between levels), else against the mean over heads. ORT vs PyTorch float32,
  // probabilities ≤ 1: atol 1e-5.
  test(`${f.family}: the prepared forward graph's attention maps equal the golden maps (atol 1e-5)`, async (t) => {
    const { sample, ehs, extra } = unetInputs(f);
    const fwd = await s.guided.withExtraInputs(extra).forward(sample, manifest.timestep, ehs);
    manifest.attention.layers.forEach((l, k) => {
      const [heads, hw, cols] = l.shape as [number, number, number];
      const golden = readNpy(goldenPath(f, 'unet', l.file)).data as Float32Array;
      const ourHeads = s.guided.layers[k]!.heads;
      t.true(ourHeads === heads || ourHeads === 1, `layer ${k}: ${ourHeads} maps for ${heads} heads`);
      const want = new Float64Array(ourHeads * hw * cols);
      for (let h = 0; h < heads; h++)
        for (let i = 0; i < hw * cols; i++) want[(ourHeads === 1 ? 0 : h * hw * cols) + i] += golden[h * hw * cols + i]! / (ourHeads === 1 ? heads : 1);
      const ours = new Float32Array(ourHeads * hw * cols);
      for (let p = 0; p < ourHeads * hw; p++) ours.set(fwd.maps[k]!.subarray(p * 77, p * 77 + cols), p * cols);
      assertAllClose(t, ours, want, { atol: 1e-5, rtol: 0 }, `layer ${k} ${l.name}`);
    });
  });

  // The CFG pass: one batch-2 call [uncond, cond] (SDXL: zero uncond embeddings, its added conditions per row),
  // combined ε_u + s·(ε_c − ε_u), against the same combination of PyTorch's batch-2 output. Outputs up to ~5: atol 1e-4.
  test(`${f.family}: the CFG pass reproduces the golden batch-2 UNet output (atol 1e-4 + rtol 1e-4)`, async (t) => {
    const sample = f32(goldenArray(f, 'unet', 'sample.npy'));
    const ehs = f32(goldenArray(f, 'unet', manifest.batch2.encoder_hidden_states));
    const out = goldenArray(f, 'unet', manifest.batch2.out_sample).data;
    const extra: ExtraUnetInput[] = [];
    for (const name of ['text_embeds', 'time_ids'] as const) {
      const file = manifest.batch2[name];
      if (file === undefined) continue;
      const a = f32(goldenArray(f, 'unet', file));
      extra.push({ name, uncond: row(a, 2, 0), cond: row(a, 2, 1), dims: [a.length / 2] });
    }
    if (f.family === 'sdxl') t.true(row(ehs, 2, 0).every((v) => v === 0) && extra[0]!.uncond.every((v) => v === 0), 'SDXL uncond rows are zeros');
    const unet = await CfgUnet.load(s.folder.unetFile);
    try {
      const T = 77;
      const cfg = CfgUnet.bind(unet, [4, f.side / 8, f.side / 8], row(ehs, 2, 0), row(ehs, 2, 1), [T, ehs.length / 2 / T], extra);
      const got = await cfg.predict(sample, manifest.timestep, f.guidanceScale);
      const [u, c] = [row(out, 2, 0), row(out, 2, 1)];
      const want = Float64Array.from(u, (x, i) => x + f.guidanceScale * (c[i]! - x));
      assertAllClose(t, got, want, { atol: 1e-4, rtol: 1e-4 }, 'CFG noise prediction');
    } finally {
      await unet.session.release();
    }
  });
}

// ------------------------------------------------------------------------------------------------ loss, VJP

interface LossCase {
  name: string;
  options: LossOptions;
  expected: { loss: number; indicator: number };
  gradSample: string;
  gradSampleFloat32VsFloat64RelL2: number;
}

function registerLossTests(f: FamilyFixture, s: Shared): void {
  const cases = goldenJson<{ cases: LossCase[] }>(f, 'losses', 'manifest.json').cases;
  const timestep = goldenJson<UnetManifest>(f, 'unet', 'manifest.json').timestep;
  // L and θ: the loss core (float64 accumulation) on ORT's float32 maps, against PyTorch's float64 loss of PyTorch's
  // float32 maps: the maps differ by ~1e-6, so atol 1e-5. dL/dsample: the prepared VJP graph (float32) fed the loss
  // core's dL/dmaps, against the float64 gradient: ≤ 1e-4 relative L2, as test/onnx/vjp-unet.test.ts (PyTorch's own
  // float32 UNet is at 2e-6 … 7e-6).
  test(`${f.family}: L, θ and dL/dsample through the prepared VJP graph match the golden for every loss case`, async (t) => {
    t.deepEqual(
      cases.map((c) => c.name),
      ['max', 'tv', 'tv_bind', 'tv-all-but-last'],
    );
    const { sample, ehs, extra } = unetInputs(f);
    const unet = s.guided.withExtraInputs(extra);
    const fwd = await unet.forward(sample, timestep, ehs);
    const layers = fwd.maps.map((data, k) => ({ data, heads: unet.layers[k]!.heads, resolution: unet.layers[k]!.resolution, place: unet.layers[k]!.place }));
    for (const c of cases) {
      const r = attentionLoss(layers, c.options);
      t.true(Math.abs(r.loss - c.expected.loss) <= 1e-5, `${c.name}: L ${r.loss} vs ${c.expected.loss}`);
      t.true(Math.abs(r.indicator - c.expected.indicator) <= 1e-5, `${c.name}: θ ${r.indicator} vs ${c.expected.indicator}`);
      const grad = await unet.vjp(fwd, r.grads!);
      const golden = goldenArray(f, 'losses', c.gradSample).data;
      const err = relativeL2(grad, golden);
      t.log(
        `${c.name}: L ${r.loss.toFixed(6)} θ ${r.indicator.toFixed(6)}; dL/dsample rel L2 ${err.toExponential(2)} (PyTorch float32: ${c.gradSampleFloat32VsFloat64RelL2.toExponential(1)})`,
      );
      t.true(err <= 1e-4, `${c.name}: dL/dsample rel L2 ${err}`);
    }
  });
}

// ------------------------------------------------------------------------------------------------ trajectories

interface StepRecord {
  i: number;
  loss?: number;
  indicator?: number;
  refinementIterations?: number;
  lossAfterRefinement?: number;
  indicatorAfterRefinement?: number;
}

/** The reference run's options (test/fixtures/README.md); the guided keys are absent for mode 'none'. */
interface TrajectoryOptions {
  prompt: string;
  negativePrompt: string;
  mode: GuidanceMode;
  numInferenceSteps: number;
  guidanceScale: number;
  scheduler: string;
  initialLatent: string;
  tokenIndices: number[];
  attributeIndices: Array<number | null> | null;
  thresholds: Record<number, number>;
  maxRefinementStepsInitStep: number;
  maxRefinementSteps: number;
  maxIterToAlter: number;
  scaleFactor: number;
  scaleRange: [number, number];
  lossOptions: Record<string, unknown>;
}

interface TrajectoryCase {
  name: string;
  options: TrajectoryOptions;
  record: { timesteps: number[]; steps: StepRecord[] };
  files: { finalLatent: string; imageCrop: string };
}

const SCHEDULERS: Array<[RegExp, 'pndm' | 'ddim' | 'euler']> = [
  [/^PNDM/, 'pndm'],
  [/^DDIM/, 'ddim'],
  [/^Euler/, 'euler'],
];

/** The reference case as generate() options. Loss options are left to the family's defaults (checked against the case). */
function generateOptions(f: FamilyFixture, c: TrajectoryCase): GenerateOptions {
  const o = c.options;
  const dir = goldenPath(f, 'trajectories');
  const g: GenerateOptions = {
    prompt: o.prompt,
    negativePrompt: o.negativePrompt,
    mode: o.mode,
    steps: o.numInferenceSteps,
    guidanceScale: o.guidanceScale,
    scheduler: SCHEDULERS.find(([re]) => re.test(o.scheduler))![1],
    // z₀ = initial_latent × initNoiseSigma: generate() scales given latents by the scheduler's, as diffusers does.
    latents: readNpy(path.join(dir, o.initialLatent)).data as Float32Array,
  };
  if (o.mode === 'none') return g;
  return {
    ...g,
    tokens: { objects: o.tokenIndices, attributes: o.attributeIndices ?? undefined },
    thresholds: o.thresholds,
    refinement: { initStep: o.maxRefinementStepsInitStep, other: o.maxRefinementSteps },
    maxIterToAlter: o.maxIterToAlter,
    scaleFactor: o.scaleFactor,
    scaleRange: o.scaleRange,
    // The reference's 'max' is D&B's L = −min m; A&E's hinge 1 − min m has the same gradient while m < 1.
    ...(o.mode === 'max' ? { loss: { maxVariant: 'divbind' as const } } : {}),
  };
}

function registerTrajectoryTests(f: FamilyFixture, s: Shared): void {
  const index = goldenJson<{ family: string; cases: TrajectoryCase[] }>(f, 'trajectories', 'index.json');
  test(`${f.family}: the trajectory fixture covers plain SD and the guided modes, with the family's loss defaults`, (t) => {
    t.is(index.family, f.family);
    t.deepEqual([...new Set(index.cases.map((c) => c.options.mode))].sort(), ['max', 'none', 'tv', 'tv_bind']);
    for (const c of index.cases.filter((x) => x.options.mode !== 'none')) {
      const plan = s.pipe.plan(generateOptions(f, c));
      const { attentionResolution, attributeResolutions, tokenSlice, eotIndex } = plan.loss!;
      t.deepEqual({ attentionResolution, attributeResolutions, tokenSlice, eotIndex }, c.options.lossOptions, `${c.name}: loss options from the family`);
      t.is(plan.guidanceScale, c.options.guidanceScale);
    }
  });

  for (const c of index.cases) {
    // As test/pipeline/golden-trajectories.test.ts: the final latent within 1e-3 relative L2 of the float64 run,
    // L/θ per step within 1e-4 + 1e-3·|ref|, equal refinement counts, the decoded image within ±2 levels.
    test.serial(`${f.family} trajectory ${c.name}: final latent, per-step L/θ, refinement counts and image match PyTorch`, async (t) => {
      const img = (await s.pipe.generate(generateOptions(f, c))).images[0]!;
      t.deepEqual(
        img.steps.map((x) => x.timestep),
        c.record.timesteps,
      );
      const err = relativeL2(img.latents, goldenArray(f, 'trajectories', c.files.finalLatent).data);
      t.log(`${f.family} ${c.name}: final latent relative L2 error ${err.toExponential(2)}`);
      t.true(err <= 1e-3, `final latent relative L2 ${err} > 1e-3`);
      for (const ref of c.record.steps) {
        const got = img.steps[ref.i]!;
        if (ref.loss === undefined) {
          t.is(got.loss, null, `step ${ref.i}: no gradient pass in the reference`);
          continue;
        }
        const iters = ref.refinementIterations ?? 0;
        t.is(got.refinementIterations, iters, `step ${ref.i}: refinement iterations`);
        const [refL, refTheta] = iters > 0 ? [ref.lossAfterRefinement!, ref.indicatorAfterRefinement!] : [ref.loss, ref.indicator!];
        t.true(Math.abs(got.loss! - refL) <= 1e-4 + 1e-3 * Math.abs(refL), `step ${ref.i}: L ${got.loss} vs ${refL}`);
        t.true(Math.abs(got.indicator! - refTheta) <= 1e-4 + 1e-3 * Math.abs(refTheta), `step ${ref.i}: θ ${got.indicator} vs ${refTheta}`);
      }
      const crop = readNpy(goldenPath(f, 'trajectories', c.files.imageCrop)).data as Uint8Array;
      let maxDiff = 0;
      for (let y = 0; y < 64; y++)
        for (let x = 0; x < 64 * 3; x++) maxDiff = Math.max(maxDiff, Math.abs(crop[y * 64 * 3 + x]! - img.rgb[y * img.width * 3 + x]!));
      t.true(maxDiff <= 2, `decoded image differs by up to ${maxDiff} levels`);
    });
  }
}
