/**
 * PyTorch golden fixtures (test/fixtures/losses/, tools/ reference, float64 autograd) against every
 * available backend. Tolerances: loss, indicator, diagnostics atol 1e-9 + rtol 1e-5; gradients relative
 * L2 error <= 1e-5 and elementwise |got − ref| <= 1e-6·‖ref‖∞ + 1e-5·|ref|.
 * The index must exist: a missing index.json fails this suite.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { attentionLoss, availableBackends } from '../../lib/loss/index';
import { writeNpy } from '../../lib/util/npy';
import type { LossResult } from '../../lib/loss/types';
import { makeLayers } from '../helpers/attention';
import { assertClose, compareArrays, relativeL2 } from '../helpers/assert-close';
import { fixturePath } from '../helpers/fixtures';
import { loadGoldenIndex, type GoldenCase } from './golden-format';

const INDEX = fixturePath('losses', 'index.json');
const SCALAR = { atol: 1e-9, rtol: 1e-5 };

test('golden loss fixtures are present', (t) => {
  t.true(fs.existsSync(INDEX), `${INDEX} is missing; generate it with the PyTorch reference in tools/ (divbind_reference.py)`);
});

function checkAgainst(t: import('ava').ExecutionContext, got: LossResult, c: GoldenCase, label: string): void {
  assertClose(t, got.loss, c.expected.loss, SCALAR, `${label} loss`);
  assertClose(t, got.indicator, c.expected.indicator, SCALAR, `${label} indicator`);
  t.is(got.tokens.length, c.expected.tokens.length, `${label} token count`);
  c.expected.tokens.forEach((w, s) => {
    const g = got.tokens[s];
    t.is(g.tokenIndex, w.tokenIndex, `${label} tokens[${s}].tokenIndex`);
    t.is(g.attributeIndex, w.attributeIndex, `${label} tokens[${s}].attributeIndex`);
    t.is(g.jsd === null, w.jsd === null, `${label} tokens[${s}].jsd presence`);
    for (const key of ['maxAttention', 'tv', 'coefficient', 'value'] as const) assertClose(t, g[key], w[key], SCALAR, `${label} tokens[${s}].${key}`);
    if (g.jsd !== null && w.jsd !== null) assertClose(t, g.jsd, w.jsd, SCALAR, `${label} tokens[${s}].jsd`);
  });
  c.grads.forEach((ref, l) => {
    const mine = got.grads![l];
    const rel = relativeL2(mine, ref);
    t.true(rel <= 1e-5, `${label} grads[${l}]: relative L2 error ${rel} > 1e-5`);
    let inf = 0;
    for (const v of ref) inf = Math.max(inf, Math.abs(v));
    const report = compareArrays(mine, ref, { atol: 1e-6 * inf, rtol: 1e-5 }, `${label} grads[${l}]`);
    t.true(report.ok, report.text);
  });
}

const cases: GoldenCase[] = fs.existsSync(INDEX) ? loadGoldenIndex(INDEX) : [];
for (const c of cases) {
  for (const backend of availableBackends()) {
    test(`golden ${c.name} [${backend}]`, (t) => {
      checkAgainst(t, attentionLoss(c.layers, c.options, { backend }), c, backend);
    });
  }
}

test('fixture reader round-trips a locally written sample in the documented format', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-golden-'));
  try {
    const layers = makeLayers(
      77,
      [
        { resolution: 4, heads: 2 },
        { resolution: 8, heads: 1, place: 'up' },
      ],
      6,
    );
    const options = { mode: 'tv_bind' as const, attentionResolution: 4, attributeResolutions: [8], tokenIndices: [1, 3], attributeIndices: [2, null] };
    const result = attentionLoss(layers, options, { backend: 'js' });
    layers.forEach((l, i) => {
      writeNpy(path.join(dir, `layer${i}.npy`), l.data, [l.heads, l.resolution ** 2, 6]);
      writeNpy(path.join(dir, `grad${i}.npy`), Float64Array.from(result.grads![i]), [l.heads, l.resolution ** 2, 6]);
    });
    const index = {
      version: 1,
      cases: [
        {
          name: 'sample',
          options,
          layers: layers.map((l, i) => ({ file: `layer${i}.npy`, heads: l.heads, resolution: l.resolution, place: l.place })),
          expected: { loss: result.loss, indicator: result.indicator, tokens: result.tokens },
          grads: layers.map((_, i) => `grad${i}.npy`),
        },
      ],
    };
    fs.writeFileSync(path.join(dir, 'index.json'), JSON.stringify(index));
    const [c] = loadGoldenIndex(path.join(dir, 'index.json'));
    t.deepEqual(
      c.layers.map((l) => Array.from(l.data)),
      layers.map((l) => Array.from(l.data)),
    );
    t.deepEqual(c.expected.tokens, result.tokens);
    checkAgainst(t, attentionLoss(c.layers, c.options, { backend: 'js' }), c, 'sample');
    // A drifted format is rejected loudly.
    fs.writeFileSync(path.join(dir, 'index.json'), JSON.stringify({ ...index, version: 2 }));
    t.throws(() => loadGoldenIndex(path.join(dir, 'index.json')), { message: /version 2, this test reads version 1; regenerate the fixtures/ });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
