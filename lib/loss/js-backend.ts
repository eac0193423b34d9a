/**
 * Pure TypeScript twin of the C++ loss core (native/core/attention_loss.cc): same inputs, same outputs,
 * float64 work buffers, float32 results. It is the oracle the native tests compare against and the
 * fallback when the addon is not built. Spec: docs/divide-and-bind.md §1, §2.
 *
 * Shapes:
 *   layer probs P_l   (heads_l, r_l², T)     row-major, as the UNet gives them
 *   aggregates Ā       (n, T), n = r0²        object mean (layers at r0) / attribute mean (subsampled)
 *   token softmax S    (n, K), K kept tokens  positions start..end-1 of the text axis
 *   maps X, A, C       (n,) = (r0, r0)        one token's column, smoothed
 *
 * The loss reads the layers only through the two aggregates, so the backward first computes dĀ (n, T)
 * and then writes one (r², T) gradient pattern per resolution into every head of every layer.
 * Forward functions sit directly above their backward; each backward quotes the forward lines in reverse.
 * Gradient conventions (PyTorch's): full-tensor max splits the gradient evenly among tied maxima, the
 * aggregate max over tokens gives it all to the FIRST maximal token, relu'(0) = 0, |x|'(0) = 0.
 */
import { GRAD_STATE, type GradStateValue, type NativeLossResult, type NativeTokenResult, type NormalizedLossOptions } from './native-types';
import { makePlan, nearestSource, sampledPixels, type Layer, type LossPlan } from './plan';
import { throwFirstNonFinite } from './validate';

export { makePlan, type Layer, type LossPlan } from './plan';

// ---------------------------------------------------------------------------------------------------------
// 1. Aggregation over layers and heads (§1)

/** out (n, T) += Σ_h P[h] for a layer at r0. */
export function aggregateObjectAdd(out: Float64Array, layer: Layer): void {
  const { data, heads } = layer;
  const size = out.length;
  for (let h = 0; h < heads; h++) {
    const base = h * size;
    for (let i = 0; i < size; i++) out[i] += data[base + i];
  }
}

/** out (n, T) += Σ_h P[h, src(o), :], src = nearest subsampling r → r0 (output o reads ⌊o·r/r0⌋). */
export function aggregateAttributeAdd(out: Float64Array, layer: Layer, r0: number, T: number): void {
  const { data, heads, resolution: r } = layer;
  for (let h = 0; h < heads; h++) {
    const headBase = h * r * r * T;
    for (let oy = 0; oy < r0; oy++) {
      const sy = nearestSource(oy, r, r0);
      for (let ox = 0; ox < r0; ox++) {
        const sx = nearestSource(ox, r, r0);
        const src = headBase + (sy * r + sx) * T;
        const dst = (oy * r0 + ox) * T;
        for (let k = 0; k < T; k++) out[dst + k] += data[src + k];
      }
    }
  }
}

export function scaleInPlace(a: Float64Array, s: number): void {
  for (let i = 0; i < a.length; i++) a[i] *= s;
}

/**
 * Reusable large buffers (the (r², T) gradient patterns: 1.2 MB at 64², T = 77). Allocating them per call
 * makes V8 account external memory and start GCs that block the event loop for tens of milliseconds.
 * take() returns a zeroed buffer; give() returns it (a few per length are kept).
 */
class BufferPool<A extends Float32Array | Float64Array> {
  private readonly free = new Map<number, A[]>();
  constructor(private readonly make: (length: number) => A) {}

  take(length: number): A {
    const buffer = this.free.get(length)?.pop();
    if (!buffer) return this.make(length);
    buffer.fill(0);
    return buffer;
  }

  give(buffer: A): void {
    const list = this.free.get(buffer.length) ?? [];
    if (list.length < 4) list.push(buffer);
    this.free.set(buffer.length, list);
  }
}

const POOL64 = new BufferPool<Float64Array>((n) => new Float64Array(n));
const POOL32 = new BufferPool<Float32Array>((n) => new Float32Array(n));

/**
 * Backward of the aggregation. dĀ_obj, dĀ_attr are (n, T) (null: that source gets no gradient). Returns the
 * float32 gradient pattern (r², T) shared by every head of every layer at resolution r, for the resolutions
 * that receive a gradient (the others get zeros). Give the patterns back with releasePatterns once written.
 * forward: Ā_obj = (1/N_obj) Σ_{l at r0, h} P_l[h];  Ā_attr[o] = (1/N_attr) Σ_{l in attr, h} P_l[h, src(o)].
 */
export function aggregateBackwardPatterns(
  plan: LossPlan,
  layers: Layer[],
  attributeResolutions: number[],
  dObject: Float64Array | null,
  dAttribute: Float64Array | null,
): Map<number, Float32Array> {
  const { r0, T } = plan;
  const patterns = new Map<number, Float32Array>();
  const resolutions = new Set<number>();
  if (dObject) for (const l of plan.objectLayers) resolutions.add(layers[l].resolution);
  if (dAttribute) for (const l of plan.attributeLayers) resolutions.add(layers[l].resolution);
  for (const r of resolutions) {
    const acc = POOL64.take(r * r * T);
    // 2) attribute layers: each output pixel o sends dĀ_attr[o] / N_attr back to its source pixel src(o)
    //    (several o share a source when r < r0, hence the float64 accumulator).
    if (dAttribute && attributeResolutions.includes(r)) {
      const s = 1 / plan.attributeMaps;
      for (let oy = 0; oy < r0; oy++) {
        const sy = nearestSource(oy, r, r0);
        for (let ox = 0; ox < r0; ox++) {
          const sx = nearestSource(ox, r, r0);
          const src = (sy * r + sx) * T;
          const dst = (oy * r0 + ox) * T;
          for (let k = 0; k < T; k++) acc[src + k] += dAttribute[dst + k] * s;
        }
      }
    }
    // 1) object layers: every head receives dĀ_obj / N_obj.
    if (dObject && r === r0) {
      const s = 1 / plan.objectMaps;
      for (let i = 0; i < acc.length; i++) acc[i] += dObject[i] * s;
    }
    const pattern = POOL32.take(acc.length);
    pattern.set(acc); // the one rounding to float32
    POOL64.give(acc);
    patterns.set(r, pattern);
  }
  return patterns;
}

export function releasePatterns(patterns: Map<number, Float32Array>): void {
  for (const p of patterns.values()) POOL32.give(p);
}

/**
 * Writes heads [headStart, headEnd) of one layer's gradient: with prior 'unknown', every float (the pattern, or
 * zeros); otherwise the buffer holds zeros outside the sampled pixel rows (`pixels`, for this r0), so only those
 * rows are written: the pattern's, or zeros when the layer gets no gradient now but may hold the last call's.
 * Same contract as native/core/gradient_write.h.
 */
export function writeLayerGrad(
  grad: Float32Array,
  layer: Layer,
  pattern: Float32Array | undefined,
  prior: GradStateValue,
  pixels: () => number[],
  headStart = 0,
  headEnd = layer.heads,
): void {
  const perHead = grad.length / layer.heads;
  if (prior === GRAD_STATE.unknown) {
    if (!pattern) grad.fill(0, headStart * perHead, headEnd * perHead);
    else for (let h = headStart; h < headEnd; h++) grad.set(pattern, h * perHead);
    return;
  }
  if (!pattern && prior === GRAD_STATE.zero) return;
  const T = perHead / (layer.resolution * layer.resolution);
  for (let h = headStart; h < headEnd; h++) {
    for (const p of pixels()) {
      const at = h * perHead + p * T;
      if (pattern) grad.set(pattern.subarray(p * T, p * T + T), at);
      else grad.fill(0, at, at + T);
    }
  }
}

/** The state writeLayerGrad leaves a buffer in. */
export function gradStateAfter(pattern: Float32Array | undefined): GradStateValue {
  return pattern ? GRAD_STATE.sampled : GRAD_STATE.zero;
}

/** Sampled pixel rows per resolution, computed once per call (only sparse writes need them). */
function pixelCache(r0: number): (r: number) => () => number[] {
  const cache = new Map<number, number[]>();
  return (r) => () => {
    let pixels = cache.get(r);
    if (!pixels) {
      pixels = sampledPixels(r, r0);
      cache.set(r, pixels);
    }
    return pixels;
  };
}

// ---------------------------------------------------------------------------------------------------------
// 2. Token softmax (§1: slice, ×temperature, softmax over kept positions per pixel)

/** S (n, K) = softmax_j(temperature · Ā[p, start + j]). */
export function tokenSoftmaxForward(S: Float64Array, agg: Float64Array, n: number, T: number, start: number, K: number, temperature: number): void {
  for (let p = 0; p < n; p++) {
    const row = p * T + start;
    const out = p * K;
    let max = -Infinity;
    for (let j = 0; j < K; j++) {
      const z = temperature * agg[row + j];
      S[out + j] = z;
      if (z > max) max = z;
    }
    let sum = 0;
    for (let j = 0; j < K; j++) {
      const e = Math.exp(S[out + j] - max);
      S[out + j] = e;
      sum += e;
    }
    for (let j = 0; j < K; j++) S[out + j] /= sum;
  }
}

/**
 * dĀ (n, T) += backward of the token softmax for a gradient g (n) on column c only.
 * forward: S[p, j] = softmax_j(temperature · Ā[p, start + j])
 *   → dZ[p, j] = S[p, j]·(δ_jc − S[p, c])·g[p];  dĀ[p, start + j] += temperature · dZ[p, j]
 */
export function tokenSoftmaxBackwardColumn(
  dAgg: Float64Array,
  S: Float64Array,
  g: Float64Array,
  c: number,
  n: number,
  T: number,
  start: number,
  K: number,
  temperature: number,
): void {
  for (let p = 0; p < n; p++) {
    const row = p * T + start;
    const s = p * K;
    const sc = S[s + c];
    const gp = g[p];
    if (gp === 0) continue;
    for (let j = 0; j < K; j++) dAgg[row + j] -= temperature * S[s + j] * sc * gp;
    dAgg[row + c] += temperature * sc * gp;
  }
}

/** Copies column c of S (n, K) into x (n). */
function column(x: Float64Array, S: Float64Array, c: number, n: number, K: number): void {
  for (let p = 0; p < n; p++) x[p] = S[p * K + c];
}

// ---------------------------------------------------------------------------------------------------------
// 3. Gaussian smoothing (§1: 3×3, 1-D weights exp(-((x-1)/(2σ))²) normalised, reflect padding of 1)

/** Normalised 1-D weights [g0, g1, g2]; the 2-D kernel is their outer product. */
export function gaussianWeights(sigma: number): [number, number, number] {
  const side = Math.exp(-((1 / (2 * sigma)) ** 2));
  const sum = 1 + 2 * side;
  return [side / sum, 1 / sum, side / sum];
}

/** Reflect index into 0..r-1 for padding 1 (padded[-1] = x[1], padded[r] = x[r-2]). */
function reflect(i: number, r: number): number {
  return i < 0 ? -i : i >= r ? 2 * (r - 1) - i : i;
}

/** out (r, r) = valid 3×3 correlation of the reflect-padded x with g⊗g. */
export function smoothForward(out: Float64Array, x: Float64Array, r: number, g: readonly number[]): void {
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < r; j++) {
      let acc = 0;
      for (let a = 0; a < 3; a++) {
        const row = reflect(i + a - 1, r) * r;
        for (let b = 0; b < 3; b++) acc += g[a] * g[b] * x[row + reflect(j + b - 1, r)];
      }
      out[i * r + j] = acc;
    }
  }
}

/**
 * dx (r, r) += adjoint of smoothForward applied to dout.
 * forward: out[i,j] = Σ_ab g[a]g[b]·x[refl(i+a-1), refl(j+b-1)]  →  dx[refl(..), refl(..)] += g[a]g[b]·dout[i,j]
 */
export function smoothBackward(dx: Float64Array, dout: Float64Array, r: number, g: readonly number[]): void {
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < r; j++) {
      const d = dout[i * r + j];
      if (d === 0) continue;
      for (let a = 0; a < 3; a++) {
        const row = reflect(i + a - 1, r) * r;
        for (let b = 0; b < 3; b++) dx[row + reflect(j + b - 1, r)] += g[a] * g[b] * d;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// 4. Map maximum m = max A (§2.1); ties share the gradient evenly (torch full-reduction max)

export function mapMaxForward(a: Float64Array): number {
  let m = -Infinity;
  for (let i = 0; i < a.length; i++) if (a[i] > m) m = a[i];
  return m;
}

/** forward: m = max_i a[i]  →  da[i] += dm / #ties for every i with a[i] == m. */
export function mapMaxBackward(da: Float64Array, a: Float64Array, m: number, dm: number): void {
  if (dm === 0) return;
  let ties = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === m) ties++;
  const share = dm / ties;
  for (let i = 0; i < a.length; i++) if (a[i] === m) da[i] += share;
}

// ---------------------------------------------------------------------------------------------------------
// 5. Total variation (§2.2): H + V, both L1 means over r·(r-1) pairs

function sign(x: number): number {
  return x > 0 ? 1 : x < 0 ? -1 : 0;
}

export function tvForward(a: Float64Array, r: number, vertical: 'official' | 'neighbor'): number {
  const pairs = r * (r - 1);
  let h = 0;
  for (let i = 0; i < r; i++) for (let j = 0; j < r - 1; j++) h += Math.abs(a[i * r + j] - a[i * r + j + 1]);
  let v = 0;
  if (vertical === 'official') {
    // Rows 1..r-1 against the LAST row (the official broadcasting quirk; the r-1 term is 0 but counts).
    const last = (r - 1) * r;
    for (let i = 1; i < r; i++) for (let j = 0; j < r; j++) v += Math.abs(a[last + j] - a[i * r + j]);
  } else {
    for (let i = 0; i < r - 1; i++) for (let j = 0; j < r; j++) v += Math.abs(a[(i + 1) * r + j] - a[i * r + j]);
  }
  return h / pairs + v / pairs;
}

/** da += dTV · ∂TV/∂a, with |x|'(0) = 0. */
export function tvBackward(da: Float64Array, a: Float64Array, r: number, vertical: 'official' | 'neighbor', dtv: number): void {
  if (dtv === 0) return;
  const s = dtv / (r * (r - 1));
  // 2) forward: v += |a[last, j] - a[i, j]|  (official)  or  |a[i+1, j] - a[i, j]|  (neighbor)
  if (vertical === 'official') {
    const last = (r - 1) * r;
    for (let i = 1; i < r; i++) {
      for (let j = 0; j < r; j++) {
        const d = sign(a[last + j] - a[i * r + j]) * s;
        da[last + j] += d;
        da[i * r + j] -= d;
      }
    }
  } else {
    for (let i = 0; i < r - 1; i++) {
      for (let j = 0; j < r; j++) {
        const d = sign(a[(i + 1) * r + j] - a[i * r + j]) * s;
        da[(i + 1) * r + j] += d;
        da[i * r + j] -= d;
      }
    }
  }
  // 1) forward: h += |a[i, j] - a[i, j+1]|
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < r - 1; j++) {
      const d = sign(a[i * r + j] - a[i * r + j + 1]) * s;
      da[i * r + j] += d;
      da[i * r + j + 1] -= d;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// 6. Binding JSD (§2.3)

interface JsdCache {
  mO: number;
  mC: number;
  rho: number;
  cr: Float64Array;
  p: Float64Array;
  q: Float64Array;
  pMax: number;
  tau: number;
  pp: Float64Array;
  qq: Float64Array;
  m: Float64Array;
}

function spatialSoftmax(out: Float64Array, x: Float64Array): void {
  let max = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] > max) max = x[i];
  let sum = 0;
  for (let i = 0; i < x.length; i++) {
    out[i] = Math.exp(x[i] - max);
    sum += out[i];
  }
  for (let i = 0; i < x.length; i++) out[i] /= sum;
}

/** JSD between the object map o and the attribute map c (both (n,), smoothed); rho picked from TV by the caller. */
export function jsdForward(o: Float64Array, c: Float64Array, rho: number, eps: number): { jsd: number; cache: JsdCache } {
  const n = o.length;
  // 1) peaks of both maps
  const mO = mapMaxForward(o);
  const mC = mapMaxForward(c);
  // 2) rescale the attribute map to the object's peak: Cr = C / max(C) · max(O)
  const cr = new Float64Array(n);
  for (let i = 0; i < n; i++) cr[i] = (c[i] / mC) * mO;
  // 3) p = softmax(vec O);  4) q = softmax(vec Cr)
  const p = new Float64Array(n);
  const q = new Float64Array(n);
  spatialSoftmax(p, o);
  spatialSoftmax(q, cr);
  // 5) one threshold for both, from the object softmax: τ = ρ·max(p)
  const pMax = mapMaxForward(p);
  const tau = rho * pMax;
  // 6) p' = relu(p - τ) + ε;  q' = relu(q - τ) + ε  (no renormalisation)
  const pp = new Float64Array(n);
  const qq = new Float64Array(n);
  const m = new Float64Array(n);
  let jsd = 0;
  for (let i = 0; i < n; i++) {
    pp[i] = Math.max(p[i] - tau, 0) + eps;
    qq[i] = Math.max(q[i] - tau, 0) + eps;
    // 7) M = (p' + q')/2;  J = ½Σ p'(ln p' − ln M) + ½Σ q'(ln q' − ln M)
    m[i] = 0.5 * (pp[i] + qq[i]);
    const lm = Math.log(m[i]);
    jsd += 0.5 * pp[i] * (Math.log(pp[i]) - lm) + 0.5 * qq[i] * (Math.log(qq[i]) - lm);
  }
  return { jsd, cache: { mO, mC, rho, cr, p, q, pMax, tau, pp, qq, m } };
}

/** do_ += ∂J/∂o · dJ, dc += ∂J/∂c · dJ. */
export function jsdBackward(dO: Float64Array, dC: Float64Array, o: Float64Array, c: Float64Array, cache: JsdCache, dJ: number): void {
  if (dJ === 0) return;
  const n = o.length;
  const { mO, mC, rho, p, q, pMax, tau, pp, qq, m } = cache;
  // 7) forward: J = ½Σ p'(ln p' − ln M) + ½Σ q'(ln q' − ln M), M = (p'+q')/2
  //    ∂J/∂p'_i = ½ ln(p'_i / M_i) (the −½·p'/M·½ − ½·q'/M·½ terms sum to −½, cancelling the +½ of p' ln p')
  const dp = new Float64Array(n);
  const dq = new Float64Array(n);
  let dTau = 0;
  for (let i = 0; i < n; i++) {
    const dpp = 0.5 * Math.log(pp[i] / m[i]) * dJ;
    const dqq = 0.5 * Math.log(qq[i] / m[i]) * dJ;
    // 6) forward: p' = relu(p − τ) + ε; q' = relu(q − τ) + ε   (relu'(0) = 0)
    if (p[i] - tau > 0) {
      dp[i] += dpp;
      dTau -= dpp;
    }
    if (q[i] - tau > 0) {
      dq[i] += dqq;
      dTau -= dqq;
    }
  }
  // 5) forward: τ = ρ·max(p)
  mapMaxBackward(dp, p, pMax, rho * dTau);
  // 4) forward: q = softmax(Cr)  →  dCr = q ⊙ (dq − ⟨q, dq⟩)
  let qdq = 0;
  for (let i = 0; i < n; i++) qdq += q[i] * dq[i];
  const dCr = new Float64Array(n);
  for (let i = 0; i < n; i++) dCr[i] = q[i] * (dq[i] - qdq);
  // 3) forward: p = softmax(O)  →  dO += p ⊙ (dp − ⟨p, dp⟩)
  let pdp = 0;
  for (let i = 0; i < n; i++) pdp += p[i] * dp[i];
  for (let i = 0; i < n; i++) dO[i] += p[i] * (dp[i] - pdp);
  // 2) forward: Cr = C·mO/mC  →  dC += dCr·mO/mC;  dmO = ⟨dCr, C⟩/mC;  dmC = −⟨dCr, C⟩·mO/mC²
  let crossDot = 0;
  for (let i = 0; i < n; i++) {
    dC[i] += (dCr[i] * mO) / mC;
    crossDot += dCr[i] * c[i];
  }
  const dmO = crossDot / mC;
  const dmC = (-crossDot * mO) / (mC * mC);
  // 1) forward: mO = max O;  mC = max C
  mapMaxBackward(dC, c, mC, dmC);
  mapMaxBackward(dO, o, mO, dmO);
}

// ---------------------------------------------------------------------------------------------------------
// 7. Loss core on the aggregates (§2.1–§2.5)

export interface CoreOutput {
  result: NativeLossResult;
  /** dL/dĀ_obj (n, T); null when no gradient was asked or L has none (A&E hinge at m >= 1). */
  dObject: Float64Array | null;
  /** dL/dĀ_attr (n, T); null unless the selected token's JSD term gives the attribute map a gradient. */
  dAttribute: Float64Array | null;
}

/** Coefficient in force at stepIndex: the last pair whose fromStepIndex <= stepIndex (pairs ascend, first is 0). */
export function bindingCoefficient(o: NormalizedLossOptions): number {
  let coefficient = o.bindingCoefficients[0][1];
  for (const [from, c] of o.bindingCoefficients) if (from <= o.stepIndex) coefficient = c;
  return coefficient;
}

/** What the forward of one token keeps for its backward. */
interface TokenState {
  /** Smoothed object map A (n). */
  a: Float64Array;
  /** Smoothed attribute map C (n), when the token has a JSD term. */
  c: Float64Array | null;
  cache: JsdCache | null;
}

/** Shared inputs of the per-token stages. */
interface CoreContext {
  plan: LossPlan;
  o: NormalizedLossOptions;
  g: [number, number, number];
  sObj: Float64Array;
  sAttr: Float64Array | null;
  coefficient: number;
}

/** x (n) = column c of S, smoothed into out (n) when smoothing is on. */
function smoothedColumn(out: Float64Array, x: Float64Array, S: Float64Array, c: number, ctx: CoreContext): void {
  const { n, K, r0 } = ctx.plan;
  column(x, S, c, n, K);
  if (ctx.o.smoothing) smoothForward(out, x, r0, ctx.g);
  else out.set(x);
}

/** Forward of token s: its maps, m, TV, JSD (tv_bind with an attribute) and value v_s (§2). */
function tokenForward(ctx: CoreContext, s: number, x: Float64Array): { token: NativeTokenResult; state: TokenState } {
  const { plan, o, coefficient } = ctx;
  const a = new Float64Array(plan.n);
  smoothedColumn(a, x, ctx.sObj, o.tokenIndices[s] - plan.start, ctx);
  const m = mapMaxForward(a);
  const tv = tvForward(a, plan.r0, o.tvVertical);
  const attr = o.attributeIndices[s];
  let jsd = NaN;
  let c: Float64Array | null = null;
  let cache: JsdCache | null = null;
  if (o.mode === 'tv_bind' && attr > 0 && ctx.sAttr) {
    c = new Float64Array(plan.n);
    smoothedColumn(c, x, ctx.sAttr, attr - plan.start, ctx);
    const rho = tv < o.bindingTvSwitch ? o.bindingRhoLowTv : o.bindingRhoHighTv;
    ({ jsd, cache } = jsdForward(a, c, rho, o.bindingEpsilon));
  }
  let value: number;
  switch (o.mode) {
    case 'max':
      value = o.maxVariant === 'attend-excite' ? Math.max(0, 1 - m) : m;
      break;
    case 'tv':
      value = tv;
      break;
    case 'tv_bind':
      value = cache ? tv - coefficient * jsd : tv;
      break;
    case 'tv_max':
      value = o.tvMaxWeights[0] * tv + o.tvMaxWeights[1] * m;
      break;
  }
  const token = { tokenIndex: o.tokenIndices[s], attributeIndex: attr > 0 ? attr : -1, maxAttention: m, tv, jsd, coefficient, value };
  return { token, state: { a, c, cache } };
}

/** L = max_s(−v_s) (A&E: max_s hinge_s), Python's max keeping the FIRST maximal token, and the indicator θ. */
function selectToken(o: NormalizedLossOptions, tokens: NativeTokenResult[]): { loss: number; indicator: number; chosen: number } {
  const hinge = o.mode === 'max' && o.maxVariant === 'attend-excite';
  let chosen = 0;
  let loss = hinge ? tokens[0].value : -tokens[0].value;
  for (let s = 1; s < tokens.length; s++) {
    const candidate = hinge ? tokens[s].value : -tokens[s].value;
    if (candidate > loss) {
      loss = candidate;
      chosen = s;
    }
  }
  let indicator = Infinity;
  for (const t of tokens) indicator = Math.min(indicator, o.mode === 'max' || o.mode === 'tv_max' ? t.maxAttention : t.tv);
  return { loss, indicator, chosen };
}

/**
 * Backward 3 → 2: dL/dm, dL/dTV, dL/dJSD of the chosen token (only it receives dL/dv = −1; A&E: dL/dhinge = 1),
 * or null when L has no gradient (A&E hinge at 1 − m <= 0).
 */
function lossSeeds(ctx: CoreContext, token: NativeTokenResult, hasJsd: boolean): { dm: number; dtv: number; dJ: number } | null {
  const { o } = ctx;
  switch (o.mode) {
    case 'max': // forward: v = m (divbind) or h = max(0, 1 − m) (A&E)
      if (o.maxVariant === 'attend-excite') return 1 - token.maxAttention > 0 ? { dm: -1, dtv: 0, dJ: 0 } : null;
      return { dm: -1, dtv: 0, dJ: 0 };
    case 'tv':
      return { dm: 0, dtv: -1, dJ: 0 };
    case 'tv_bind': // forward: v = TV − coef·JSD
      return { dm: 0, dtv: -1, dJ: hasJsd ? ctx.coefficient : 0 };
    case 'tv_max': // forward: v = wTv·TV + wMax·m
      return { dm: -o.tvMaxWeights[1], dtv: -o.tvMaxWeights[0], dJ: 0 };
  }
}

/** Backward 2 → 1 for the chosen token s: JSD, TV, max of the smoothed maps, the smoothing, the token softmax. */
function tokenBackward(
  ctx: CoreContext,
  s: number,
  state: TokenState,
  m: number,
  seeds: { dm: number; dtv: number; dJ: number },
): { dObject: Float64Array; dAttribute: Float64Array | null } {
  const { plan, o, g } = ctx;
  const { n, T, start, K, r0 } = plan;
  const { a, c, cache } = state;
  const dA = new Float64Array(n);
  const dC = new Float64Array(n);
  if (cache && c) jsdBackward(dA, dC, a, c, cache, seeds.dJ);
  tvBackward(dA, a, r0, o.tvVertical, seeds.dtv);
  mapMaxBackward(dA, a, m, seeds.dm);
  const dX = new Float64Array(n);
  if (o.smoothing) smoothBackward(dX, dA, r0, g);
  else dX.set(dA);
  const dObject = new Float64Array(n * T);
  tokenSoftmaxBackwardColumn(dObject, ctx.sObj, dX, o.tokenIndices[s] - start, n, T, start, K, o.temperature);
  if (!ctx.sAttr || !cache) return { dObject, dAttribute: null };
  const dXc = new Float64Array(n);
  if (o.smoothing) smoothBackward(dXc, dC, r0, g);
  else dXc.set(dC);
  const dAttribute = new Float64Array(n * T);
  tokenSoftmaxBackwardColumn(dAttribute, ctx.sAttr, dXc, o.attributeIndices[s] - start, n, T, start, K, o.temperature);
  return { dObject, dAttribute };
}

/**
 * Forward (and backward when wantGrad) from the aggregates. objectAgg/attributeAgg are the (n, T) means.
 * objectMaps / attributeMaps: optional (K_tokens·n) float32 outputs of the smoothed maps.
 */
export function lossCore(
  plan: LossPlan,
  o: NormalizedLossOptions,
  objectAgg: Float64Array,
  attributeAgg: Float64Array | null,
  wantGrad: boolean,
  objectMaps: Float32Array | null,
  attributeMaps: Float32Array | null,
): CoreOutput {
  const { n, T, start, K } = plan;
  // Forward 1: token softmax of both aggregates.
  const sObj = new Float64Array(n * K);
  tokenSoftmaxForward(sObj, objectAgg, n, T, start, K, o.temperature);
  const sAttr = attributeAgg ? new Float64Array(n * K) : null;
  if (attributeAgg && sAttr) tokenSoftmaxForward(sAttr, attributeAgg, n, T, start, K, o.temperature);
  const ctx: CoreContext = { plan, o, g: gaussianWeights(o.smoothingSigma), sObj, sAttr, coefficient: o.mode === 'tv_bind' ? bindingCoefficient(o) : 0 };
  // Forward 2: per token, column → smoothed map → m, TV (and JSD).
  const x = new Float64Array(n);
  const tokens: NativeTokenResult[] = [];
  const states: TokenState[] = [];
  for (let s = 0; s < o.tokenIndices.length; s++) {
    const { token, state } = tokenForward(ctx, s, x);
    tokens.push(token);
    states.push(state);
    if (objectMaps) objectMaps.set(state.a, s * n);
    if (attributeMaps && state.c) attributeMaps.set(state.c, s * n);
  }
  // Forward 3: aggregate L.
  const { loss, indicator, chosen } = selectToken(o, tokens);
  const result: NativeLossResult = { loss, indicator, tokens };
  const seeds = wantGrad ? lossSeeds(ctx, tokens[chosen], states[chosen].cache !== null) : null;
  if (!seeds) return { result, dObject: null, dAttribute: null };
  return { result, ...tokenBackward(ctx, chosen, states[chosen], tokens[chosen].maxAttention, seeds) };
}

// ---------------------------------------------------------------------------------------------------------
// Entry points with the addon's signature (NativeLossFn): inputs validated by lib/loss/validate.ts.

/** Aggregates of §1 (object mean, attribute mean or null). */
export function aggregateForward(plan: LossPlan, layers: Layer[]): { objectAgg: Float64Array; attributeAgg: Float64Array | null } {
  const objectAgg = new Float64Array(plan.n * plan.T);
  for (const l of plan.objectLayers) aggregateObjectAdd(objectAgg, layers[l]);
  scaleInPlace(objectAgg, 1 / plan.objectMaps);
  let attributeAgg: Float64Array | null = null;
  if (plan.useAttributes) {
    attributeAgg = new Float64Array(plan.n * plan.T);
    for (const l of plan.attributeLayers) aggregateAttributeAdd(attributeAgg, layers[l], plan.r0, plan.T);
    scaleInPlace(attributeAgg, 1 / plan.attributeMaps);
  }
  return { objectAgg, attributeAgg };
}

/**
 * A non-finite mean at a kept position means a NaN/±Inf was read (a float32 sum in float64 cannot
 * overflow): the validation scan then names the first bad value. Free next to the aggregation itself.
 */
function checkAggregates(plan: LossPlan, layers: Layer[], o: NormalizedLossOptions, aggregates: Array<Float64Array | null>): void {
  const { n, T, start, K } = plan;
  for (const agg of aggregates) {
    if (!agg) continue;
    let acc = 0;
    for (let p = 0; p < n; p++) for (let k = start; k < start + K; k++) acc += agg[p * T + k] * 0;
    if (acc !== 0) {
      throwFirstNonFinite(layers, o);
      throw new RangeError('layers: non-finite attention probabilities were read');
    }
  }
}

/** One call's gradient, ready to be written layer by layer (see writeLayerGrad). */
interface GradientWriter {
  /** Writes heads [h0, h1) of layer l. */
  write(l: number, h0?: number, h1?: number): void;
  /** The state every buffer is left in; gives the patterns back. */
  finish(): GradStateValue[];
}

function gradientWriter(
  plan: LossPlan,
  layers: Layer[],
  o: NormalizedLossOptions,
  core: CoreOutput,
  grads: Float32Array[],
  gradState: Uint8Array | null | undefined,
): GradientWriter {
  const patterns =
    core.dObject || core.dAttribute
      ? aggregateBackwardPatterns(plan, layers, o.attributeResolutions, core.dObject, core.dAttribute)
      : new Map<number, Float32Array>();
  const pixels = pixelCache(plan.r0);
  return {
    write(l, h0 = 0, h1 = layers[l].heads) {
      const prior = (gradState ? gradState[l] : GRAD_STATE.unknown) as GradStateValue;
      writeLayerGrad(grads[l], layers[l], patterns.get(layers[l].resolution), prior, pixels(layers[l].resolution), h0, h1);
    },
    finish() {
      const states = layers.map((l) => gradStateAfter(patterns.get(l.resolution)));
      releasePatterns(patterns);
      return states;
    },
  };
}

/**
 * [sync] Forward + analytic backward. grads: null or one Float32Array per layer (overwritten); gradState as
 * in NativeLossFn. Same contract as NativeBinding.attentionLoss (jsd NaN / attributeIndex −1 when absent).
 */
export function jsAttentionLoss(
  layers: Layer[],
  options: NormalizedLossOptions,
  grads: Float32Array[] | null,
  objectMaps: Float32Array | null,
  attributeMaps: Float32Array | null,
  gradState?: Uint8Array | null,
): NativeLossResult {
  const plan = makePlan(layers, options);
  const { objectAgg, attributeAgg } = aggregateForward(plan, layers);
  checkAggregates(plan, layers, options, [objectAgg, attributeAgg]);
  if (attributeMaps) attributeMaps.fill(0);
  const core = lossCore(plan, options, objectAgg, attributeAgg, grads !== null, objectMaps, attributeMaps);
  if (!grads) return core.result;
  const writer = gradientWriter(plan, layers, options, core, grads, gradState);
  for (let l = 0; l < layers.length; l++) writer.write(l);
  return { ...core.result, gradStates: writer.finish() };
}

/** Yields to the event loop (setImmediate: lets I/O and timers run, unlike a microtask). */
function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Floats touched between two event-loop turns (≈ 1–2 ms of work). */
export const ASYNC_SLICE = 1 << 20;

/**
 * Between event-loop turns JavaScript may detach (transfer) or resize the buffers: the next slice would then read
 * undefined or write nowhere. Checked after every turn; the message matches the addon's (native/addon/loss_call.cc).
 */
function checkIntact(layers: Layer[], grads: Float32Array[] | null, lengths: number[]): void {
  const why =
    'was detached or resized while the async call was running; keep output buffers attached and at their ' +
    'length (do not transfer, postMessage or resize them) until the promise settles';
  layers.forEach((l, i) => {
    if (l.data.length !== lengths[i]) throw new TypeError(`layers[${i}].data: ${why.replace('output buffers', 'input and output buffers')}`);
    if (grads && grads[i].length !== lengths[i]) throw new TypeError(`grads[${i}]: ${why}`);
  });
}

/** Aggregates of §1 with a turn after each layer (the async path's reads). */
async function aggregateSliced(plan: LossPlan, layers: Layer[], intact: () => void): Promise<{ objectAgg: Float64Array; attributeAgg: Float64Array | null }> {
  const objectAgg = new Float64Array(plan.n * plan.T);
  for (const l of plan.objectLayers) {
    aggregateObjectAdd(objectAgg, layers[l]);
    await turn();
    intact();
  }
  scaleInPlace(objectAgg, 1 / plan.objectMaps);
  if (!plan.useAttributes) return { objectAgg, attributeAgg: null };
  const attributeAgg = new Float64Array(plan.n * plan.T);
  for (const l of plan.attributeLayers) {
    aggregateAttributeAdd(attributeAgg, layers[l], plan.r0, plan.T);
    await turn();
    intact();
  }
  scaleInPlace(attributeAgg, 1 / plan.attributeMaps);
  return { objectAgg, attributeAgg };
}

/**
 * [async] Same as jsAttentionLoss with event-loop turns between the O(data) passes (one per aggregated
 * layer, one per ≈ ASYNC_SLICE gradient floats written); the core on the (n, T) aggregates is small. A buffer
 * detached or resized meanwhile rejects the promise with a TypeError naming it.
 */
export async function jsAttentionLossAsync(
  layers: Layer[],
  options: NormalizedLossOptions,
  grads: Float32Array[] | null,
  objectMaps: Float32Array | null,
  attributeMaps: Float32Array | null,
  gradState?: Uint8Array | null,
): Promise<NativeLossResult> {
  const plan = makePlan(layers, options);
  const lengths = layers.map((l) => l.data.length);
  const intact = () => checkIntact(layers, grads, lengths);
  const { objectAgg, attributeAgg } = await aggregateSliced(plan, layers, intact);
  checkAggregates(plan, layers, options, [objectAgg, attributeAgg]);
  if (attributeMaps) attributeMaps.fill(0);
  const core = lossCore(plan, options, objectAgg, attributeAgg, grads !== null, objectMaps, attributeMaps);
  if (!grads) return core.result;
  const writer = gradientWriter(plan, layers, options, core, grads, gradState);
  try {
    for (let l = 0; l < layers.length; l++) {
      const perHead = layers[l].data.length / layers[l].heads;
      const headsPerSlice = Math.max(1, Math.floor(ASYNC_SLICE / perHead));
      for (let h = 0; h < layers[l].heads; h += headsPerSlice) {
        await turn();
        intact();
        writer.write(l, h, Math.min(layers[l].heads, h + headsPerSlice));
      }
    }
  } catch (error) {
    writer.finish(); // gives the patterns back; the buffers' state is the caller's to forget (index.ts does)
    throw error;
  }
  return { ...core.result, gradStates: writer.finish() };
}
