/**
 * Broken and varied model folders for the lifecycle tests, built in temp dirs from the committed fixtures (never
 * written in place), and the CLI as a user runs it (a child process with its own HOME, so no cache leaks out).
 */
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fixturePath, REPO_ROOT } from '../helpers/fixtures';

const CLI = path.join(REPO_ROOT, 'dist', 'lib', 'cli', 'index.js');

export interface Teardown {
  teardown(fn: () => void): void;
}

export function tempDir(t: Teardown, prefix = 'divbind-model-test-'): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

/**
 * A private copy of the tiny SD folder. `unetVariant` swaps unet/ for one of test/fixtures/models/unet-variants
 * (e.g. 'opset17-int64-external-onnxdata', whose weights live in unet/model.onnx_data).
 */
export function modelCopy(t: Teardown, unetVariant?: string): string {
  const dir = path.join(tempDir(t), 'model');
  fs.cpSync(fixturePath('models', 'tiny-sd'), dir, { recursive: true });
  if (unetVariant !== undefined) {
    fs.rmSync(path.join(dir, 'unet'), { recursive: true });
    fs.cpSync(fixturePath('models', 'unet-variants', unetVariant), path.join(dir, 'unet'), { recursive: true });
  }
  return dir;
}

/** Replaces a file the way `cp --remove-destination` or rsync do: a new inode with new contents. */
export function replaceFile(file: string, contents: Buffer): void {
  const staged = `${file}.staged`;
  fs.writeFileSync(staged, contents);
  fs.unlinkSync(file);
  fs.copyFileSync(staged, file);
  fs.unlinkSync(staged);
}

/** External weights with every float32 halved: same size and layout, different model. */
export function halvedWeights(file: string): Buffer {
  const bytes = fs.readFileSync(file);
  const floats = new Float32Array(bytes.buffer, bytes.byteOffset, Math.floor(bytes.length / 4));
  const out = Buffer.from(bytes);
  const outFloats = new Float32Array(out.buffer, out.byteOffset, floats.length);
  for (let i = 0; i < floats.length; i++) outFloats[i] = floats[i]! * 0.5;
  return out;
}

export type Damage = 'truncated' | 'empty' | 'random';

export function damageFile(file: string, how: Damage): void {
  const bytes = fs.readFileSync(file);
  if (how === 'truncated') fs.writeFileSync(file, bytes.subarray(0, Math.floor(bytes.length / 2)));
  else if (how === 'empty') fs.writeFileSync(file, Buffer.alloc(0));
  else fs.writeFileSync(file, crypto.randomBytes(Math.min(bytes.length, 200_000)));
}

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function cli(t: Teardown, args: string[]): CliResult {
  const home = tempDir(t, 'divbind-home-');
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: home, XDG_CACHE_HOME: path.join(home, '.cache') };
  delete env.DIVBIND_MODEL;
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 300_000, env });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `divbind-native prepare <dir> --json …` → the directory it reports. */
export function cliPrepare(t: Teardown, dir: string, extra: string[] = []): { dir: string; skipped: boolean; result: CliResult } {
  // The check run is covered by prepare.test.ts; here it would only cost time.
  const result = cli(t, ['prepare', dir, '--json', '--no-verify', ...extra]);
  if (result.status !== 0) throw new Error(`prepare failed (${result.status}): ${result.stderr}`);
  const parsed = JSON.parse(result.stdout) as { dir: string; skipped: boolean };
  return { dir: parsed.dir, skipped: parsed.skipped, result };
}

/** A one-step guided generation through the CLI. */
export function cliGenerate(t: Teardown, dir: string, extra: string[] = []): CliResult {
  const out = tempDir(t, 'divbind-out-');
  return cli(t, [
    'generate',
    'a red cat and a blue dog',
    '--model',
    dir,
    '--mode',
    'tv',
    '--objects',
    'cat,dog',
    '--steps',
    '1',
    '--seed',
    '1',
    '--out',
    out,
    '--name',
    'x',
    '-q',
    '--threads',
    '1',
    ...extra,
  ]);
}
