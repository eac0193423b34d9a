/**
 * Prompt parsing, token specs and image scoring of the Shapes benchmark (exact expected values, hand-built
 * detections).
 */
import test from 'ava';
import { benchmarkPrompt, parsePrompt, PROMPT_SETS } from '../../lib/eval/prompts';
import { scoreImage } from '../../lib/eval/score';
import { summarise, markdownTable, tileGrid, type ImageRecord } from '../../lib/eval/benchmark';
import type { Detection } from '../../lib/eval/detector';

const det = (colour: string, shape: 'circle' | 'square' | 'triangle'): Detection => ({ colour, shape, area: 100, cx: 10, cy: 10, box: [0, 0, 20, 20], rho: 1, shapeConfidence: 1 });

test('parsePrompt reads the caption grammar', (t) => {
  t.deepEqual(parsePrompt('a red circle'), [{ shape: 'circle', colour: 'red' }]);
  t.deepEqual(parsePrompt('a circle and a square'), [{ shape: 'circle', colour: null }, { shape: 'square', colour: null }]);
  t.deepEqual(parsePrompt('a yellow circle, a blue square and an orange triangle'), [
    { shape: 'circle', colour: 'yellow' }, { shape: 'square', colour: 'blue' }, { shape: 'triangle', colour: 'orange' }]);
  t.throws(() => parsePrompt('a red dog'), { instanceOf: RangeError, message: /"dog" is not a shape/ });
  t.throws(() => parsePrompt('a pink circle'), { instanceOf: RangeError, message: /"pink" is not a named colour/ });
  t.throws(() => parsePrompt(''), { instanceOf: TypeError });
});

test('token specs name shape words and aligned colour words, repeated words as word#k', (t) => {
  t.deepEqual(benchmarkPrompt('a red circle and a blue square').tokens, { objects: ['circle', 'square'], attributes: ['red', 'blue'] });
  t.deepEqual(benchmarkPrompt('a circle and a square').tokens, { objects: ['circle', 'square'] });
  t.deepEqual(benchmarkPrompt('a red circle and a blue circle').tokens, { objects: ['circle', 'circle#2'], attributes: ['red', 'blue'] });
  for (const set of PROMPT_SETS) t.true(set.prompts.length >= 4, set.name);
});

test('scoreImage: presence, binding and count', (t) => {
  const req = parsePrompt('a red circle and a blue square');
  t.deepEqual(scoreImage(req, [det('red', 'circle'), det('blue', 'square')]), {
    shapesFound: 2, boundFound: 2, requested: 2, requestedColoured: 2, detected: 2, allPresent: true, allBound: true, countCorrect: true });
  // Colours swapped: both shapes there, binding wrong.
  const swapped = scoreImage(req, [det('blue', 'circle'), det('red', 'square')]);
  t.is(swapped.shapesFound, 2);
  t.is(swapped.boundFound, 0);
  t.true(swapped.allPresent);
  t.false(swapped.allBound);
  // One detection cannot satisfy two requests.
  const one = scoreImage(parsePrompt('a circle and a circle'), [det('red', 'circle')]);
  t.is(one.shapesFound, 1);
  t.false(one.allPresent);
  // An extra object: everything found, count wrong.
  const extra = scoreImage(req, [det('red', 'circle'), det('blue', 'square'), det('green', 'triangle')]);
  t.true(extra.allBound);
  t.false(extra.countCorrect);
});

test('summarise and the Markdown table', (t) => {
  const rec = (method: 'none' | 'tv_bind', ok: boolean): ImageRecord => ({
    set: 'binding', prompt: 'a red circle and a blue square', seed: 0, method, detections: [], ms: 1,
    score: scoreImage(parsePrompt('a red circle and a blue square'), ok ? [det('red', 'circle'), det('blue', 'square')] : [det('red', 'circle')]),
  });
  const rows = summarise([rec('none', false), rec('none', true), rec('tv_bind', true)], ['none', 'tv_bind']);
  t.is(rows[0].images, 2);
  t.is(rows[0].allPresent, 0.5);
  t.is(rows[0].shapeRecall, 0.75);
  t.is(rows[0].bindingRecall, 0.75);
  t.is(rows[1].allBound, 1);
  const md = markdownTable('binding', rows);
  t.true(md.includes('| SD (none) | 2 | 50.0 % | 50.0 % | 50.0 % | 75.0 % | 75.0 % |'), md);
  t.true(md.includes('| D&B (tv_bind) | 1 | 100.0 % |'));
});

test('tileGrid places tiles with gaps and zoom', (t) => {
  const a = { rgb: new Uint8Array(2 * 2 * 3).fill(10), width: 2, height: 2 };
  const b = { rgb: new Uint8Array(2 * 2 * 3).fill(20), width: 2, height: 2 };
  const g = tileGrid([a, b], 2, 2);
  t.is(g.width, 2 * (4 + 2) + 2);
  t.is(g.height, 4 + 4);
  t.is(g.rgb[(2 * g.width + 2) * 3], 10);
  t.is(g.rgb[(2 * g.width + 8) * 3], 20);
  t.is(g.rgb[0], 255);
  t.throws(() => tileGrid([], 1), { instanceOf: RangeError });
});
