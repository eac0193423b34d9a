/**
 * The benchmark runner end to end on the tiny reference model (random weights, so the scores themselves mean
 * nothing here; the shipped-model numbers come from `divbind-native eval`): every method × seed produces an image
 * that is detected and scored, the Markdown table, results.json and one grid per prompt are written, and the grid
 * has methods × seeds tiles. Also the option checks.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PNG } from 'pngjs';
import { DivBindPipeline } from '../../lib/pipeline/pipeline';
import { runBenchmark } from '../../lib/eval/benchmark';
import { preparedFixtureModel, removeDir } from '../pipeline/prepared-model';

test('runBenchmark writes the table, the records and the grids', async (t) => {
  const model = await preparedFixtureModel();
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-eval-'));
  const pipeline = await DivBindPipeline.load(model);
  try {
    const report = await runBenchmark({
      pipeline, outDir: out, methods: ['none', 'tv_bind'], sets: ['binding'], seeds: [3, 4], steps: 3, promptsPerSet: 1,
      generate: { refinement: { initStep: 1, other: 1 } },
    });
    t.is(report.records.length, 4);
    t.deepEqual(report.records.map((r) => `${r.method}:${r.seed}`), ['none:3', 'none:4', 'tv_bind:3', 'tv_bind:4']);
    for (const r of report.records) {
      t.is(r.prompt, 'a red circle and a blue square');
      t.is(r.score.requested, 2);
      t.is(r.score.detected, r.detections.length);
    }
    const md = fs.readFileSync(path.join(out, 'results.md'), 'utf8');
    t.regex(md, /### two coloured objects \(binding\)/);
    t.regex(md, /\| SD \(none\) \| 2 \|/);
    t.regex(md, /\| D&B \(tv_bind\) \| 2 \|/);
    const json = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8')) as { records: unknown[]; summary: Record<string, unknown> };
    t.is(json.records.length, 4);
    t.truthy(json.summary.binding);
    const grid = PNG.sync.read(fs.readFileSync(path.join(out, 'grid-binding-0.png')));
    // 2 seeds × 2 methods; tiny-sd images are 256² → zoom 1, 2-pixel gaps.
    t.is(grid.width, 2 * (256 + 2) + 2);
    t.is(grid.height, 2 * (256 + 2) + 2);
    // Row 0 = none, row 1 = tv_bind, same seed in column 0: guidance changed the image.
    const tileBytes = (row: number) => {
      const parts: number[] = [];
      for (let y = 0; y < 256; y++) {
        const o = ((2 + row * 258 + y) * grid.width + 2) * 4;
        parts.push(...grid.data.subarray(o, o + 256 * 4));
      }
      return parts;
    };
    t.notDeepEqual(tileBytes(0), tileBytes(1));
  } finally {
    await pipeline.release();
    removeDir(out);
    removeDir(model);
  }
});

test('runBenchmark rejects bad options with clear errors', async (t) => {
  await t.throwsAsync(runBenchmark({ outDir: '' }), { instanceOf: TypeError, message: /outDir/ });
  await t.throwsAsync(runBenchmark({ outDir: '/tmp/x' }), { instanceOf: TypeError, message: /modelDir/ });
  await t.throwsAsync(runBenchmark({ outDir: '/tmp/x', modelDir: 'm', methods: ['foo' as 'none'] }), { instanceOf: RangeError, message: /unknown method "foo"/ });
  await t.throwsAsync(runBenchmark({ outDir: '/tmp/x', modelDir: 'm', seeds: [-1] }), { instanceOf: RangeError, message: /seeds/ });
  await t.throwsAsync(runBenchmark({ outDir: '/tmp/x', modelDir: 'm', steps: 0 }), { instanceOf: RangeError, message: /steps/ });
});
