/**
 * A private copy of a fixture model folder, prepared (`prepareModel`) in a temp dir, so tests never write into
 * test/fixtures and parallel test files never race on the same prepared graphs.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { prepareModel } from '../../lib/model/prepare';
import { fixturePath } from '../helpers/fixtures';

export function copyFixtureModel(name = 'tiny-sd'): string {
  const src = fixturePath('models', name);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `divbind-${name}-`));
  fs.cpSync(src, dir, { recursive: true, filter: (p) => !p.split(path.sep).includes('divbind') });
  return dir;
}

export async function preparedFixtureModel(name = 'tiny-sd'): Promise<string> {
  const dir = copyFixtureModel(name);
  await prepareModel(dir, {});
  return dir;
}

export function removeDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}
