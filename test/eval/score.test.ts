/**
 * Scoring: the maximum matching against a brute-force oracle, and the success rule with counts and colours on
 * hand-built detections.
 */
import test from 'ava';
import { maximumMatching, scoreImage } from '../../lib/eval/score';
import { parsePrompt } from '../../lib/eval/prompts';
import { mulberry32 } from '../../lib/eval/stats';
import type { Detection, ShapeName } from '../../lib/eval/detector';

const det = (colour: string, shape: ShapeName): Detection => ({ colour, shape, area: 100, cx: 10, cy: 10, box: [0, 0, 20, 20], rho: 1, shapeConfidence: 1 });
const score = (prompt: string, dets: Detection[]) => scoreImage(parsePrompt(prompt).objects, dets);

/** Largest matching by trying every injective assignment (left item → right item or unmatched). */
function bruteForce(nLeft: number, nRight: number, ok: (i: number, j: number) => boolean): number {
  const used = new Array<boolean>(nRight).fill(false);
  const rec = (i: number): number => {
    if (i === nLeft) return 0;
    let best = rec(i + 1);
    for (let j = 0; j < nRight; j++) {
      if (used[j] || !ok(i, j)) continue;
      used[j] = true;
      best = Math.max(best, 1 + rec(i + 1));
      used[j] = false;
    }
    return best;
  };
  return rec(0);
}

test('maximumMatching equals brute force on random bipartite graphs', (t) => {
  const rng = mulberry32(7);
  for (let trial = 0; trial < 300; trial++) {
    const nl = 1 + Math.floor(rng() * 5),
      nr = Math.floor(rng() * 7);
    const density = rng();
    const edges = Array.from({ length: nl }, () => Array.from({ length: nr }, () => rng() < density));
    const ok = (i: number, j: number) => edges[i][j];
    t.is(maximumMatching(nl, nr, ok), bruteForce(nl, nr, ok), `trial ${trial}`);
  }
});

test('success: every requested object with its named colour', (t) => {
  t.deepEqual(score('a red circle and a blue square', [det('red', 'circle'), det('blue', 'square')]), {
    success: true,
    matched: 2,
    shapesFound: 2,
    allPresent: true,
    requested: 2,
    requestedColoured: 2,
    detected: 2,
    countExact: true,
  });
  // Colours swapped: the shapes are there, the binding is not.
  const swapped = score('a red circle and a blue square', [det('blue', 'circle'), det('red', 'square')]);
  t.false(swapped.success);
  t.true(swapped.allPresent);
  t.is(swapped.matched, 0);
  // Colour-free prompt: any colour will do.
  t.true(score('a circle and a square', [det('green', 'square'), det('black', 'circle')]).success);
  // Partly coloured: the named colour must match, the other object may have any colour.
  t.true(score('a red circle and a square', [det('red', 'circle'), det('white', 'square')]).success);
  t.false(score('a red circle and a square', [det('blue', 'circle'), det('white', 'square')]).success);
});

test('counts are honoured: "two circles" needs two circles', (t) => {
  t.false(score('two circles', [det('red', 'circle')]).success);
  t.true(score('two circles', [det('red', 'circle'), det('blue', 'circle')]).success);
  t.false(score('two circles and a square', [det('red', 'circle'), det('blue', 'square')]).success);
  t.true(score('two circles and a square', [det('red', 'circle'), det('green', 'circle'), det('blue', 'square')]).success);
  t.false(score('three triangles', [det('red', 'triangle'), det('green', 'triangle'), det('blue', 'circle')]).success);
  t.true(score('two red circles', [det('red', 'circle'), det('red', 'circle')]).success);
  t.false(score('two red circles', [det('red', 'circle'), det('blue', 'circle')]).success);
  // One detection cannot serve two requests.
  const one = score('a circle and a circle', [det('red', 'circle')]);
  t.is(one.matched, 1);
  t.false(one.success);
});

test('extra detected objects do not fail an image', (t) => {
  const s = score('a red circle and a blue square', [det('green', 'triangle'), det('red', 'circle'), det('yellow', 'circle'), det('blue', 'square')]);
  t.true(s.success);
  t.false(s.countExact);
  t.is(s.detected, 4);
  t.true(score('two circles', [det('red', 'circle'), det('blue', 'circle'), det('white', 'circle')]).success);
});

test('the best one-to-one matching is found, not a greedy one', (t) => {
  // Greedy in prompt order would give the red circle to "a circle" and leave "a red circle" unmatched.
  t.true(score('a circle and a red circle', [det('red', 'circle'), det('blue', 'circle')]).success);
  t.true(score('a red circle, a circle and a blue circle', [det('blue', 'circle'), det('red', 'circle'), det('green', 'circle')]).success);
  t.false(score('a red circle, a circle and a blue circle', [det('blue', 'circle'), det('red', 'circle')]).success);
});

test('scoreImage rejects an empty request', (t) => {
  t.throws(() => scoreImage([], [det('red', 'circle')]), { instanceOf: TypeError });
});
