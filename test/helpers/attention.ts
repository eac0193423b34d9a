/** Synthetic cross-attention layers: per (head, pixel) a softmax over T of random logits, like the UNet's. */
import type { AttentionLayer, LayerPlace } from '../../lib/loss/types';
import { Rng } from './random';

export interface LayerSpec {
  resolution: number;
  heads: number;
  place?: LayerPlace;
}

/** One layer of post-softmax probabilities [heads, r², T]; `sharpness` scales the logits. */
export function makeLayer(rng: Rng, spec: LayerSpec, T: number, sharpness = 2): AttentionLayer {
  const { resolution, heads } = spec;
  const data = new Float32Array(heads * resolution * resolution * T);
  const logits = new Float64Array(T);
  for (let row = 0; row < heads * resolution * resolution; row++) {
    let max = -Infinity;
    for (let k = 0; k < T; k++) {
      logits[k] = sharpness * rng.normal();
      max = Math.max(max, logits[k]);
    }
    let sum = 0;
    for (let k = 0; k < T; k++) {
      logits[k] = Math.exp(logits[k] - max);
      sum += logits[k];
    }
    for (let k = 0; k < T; k++) data[row * T + k] = logits[k] / sum;
  }
  return { data, heads, resolution, place: spec.place ?? 'down' };
}

export function makeLayers(seed: number, specs: LayerSpec[], T: number, sharpness = 2): AttentionLayer[] {
  const rng = new Rng(seed);
  return specs.map((s) => makeLayer(rng, s, T, sharpness));
}

/** SD 1.x at 512² (spec §1): 5×64², 5×32², 5×16² layers of 8 heads (down then up), 1 mid 8², T = 77. */
export function sdLayerSpecs(heads = 8): LayerSpec[] {
  const specs: LayerSpec[] = [];
  for (const r of [64, 64, 32, 32, 16, 16]) specs.push({ resolution: r, heads, place: 'down' });
  specs.push({ resolution: 8, heads, place: 'mid' });
  for (const r of [16, 16, 16, 32, 32, 32, 64, 64, 64]) specs.push({ resolution: r, heads, place: 'up' });
  return specs;
}

/** A small model: 3 layers at 16² and 3 at 32², 2 heads each. */
export function smallLayerSpecs(): LayerSpec[] {
  return [
    { resolution: 32, heads: 2, place: 'down' },
    { resolution: 16, heads: 2, place: 'down' },
    { resolution: 16, heads: 2, place: 'mid' },
    { resolution: 16, heads: 2, place: 'up' },
    { resolution: 32, heads: 2, place: 'up' },
    { resolution: 32, heads: 2, place: 'up' },
  ];
}

/** Float64 copies of the layers (for float64 finite differences of the JS forward). */
export function toFloat64(layers: AttentionLayer[]): Array<{ data: Float64Array; heads: number; resolution: number; place: LayerPlace }> {
  return layers.map((l) => ({ data: Float64Array.from(l.data), heads: l.heads, resolution: l.resolution, place: l.place }));
}

/** Cheap layers (uniform values, no softmax) for size/speed tests where realism does not matter. */
export function makeUniformLayers(seed: number, specs: LayerSpec[], T: number): AttentionLayer[] {
  const rng = new Rng(seed);
  return specs.map((s) => {
    const data = new Float32Array(s.heads * s.resolution * s.resolution * T);
    for (let i = 0; i < data.length; i++) data[i] = rng.next() * 0.05;
    return { data, heads: s.heads, resolution: s.resolution, place: s.place ?? 'down' };
  });
}
