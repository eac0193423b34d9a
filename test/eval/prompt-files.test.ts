/**
 * The committed prompt files: they are exactly the generator's output, parse, give ≥ 100 distinct prompt × seed
 * pairs per category with 4 seeds, are balanced over shapes and colours, include counted prompts, keep tuning apart
 * from testing (disjoint prompts where the space allows, disjoint seeds where it does not).
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makePromptFiles, DEV_SEEDS } from '../../bench/shapes/make-prompts';
import { promptEntries } from '../../lib/eval/benchmark';
import { CATEGORIES, readPromptFile, type PromptLine } from '../../lib/eval/prompts';
import { parseSeeds } from '../../lib/cli/commands/eval';
import { REPO_ROOT } from '../helpers/fixtures';

const DIR = path.join(REPO_ROOT, 'bench', 'shapes');
const read = (kind: string) => readPromptFile(path.join(DIR, `${kind}-prompts.tsv`));
const texts = (lines: PromptLine[], category: string) => new Set(lines.filter((l) => l.category === category).map((l) => l.prompt.text));

test('the committed files are the output of bench/shapes/make-prompts.ts', (t) => {
  const made = makePromptFiles();
  t.is(fs.readFileSync(path.join(DIR, 'test-prompts.tsv'), 'utf8'), made.test, 'regenerate: npx tsc -p . && node dist/bench/shapes/make-prompts.js');
  t.is(fs.readFileSync(path.join(DIR, 'dev-prompts.tsv'), 'utf8'), made.dev);
});

for (const kind of ['test', 'dev']) {
  test(`${kind}: ≥ 25 lines and ≥ 100 distinct prompt × seed pairs per category with 4 seeds`, (t) => {
    const lines = read(kind);
    const seeds = kind === 'test' ? [0, 1, 2, 3] : parseSeeds(DEV_SEEDS);
    t.is(seeds.length, 4);
    for (const c of CATEGORIES) {
      t.true(lines.filter((l) => l.category === c).length >= 25, c);
      const pairs = promptEntries(
        lines.filter((l) => l.category === c),
        seeds,
      ).flatMap((e) => e.seeds.map((s) => `${e.prompt.text}|${s}`));
      t.is(new Set(pairs).size, pairs.length, `${c}: a pair repeats`);
      t.true(pairs.length >= 100, `${c}: ${pairs.length} pairs`);
    }
  });

  test(`${kind}: balanced over shapes and colours, counted prompts in two and three`, (t) => {
    const lines = read(kind);
    for (const c of CATEGORIES) {
      const shapes = new Map<string, number>(),
        colours = new Map<string, number>();
      for (const l of lines.filter((x) => x.category === c)) {
        for (const o of l.prompt.objects) {
          shapes.set(o.shape, (shapes.get(o.shape) ?? 0) + 1);
          if (o.colour) colours.set(o.colour, (colours.get(o.colour) ?? 0) + 1);
        }
      }
      t.is(shapes.size, 3, c);
      t.is(new Set(shapes.values()).size, 1, `${c}: shapes ${JSON.stringify([...shapes])}`);
      if (c !== 'two') {
        t.is(colours.size, 8, c);
        t.true(Math.max(...colours.values()) - Math.min(...colours.values()) <= 2, `${c}: colours ${JSON.stringify([...colours])}`);
      }
    }
    const counted = (c: string) => lines.filter((l) => l.category === c && l.prompt.mentions.some((m) => m.count > 1)).length;
    t.true(counted('two') >= 9);
    t.true(counted('three') >= 6);
    // Coloured prompts use distinct colours, as the training scenes do.
    for (const l of lines) {
      const named = l.prompt.mentions.flatMap((m) => (m.colour ? [m.colour] : []));
      t.is(new Set(named).size, named.length, l.prompt.text);
    }
  });
}

test('dev and test: disjoint two_colour and three prompts; single and two share the whole space but not seeds', (t) => {
  const test_ = read('test'),
    dev = read('dev');
  for (const c of ['two_colour', 'three']) {
    const overlap = [...texts(test_, c)].filter((p) => texts(dev, c).has(p));
    t.deepEqual(overlap, [], c);
  }
  for (const c of ['single', 'two']) t.deepEqual(texts(test_, c), texts(dev, c), c);
  t.is(texts(test_, 'single').size, 27);
  t.is(texts(test_, 'two').size, 9);
  const seedsOf = (lines: PromptLine[], seeds: number[]) => new Set(promptEntries(lines, seeds).flatMap((e) => e.seeds));
  const testSeeds = seedsOf(test_, [0, 1, 2, 3]);
  const devSeeds = seedsOf(dev, parseSeeds(DEV_SEEDS));
  t.deepEqual(
    [...testSeeds].filter((s) => devSeeds.has(s)),
    [],
  );
});
