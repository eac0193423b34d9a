/**
 * Outputs without a model: results.json's schema and numbers from hand-made records, the Markdown table, and the
 * labelled grids (font, layout, tile order, verdict bars).
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PNG } from 'pngjs';
import { promptEntries, type ImageRecord } from '../../lib/eval/benchmark';
import { ADVANCE, drawText, GLYPH_H, GLYPH_W, GRID, labelledGrid, type RgbImage } from '../../lib/eval/grid';
import { parsePromptFile } from '../../lib/eval/prompts';
import { differencePairs, gridFileName, writeGrid, writeResults } from '../../lib/eval/report';
import { scoreImage } from '../../lib/eval/score';
import type { GuidanceMode } from '../../lib/pipeline/guidance';
import { checkResultsSchema } from './helpers';

const FILE = 'two circles\nsingle\ta red circle\na red circle and a blue square\n';

/** Records for each line × seed × method; success decided by `ok`. */
function records(methods: GuidanceMode[], seeds: number[], ok: (prompt: string, seed: number, m: GuidanceMode) => boolean): ImageRecord[] {
  const entries = promptEntries(parsePromptFile(FILE, 'f'), seeds);
  return entries.flatMap((e) =>
    e.seeds.flatMap((seed) =>
      methods.map((method): ImageRecord => {
        const success = ok(e.prompt.text, seed, method);
        return {
          category: e.category,
          prompt: e.prompt.text,
          lines: e.lines,
          seed,
          method,
          success,
          detections: [],
          imageSha256: '0',
          seconds: method === 'none' ? 1 : 3,
          score: { ...scoreImage(e.prompt.objects, []), success },
        };
      }),
    ),
  );
}

test('results.json has the issue schema, rates and paired differences', (t) => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-report-'));
  try {
    const methods: GuidanceMode[] = ['none', 'max', 'tv_bind'];
    const seeds = [0, 1, 2, 3];
    // none: succeeds on seeds 0-1; max: seeds 0-2; tv_bind: always.
    const recs = records(methods, seeds, (_p, s, m) => (m === 'tv_bind' ? true : m === 'max' ? s < 3 : s < 2));
    const entries = promptEntries(parsePromptFile(FILE, 'f'), seeds);
    const { results, markdown, files } = writeResults(out, {
      entries,
      records: recs,
      methods,
      config: { prompts: 'f', seeds, model: 'm', workers: 1, parameters: { none: { steps: 3 } } },
    });
    const json = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8')) as typeof results;
    t.deepEqual(json, JSON.parse(JSON.stringify(results)));
    checkResultsSchema(t, json, methods, ['single', 'two', 'two_colour']);
    t.is(json.methods.none.categories.two?.success, 0.5);
    t.is(json.methods.max.categories.single?.success, 0.75);
    t.deepEqual(json.methods.tv_bind.categories.three, undefined);
    t.deepEqual(json.methods.tv_bind.categories.two_colour, { n: 4, success: 1, ci95: [1, 1] });
    t.is(json.methods.none.secondsPerImage, 1);
    t.is(json.methods.tv_bind.secondsPerImage, 3);
    t.deepEqual(Object.keys(json.differences), ['max-none', 'tv_bind-none', 'tv_bind-max']);
    t.is(json.differences['tv_bind-none'].single?.difference, 0.5);
    t.is(json.bootstrap.replicates, 2000);
    t.is(JSON.parse(fs.readFileSync(path.join(out, 'records.json'), 'utf8')).length, 3 * 4 * 3);
    t.deepEqual(
      files.map((f) => path.basename(f)),
      ['results.json', 'records.json', 'results.md'],
    );
    t.true(markdown.includes('| category | pairs | SD (none) | A&E (max) | D&B (tv_bind) |'), markdown);
    t.regex(markdown, /\| two \| 4 \| 50\.0 % \[[\d.]+, [\d.]+\] \| 75\.0 % \[[\d.]+, [\d.]+\] \| 100\.0 % \[100\.0, 100\.0\] \|/);
    t.regex(markdown, /\| single \| \+25\.0 \[[\d.]+, [\d.]+\] \| \+50\.0 \[[\d.]+, [\d.]+\] \| \+25\.0 \[/);
    t.true(markdown.includes('Extra detected objects do not fail an image (counts are minimums).'));
    t.true(markdown.includes('seeds 0, 1, 2, 3 per line, 3 steps;'), markdown);
    t.true(markdown.includes('| two | two circles | 2/4 | 3/4 | 4/4 | [grid](grids/two-01-two-circles.png) |'), markdown);
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});

test('difference pairs: every method against none, D&B against A&E', (t) => {
  t.deepEqual(differencePairs(['none', 'max', 'tv', 'tv_bind']), [
    ['max', 'none'],
    ['tv', 'none'],
    ['tv_bind', 'none'],
    ['tv', 'max'],
    ['tv_bind', 'max'],
  ]);
  t.deepEqual(differencePairs(['tv_bind', 'tv']), []);
});

const solid = (v: number, w = 4, h = 3): RgbImage => ({ rgb: new Uint8Array(w * h * 3).fill(v), width: w, height: h });
const px = (img: RgbImage, x: number, y: number) => Array.from(img.rgb.subarray((y * img.width + x) * 3, (y * img.width + x) * 3 + 3));

test('the 5×7 font draws the expected glyph', (t) => {
  const canvas = solid(255, 12, 7);
  drawText(canvas, 'T1', 0, 0);
  const rows = Array.from({ length: GLYPH_H }, (_, y) => Array.from({ length: 2 * ADVANCE }, (_, x) => (px(canvas, x, y)[0] === 0 ? '#' : '.')).join(''));
  t.deepEqual(rows, ['#####...#...', '..#....##...', '..#.....#...', '..#.....#...', '..#.....#...', '..#.....#...', '..#....###..']);
  t.is(GLYPH_W, 5);
});

test('labelledGrid: layout, tile order and verdict bars', (t) => {
  const tiles = [
    [solid(10), solid(20)],
    [solid(30), solid(40)],
  ];
  const g = labelledGrid({
    title: 'AB',
    rowLabels: ['none', 'tv_bind'],
    columnLabels: ['seed 0', 'seed 1'],
    tiles,
    verdicts: [
      [true, false],
      [false, true],
    ],
    zoom: 2,
  });
  const left = GRID.margin + 7 * ADVANCE + GRID.margin;
  const top = 2 * GRID.line;
  const cellW = 4 * 2 + GRID.gap,
    cellH = 3 * 2 + GRID.bar + GRID.gap;
  t.is(g.width, left + 2 * cellW + GRID.gap);
  t.is(g.height, top + 2 * cellH + GRID.gap);
  t.deepEqual(px(g, left, top), [10, 10, 10]);
  t.deepEqual(px(g, left + 7, top + 5), [10, 10, 10]);
  t.deepEqual(px(g, left + cellW, top), [20, 20, 20]);
  t.deepEqual(px(g, left, top + cellH), [30, 30, 30]);
  t.deepEqual(px(g, left + cellW + 1, top + cellH + 1), [40, 40, 40]);
  t.deepEqual(px(g, left, top + 6), [30, 170, 50]);
  t.deepEqual(px(g, left + cellW, top + 6), [220, 30, 30]);
  // Labels are drawn (dark pixels in the title and the row-label margin).
  const dark = (x0: number, y0: number, w: number, h: number) => {
    let n = 0;
    for (let y = y0; y < y0 + h; y++) for (let x = x0; x < x0 + w; x++) if (px(g, x, y)[0] === 0) n++;
    return n;
  };
  t.true(dark(0, 0, g.width, GRID.line) > 10);
  t.true(dark(0, top, left, cellH) > 10);
  t.throws(() => labelledGrid({ title: '', rowLabels: ['a'], columnLabels: ['b', 'c'], tiles: [[solid(1)]] }), { instanceOf: RangeError });
  t.throws(() => labelledGrid({ title: '', rowLabels: ['a'], columnLabels: ['b'], tiles: [[solid(1, 5, 5)], [solid(1)]] }), { instanceOf: RangeError });
});

test('writeGrid: rows are methods, columns seeds, from tiles in job order (seed-major)', (t) => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-grid-'));
  try {
    fs.mkdirSync(path.join(out, 'grids'));
    const [e] = promptEntries(parsePromptFile('two circles', 'f'), [0, 1, 2]);
    t.is(gridFileName(e), path.join('grids', 'two-01-two-circles.png'));
    // Job order: seed 0 (none, tv), seed 1 (none, tv), seed 2 (none, tv); value = 10·seed + method.
    const tiles = [0, 1, 2].flatMap((s) => [0, 1].map((m) => ({ image: solid(10 * s + m + 1, 64, 64), success: m === 1 })));
    const file = writeGrid(out, e, ['none', 'tv'], tiles);
    const png = PNG.sync.read(fs.readFileSync(file));
    const left = GRID.margin + 4 * ADVANCE + GRID.margin,
      top = 2 * GRID.line;
    const cellW = 128 + GRID.gap,
      cellH = 128 + GRID.bar + GRID.gap;
    const at = (x: number, y: number) => png.data[(y * png.width + x) * 4];
    for (let r = 0; r < 2; r++) for (let c = 0; c < 3; c++) t.is(at(left + c * cellW + 5, top + r * cellH + 5), 10 * c + r + 1, `row ${r} col ${c}`);
    t.is(png.width, left + 3 * cellW + GRID.gap);
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});
