/**
 * Reverse-mode differentiation of ONNX graphs (the UNet's VJP graph). See `build.ts` for the method and
 * `rules.ts` for the per-op gradients.
 */
export { buildVjp, gradName } from './build';
export type { VjpDesign, VjpOptions, VjpResult, VjpStats } from './build';
export { RULES as VJP_RULES } from './rules';
export { pruneToOutputs } from './prune';
