/**
 * Public API surface: backend selection and fallback (with the addon hidden through DIVBIND_NATIVE_PATH in a
 * child process), computeGrad, returnMaps (checked against the spec oracle), gradOut written in place.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { attentionLoss, availableBackends, resolveBackend } from '../../lib/loss/index';
import { tryLoadNativeBinding } from '../../lib/loss/binding';
import { normalizeLossOptions } from '../../lib/loss/validate';
import { makeLayers } from '../helpers/attention';
import { assertAllClose } from '../helpers/assert-close';
import { LOSS_CASES } from './cases';
import { referenceForward } from './reference';

const { binding } = tryLoadNativeBinding();
const BIND_CASE = LOSS_CASES.find((c) => c.name === 'tv_bind both attributes')!;

test('availableBackends and the default choice', (t) => {
  const backends = availableBackends();
  t.true(backends.includes('js'));
  t.is(backends.includes('native'), binding !== null);
  t.is(resolveBackend(), binding ? 'native' : 'js');
  t.is(resolveBackend('js'), 'js');
});

test('without the addon: default falls back to js, explicit native throws the loader diagnostic', (t) => {
  const index = path.resolve(__dirname, '../../lib/loss/index.js');
  const script = `
    const api = require(${JSON.stringify(index)});
    const layers = [{ data: new Float32Array(2 * 16 * 10).fill(0.1), heads: 2, resolution: 4, place: 'down' }];
    const options = { attentionResolution: 4, tokenIndices: [2] };
    const out = { backends: api.availableBackends(), loss: api.attentionLoss(layers, options).loss };
    try { api.attentionLoss(layers, options, { backend: 'native' }); } catch (e) { out.native = e.message; }
    try { api.attentionLoss(layers, options, { backend: 'cuda' }); } catch (e) { out.cuda = e.message; }
    process.stdout.write(JSON.stringify(out));`;
  const child = spawnSync(process.execPath, ['-e', script], {
    env: { ...process.env, DIVBIND_NATIVE_PATH: '/nonexistent/divbind_native.node' },
    encoding: 'utf8',
  });
  t.is(child.status, 0, child.stderr);
  const out = JSON.parse(child.stdout) as { backends: string[]; loss: number; native: string; cuda: string };
  t.deepEqual(out.backends, ['js']);
  t.true(Number.isFinite(out.loss));
  t.regex(out.native, /^divbind-native: could not load the native addon/);
  t.regex(out.native, /DIVBIND_NATIVE_PATH=\/nonexistent\/divbind_native\.node/);
  t.regex(out.cuda, /^The 'cuda' loss backend is not available: the native addon did not load \(divbind-native: could not load/);
});

for (const backend of availableBackends().filter((b) => b !== 'cuda')) {
  test(`computeGrad false returns no gradients and the same values [${backend}]`, (t) => {
    const layers = makeLayers(BIND_CASE.seed, BIND_CASE.specs, BIND_CASE.T);
    const full = attentionLoss(layers, BIND_CASE.options, { backend });
    const forward = attentionLoss(layers, BIND_CASE.options, { backend, computeGrad: false });
    t.is(forward.grads, undefined);
    t.is(forward.loss, full.loss);
    t.deepEqual(forward.tokens, full.tokens);
  });

  test(`returnMaps gives the smoothed maps of the spec oracle [${backend}]`, (t) => {
    const layers = makeLayers(BIND_CASE.seed, BIND_CASE.specs, BIND_CASE.T);
    const r = attentionLoss(layers, BIND_CASE.options, { backend, returnMaps: true });
    const ref = referenceForward(layers, normalizeLossOptions(layers, BIND_CASE.options));
    t.is(r.maps!.resolution, 4);
    assertAllClose(
      t,
      r.maps!.objects,
      ref.objectMaps.flatMap((m) => m.flat()),
      { atol: 1e-9, rtol: 1e-6 },
      'objects',
    );
    t.is(r.maps!.attributes!.length, 2 * 16);
    const tv = attentionLoss(layers, { ...BIND_CASE.options, mode: 'tv' }, { backend, returnMaps: true });
    t.is(tv.maps!.attributes, null, 'no attribute maps outside tv_bind');
  });

  test(`gradOut is overwritten in place and returned [${backend}]`, (t) => {
    const layers = makeLayers(BIND_CASE.seed, BIND_CASE.specs, BIND_CASE.T);
    const fresh = attentionLoss(layers, BIND_CASE.options, { backend });
    const gradOut = layers.map((l) => new Float32Array(l.data.length).fill(123));
    const r = attentionLoss(layers, BIND_CASE.options, { backend, gradOut });
    r.grads!.forEach((g, l) => {
      t.is(g, gradOut[l]);
      t.deepEqual(g, fresh.grads![l]);
    });
  });
}
