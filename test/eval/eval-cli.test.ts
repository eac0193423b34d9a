/**
 * `divbind-native eval` end to end as a user runs it (a child process on the compiled entry point) on a private
 * copy of the eval test model: 2 prompts × 1 seed × 2 methods × 2 steps (--quick, steps and refinement overridden); its exit codes for bad input; the flag parsers.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PNG } from 'pngjs';
import { REPO_ROOT } from '../helpers/fixtures';
import { DivbindError } from '../../lib/errors';
import { parseMethods, parseOverrides, parseSeeds } from '../../lib/cli/commands/eval';
import { checkResultsSchema, copyModel, removeDir } from './helpers';

const CLI = path.join(REPO_ROOT, 'dist', 'lib', 'cli', 'index.js');

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, 'eval', ...args], { encoding: 'utf8', timeout: 300_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

let dir = '';
test.before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-eval-cli-'));
});
test.after.always(() => removeDir(dir));

function promptFile(name: string, text: string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, text);
  return file;
}

test('eval writes results.json, records.json, results.md and labelled grids', (t) => {
  const model = copyModel();
  const out = path.join(dir, 'out');
  try {
    // --quick keeps the first prompt of each category (not "a blue square") and the first 2 seeds (here 1).
    const prompts = promptFile('p.tsv', '# two categories\nsingle\ta red circle\ntwo circles  # counted\na blue square\n');
    const r = cli([
      '--prompts',
      prompts,
      '--seeds',
      '1',
      '--methods',
      'none,tv_bind',
      '--out',
      out,
      '--model',
      model,
      '--prepare',
      '--steps',
      '2',
      '--workers',
      '1',
      '--quick',
      '--generate-options',
      '{"refinement":{"initStep":1,"other":1}}',
    ]);
    t.is(r.status, 0, r.stderr);
    const results = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8')) as {
      methods: Record<string, { categories: Record<string, { n: number }> }>;
      config: Record<string, unknown>;
    };
    checkResultsSchema(t, results, ['none', 'tv_bind'], ['single', 'two']);
    t.is(results.methods.tv_bind.categories.two.n, 1);
    t.deepEqual([results.config.seeds, results.config.quick], [[0], true]);
    const used = results.config.parameters as Record<string, { steps: number; mode: string; refinement: unknown }>;
    t.deepEqual([used.none.steps, used.none.mode, used.tv_bind.mode, used.tv_bind.refinement], [2, 'none', 'tv_bind', { initStep: 1, other: 1 }]);
    const records = JSON.parse(fs.readFileSync(path.join(out, 'records.json'), 'utf8')) as Array<{
      prompt: string;
      method: string;
      seed: number;
      lines: number[];
    }>;
    t.deepEqual(
      records.map((x) => `${x.prompt}|${x.method}|${x.seed}|${x.lines.join(',')}`),
      ['a red circle|none|0|2', 'a red circle|tv_bind|0|2', 'two circles|none|0|3', 'two circles|tv_bind|0|3'],
    );
    const md = fs.readFileSync(path.join(out, 'results.md'), 'utf8');
    t.regex(md, /\| single \| 1 \| (0\.0|100\.0) % \[/);
    t.true(r.stdout.includes('| category | pairs | SD (none) | D&B (tv_bind) |'));
    for (const g of ['grids/single-01-a-red-circle.png', 'grids/two-01-two-circles.png']) {
      const png = PNG.sync.read(fs.readFileSync(path.join(out, g)));
      t.true(png.height > 2 * 64 && png.width > 64, g);
    }
    t.regex(r.stderr, /\[1\/4\] 25\.0 % elapsed \d+:\d\d:\d\d ETA \d+:\d\d:\d\d \| single "a red circle" none seed 0: (success|failure)/);
    t.regex(r.stderr, /\[4\/4\] 100\.0 %/);
  } finally {
    removeDir(model);
  }
});

test('bad prompt files exit 3 naming the file, the line and the word', (t) => {
  const word = promptFile('word.tsv', 'a red circle\n\n# comment\na pink square\n');
  const r1 = cli(['--prompts', word, '--model', '/nonexistent']);
  t.is(r1.status, 3, r1.stderr);
  t.true(r1.stderr.includes(`${word}:4: prompt "a pink square": unknown word "pink"`), r1.stderr);
  const cat = promptFile('cat.tsv', 'twocolour\ta red circle and a blue square\n');
  const r2 = cli(['--prompts', cat, '--model', '/nonexistent']);
  t.is(r2.status, 3);
  t.true(r2.stderr.includes(`${cat}:1: unknown category "twocolour"`), r2.stderr);
});

test('bad flags: missing --prompts exits 2, a bad value exits 3', (t) => {
  t.is(cli(['--seeds', '2']).status, 2);
  const r = cli(['--prompts', promptFile('ok.tsv', 'a red circle\n'), '--model', '/nonexistent', '--methods', 'none,attend']);
  t.is(r.status, 3, r.stderr);
  t.true(r.stderr.includes('--methods: unknown method "attend" (expected none, max, tv, tv_bind, tv_max)'), r.stderr);
});

test('flag values: seeds, methods, generate options', (t) => {
  t.deepEqual(parseSeeds('4'), [0, 1, 2, 3]);
  t.deepEqual(parseSeeds('0,5, 9'), [0, 5, 9]);
  t.deepEqual(parseSeeds('100-103'), [100, 101, 102, 103]);
  t.deepEqual(parseSeeds('7-7,2'), [7, 2]);
  t.deepEqual(parseMethods('none, tv_bind'), ['none', 'tv_bind']);
  t.deepEqual(parseOverrides('{"scaleFactor":10}'), { scaleFactor: 10 });
  const file = promptFile('opts.json', '{"perMethod":{"max":{"thresholds":{"0":0.1}}}}');
  t.deepEqual(parseOverrides(file), { perMethod: { max: { thresholds: { 0: 0.1 } } } });
  const bad = (f: () => unknown, message: RegExp) => {
    const err = t.throws(f, { instanceOf: DivbindError, message });
    t.is(err?.code, 'BAD_INPUT');
  };
  bad(() => parseSeeds('x'), /integer between 0 and \d+ for --seeds but received "x"/);
  bad(() => parseSeeds('0'), /integer between 1 and \d+ for --seeds but received 0/);
  bad(() => parseSeeds('5-2'), /range "5-2" runs backwards/);
  bad(() => parseSeeds(','), /no seeds given/);
  bad(() => parseMethods('none,attend'), /unknown method "attend"/);
  bad(() => parseMethods(' '), /no methods given/);
  bad(() => parseOverrides('{oops'), /^--generate-options: invalid JSON/);
  bad(() => parseOverrides(path.join(dir, 'missing.json')), /neither JSON nor a readable file: ENOENT/);
});
