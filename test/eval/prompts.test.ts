/**
 * The Shapes prompt grammar (objects, colours, counts), the guided tokens, category inference and prompt files:
 * exact expected values, and errors that name the file, the line and the word.
 */
import test from 'ava';
import * as path from 'node:path';
import { DivbindError } from '../../lib/errors';
import { guidanceTokens, inferCategory, lineSeeds, parsePrompt, parsePromptFile, readPromptFile } from '../../lib/eval/prompts';
import { promptEntries, runSeeds } from '../../lib/eval/benchmark';
import { ClipTokenizer } from '../../lib/tokenizer/clip';
import { selectTokens } from '../../lib/pipeline/token-selection';
import { fixturePath } from '../helpers/fixtures';

const objs = (p: string) => parsePrompt(p).objects.map((o) => `${o.colour ?? '-'} ${o.shape}`);

test('objects, colours and counts of the caption grammar', (t) => {
  t.deepEqual(objs('a red circle'), ['red circle']);
  t.deepEqual(objs('a circle and a square'), ['- circle', '- square']);
  t.deepEqual(objs('a yellow circle, a blue square and an orange triangle'), ['yellow circle', 'blue square', 'orange triangle']);
  t.deepEqual(objs('two circles and a square'), ['- circle', '- circle', '- square']);
  t.deepEqual(objs('three triangles'), ['- triangle', '- triangle', '- triangle']);
  t.deepEqual(objs('a square and two circles'), ['- square', '- circle', '- circle']);
  t.deepEqual(objs('a circle, a square and a triangle'), ['- circle', '- square', '- triangle']);
  // Within the grammar though never a training caption: counted colours, serial comma, no article, repeated shapes.
  t.deepEqual(objs('two red circles'), ['red circle', 'red circle']);
  t.deepEqual(objs('a circle, a square, and a triangle'), ['- circle', '- square', '- triangle']);
  t.deepEqual(objs('red circle and blue square'), ['red circle', 'blue square']);
  t.deepEqual(objs('a circle and a circle'), ['- circle', '- circle']);
  t.deepEqual(parsePrompt('two circles and a red square').mentions, [
    { count: 2, colour: null, shape: 'circle', shapeWord: 'circles' },
    { count: 1, colour: 'red', shape: 'square', shapeWord: 'square' },
  ]);
});

test('case, extra spaces, commas and trailing punctuation are normalised', (t) => {
  const p = parsePrompt('  A Red   CIRCLE ,a blue square  AND an Orange triangle. ');
  t.is(p.text, 'a red circle, a blue square and an orange triangle');
  t.deepEqual(objs('Two Circles!'), ['- circle', '- circle']);
  t.is(parsePrompt('a circle;').text, 'a circle');
});

function badPrompt(t: import('ava').ExecutionContext, prompt: string, message: RegExp): void {
  const err = t.throws(() => parsePrompt(prompt), { instanceOf: DivbindError, message });
  t.is(err?.code, 'BAD_INPUT', prompt);
}

test('bad prompts: unknown words and broken grammar are named', (t) => {
  badPrompt(t, 'a pink circle', /unknown word "pink"/);
  badPrompt(t, 'a red dog', /unknown word "dog"/);
  badPrompt(t, '2 circles', /unknown word "2"/);
  badPrompt(t, 'one circle', /unknown word "one"/);
  badPrompt(t, 'two circle', /"two" needs the plural "circles"/);
  badPrompt(t, 'a circles', /"a" needs the singular "circle"/);
  badPrompt(t, 'circles', /"circles" needs a count/);
  badPrompt(t, 'a red', /"a red" names no shape/);
  badPrompt(t, 'a red blue circle', /unexpected "blue" in "a red blue circle"/);
  badPrompt(t, 'a circle square', /unexpected "square" after "circle"/);
  badPrompt(t, 'and a circle', /"and" must follow an object/);
  badPrompt(t, 'a circle and', /ends with "and"/);
  badPrompt(t, 'a circle, , a square', /"," must follow an object/);
  badPrompt(t, '   ', /empty prompt/);
  t.throws(() => parsePrompt(3 as unknown as string), { instanceOf: DivbindError, message: /Expected a prompt string/ });
});

test('guided tokens: shape words as written (plural for counted objects), aligned colours, repeats as word#k', (t) => {
  t.deepEqual(guidanceTokens(parsePrompt('a red circle and a blue square')), { objects: ['circle', 'square'], attributes: ['red', 'blue'] });
  t.deepEqual(guidanceTokens(parsePrompt('two circles and a square')), { objects: ['circles', 'square'] });
  t.deepEqual(guidanceTokens(parsePrompt('three triangles')), { objects: ['triangles'] });
  t.deepEqual(guidanceTokens(parsePrompt('a red circle and a blue circle')), { objects: ['circle', 'circle#2'], attributes: ['red', 'blue'] });
  t.deepEqual(guidanceTokens(parsePrompt('a red circle and a red square')), { objects: ['circle', 'square'], attributes: ['red', 'red#2'] });
  t.deepEqual(guidanceTokens(parsePrompt('a red circle and a square')), { objects: ['circle', 'square'], attributes: ['red', null] });
});

test('the token selector resolves the guided tokens to the intended words', (t) => {
  const tok = ClipTokenizer.fromDirectory(fixturePath('models', 'tiny-sd', 'tokenizer'));
  for (const prompt of [
    'a red circle and a blue circle',
    'two circles and a red square',
    'a yellow circle, a blue square and an orange triangle',
    'a red circle and a red square',
  ]) {
    const p = parsePrompt(prompt);
    const sel = selectTokens(tok, p.text, guidanceTokens(p));
    // Last piece of each word (a word may be split into several pieces), in prompt order.
    const words = new Map<number, { word: string; last: number }>();
    for (const r of sel.table) if (r.kind === 'token' && r.wordIndex !== null) words.set(r.wordIndex, { word: r.word as string, last: r.index });
    const shapeAt = [...words.values()].filter((w) => p.mentions.some((m) => m.shapeWord === w.word)).map((w) => w.last);
    t.deepEqual(sel.tokenIndices, shapeAt, prompt);
    t.deepEqual(
      sel.choices.filter((c) => c.role === 'attribute').map((c) => c.word),
      p.mentions.filter((m) => m.colour).map((m) => m.colour),
      prompt,
    );
  }
});

test('category inference', (t) => {
  const cat = (p: string) => inferCategory(parsePrompt(p));
  t.is(cat('a red circle'), 'single');
  t.is(cat('a circle'), 'single');
  t.is(cat('a circle and a square'), 'two');
  t.is(cat('two squares'), 'two');
  t.is(cat('a red circle and a square'), 'two_colour');
  t.is(cat('a red circle and a blue square'), 'two_colour');
  t.is(cat('two circles and a square'), 'three');
  t.is(cat('three triangles'), 'three');
  t.is(cat('a red circle, a blue square and a yellow triangle'), 'three');
  t.throws(() => cat('three circles and a square'), { instanceOf: DivbindError, message: /4 objects: the categories .* hold 1 to 3/ });
});

test('prompt files: comments, blank lines, categories, CRLF, repeats', (t) => {
  const text =
    '\ufeff# header\r\n\r\nsingle\ta red circle   # trailing comment\r\nTWO\ttwo circles\na circle and a blue square\n   \nthree triangles\ntwo circles\n';
  const lines = parsePromptFile(text, 'p.tsv');
  t.deepEqual(
    lines.map((l) => [l.line, l.category, l.prompt.text, l.occurrence]),
    [
      [3, 'single', 'a red circle', 0],
      [4, 'two', 'two circles', 0],
      [5, 'two_colour', 'a circle and a blue square', 0],
      [7, 'three', 'three triangles', 0],
      [8, 'two', 'two circles', 1],
    ],
  );
  t.true(lines.every((l) => l.file === 'p.tsv'));
});

test('prompt file errors name the file, the line and the word', (t) => {
  const bad = (text: string, message: RegExp) => {
    const err = t.throws(() => parsePromptFile(text, 'bench/x.tsv'), { instanceOf: DivbindError, message });
    t.is(err?.code, 'BAD_INPUT');
  };
  bad('a red circle\n# ok\na pink square\n', /^bench\/x\.tsv:3: prompt "a pink square": unknown word "pink"/);
  bad('singel\ta red circle\n', /^bench\/x\.tsv:1: unknown category "singel" \(expected one of single, two, two_colour, three\)/);
  bad('three\ta red circle\n', /^bench\/x\.tsv:1: category "three" is for 3 object\(s\) but "a red circle" requests 1/);
  bad('single\ta red circle\tx\n', /^bench\/x\.tsv:1: 3 tab-separated fields/);
  bad('two\ttwo circles\n\ntwo_colour\ttwo circles\n', /^bench\/x\.tsv:3: "two circles" is in category two_colour here but two on line 1/);
  bad('# only comments\n\n', /^bench\/x\.tsv: no prompts/);
  const err = t.throws(() => readPromptFile(path.join(__dirname, 'no-such-file.tsv')), {
    instanceOf: DivbindError,
    message: /cannot read the prompt file .*no-such-file\.tsv: ENOENT/,
  });
  t.is(err?.field, 'prompts');
});

test('a repeated prompt line runs on fresh seeds; quick keeps one prompt per category and two seeds', (t) => {
  t.deepEqual(lineSeeds([0, 1, 2, 3], 0), [0, 1, 2, 3]);
  t.deepEqual(lineSeeds([0, 1, 2, 3], 2), [8, 9, 10, 11]);
  t.deepEqual(lineSeeds([100, 101, 102, 103], 1), [104, 105, 106, 107]);
  t.deepEqual(lineSeeds([5, 0, 9], 1), [15, 10, 19]);
  const lines = parsePromptFile('two circles\na red circle\ntwo circles\nthree\tthree squares\nsingle\ta circle\n', 'f');
  const entries = promptEntries(lines, [0, 1, 2]);
  t.deepEqual(
    entries.map((e) => [e.category, e.index, e.prompt.text, e.lines, e.seeds]),
    [
      ['two', 1, 'two circles', [1, 3], [0, 1, 2, 3, 4, 5]],
      ['single', 1, 'a red circle', [2], [0, 1, 2]],
      ['three', 1, 'three squares', [4], [0, 1, 2]],
      ['single', 2, 'a circle', [5], [0, 1, 2]],
    ],
  );
  t.deepEqual(runSeeds([0, 1, 2], true), [0, 1]);
  t.deepEqual(runSeeds([0, 1, 2], false), [0, 1, 2]);
  const quick = promptEntries(lines, runSeeds([0, 1, 2], true), true);
  t.deepEqual(
    quick.map((e) => [e.prompt.text, e.seeds]),
    [
      ['two circles', [0, 1]],
      ['a red circle', [0, 1]],
      ['three squares', [0, 1]],
    ],
  );
});
