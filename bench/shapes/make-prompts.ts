/**
 * Writes the Shapes benchmark's prompt files, deterministically:
 *   bench/shapes/test-prompts.tsv  for the README table
 *   bench/shapes/dev-prompts.tsv   for tuning thresholds and step sizes
 * Run: npx tsc -p . && node dist/bench/shapes/make-prompts.js   (test/eval/prompt-files.test.ts checks that the
 * committed files are this script's output).
 *
 * The prompts follow the training captions (tools/shapes/data.py): coloured prompts name every object's colour,
 * with distinct colours; colour-free prompts count repeated shapes ("two circles and a square"). Per file and
 * category 27 lines, so that 4 seeds give 108 prompt × seed pairs:
 *   single      the whole space: 8 colours × 3 shapes + 3 colour-free = 27 prompts, in both files;
 *   two         the whole colour-free space: 6 ordered shape pairs + "two circles|squares|triangles" = 9 prompts,
 *               3 lines each (a repeated line runs on fresh seeds), in both files;
 *   two_colour  27 coloured pairs per file: each ordered shape pair (same shapes included) 3 times; the files
 *               differ in the colours, so they are disjoint;
 *   three       test: 15 coloured (the 6 orders of circle, square, triangle; 9 tuples with a doubled shape) and
 *               12 colour-free (6 "two Xs and a Y" / "a Y and two Xs", 3 "three Xs", 3 "a X, a Y and a Z");
 *               dev: 18 coloured (the 6 orders, 3 of them twice; the other 9 doubled tuples) and the other 9
 *               colour-free; disjoint. Every shape appears equally often per file and category.
 * single and two cannot be split (27 and 9 prompts in all), so the dev run takes seeds disjoint from the test run's
 * (the dev file's header says which). Colours are chosen greedily for balance (balanceKeys), ties broken by a seeded
 * shuffle; within a prompt they are distinct, as in training.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PALETTE, SHAPES, type ShapeName } from '../../lib/eval/detector';
import { mulberry32 } from '../../lib/eval/stats';

const COLOURS = Object.keys(PALETTE);
const COUNT_WORDS = ['', '', 'two', 'three'];
/** Seeds of the tuning run (disjoint from the test run's 0..11). */
export const DEV_SEEDS = '100-103';

type Obj = { shape: ShapeName; colour: string };

function article(word: string): string {
  return /^[aeiou]/.test(word) ? 'an' : 'a';
}

function join(parts: string[]): string {
  return parts.length === 1 ? parts[0] : parts.length === 2 ? `${parts[0]} and ${parts[1]}` : `${parts.slice(0, -1).join(', ')} and ${parts[parts.length - 1]}`;
}

function colouredText(objs: Obj[]): string {
  return join(objs.map((o) => `${article(o.colour)} ${o.colour} ${o.shape}`));
}

/** Colour-free text with counts, shapes in the given order of first mention: [c, c, s] → "two circles and a square". */
function countedText(shapes: ShapeName[]): string {
  const order = shapes.filter((s, i) => shapes.indexOf(s) === i);
  return join(
    order.map((s) => {
      const n = shapes.filter((x) => x === s).length;
      return n === 1 ? `a ${s}` : `${COUNT_WORDS[n]} ${s}s`;
    }),
  );
}

/** Colour assignments (distinct colours) of a shape tuple, e.g. [circle, square] → 56 candidates. */
function colourings(shapes: ShapeName[]): Obj[][] {
  let out: Obj[][] = [[]];
  for (const shape of shapes) {
    out = out.flatMap((prefix) => COLOURS.filter((c) => !prefix.some((o) => o.colour === c)).map((colour) => [...prefix, { shape, colour }]));
  }
  return out;
}

/** What the colour choice is balanced over, with weights: colours, then shape-colour combinations. */
function balanceKeys(objs: Obj[]): Array<[string, number]> {
  return objs.flatMap(
    (o): Array<[string, number]> => [
      [`colour:${o.colour}`, 2],
      [`pair:${o.shape}:${o.colour}`, 1],
    ],
  );
}

/**
 * Colours for each shape tuple, greedily: the colouring that least increases the weighted sum of squared key
 * counts, among those whose prompt is not taken yet; ties go to the first in a seeded shuffle.
 */
function colourTuples(tuples: ShapeName[][], seed: number, taken: Set<string>): string[] {
  const rng = mulberry32(seed);
  const counts = new Map<string, number>();
  return tuples.map((shapes) => {
    const order = colourings(shapes)
      .map((p) => ({ p, r: rng() }))
      .sort((x, y) => x.r - y.r)
      .map((x) => x.p);
    let best: Obj[] | null = null;
    let bestCost = Infinity;
    for (const cand of order) {
      if (taken.has(colouredText(cand))) continue;
      const cost = balanceKeys(cand).reduce((acc, [key, w]) => acc + w * (2 * (counts.get(key) ?? 0) + 1), 0);
      if (cost < bestCost) [best, bestCost] = [cand, cost];
    }
    if (best === null) throw new Error(`make-prompts: no colouring of ${shapes.join(' ')} left`);
    for (const [key] of balanceKeys(best)) counts.set(key, (counts.get(key) ?? 0) + 1);
    taken.add(colouredText(best));
    return colouredText(best);
  });
}

const [C, S, T] = SHAPES;
/** The 6 orders of circle, square, triangle; the first 3 are the cyclic ones. */
const PERMUTATIONS: ShapeName[][] = [
  [C, S, T],
  [S, T, C],
  [T, C, S],
  [C, T, S],
  [T, S, C],
  [S, C, T],
];
/** Tuples with one shape doubled, odd shape in each position: cyclic (doubled, odd) ∈ {(c,s), (s,t), (t,c)}, anticyclic the rest. */
function doubled(cyclic: boolean): ShapeName[][] {
  const pairs: Array<[ShapeName, ShapeName]> = cyclic
    ? [
        [C, S],
        [S, T],
        [T, C],
      ]
    : [
        [C, T],
        [S, C],
        [T, S],
      ];
  return pairs.flatMap(([d, o]) => [
    [o, d, d],
    [d, o, d],
    [d, d, o],
  ]);
}

interface Sets {
  test: Record<string, string[]>;
  dev: Record<string, string[]>;
}

function colourFreeThree(): { test: string[]; dev: string[] } {
  // Each file: every shape doubled twice and single twice, the other file has the same multisets the other way round.
  const test = [
    countedText([C, C, S]),
    countedText([S, S, T]),
    countedText([T, T, C]),
    countedText([T, C, C]),
    countedText([C, S, S]),
    countedText([S, T, T]),
    ...SHAPES.map((x) => countedText([x, x, x])),
    ...PERMUTATIONS.slice(0, 3).map(countedText),
  ];
  const dev = [
    countedText([C, C, T]),
    countedText([S, S, C]),
    countedText([T, T, S]),
    countedText([S, C, C]),
    countedText([T, S, S]),
    countedText([C, T, T]),
    ...PERMUTATIONS.slice(3).map(countedText),
  ];
  return { test, dev };
}

export function makePromptSets(): Sets {
  const single = [...SHAPES.flatMap((shape) => COLOURS.map((colour) => colouredText([{ shape, colour }]))), ...SHAPES.map((s) => `a ${s}`)];
  const twoPrompts = [...SHAPES.flatMap((a) => SHAPES.filter((b) => b !== a).map((b) => countedText([a, b]))), ...SHAPES.map((s) => countedText([s, s]))];
  const two = [0, 1, 2].flatMap(() => twoPrompts);
  // 9 ordered shape pairs, 3 times each, in both files (the colours differ).
  const pairs = [0, 1, 2].flatMap(() => SHAPES.flatMap((a) => SHAPES.map((b) => [a, b])));
  const taken2 = new Set<string>(),
    taken3 = new Set<string>();
  const free3 = colourFreeThree();
  const test = {
    single,
    two,
    two_colour: colourTuples(pairs, 1, taken2),
    three: [...colourTuples([...PERMUTATIONS, ...doubled(true)], 2, taken3), ...free3.test],
  };
  const dev = {
    single,
    two,
    two_colour: colourTuples(pairs, 3, taken2),
    three: [...colourTuples([...PERMUTATIONS, ...PERMUTATIONS.slice(0, 3), ...doubled(false)], 4, taken3), ...free3.dev],
  };
  return { test, dev };
}

function render(kind: 'test' | 'dev', sets: Record<string, string[]>): string {
  const run =
    kind === 'test'
      ? 'divbind-native eval --prompts bench/shapes/test-prompts.tsv --seeds 4 --out <dir>   (the README table)'
      : `divbind-native eval --prompts bench/shapes/dev-prompts.tsv --seeds ${DEV_SEEDS} --out <dir>   (tuning only; seeds disjoint from the test run)`;
  const header = [
    `# Shapes benchmark prompts, ${kind === 'test' ? 'TEST set: for the README table, never for tuning' : 'DEV set: for tuning thresholds and step sizes'}.`,
    '# Generated by bench/shapes/make-prompts.ts (npx tsc -p . && node dist/bench/shapes/make-prompts.js); do not edit by hand.',
    '# Format: category<TAB>prompt; a prompt on k lines runs on k × the seeds (fresh seeds each time).',
    '# single and two hold their whole prompt space (27 and 9 prompts), the same in both files; two_colour and three',
    '# differ between the files. See bench/shapes/README.md.',
    `# Run: ${run}`,
  ];
  const body = Object.entries(sets).flatMap(([cat, prompts]) => ['', `# ${cat}: ${prompts.length} lines`, ...prompts.map((p) => `${cat}\t${p}`)]);
  return `${[...header, ...body].join('\n')}\n`;
}

export function makePromptFiles(): { test: string; dev: string } {
  const sets = makePromptSets();
  return { test: render('test', sets.test), dev: render('dev', sets.dev) };
}

if (require.main === module) {
  const dir = path.resolve(__dirname, '..', '..', '..', 'bench', 'shapes');
  const files = makePromptFiles();
  fs.writeFileSync(path.join(dir, 'test-prompts.tsv'), files.test);
  fs.writeFileSync(path.join(dir, 'dev-prompts.tsv'), files.dev);
  process.stdout.write(`wrote ${path.join(dir, 'test-prompts.tsv')} and dev-prompts.tsv\n`);
}
