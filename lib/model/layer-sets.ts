/**
 * Layer sets: which cross-attention layers a loss reads, so a guidance step differentiates only those. `tv`,
 * `max` and `tv_max` read the object-resolution layers; `tv_bind` with attributes also the attribute layers
 * (lib/loss/plan.ts decides, here it is only asked). `prepare` builds a forward and a VJP graph per layer set that
 * the default resolutions give, beside the full set; generate takes the smallest prepared set that holds every
 * layer its loss reads, so other loss options still work (on a bigger set).
 */
import { makePlan } from '../loss/plan';
import type { LossOptions } from '../loss/types';
import { normalizeOptionsFor } from '../loss/validate';

/** What a layer set needs to know of a layer. */
export interface LayerShape {
  heads: number;
  resolution: number;
}

// makePlan reads each layer's resolution and heads only; the maps themselves do not exist yet.
const NO_DATA = new Float32Array(0);

/**
 * Indices of the layers whose maps the loss reads with `options`, ascending. Invalid options throw the loss core's
 * own TypeError / RangeError naming the option.
 */
export function layersRead(layers: readonly LayerShape[], textLength: number, options: LossOptions): number[] {
  const normalized = normalizeOptionsFor({ textLength, resolutions: [...new Set(layers.map((l) => l.resolution))] }, options);
  const plan = makePlan(
    layers.map((l) => ({ data: NO_DATA, heads: l.heads, resolution: l.resolution })),
    normalized,
  );
  return [...new Set([...plan.objectLayers, ...plan.attributeLayers])].sort((a, b) => a - b);
}

/**
 * The proper subsets `prepare` builds graphs for: the layers of the object-only losses and of `tv_bind` with
 * attributes at the default resolutions. Empty, full and repeated sets are left out (the full set always exists).
 */
export function preparedLayerSets(
  layers: readonly LayerShape[],
  textLength: number,
  resolutions: { attentionResolution: number; attributeResolutions: number[] },
): number[][] {
  const present = new Set(layers.map((l) => l.resolution));
  if (!present.has(resolutions.attentionResolution)) return [];
  // One object and one attribute token at the first positions: only the layer choice matters here.
  const attributeResolutions = resolutions.attributeResolutions.filter((r) => present.has(r));
  const objects = layersRead(layers, textLength, { mode: 'tv', tokenIndices: [1], ...resolutions, attributeResolutions });
  const withAttributes =
    attributeResolutions.length === 0
      ? objects
      : layersRead(layers, textLength, { mode: 'tv_bind', tokenIndices: [1], attributeIndices: [2], ...resolutions, attributeResolutions });
  const sets: number[][] = [];
  for (const s of [objects, withAttributes]) {
    if (s.length > 0 && s.length < layers.length && !sets.some((t) => t.join() === s.join())) sets.push(s);
  }
  return sets;
}

/** The smallest of `sets` (layer indices, ascending) that holds every layer of `needed`; undefined when none does. */
export function chooseLayerSet<T extends { layerIndices: readonly number[] }>(sets: readonly T[], needed: readonly number[]): T | undefined {
  let best: T | undefined;
  for (const s of sets) {
    const held = new Set(s.layerIndices);
    if (needed.every((k) => held.has(k)) && (best === undefined || s.layerIndices.length < best.layerIndices.length)) best = s;
  }
  return best;
}
