/**
 * Fuzz: 10,000 random calls mixing valid and malformed input (wrong lengths, NaN/Inf, bad indices, wrong
 * types, missing fields, huge values, non-arrays, aliasing buffers) at attentionLoss with backend 'js',
 * with backend 'native' and at the raw native binding (bad *normalized* options, TS checks bypassed).
 * Every call must return or throw TypeError / RangeError; the process must survive; RSS may grow < 10 %
 * from after a 10,000-call warm-up of the same mix (RSS plateaus after ~20,000 calls: JIT code and allocator arenas) to the end (measured after a full GC when one can be forced).
 * Every valid call at js / native is repeated into buffers kept across the whole run with gradOutReuse, and
 * its gradients must equal the fresh ones bit for bit (the modes change at random, so the layers gain and lose
 * their gradient from call to call).
 */
import test from 'ava';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { attentionLoss } from '../../lib/loss/index';
import { tryLoadNativeBinding } from '../../lib/loss/binding';
import { normalizeLossOptions } from '../../lib/loss/validate';
import type { LossBackend, LossResult } from '../../lib/loss/types';
import { makeLayers } from '../helpers/attention';
import { Rng } from '../helpers/random';

const { binding } = tryLoadNativeBinding();
const CALLS = 10_000;
const WARMUP = 10_000;

/** A forced full GC (v8 flag + a fresh context exposes gc()), or null. */
function gcFunction(): (() => void) | null {
  if (typeof globalThis.gc === 'function') return globalThis.gc as () => void;
  try {
    v8.setFlagsFromString('--expose-gc');
    return vm.runInNewContext('gc') as () => void;
  } catch {
    return null;
  }
}

const T = 10;
const SPECS = [
  { resolution: 4, heads: 2 },
  { resolution: 8, heads: 1, place: 'up' as const },
  { resolution: 4, heads: 1, place: 'up' as const },
];
const BASE_OPTIONS = { mode: 'tv_bind', attentionResolution: 4, attributeResolutions: [8], tokenIndices: [2, 5], attributeIndices: [1, 4] };

function junk(rng: Rng): unknown {
  const pool: unknown[] = [
    undefined,
    null,
    NaN,
    Infinity,
    -Infinity,
    -1,
    0,
    1e308,
    -1e308,
    2 ** 31,
    2 ** 53,
    0.5,
    1e-320,
    3,
    7,
    '',
    'tv',
    '3',
    [],
    [1],
    [[]],
    {},
    { length: 3 },
    true,
    false,
    10n,
    Symbol('s'),
    () => 1,
    new Float32Array(3),
    new Float64Array(640),
    new Int32Array(4),
    new Uint8Array(0),
    new ArrayBuffer(8),
  ];
  return rng.pick(pool);
}

function mutateLayers(rng: Rng, layers: Record<string, unknown>[]): unknown {
  const i = rng.int(0, layers.length - 1);
  const l = { ...layers[i] };
  const data = l.data as Float32Array;
  switch (rng.int(0, 9)) {
    case 0:
      return junk(rng);
    case 1:
      l[rng.pick(['data', 'heads', 'resolution', 'place', 'name'])] = junk(rng);
      break;
    case 2:
      delete l[rng.pick(['data', 'heads', 'resolution', 'place'])];
      break;
    case 3:
      l.data = data.subarray(0, rng.int(0, data.length - 1));
      break;
    case 4: {
      const d = Float32Array.from(data);
      d[rng.int(0, d.length - 1)] = rng.pick([NaN, Infinity, -Infinity]);
      l.data = d;
      break;
    }
    case 5: {
      const d = Float32Array.from(data);
      d[rng.int(0, d.length - 1)] = rng.pick([3e38, -3e38, 1e-45]);
      l.data = d;
      break;
    }
    case 6:
      l.heads = rng.int(-2, 9);
      break;
    case 7:
      l.resolution = rng.int(-1, 17);
      break;
    case 8:
      return layers.slice(0, rng.int(0, layers.length - 1));
    case 9:
      return [...layers, junk(rng)];
  }
  const copy = [...layers];
  copy[i] = l;
  return copy;
}

const OPTION_KEYS = [
  'mode',
  'tokenIndices',
  'attributeIndices',
  'stepIndex',
  'attentionResolution',
  'attributeResolutions',
  'temperature',
  'tokenSlice',
  'eotIndex',
  'smoothing',
  'smoothingSigma',
  'tvVertical',
  'maxVariant',
  'bindingRhoLowTv',
  'bindingRhoHighTv',
  'bindingTvSwitch',
  'bindingEpsilon',
  'bindingCoefficients',
  'tvMaxWeights',
];

function mutateOptions(rng: Rng, options: Record<string, unknown>): unknown {
  const o = { ...options };
  const key = rng.pick(OPTION_KEYS);
  switch (rng.int(0, 7)) {
    case 0:
      return junk(rng);
    case 1:
      o[key] = junk(rng);
      break;
    case 2:
      delete o[key];
      break;
    case 3:
      o.tokenIndices = Array.from({ length: rng.int(0, 4) }, () => (rng.next() < 0.8 ? rng.int(-2, 12) : junk(rng)));
      break;
    case 4:
      o.attributeIndices = Array.from({ length: rng.int(0, 3) }, () => (rng.next() < 0.8 ? rng.int(-2, 12) : junk(rng)));
      break;
    case 5:
      o[`${key}${rng.pick(['s', 'X', ''])}_`] = 1;
      break;
    case 6:
      o.bindingCoefficients = Array.from({ length: rng.int(0, 3) }, () => (rng.next() < 0.7 ? [rng.int(-1, 30), rng.next() * 10] : junk(rng)));
      break;
    case 7:
      o[key] = rng.pick([1e308, -1e308, 2 ** 40, -(2 ** 40), 1e-300]);
      break;
  }
  return o;
}

function mutateCall(rng: Rng, layers: Array<{ data: Float32Array }>): unknown {
  switch (rng.int(0, 5)) {
    case 0:
      return junk(rng);
    case 1:
      return { gradOut: layers.map((l) => new Float32Array(l.data.length + rng.int(-1, 1))) };
    case 2:
      return { gradOut: [layers[0].data, ...layers.slice(1).map((l) => new Float32Array(l.data.length))] };
    case 3:
      return { computeGrad: junk(rng), returnMaps: junk(rng) };
    case 4:
      return { [rng.pick(['grad', 'backends', 'maps'])]: 1 };
    default:
      return { returnMaps: true };
  }
}

/** Repeats a valid call into kept buffers with gradOutReuse; returns why the gradients differ, or null. */
function reuseMismatch(layers: Array<{ data: Float32Array }>, options: unknown, backend: LossBackend, fresh: LossResult, kept: Float32Array[]): string | null {
  const reused = (attentionLoss as unknown as (...a: unknown[]) => LossResult)(layers, options, { backend, gradOut: kept, gradOutReuse: true });
  for (let l = 0; l < kept.length; l++) {
    for (let i = 0; i < kept[l].length; i++) {
      if (!Object.is(reused.grads![l][i], fresh.grads![l][i])) return `grads[${l}][${i}]: ${reused.grads![l][i]} with reuse, ${fresh.grads![l][i]} without`;
    }
  }
  return null;
}

function isAllowed(e: unknown): boolean {
  return e instanceof TypeError || e instanceof RangeError;
}

test('fuzz: 10,000 random calls at js, native and the raw binding', (t) => {
  const gc = gcFunction();
  const rng = new Rng(20240327);
  const layers = makeLayers(9, SPECS, T) as unknown as Array<Record<string, unknown> & { data: Float32Array }>;
  const normalized = normalizeLossOptions(layers, BASE_OPTIONS) as unknown as Record<string, unknown>;
  const targets: Array<'js' | 'native' | 'raw'> = binding ? ['js', 'native', 'raw'] : ['js'];
  const counts = { returned: 0, typeError: 0, rangeError: 0, reused: 0 };
  const unexpected: string[] = [];
  const kept = { js: layers.map((l) => new Float32Array(l.data.length).fill(NaN)), native: layers.map((l) => new Float32Array(l.data.length).fill(NaN)) };
  let rssAfterWarmup = 0;

  const oneCall = (k: number) => {
    const target = targets[k % targets.length];
    const kind = rng.int(0, 9); // 0-2 valid, 3-5 layers, 6-8 options, 9 call options
    let description = `${target} call ${k} kind ${kind}`;
    try {
      if (target === 'raw') {
        const o = kind <= 2 ? normalized : (mutateOptions(rng, normalized) as Record<string, unknown>);
        const l = kind >= 3 && kind <= 5 ? mutateLayers(rng, layers) : layers;
        const grads = kind === 9 ? rng.pick([junk(rng), [new Float32Array(1)], layers.map((x) => new Float32Array(x.data.length))]) : null;
        const maps = kind === 9 ? rng.pick([null, new Float32Array(1), junk(rng)]) : null;
        description += ` options ${describeKeys(o)}`;
        (binding!.attentionLoss as unknown as (...a: unknown[]) => unknown)(l, o, grads, maps, null);
      } else {
        const backend: LossBackend = target;
        const o = kind >= 6 && kind <= 8 ? mutateOptions(rng, BASE_OPTIONS) : { ...BASE_OPTIONS, mode: rng.pick(['max', 'tv', 'tv_bind', 'tv_max']) };
        const l = kind >= 3 && kind <= 5 ? mutateLayers(rng, layers) : layers;
        const callOptions = kind === 9 ? mutateCall(rng, layers) : {};
        const call = typeof callOptions === 'object' && callOptions !== null && !Array.isArray(callOptions) ? { ...callOptions, backend } : callOptions;
        const result = (attentionLoss as unknown as (...a: unknown[]) => LossResult)(l, o, call);
        if (kind <= 2) {
          const mismatch = reuseMismatch(layers, o, backend, result, kept[target]);
          counts.reused++;
          if (mismatch && unexpected.length < 10) unexpected.push(`${description}: reuse ${mismatch}`);
        }
      }
      counts.returned++;
    } catch (e) {
      if (e instanceof TypeError) counts.typeError++;
      else if (e instanceof RangeError) counts.rangeError++;
      if (!isAllowed(e) && unexpected.length < 10) unexpected.push(`${description}: ${(e as Error)?.constructor?.name}: ${(e as Error)?.message ?? String(e)}`);
    }
  };

  for (let k = 0; k < CALLS + WARMUP; k++) {
    if (k === WARMUP) {
      gc?.();
      rssAfterWarmup = process.memoryUsage().rss;
    }
    oneCall(k);
  }
  gc?.();
  const rssEnd = process.memoryUsage().rss;
  const growth = (rssEnd - rssAfterWarmup) / rssAfterWarmup;
  t.log(
    `targets ${targets.join(', ')}; ${JSON.stringify(counts)}; RSS ${(rssAfterWarmup / 2 ** 20).toFixed(1)} → ${(rssEnd / 2 ** 20).toFixed(1)} MiB (${(growth * 100).toFixed(2)} %), forced GC: ${gc !== null}`,
  );
  t.deepEqual(unexpected, [], 'only TypeError / RangeError may be thrown');
  t.true(counts.returned > 1000 && counts.typeError > 500 && counts.rangeError > 500 && counts.reused > 1000, `mix of outcomes ${JSON.stringify(counts)}`);
  t.true(growth < 0.1, `RSS grew ${(growth * 100).toFixed(2)} % over ${CALLS} calls`);
});

function describeKeys(o: unknown): string {
  if (typeof o !== 'object' || o === null) return String(typeof o);
  return Object.entries(o)
    .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v)?.slice(0, 30) : String(v)}`)
    .join(' ')
    .slice(0, 300);
}
