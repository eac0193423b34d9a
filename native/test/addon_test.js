// Node-side checks of the addon glue (native/addon), run by ctest as `node --expose-gc native/test/addon_test.js`
// (exit 77 = skipped when no addon binary is built). The numeric core is covered by attention_loss_test.cc;
// this file checks what the glue adds:
//  1. marshalling: the loss of a small 'tv' / 'max' call equals an independent float64 JS reference
//     (tol 1e-9 abs + 1e-9 rel), and sampled gradient entries equal JS central differences through the addon
//     (h = 1e-3, tol 2e-4 * max|fd| + 1e-3 * |fd|), so layer order / grads placement cannot be mixed up;
//  2. sync and async give bit-identical results and gradients; async survives GC of the caller's arrays and
//     rejects when an output is detached before it is written;
//  3. errors: TypeError / RangeError naming the field, rejected promises for async, and 2000 malformed calls
//     that never abort the process.
'use strict';

const path = require('node:path');
const assert = require('node:assert/strict');

const ROOT = path.resolve(__dirname, '../..');
let binding;
try {
  const file = process.env.DIVBIND_NATIVE_PATH ? path.resolve(process.env.DIVBIND_NATIVE_PATH) : require('node-gyp-build').path(ROOT);
  binding = require(file);
  console.log(`addon: ${file}\n  ${binding.features.build}`);
} catch (e) {
  console.log(`SKIPPED: no addon binary (${e.message.split('\n')[0]}); build it with npx cmake-js compile`);
  process.exit(77);
}

let failures = 0;
async function check(name, fn) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    failures += 1;
    console.log(`FAIL ${name}\n     ${e.stack.split('\n').slice(0, 3).join('\n     ')}`);
  }
}

// xorshift32 so the inputs are reproducible without dependencies
function rng(seed) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return s / 4294967296;
  };
}

function layer(heads, r, T, seed, place = 'down') {
  const u = rng(seed);
  const data = new Float32Array(heads * r * r * T);
  for (let row = 0; row < heads * r * r; row += 1) {
    let z = 0;
    const e = [];
    for (let t = 0; t < T; t += 1) { e.push(Math.exp(3 * u())); z += e[t]; }
    for (let t = 0; t < T; t += 1) data[row * T + t] = e[t] / z;
  }
  return { data, heads, resolution: r, place };
}

function options(over = {}) {
  return {
    mode: 'tv', textLength: 9, tokenIndices: [2, 5], attributeIndices: [-1, -1], stepIndex: 0,
    attentionResolution: 4, attributeResolutions: [8], temperature: 40, tokenSlice: 'all-but-last', eotIndex: -1,
    smoothing: true, smoothingSigma: 0.5, tvVertical: 'official', maxVariant: 'divbind', bindingRhoLowTv: 0.3,
    bindingRhoHighTv: 0.2, bindingTvSwitch: 0.1, bindingEpsilon: 1e-5, bindingCoefficients: [[0, 1], [10, 5], [20, 10]],
    tvMaxWeights: [1, 0.3], ...over,
  };
}

function smallLayers(seed) {
  // the 8x8 layer first: the object layers are not at index 0, so a mix-up of layer order shows
  return [layer(2, 8, 9, seed + 1), layer(2, 4, 9, seed + 2, 'up'), layer(3, 4, 9, seed + 3, 'mid')];
}

// Independent float64 reference for 'tv' (official vertical term) and 'max' (divbind), from the spec.
function referenceLoss(layers, o) {
  const r0 = o.attentionResolution, T = o.textLength, k1 = T - 2;
  const obj = layers.filter((l) => l.resolution === r0);
  const n = obj.reduce((a, l) => a + l.heads, 0);
  const g1 = [Math.exp(-1 / (4 * o.smoothingSigma ** 2)), 1, 0];
  g1[2] = g1[0];
  const gs = g1[0] + g1[1] + g1[2];
  const refl = (i) => (i < 0 ? -i : i > r0 - 1 ? 2 * (r0 - 1) - i : i);
  const values = o.tokenIndices.map((k) => {
    const s = [];
    for (let p = 0; p < r0 * r0; p += 1) {
      const mean = new Array(T).fill(0);
      for (const l of obj) for (let h = 0; h < l.heads; h += 1) for (let t = 0; t < T; t += 1) mean[t] += l.data[(h * r0 * r0 + p) * T + t] / n;
      let z = 0;
      for (let t = 1; t <= k1; t += 1) z += Math.exp(o.temperature * mean[t]);
      s.push(Math.exp(o.temperature * mean[k]) / z);
    }
    const a = [];
    for (let y = 0; y < r0; y += 1) for (let x = 0; x < r0; x += 1) {
      let acc = 0;
      for (let dy = -1; dy <= 1; dy += 1) for (let dx = -1; dx <= 1; dx += 1) acc += (g1[dy + 1] * g1[dx + 1]) / (gs * gs) * s[refl(y + dy) * r0 + refl(x + dx)];
      a.push(acc);
    }
    if (o.mode === 'max') return Math.max(...a);
    let tv = 0;
    for (let y = 0; y < r0; y += 1) for (let x = 0; x + 1 < r0; x += 1) tv += Math.abs(a[y * r0 + x] - a[y * r0 + x + 1]);
    for (let y = 1; y < r0; y += 1) for (let x = 0; x < r0; x += 1) tv += Math.abs(a[(r0 - 1) * r0 + x] - a[y * r0 + x]);
    return tv / (r0 * (r0 - 1));
  });
  return Math.max(...values.map((v) => -v));
}

const close = (a, b, atol, rtol) => Math.abs(a - b) <= atol + rtol * Math.abs(b);

// Each check: [name, fn]; run in order by main().
const CHECKS = [
  ['features and lossOptionSchema', () => {
    assert.equal(typeof binding.features.cuda, 'boolean');
    assert.match(binding.features.version, /^\d+\.\d+\.\d+/);
    assert.equal(binding.features.cuda, typeof binding.attentionLossCuda === 'function');
    // the full comparison with lib/loss/options.ts is test/loss/options-schema.test.ts
    assert.deepEqual(binding.lossOptionSchema.options.mode, { type: 'enum', values: ['max', 'tv', 'tv_bind', 'tv_max'], default: 'tv' });
    assert.deepEqual(binding.lossOptionSchema.gradStates, { unknown: 0, zero: 1, sampled: 2 });
  }],
  ...['tv', 'max'].map((mode) => [`${mode}: loss equals the JS float64 reference`, () => {
    const layers = smallLayers(10);
    const o = options({ mode });
    const r = binding.attentionLoss(layers, o, null, null, null);
    const ref = referenceLoss(layers, o);
    assert.ok(close(r.loss, ref, 1e-9, 1e-9), `${r.loss} vs ${ref}`);
    assert.equal(r.tokens.length, 2);
    assert.ok(Number.isNaN(r.tokens[0].jsd));
  }]),
  ['tv_bind: sampled gradient entries equal central differences through the addon', checkGradientByFd],
  ['sync and async agree bit for bit; maps are filled', checkSyncAsync],
  ['async keeps its buffers alive through GC', checkAsyncGc],
  ['async: an output detached before the write rejects with a TypeError', checkDetached],
  ['errors: TypeError / RangeError naming the field; async rejects', checkErrors],
  ['2000 malformed calls throw JS errors and never abort', checkMalformed],
];

function checkGradientByFd() {
  const layers = smallLayers(20);
  const o = options({ mode: 'tv_bind', attributeIndices: [3, 6], stepIndex: 10 });
  const grads = layers.map((l) => new Float32Array(l.data.length).fill(9));
  binding.attentionLoss(layers, o, grads, null, null);
  const u = rng(5);
  const picks = [];
  for (let i = 0; i < layers.length; i += 1) {
    for (let j = 0; j < 12; j += 1) picks.push([i, Math.floor(u() * layers[i].data.length)]);
  }
  const fds = picks.map(([i, e]) => {
    const x = layers[i].data[e];
    layers[i].data[e] = x + 1e-3;
    const xp = layers[i].data[e];
    const lp = binding.attentionLoss(layers, o, null, null, null).loss;
    layers[i].data[e] = x - 1e-3;
    const xm = layers[i].data[e];
    const lm = binding.attentionLoss(layers, o, null, null, null).loss;
    layers[i].data[e] = x;
    return (lp - lm) / (xp - xm);
  });
  const maxFd = Math.max(...fds.map(Math.abs));
  assert.ok(maxFd > 0);
  picks.forEach(([i, e], k) => {
    assert.ok(Math.abs(grads[i][e] - fds[k]) <= 2e-4 * maxFd + 1e-3 * Math.abs(fds[k]),
      `layers[${i}] entry ${e}: analytic ${grads[i][e]} vs fd ${fds[k]}`);
  });
}

async function checkSyncAsync() {
  const layers = smallLayers(30);
  const o = options({ mode: 'tv_bind', attributeIndices: [3, -1] });
  const g1 = layers.map((l) => new Float32Array(l.data.length));
  const g2 = layers.map((l) => new Float32Array(l.data.length));
  const m1 = [new Float32Array(32), new Float32Array(32)];
  const m2 = [new Float32Array(32), new Float32Array(32)];
  const a = binding.attentionLoss(layers, o, g1, m1[0], m1[1]);
  const b = await binding.attentionLossAsync(layers, o, g2, m2[0], m2[1]);
  assert.deepEqual(b, a);
  g1.forEach((g, i) => assert.deepEqual(g2[i], g));
  assert.deepEqual(m2, m1);
  assert.ok(m1[1].subarray(0, 16).every((v) => v > 0) && m1[1].subarray(16).every((v) => v === 0));
}

async function checkAsyncGc() {
  const o = options({ mode: 'tv_bind', attributeIndices: [3, 6] });
  const expected = [];
  for (let i = 0; i < 40; i += 1) expected.push(binding.attentionLoss(smallLayers(100 + i), o, null, null, null).loss);
  const promises = [];
  for (let i = 0; i < 40; i += 1) {
    promises.push(binding.attentionLossAsync(smallLayers(100 + i), o, smallLayers(0).map((l) => new Float32Array(l.data.length)), null, null));
    if (global.gc) global.gc();
  }
  const results = await Promise.all(promises);
  results.forEach((r, i) => assert.equal(r.loss, expected[i]));
}

// In-process and small (no fault expected either way); test/loss/async-misuse.test.ts has the crash scenarios.
async function checkDetached() {
  const layers = smallLayers(60);
  const grads = layers.map((l) => new Float32Array(l.data.length));
  const maps = new Float32Array(32);
  const pending = binding.attentionLossAsync(layers, options(), grads, maps, null);
  structuredClone(maps.buffer, { transfer: [maps.buffer] });
  await assert.rejects(pending, (e) => e instanceof TypeError && e.message.startsWith('objectMaps: was detached or resized'));
  const again = binding.attentionLossAsync(layers, options(), grads, null, null);
  structuredClone(grads[2].buffer, { transfer: [grads[2].buffer] });
  await assert.rejects(again, (e) => e instanceof TypeError && e.message.startsWith('grads[2]: was detached or resized'));
}

function checkErrors() {
  const layers = smallLayers(40);
  const grads = layers.map((l) => new Float32Array(l.data.length));
  const cases = [
    [() => binding.attentionLoss(layers, options({ tokenIndices: [2, 8] }), null, null, null), RangeError,
      'tokenIndices[1]: 8 is outside the kept token range 1..7 (slice 1:-1 of T=9); token indices count from SOT = 0'],
    [() => binding.attentionLoss(layers, options({ mode: 'bind' }), null, null, null), RangeError,
      "mode: must be one of 'max', 'tv', 'tv_bind', 'tv_max', got 'bind'"],
    [() => binding.attentionLoss(layers, options({ temperature: '100' }), null, null, null), TypeError,
      'temperature: expected a number but received a string'],
    [() => binding.attentionLoss([{ ...layers[0], data: [1, 2] }], options(), null, null, null), TypeError,
      'layers[0].data: expected a Float32Array but received an array'],
    [() => binding.attentionLoss(layers, options(), [layers[0].data, ...grads.slice(1)], null, null),
      RangeError, 'grads[0]: shares memory with layers[0].data; pass a separate output buffer'],
    [() => binding.attentionLoss(layers, options(), null, new Float32Array(31), null), RangeError,
      'objectMaps: has 31 floats but tokenIndices.length * attentionResolution^2 = 32; allocate that length or pass null'],
    [() => binding.attentionLoss(layers, options({ attentionResolution: 16 }), null, null, null), RangeError,
      'attentionResolution: no layer has resolution 16'],
    [() => binding.attentionLoss(layers, options(), grads, null, null, [0, 0, 0]), TypeError,
      'gradState: expected a Uint8Array or null but received an array'],
    [() => binding.attentionLoss(layers, options(), grads, null, null, Uint8Array.of(0, 3, 0)), RangeError,
      'gradState[1]: must be 0 (unknown), 1 (zero) or 2 (sampled), got 3'],
    [() => binding.attentionLoss(layers, options(), null, null, null, Uint8Array.of(0, 0, 0)), TypeError,
      'gradState: was given without grads; pass both or neither'],
  ];
  for (const [fn, type, message] of cases) {
    assert.throws(fn, (e) => e instanceof type && e.message.startsWith(message), message);
  }
  return checkAsyncErrors(layers);
}

async function checkAsyncErrors(layers) {
  await assert.rejects(binding.attentionLossAsync(layers, options({ tokenIndices: [0] }), null, null, null),
    (e) => e instanceof RangeError && e.message.startsWith('tokenIndices[0]: 0 is outside'));
  const bad = layers.map((l) => ({ ...l, data: Float32Array.from(l.data) }));
  bad[1].data[2] = NaN;
  await assert.rejects(binding.attentionLossAsync(bad, options(), null, null, null),
    (e) => e instanceof RangeError && e.message.startsWith('layers[1].data: holds nan at index 2'));
}

async function checkMalformed() {
  const layers = smallLayers(50);
  const u = rng(77);
  const junk = [undefined, null, NaN, Infinity, -1, 0, 1.5, 1e12, '', 'x', {}, [], [[]], new Float64Array(3),
    new Float32Array(0), () => 1, Symbol('s'), 10n, true, new Uint8Array(3)];
  const pick = () => junk[Math.floor(u() * junk.length)];
  const keys = Object.keys(options());
  for (let i = 0; i < 2000; i += 1) {
    const o = options();
    o[keys[Math.floor(u() * keys.length)]] = pick();
    const ls = layers.map((l) => ({ ...l }));
    if (u() < 0.3) ls[Math.floor(u() * ls.length)][['data', 'heads', 'resolution', 'place'][Math.floor(u() * 4)]] = pick();
    const args = [u() < 0.05 ? pick() : ls, u() < 0.05 ? pick() : o, u() < 0.2 ? pick() : null, u() < 0.1 ? pick() : null, null,
      u() < 0.1 ? pick() : null];
    try {
      binding.attentionLoss(...args);
    } catch (e) {
      assert.ok(e instanceof Error, `non-Error thrown: ${e}`);
    }
    try {
      await binding.attentionLossAsync(...args);
    } catch (e) {
      assert.ok(e instanceof Error, `non-Error rejected: ${e}`);
    }
  }
}

async function main() {
  for (const [name, fn] of CHECKS) await check(name, fn);
  console.log(failures === 0 ? 'OK: addon checks passed' : `FAILED: ${failures} check(s)`);
  process.exitCode = failures === 0 ? 0 : 1;
}

main();
