/** Where the bundled model lives: the model every entry point uses when none is given. */
import * as path from 'node:path';

/** Package root: dist/lib/pipeline/defaults.js → three levels up. */
export const PACKAGE_ROOT = path.resolve(__dirname, '..', '..', '..');

/** Name of the model the package ships (under models/). */
export const BUNDLED_MODEL_NAME = 'shapes-sd';

/**
 * The model used when no --model / modelDir is given: env DIVBIND_MODEL, else the bundled model
 * models/<BUNDLED_MODEL_NAME> (a missing folder is reported by the model loader, naming it).
 */
export function defaultModelDir(): string {
  const fromEnv = process.env.DIVBIND_MODEL;
  if (fromEnv && fromEnv.length > 0) return path.resolve(fromEnv);
  return path.join(PACKAGE_ROOT, 'models', BUNDLED_MODEL_NAME);
}
