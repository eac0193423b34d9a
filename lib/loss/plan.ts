/**
 * Which layers and values the loss reads (spec §1), shared by the TS twin (js-backend.ts) and the input
 * checks (validate.ts): object maps average every layer at r0; attribute maps ('tv_bind' with at least one
 * attribute) average the layers at attributeResolutions, nearest-subsampled to r0; only the kept token
 * positions start..start+K-1 enter the softmax.
 */
import type { AttentionLayer } from './types';
import type { NativeLayer, NormalizedLossOptions } from './native-types';

/** Layers as the backend reads them; Float64Array data lets tests take float64 finite differences of the forward. */
export type Layer = AttentionLayer | NativeLayer | { data: Float32Array | Float64Array; heads: number; resolution: number };

export interface LossPlan {
  T: number;
  r0: number;
  n: number;
  /** First kept text position (1: SOT dropped). */
  start: number;
  /** Number of kept positions, start..start+K-1. */
  K: number;
  objectLayers: number[];
  /** Σ heads over objectLayers: the mean is over every (layer, head) map. */
  objectMaps: number;
  /** tv_bind with at least one attribute. */
  useAttributes: boolean;
  attributeLayers: number[];
  attributeMaps: number;
}

export function makePlan(layers: Layer[], o: NormalizedLossOptions): LossPlan {
  const T = o.textLength;
  const r0 = o.attentionResolution;
  const end = o.tokenSlice === 'until-eot' ? o.eotIndex : T - 1;
  const objectLayers: number[] = [];
  let objectMaps = 0;
  const attributeLayers: number[] = [];
  let attributeMaps = 0;
  const useAttributes = o.mode === 'tv_bind' && o.attributeIndices.some((a) => a > 0);
  for (let l = 0; l < layers.length; l++) {
    if (layers[l].resolution === r0) {
      objectLayers.push(l);
      objectMaps += layers[l].heads;
    }
    if (useAttributes && o.attributeResolutions.includes(layers[l].resolution)) {
      attributeLayers.push(l);
      attributeMaps += layers[l].heads;
    }
  }
  return { T, r0, n: r0 * r0, start: 1, K: end - 1, objectLayers, objectMaps, useAttributes, attributeLayers, attributeMaps };
}

/** Nearest subsampling r → r0: output index o reads input ⌊o·r/r0⌋ (torch mode='nearest'). */
export function nearestSource(o: number, r: number, r0: number): number {
  return Math.floor((o * r) / r0);
}

/**
 * Pixels of an r × r layer that the r0 × r0 grid samples (nearest): every pixel when r <= r0; ascending, without
 * repeats. These are the only pixels the loss reads, and the only ones whose gradient can be non-zero.
 */
export function sampledPixels(r: number, r0: number): number[] {
  const set = new Set<number>();
  for (let oy = 0; oy < r0; oy++) {
    for (let ox = 0; ox < r0; ox++) set.add(nearestSource(oy, r, r0) * r + nearestSource(ox, r, r0));
  }
  return [...set].sort((a, b) => a - b);
}

/** Pixels of layer `layerIndex` (at resolution r) that the loss reads: sampledPixels for a layer it uses, else none. */
export function readPixels(plan: LossPlan, layerIndex: number, r: number): number[] {
  if (!plan.objectLayers.includes(layerIndex) && !plan.attributeLayers.includes(layerIndex)) return [];
  return sampledPixels(r, plan.r0);
}
