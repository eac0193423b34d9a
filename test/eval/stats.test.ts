/**
 * The paired percentile bootstrap: determinism, known answers, and the exact oracle for a 0/1 sample (the bootstrap
 * distribution of its mean is Binomial(n, p̂)/n, whose quantiles are computed here in float64).
 */
import test from 'ava';
import { mulberry32, pairedBootstrap, quantile, BOOTSTRAP_REPLICATES } from '../../lib/eval/stats';

const sample = (n: number, ones: number) => Array.from({ length: n }, (_, i) => (i < ones ? 1 : 0));

/** Smallest k/n with P(Binomial(n, p) ≤ k) ≥ q. */
function binomialQuantile(n: number, p: number, q: number): number {
  let logC = 0; // log C(n, k)
  let cdf = 0;
  for (let k = 0; k <= n; k++) {
    if (k > 0) logC += Math.log(n - k + 1) - Math.log(k);
    cdf += Math.exp(logC + k * Math.log(p) + (n - k) * Math.log1p(-p));
    if (cdf >= q) return k / n;
  }
  return 1;
}

test('mulberry32 is deterministic and uniform on [0, 1)', (t) => {
  const a = mulberry32(42),
    b = mulberry32(42),
    c = mulberry32(43);
  const xs = Array.from({ length: 10000 }, () => a());
  t.deepEqual(
    xs.slice(0, 5),
    Array.from({ length: 5 }, () => b()),
  );
  t.not(xs[0], c());
  t.true(xs.every((x) => x >= 0 && x < 1));
  const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
  t.true(Math.abs(mean - 0.5) < 0.01, String(mean));
});

test('quantile interpolates like numpy', (t) => {
  t.is(quantile([1, 2, 3, 4], 0), 1);
  t.is(quantile([1, 2, 3, 4], 1), 4);
  t.is(quantile([1, 2, 3, 4], 0.5), 2.5);
  t.is(quantile([1, 2, 3, 4], 0.25), 1.75);
  t.is(quantile([7], 0.975), 7);
  t.throws(() => quantile([], 0.5), { instanceOf: RangeError });
});

test('known answers: all success → [1, 1], all failure → [0, 0]', (t) => {
  const r = pairedBootstrap({ good: sample(100, 100), bad: sample(100, 0) }, [['good', 'bad']]);
  t.deepEqual(r.methods.good, { estimate: 1, ci95: [1, 1] });
  t.deepEqual(r.methods.bad, { estimate: 0, ci95: [0, 0] });
  t.deepEqual(r.differences['good-bad'], { estimate: 1, ci95: [1, 1] });
  t.is(r.n, 100);
});

test('a 50/50 sample: the interval contains 0.5 and matches the binomial quantiles', (t) => {
  const r = pairedBootstrap({ m: sample(100, 50) });
  const [lo, hi] = r.methods.m.ci95;
  t.true(lo < 0.5 && hi > 0.5);
  // Exact: Binomial(100, 0.5) has 2.5 % / 97.5 % quantiles 40 and 60; 2000 replicates land within a point or two.
  t.is(binomialQuantile(100, 0.5, 0.025), 0.4);
  t.is(binomialQuantile(100, 0.5, 0.975), 0.6);
  t.true(Math.abs(lo - 0.4) <= 0.02, String(lo));
  t.true(Math.abs(hi - 0.6) <= 0.02, String(hi));
});

test('a 30 % sample of 60: percentiles match Binomial(60, 0.3)', (t) => {
  const r = pairedBootstrap({ m: sample(60, 18) }, [], { replicates: 20000, seed: 3 });
  t.is(r.methods.m.estimate, 0.3);
  t.true(Math.abs(r.methods.m.ci95[0] - binomialQuantile(60, 0.3, 0.025)) <= 1 / 60 + 1e-12, String(r.methods.m.ci95));
  t.true(Math.abs(r.methods.m.ci95[1] - binomialQuantile(60, 0.3, 0.975)) <= 1 / 60 + 1e-12, String(r.methods.m.ci95));
});

test('deterministic: the same outcomes give the same intervals; another seed gives other draws', (t) => {
  const outcomes = { a: sample(40, 13), b: sample(40, 29).reverse() };
  const r1 = pairedBootstrap(outcomes, [['b', 'a']]);
  const r2 = pairedBootstrap(outcomes, [['b', 'a']]);
  t.deepEqual(r1, r2);
  const r3 = pairedBootstrap(outcomes, [['b', 'a']], { seed: 99 });
  t.notDeepEqual([r1.methods.a.ci95, r1.methods.b.ci95, r1.differences['b-a'].ci95], [r3.methods.a.ci95, r3.methods.b.ci95, r3.differences['b-a'].ci95]);
  t.is(BOOTSTRAP_REPLICATES, 2000);
});

test('paired: identical methods differ by exactly 0; the difference uses the same draws for both', (t) => {
  const x = sample(50, 20);
  const r = pairedBootstrap({ a: x, b: [...x] }, [['a', 'b']]);
  t.deepEqual(r.differences['a-b'], { estimate: 0, ci95: [0, 0] });
  t.deepEqual(r.methods.a, r.methods.b);
  // b succeeds exactly where a fails: a − b = 2a − 1 per pair, so the difference's interval is 2·(a's) − 1.
  const y = x.map((v) => 1 - v);
  const s = pairedBootstrap({ a: x, b: y }, [['a', 'b']]);
  t.true(Math.abs(s.differences['a-b'].ci95[0] - (2 * s.methods.a.ci95[0] - 1)) < 1e-12);
  t.true(Math.abs(s.differences['a-b'].ci95[1] - (2 * s.methods.a.ci95[1] - 1)) < 1e-12);
});

test('pairedBootstrap rejects misaligned or empty input', (t) => {
  t.throws(() => pairedBootstrap({ a: [1, 0], b: [1] }), { instanceOf: RangeError, message: /aligned/ });
  t.throws(() => pairedBootstrap({}), { instanceOf: RangeError });
  t.throws(() => pairedBootstrap({ a: [] }), { instanceOf: RangeError });
  t.throws(() => pairedBootstrap({ a: [1] }, [['a', 'z']]), { instanceOf: RangeError, message: /a-z/ });
  t.throws(() => pairedBootstrap({ a: [1] }, [], { replicates: 0 }), { instanceOf: RangeError });
});
