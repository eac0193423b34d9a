// The addon's CUDA exports (attentionLossCuda, attentionLossCudaAsync, cudaDevices) against its CPU export, through
// the JS glue: `node native/test/addon_cuda_test.js` (ctest runs it; exit 77 = skipped: addon built without CUDA, or
// no device). Loss, indicator and diagnostics: tol 1e-6 abs + 1e-5 rel; gradients and maps:
// |cuda - cpu| <= 1e-5 * max|cpu| + 1e-4 * |cpu| (the kernels may sum in another order and in float).
// Also prints the SD 1.x 512² tv_bind timings of both paths (median of 20 after 3 warm-ups).
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
  console.log(`SKIPPED: no addon binary (${e.message.split('\n')[0]})`);
  process.exit(77);
}
if (!binding.features.cuda) {
  console.log('SKIPPED: addon built without CUDA');
  process.exit(77);
}
const devices = binding.cudaDevices();
console.log(`cudaDevices(): ${JSON.stringify(devices)}`);
if (devices.count === 0) {
  // The no-device path must be a clean JS Error, never a crash.
  assert.throws(() => binding.attentionLossCuda([], {}, null, null, null), Error);
  console.log('SKIPPED: no CUDA device');
  process.exit(77);
}

function rng(seed) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return s / 4294967296;
  };
}

function layers(res, heads, T, seed, peak) {
  const u = rng(seed);
  return res.map((r) => {
    const data = new Float32Array(heads * r * r * T);
    for (let row = 0; row < heads * r * r; row += 1) {
      let z = 0;
      const e = new Array(T);
      for (let t = 0; t < T; t += 1) { e[t] = Math.exp(peak * u()); z += e[t]; }
      for (let t = 0; t < T; t += 1) data[row * T + t] = e[t] / z;
    }
    return { data, heads, resolution: r, place: 'down' };
  });
}

function options(T, r0, attrRes, over) {
  return {
    mode: 'tv_bind', textLength: T, tokenIndices: [2, 5], attributeIndices: [1, 4], stepIndex: 0,
    attentionResolution: r0, attributeResolutions: attrRes, temperature: 100, tokenSlice: 'all-but-last', eotIndex: -1,
    smoothing: true, smoothingSigma: 0.5, tvVertical: 'official', maxVariant: 'divbind', bindingRhoLowTv: 0.3,
    bindingRhoHighTv: 0.2, bindingTvSwitch: 0.1, bindingEpsilon: 1e-5, bindingCoefficients: [[0, 1], [10, 5], [20, 10]],
    tvMaxWeights: [1, 0.3], ...over,
  };
}

const close = (a, b, atol, rtol) => (Number.isNaN(a) && Number.isNaN(b)) || Math.abs(a - b) <= atol + rtol * Math.abs(b);

function compareArrays(name, got, ref) {
  let max = 0;
  for (const v of ref) max = Math.max(max, Math.abs(v));
  let worst = 0;
  for (let i = 0; i < ref.length; i += 1) {
    const err = Math.abs(got[i] - ref[i]);
    worst = Math.max(worst, err);
    if (err > 1e-5 * max + 1e-4 * Math.abs(ref[i])) throw new Error(`${name}[${i}]: cuda ${got[i]} vs cpu ${ref[i]} (max|cpu| ${max})`);
  }
  return worst;
}

async function compare(label, ls, o) {
  const gc = ls.map((l) => new Float32Array(l.data.length).fill(7));
  const gg = ls.map((l) => new Float32Array(l.data.length).fill(-7));
  const k = o.tokenIndices.length * o.attentionResolution ** 2;
  const mc = [new Float32Array(k), new Float32Array(k)];
  const mg = [new Float32Array(k), new Float32Array(k)];
  const cpu = binding.attentionLoss(ls, o, gc, mc[0], mc[1]);
  const gpu = binding.attentionLossCuda(ls, o, gg, mg[0], mg[1]);
  assert.ok(close(gpu.loss, cpu.loss, 1e-6, 1e-5), `loss ${gpu.loss} vs ${cpu.loss}`);
  assert.ok(close(gpu.indicator, cpu.indicator, 1e-6, 1e-5), 'indicator');
  cpu.tokens.forEach((t, i) => {
    for (const key of Object.keys(t)) assert.ok(close(gpu.tokens[i][key], t[key], 1e-6, 1e-5), `tokens[${i}].${key}: ${gpu.tokens[i][key]} vs ${t[key]}`);
  });
  let worst = 0;
  gc.forEach((g, i) => { worst = Math.max(worst, compareArrays(`grads[${i}]`, gg[i], g)); });
  compareArrays('objectMaps', mg[0], mc[0]);
  compareArrays('attributeMaps', mg[1], mc[1]);
  const asy = await binding.attentionLossCudaAsync(ls, o, gg, null, null);
  assert.ok(close(asy.loss, cpu.loss, 1e-6, 1e-5), 'async loss');
  console.log(`ok   ${label}: loss ${cpu.loss.toExponential(6)} (cuda ${gpu.loss.toExponential(6)}), max |grad diff| ${worst.toExponential(2)}`);
}

async function main() {
  const small = layers([8, 4, 4, 2, 3], 2, 9, 1, 3);
  const variants = [
    { mode: 'max' }, { mode: 'max', maxVariant: 'attend-excite' }, { mode: 'tv' }, { mode: 'tv', tvVertical: 'neighbor', smoothing: false },
    { mode: 'tv_max' }, { mode: 'tv_bind', attributeIndices: [3, 7] }, { mode: 'tv_bind', attributeIndices: [-1, 4], stepIndex: 12, bindingRhoLowTv: 0.9, bindingRhoHighTv: 0.9 },
    { mode: 'tv_bind', attributeIndices: [4, 6], tokenSlice: 'until-eot', eotIndex: 7 },
  ];
  for (const v of variants) await compare(`small ${JSON.stringify(v)}`, small, options(9, 4, [8, 2], { temperature: 40, ...v }));
  const sd = layers([64, 64, 32, 32, 16, 16, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64], 8, 77, 2, 3);
  for (const v of [{}, { mode: 'tv' }, { mode: 'max' }]) await compare(`SD 512 ${JSON.stringify(v)}`, sd, options(77, 16, [64, 32], v));
  // bad input through the CUDA path: same RangeError as the CPU path
  assert.throws(() => binding.attentionLossCuda(sd, options(77, 16, [64, 32], { tokenIndices: [2, 80] }), null, null, null),
    (e) => e instanceof RangeError && e.message.startsWith('tokenIndices[1]: 80 is outside'));
  // timings
  const o = options(77, 16, [64, 32], {});
  const g = sd.map((l) => new Float32Array(l.data.length));
  const time = (f) => {
    for (let i = 0; i < 3; i += 1) f();
    const ts = [];
    for (let i = 0; i < 20; i += 1) { const t = process.hrtime.bigint(); f(); ts.push(Number(process.hrtime.bigint() - t) / 1e6); }
    return ts.sort((a, b) => a - b)[10];
  };
  const tc = time(() => binding.attentionLoss(sd, o, g, null, null));
  const tg = time(() => binding.attentionLossCuda(sd, o, g, null, null));
  console.log(`SD 512 tv_bind fwd+bwd from JS, host buffers: CPU ${tc.toFixed(3)} ms, CUDA (host) ${tg.toFixed(3)} ms`);
  console.log('OK: CUDA addon checks passed');
}

main().catch((e) => {
  console.log(`FAILED: ${e.message}`);
  process.exitCode = 1;
});
