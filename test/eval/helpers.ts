/** Shared by the eval tests: the model they run, private copies of it, and the results.json schema check. */
import type { ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fixturePath, REPO_ROOT } from '../helpers/fixtures';

/**
 * The model of the end-to-end eval tests: SHAPES_SD_DIR (e.g. a CPU smoke export), else the bundled
 * models/shapes-sd once it exists, else the tiny random reference model. The scores mean nothing here (the
 * wiring is under test), only the 64² Shapes models make it fast.
 */
export function evalModelSource(): string {
  if (process.env.SHAPES_SD_DIR) return path.resolve(process.env.SHAPES_SD_DIR);
  const bundled = path.join(REPO_ROOT, 'models', 'shapes-sd');
  return fs.existsSync(path.join(bundled, 'model_index.json')) ? bundled : fixturePath('models', 'tiny-sd');
}

/** A private copy without prepared graphs, so tests never write into the source and never race on it. */
export function copyModel(src = evalModelSource()): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-eval-model-'));
  fs.cpSync(src, dir, { recursive: true, filter: (p) => !path.relative(src, p).split(path.sep).includes('divbind') });
  return dir;
}

export function removeDir(dir: string): void {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
}

/** The schema, strictly: methods → { secondsPerImage, categories → { n, success, ci95 } }. */
export function checkResultsSchema(t: ExecutionContext, json: unknown, methods: string[], categories: string[]): void {
  const r = json as { methods: Record<string, { secondsPerImage: number; categories: Record<string, { n: number; success: number; ci95: number[] }> }> };
  t.deepEqual(Object.keys(r.methods), methods);
  for (const m of methods) {
    t.deepEqual(Object.keys(r.methods[m]).sort(), ['categories', 'secondsPerImage']);
    t.true(typeof r.methods[m].secondsPerImage === 'number' && r.methods[m].secondsPerImage >= 0);
    t.deepEqual(Object.keys(r.methods[m].categories), categories);
    for (const c of categories) {
      const x = r.methods[m].categories[c];
      t.deepEqual(Object.keys(x).sort(), ['ci95', 'n', 'success']);
      t.true(Number.isInteger(x.n) && x.n > 0);
      t.true(Array.isArray(x.ci95) && x.ci95.length === 2);
      t.true(x.ci95[0] <= x.success && x.success <= x.ci95[1], `${m} ${c}: ${x.success} in ${String(x.ci95)}`);
      t.true(x.ci95[0] >= 0 && x.ci95[1] <= 1);
    }
  }
}
