/**
 * Layer sets: which layers a loss reads (checked against PyTorch autograd: the golden cases' non-zero dL/dmaps),
 * which subsets `prepare` builds, which one a guidance run takes, and that taking it changes nothing: the sampled
 * trajectory equals the one through the full set.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readUnetFolder } from '../../lib/model/folder';
import { familyResolutions, familyTraits } from '../../lib/model/family';
import { chooseLayerSet, layersRead, preparedLayerSets } from '../../lib/model/layer-sets';
import { locatePrepared } from '../../lib/model/prepared';
import type { LossOptions } from '../../lib/loss/types';
import { stepSizes } from '../../lib/pipeline/guidance';
import { sampleLatents, type GuidanceSettings, type GuidedUnet, type NoisePredictor } from '../../lib/pipeline/sampler';
import { OrtGuidedUnet } from '../../lib/pipeline/unet';
import { fromConfig } from '../../lib/schedulers/index';
import { relativeL2 } from '../helpers/assert-close';
import { fixturePath } from '../helpers/fixtures';
import { lossCases } from '../onnx/unet-golden';
import { preparedFixtureModel, removeDir } from '../pipeline/prepared-model';

/** The golden UNet's layers: 2 raw heads each, resolutions from the map sizes. */
function goldenLayers(): Array<{ heads: number; resolution: number }> {
  const m = JSON.parse(fs.readFileSync(fixturePath('golden', 'unet', 'manifest.json'), 'utf8')) as { attention: { layers: { shape: number[] }[] } };
  return m.attention.layers.map((l) => ({ heads: l.shape[0]!, resolution: Math.round(Math.sqrt(l.shape[1]!)) }));
}

const SD1 = familyTraits('sd1');

test('the layers a loss reads are those PyTorch gives a non-zero gradient, for every golden case', (t) => {
  const layers = goldenLayers();
  for (const c of lossCases()) {
    t.deepEqual(
      layersRead(layers, 77, c.options as unknown as LossOptions),
      c.gradMaps.map((g) => g.layer).sort((a, b) => a - b),
      c.name,
    );
  }
});

test('prepare builds the object-layer set and the tv_bind set of the default resolutions; none that is full, empty or repeated', (t) => {
  const layers = goldenLayers();
  const declared = { attentionResolution: 8, attributeResolutions: [32, 16] };
  t.deepEqual(preparedLayerSets(layers, 77, familyResolutions(SD1, declared, 256)), [
    [2, 4, 5],
    [0, 1, 2, 4, 5, 6, 7, 8, 9],
  ]);
  // SD's rule without declared resolutions: height / 32 = 8 at 256², attributes at 32 and 16.
  t.deepEqual(familyResolutions(SD1, {}, 256), { attentionResolution: 8, attributeResolutions: [32, 16] });
  t.deepEqual(familyResolutions(SD1, {}, 512, { attentionResolution: 16 }), { attentionResolution: 16, attributeResolutions: [64, 32] });
  // Attributes at the object resolution only: the tv_bind set is the object set, listed once.
  t.deepEqual(preparedLayerSets(layers, 77, { attentionResolution: 8, attributeResolutions: [8] }), [[2, 4, 5]]);
  // Every layer read: no subset. A resolution the UNet lacks: no subset (the full set serves).
  t.deepEqual(preparedLayerSets(layers, 77, { attentionResolution: 8, attributeResolutions: [32, 16, 4] }), [[2, 4, 5]]);
  t.deepEqual(preparedLayerSets(layers, 77, { attentionResolution: 12, attributeResolutions: [32] }), []);
});

test('a run takes the smallest set holding every layer it reads, else none', (t) => {
  const sets = [
    { layerIndices: [0, 1, 2, 3], id: 'all' },
    { layerIndices: [1, 2], id: 'b' },
    { layerIndices: [2], id: 'a' },
  ];
  t.is(chooseLayerSet(sets, [2])?.id, 'a');
  t.is(chooseLayerSet(sets, [1, 2])?.id, 'b');
  t.is(chooseLayerSet(sets, [0, 2])?.id, 'all');
  t.is(chooseLayerSet(sets.slice(1), [0]), undefined);
});

/** The guided UNet without its layer subsets: every step runs and differentiates every layer. */
function fullOnly(unet: GuidedUnet): GuidedUnet {
  return { layers: unet.layers, textLength: unet.textLength, forward: (s, t, c) => unet.forward(s, t, c), vjp: (f, g) => unet.vjp(f, g) };
}

test.serial("guided runs through the prepared layer subsets follow the full set's trajectory", async (t) => {
  const dir = await preparedFixtureModel();
  try {
    const prepared = locatePrepared(readUnetFolder(dir), { height: 256, width: 256, batch: 1 });
    t.deepEqual(
      prepared.layerSets.map((s) => s.layerIndices),
      [
        [2, 4, 5],
        [0, 1, 2, 4, 5, 6, 7, 8, 9],
      ],
    );
    t.deepEqual(
      prepared.layerSets.map((s) => path.basename(s.forwardFile)),
      ['forward-set1.onnx', 'forward-set2.onnx'],
    );
    const unet = await OrtGuidedUnet.load(prepared);
    try {
      t.is((await unet.forLayers([4])).layers.length, 3);
      t.is((await unet.forLayers([0, 9])).layers.length, 9);
      t.is((await unet.forLayers([3])).layers.length, 10, 'the mid layer is only in the full set');
      const cfg: NoisePredictor = { predict: async (z) => z.map((v) => 0.1 * v) };
      const cond = Float32Array.from({ length: 77 * 32 }, (_, k) => Math.sin(k));
      const z0 = Float32Array.from({ length: 4 * 32 * 32 }, (_, k) => Math.cos(0.37 * k));
      for (const [mode, attributeIndices] of [
        ['tv', undefined],
        ['max', undefined],
        ['tv_bind', [2, 6]],
      ] as const) {
        const settings: GuidanceSettings = {
          mode,
          loss: {
            tokenIndices: [3, 7],
            attentionResolution: 8,
            attributeResolutions: [32, 16],
            ...(attributeIndices ? { attributeIndices: [...attributeIndices] } : {}),
          },
          maxIterToAlter: 2,
          thresholds: { 0: 0.9 },
          caps: { initStep: 2, other: 1 },
          stepSizes: stepSizes(20, [1, 0.5], 3),
        };
        const run = async (g: GuidedUnet) => {
          const scheduler = fromConfig(JSON.parse(fs.readFileSync(path.join(dir, 'scheduler', 'scheduler_config.json'), 'utf8')));
          scheduler.setTimesteps(2);
          return sampleLatents(z0, scheduler, cfg, 7.5, { unet: g, cond, settings });
        };
        const [pruned, full] = [await run(unet), await run(fullOnly(unet))];
        t.true(pruned.steps[0]!.refinementIterations > 0, `${mode}: refinement ran`);
        t.deepEqual(
          pruned.steps.map((s) => s.loss),
          full.steps.map((s) => s.loss),
          `${mode}: losses`,
        );
        t.true(relativeL2(pruned.latents, full.latents) <= 1e-6, `${mode}: final latents`);
      }
    } finally {
      await unet.release();
    }
  } finally {
    removeDir(dir);
  }
});
