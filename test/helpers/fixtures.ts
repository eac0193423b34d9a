/** Paths for compiled tests: dist/test/<area>/x.test.js → repo root three levels up. */
import * as path from 'node:path';

export const REPO_ROOT = path.resolve(__dirname, '../../..');

/** Absolute path of a file under test/fixtures/. */
export function fixturePath(...parts: string[]): string {
  return path.join(REPO_ROOT, 'test', 'fixtures', ...parts);
}
