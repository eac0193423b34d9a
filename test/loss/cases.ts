/**
 * Shared loss-test cases: every mode and option the loss has, on small random layers.
 * Object maps at 4², attribute maps from 8² (subsampled) and 2² (upsampled) layers, T = 10 (keeps 1..8).
 */
import type { LossOptions } from '../../lib/loss/types';
import type { LayerSpec } from '../helpers/attention';

export interface LossCase {
  name: string;
  seed: number;
  T: number;
  specs: LayerSpec[];
  options: LossOptions;
}

const SMALL: LayerSpec[] = [
  { resolution: 8, heads: 2, place: 'down' },
  { resolution: 4, heads: 2, place: 'down' },
  { resolution: 2, heads: 2, place: 'mid' },
  { resolution: 4, heads: 1, place: 'up' },
  { resolution: 4, heads: 2, place: 'up' },
  { resolution: 8, heads: 2, place: 'up' },
];

const base = { attentionResolution: 4, attributeResolutions: [8, 2] };

export const LOSS_CASES: LossCase[] = [
  { name: 'tv official', seed: 1, T: 10, specs: SMALL, options: { ...base, mode: 'tv', tokenIndices: [2, 5] } },
  { name: 'tv neighbor', seed: 2, T: 10, specs: SMALL, options: { ...base, mode: 'tv', tvVertical: 'neighbor', tokenIndices: [2, 5, 7] } },
  { name: 'max divbind', seed: 3, T: 10, specs: SMALL, options: { ...base, mode: 'max', tokenIndices: [3, 6] } },
  { name: 'max attend-excite', seed: 4, T: 10, specs: SMALL, options: { ...base, mode: 'max', maxVariant: 'attend-excite', tokenIndices: [3, 6] } },
  { name: 'tv_bind both attributes', seed: 5, T: 10, specs: SMALL, options: { ...base, mode: 'tv_bind', tokenIndices: [2, 5], attributeIndices: [1, 4] } },
  {
    name: 'tv_bind mixed attributes step 12',
    seed: 6,
    T: 10,
    specs: SMALL,
    options: { ...base, mode: 'tv_bind', stepIndex: 12, tokenIndices: [2, 5, 7], attributeIndices: [1, null, 0] },
  },
  { name: 'tv_bind no attributes', seed: 7, T: 10, specs: SMALL, options: { ...base, mode: 'tv_bind', tokenIndices: [2, 5] } },
  {
    name: 'tv_bind attribute maps include r0, neighbor',
    seed: 8,
    T: 10,
    specs: SMALL,
    options: { ...base, attributeResolutions: [8, 4], mode: 'tv_bind', tvVertical: 'neighbor', stepIndex: 25, tokenIndices: [4, 8], attributeIndices: [3, 7] },
  },
  {
    name: 'tv_bind clipped q (rho 0.9, low-TV branch)',
    seed: 9,
    T: 10,
    specs: SMALL,
    options: {
      ...base,
      mode: 'tv_bind',
      bindingRhoLowTv: 0.9,
      bindingRhoHighTv: 0.95,
      bindingTvSwitch: 1e9,
      bindingEpsilon: 1e-4,
      tokenIndices: [2, 5],
      attributeIndices: [6, 1],
    },
  },
  {
    name: 'tv_bind high-TV branch custom schedule',
    seed: 10,
    T: 10,
    specs: SMALL,
    options: {
      ...base,
      mode: 'tv_bind',
      bindingTvSwitch: -1,
      bindingCoefficients: [
        [0, 2],
        [3, 7],
      ],
      stepIndex: 4,
      tokenIndices: [2, 5],
      attributeIndices: [3, 6],
    },
  },
  { name: 'tv_max default weights', seed: 11, T: 10, specs: SMALL, options: { ...base, mode: 'tv_max', tokenIndices: [2, 5] } },
  { name: 'tv_max custom weights', seed: 12, T: 10, specs: SMALL, options: { ...base, mode: 'tv_max', tvMaxWeights: [0.5, 2], tokenIndices: [1, 8] } },
  {
    name: 'until-eot slice',
    seed: 13,
    T: 10,
    specs: SMALL,
    options: { ...base, mode: 'tv_bind', tokenSlice: 'until-eot', eotIndex: 7, tokenIndices: [2, 5], attributeIndices: [1, 6] },
  },
  {
    name: 'smoothing off',
    seed: 14,
    T: 10,
    specs: SMALL,
    options: { ...base, mode: 'tv_bind', smoothing: false, tokenIndices: [2, 5], attributeIndices: [1, 4] },
  },
  {
    name: 'sigma 0.8 temperature 30',
    seed: 15,
    T: 10,
    specs: SMALL,
    options: { ...base, mode: 'tv', smoothingSigma: 0.8, temperature: 30, tokenIndices: [2, 5] },
  },
  {
    name: 'max smoothing off temperature 7',
    seed: 16,
    T: 10,
    specs: SMALL,
    options: { ...base, mode: 'max', smoothing: false, temperature: 7, tokenIndices: [1, 4, 8] },
  },
  {
    name: 'single token, 2x2 object maps',
    seed: 17,
    T: 6,
    specs: [
      { resolution: 2, heads: 3 },
      { resolution: 4, heads: 1 },
    ],
    options: { attentionResolution: 2, attributeResolutions: [4], mode: 'tv_bind', tokenIndices: [3], attributeIndices: [1] },
  },
];
