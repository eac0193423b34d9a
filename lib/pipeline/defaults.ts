/** Where the bundled model lives and the defaults every entry point shares. */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Package root: dist/lib/pipeline/defaults.js → three levels up. */
export const PACKAGE_ROOT = path.resolve(__dirname, '..', '..', '..');

/** Name of the model the package ships (under models/). */
export const BUNDLED_MODEL_NAME = 'shapes-sd';

/**
 * The model used when no --model / modelDir is given: env DIVBIND_MODEL, else the bundled model
 * (models/<BUNDLED_MODEL_NAME>), else the tiny random-weight reference model of the test fixtures.
 */
export function defaultModelDir(): string {
  const fromEnv = process.env.DIVBIND_MODEL;
  if (fromEnv && fromEnv.length > 0) return path.resolve(fromEnv);
  const bundled = path.join(PACKAGE_ROOT, 'models', BUNDLED_MODEL_NAME);
  if (fs.existsSync(path.join(bundled, 'model_index.json'))) return bundled;
  return path.join(PACKAGE_ROOT, 'test', 'fixtures', 'models', 'tiny-sd');
}
