/**
 * Independent forward oracle written straight from the spec (§1, §2), in the style of the PyTorch code
 * (explicit 2-D arrays, explicit padding, nearest resize by index formula, slices), sharing nothing with
 * lib/loss/js-backend.ts. Float64 throughout; forward only (the gradient has its finite-difference test).
 */
import type { NormalizedLossOptions } from '../../lib/loss/native-types';

type Grid = number[][];

interface RefLayer {
  data: ArrayLike<number>;
  heads: number;
  resolution: number;
}

export interface RefToken {
  maxAttention: number;
  tv: number;
  jsd: number | null;
  value: number;
}

export interface RefResult {
  loss: number;
  indicator: number;
  tokens: RefToken[];
  objectMaps: Grid[];
}

/** Mean of all (layer, head) maps, each resized to r0 by nearest: returns [r0][r0][T]. */
function meanMaps(layers: RefLayer[], r0: number, T: number): number[][][] {
  const out = Array.from({ length: r0 }, () => Array.from({ length: r0 }, () => new Array<number>(T).fill(0)));
  let count = 0;
  for (const layer of layers) {
    const r = layer.resolution;
    for (let h = 0; h < layer.heads; h++) {
      count++;
      for (let y = 0; y < r0; y++) {
        for (let x = 0; x < r0; x++) {
          const sy = Math.floor((y * r) / r0);
          const sx = Math.floor((x * r) / r0);
          for (let k = 0; k < T; k++) out[y][x][k] += layer.data[((h * r + sy) * r + sx) * T + k];
        }
      }
    }
  }
  for (const row of out) for (const cell of row) for (let k = 0; k < T; k++) cell[k] /= count;
  return out;
}

/** Slice [1, end), ×temperature, softmax over the slice; returns the map of prompt token `token`. */
function tokenMap(agg: number[][][], end: number, temperature: number, token: number): Grid {
  return agg.map((row) =>
    row.map((cell) => {
      const z = cell.slice(1, end).map((v) => v * temperature);
      const m = Math.max(...z);
      const e = z.map((v) => Math.exp(v - m));
      const s = e.reduce((a, b) => a + b, 0);
      return e[token - 1] / s;
    }),
  );
}

function smooth(map: Grid, sigma: number): Grid {
  const r = map.length;
  const g1 = [0, 1, 2].map((x) => Math.exp(-(((x - 1) / (2 * sigma)) ** 2)));
  const k2 = g1.map((a) => g1.map((b) => a * b));
  const total = k2.flat().reduce((a, b) => a + b, 0);
  // Explicit reflect padding of 1 (torch mode='reflect').
  const idx = (i: number) => (i === -1 ? 1 : i === r ? r - 2 : i);
  const padded: Grid = [];
  for (let i = -1; i <= r; i++) {
    const row: number[] = [];
    for (let j = -1; j <= r; j++) row.push(map[idx(i)][idx(j)]);
    padded.push(row);
  }
  const out: Grid = [];
  for (let i = 0; i < r; i++) {
    const row: number[] = [];
    for (let j = 0; j < r; j++) {
      let acc = 0;
      for (let a = 0; a < 3; a++) for (let b = 0; b < 3; b++) acc += (k2[a][b] / total) * padded[i + a][j + b];
      row.push(acc);
    }
    out.push(row);
  }
  return out;
}

function l1Mean(pairs: Array<[number, number]>, count: number): number {
  return pairs.reduce((acc, [a, b]) => acc + Math.abs(a - b), 0) / count;
}

function totalVariation(a: Grid, vertical: 'official' | 'neighbor'): number {
  const r = a.length;
  const horizontal: Array<[number, number]> = [];
  for (let i = 0; i < r; i++) for (let j = 0; j < r - 1; j++) horizontal.push([a[i][j], a[i][j + 1]]);
  const verticalPairs: Array<[number, number]> = [];
  if (vertical === 'official') {
    // L1Loss(A[-1:, :], A[1:, :]) broadcasts the last row against rows 1..r-1.
    for (let i = 1; i < r; i++) for (let j = 0; j < r; j++) verticalPairs.push([a[r - 1][j], a[i][j]]);
  } else {
    for (let i = 0; i < r - 1; i++) for (let j = 0; j < r; j++) verticalPairs.push([a[i][j], a[i + 1][j]]);
  }
  return l1Mean(horizontal, horizontal.length) + l1Mean(verticalPairs, verticalPairs.length);
}

function softmaxFlat(v: number[]): number[] {
  const m = Math.max(...v);
  const e = v.map((x) => Math.exp(x - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

function jsd(o: Grid, c: Grid, tv: number, opts: NormalizedLossOptions): number {
  const oFlat = o.flat();
  const cFlat = c.flat();
  const maxO = Math.max(...oFlat);
  const maxC = Math.max(...cFlat);
  const p = softmaxFlat(oFlat);
  const q = softmaxFlat(cFlat.map((v) => (v / maxC) * maxO));
  const rho = tv < opts.bindingTvSwitch ? opts.bindingRhoLowTv : opts.bindingRhoHighTv;
  const tau = rho * Math.max(...p);
  const pp = p.map((v) => Math.max(v - tau, 0) + opts.bindingEpsilon);
  const qq = q.map((v) => Math.max(v - tau, 0) + opts.bindingEpsilon);
  const logM = pp.map((v, i) => Math.log((v + qq[i]) / 2));
  // KLDivLoss(log M, log p, log_target=True, batchmean over a batch of 1) = Σ p (log p − log M)
  const kl = (x: number[]) => x.reduce((acc, v, i) => acc + v * (Math.log(v) - logM[i]), 0);
  return 0.5 * kl(pp) + 0.5 * kl(qq);
}

export function referenceForward(layers: RefLayer[], o: NormalizedLossOptions): RefResult {
  const T = o.textLength;
  const r0 = o.attentionResolution;
  const end = o.tokenSlice === 'until-eot' ? o.eotIndex : T - 1;
  const objectAgg = meanMaps(
    layers.filter((l) => l.resolution === r0),
    r0,
    T,
  );
  const hasAttributes = o.mode === 'tv_bind' && o.attributeIndices.some((a) => a > 0);
  const attributeAgg = hasAttributes
    ? meanMaps(
        layers.filter((l) => o.attributeResolutions.includes(l.resolution)),
        r0,
        T,
      )
    : null;
  const prep = (agg: number[][][], token: number) => {
    const m = tokenMap(agg, end, o.temperature, token);
    return o.smoothing ? smooth(m, o.smoothingSigma) : m;
  };
  let coefficient = 0;
  for (const [from, c] of o.bindingCoefficients) if (o.stepIndex >= from) coefficient = c;
  const tokens: RefToken[] = [];
  const objectMaps: Grid[] = [];
  o.tokenIndices.forEach((token, s) => {
    const a = prep(objectAgg, token);
    objectMaps.push(a);
    const m = Math.max(...a.flat());
    const tv = totalVariation(a, o.tvVertical);
    const attr = o.attributeIndices[s];
    let j: number | null = null;
    if (attributeAgg && attr > 0) j = jsd(a, prep(attributeAgg, attr), tv, o);
    let value: number;
    if (o.mode === 'max') value = o.maxVariant === 'attend-excite' ? Math.max(0, 1 - m) : m;
    else if (o.mode === 'tv') value = tv;
    else if (o.mode === 'tv_bind') value = j === null ? tv : tv - coefficient * j;
    else value = o.tvMaxWeights[0] * tv + o.tvMaxWeights[1] * m;
    tokens.push({ maxAttention: m, tv, jsd: j, value });
  });
  const ae = o.mode === 'max' && o.maxVariant === 'attend-excite';
  const loss = Math.max(...tokens.map((t) => (ae ? t.value : -t.value)));
  const byMax = o.mode === 'max' || o.mode === 'tv_max';
  const indicator = Math.min(...tokens.map((t) => (byMax ? t.maxAttention : t.tv)));
  return { loss, indicator, tokens, objectMaps };
}
