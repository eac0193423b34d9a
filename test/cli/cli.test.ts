/**
 * The divbind-native CLI end to end, as a user runs it (a child process on the compiled entry point), on a private
 * copy of the tiny reference model.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PNG } from 'pngjs';
import { REPO_ROOT } from '../helpers/fixtures';
import { copyFixtureModel, preparedFixtureModel, removeDir } from '../pipeline/prepared-model';

const CLI = path.join(REPO_ROOT, 'dist', 'lib', 'cli', 'index.js');

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 300_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** tEXt chunks of a PNG buffer. */
function textChunks(png: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let p = 8;
  while (p < png.length) {
    const len = png.readUInt32BE(p);
    const type = png.toString('latin1', p + 4, p + 8);
    if (type === 'tEXt') {
      const body = png.subarray(p + 8, p + 8 + len);
      const nul = body.indexOf(0);
      out[body.toString('latin1', 0, nul)] = body.toString('latin1', nul + 1);
    }
    p += 12 + len;
  }
  return out;
}

let prepared = '';
let unprepared = '';
let outDir = '';
test.before(async () => {
  prepared = await preparedFixtureModel();
  unprepared = copyFixtureModel();
  outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-cli-out-'));
});
test.after.always(() => {
  for (const d of [prepared, unprepared, outDir]) if (d) removeDir(d);
});

test('generate tv_bind writes a PNG with its parameters and a JSON log of every step', (t) => {
  const r = cli(['generate', 'a red cat and a blue dog', '--model', prepared, '--steps', '3', '--seed', '5', '--mode', 'tv_bind',
    '--objects', 'cat,dog', '--attributes', 'red,blue', '--out', outDir, '--name', 'e2e', '--attention-maps', '0']);
  t.is(r.status, 0, r.stderr);
  t.regex(r.stderr, /guided tokens: cat@3 \+ red@2 \(word\), dog@7 \+ blue@6 \(word\)/);
  const pngFile = path.join(outDir, 'e2e.png');
  const png = fs.readFileSync(pngFile);
  const decoded = PNG.sync.read(png);
  t.is(decoded.width, 256);
  t.is(decoded.height, 256);
  const params = JSON.parse(textChunks(png).parameters) as Record<string, unknown>;
  t.is(params.prompt, 'a red cat and a blue dog');
  t.is(params.mode, 'tv_bind');
  t.is(params.seed, '5');
  const log = JSON.parse(fs.readFileSync(path.join(outDir, 'e2e.json'), 'utf8')) as {
    images: Array<{ steps: Array<{ loss: number | null; indicator: number | null; refinementIterations: number }> }>;
  };
  // PNDM: 3 inference steps → 4 timesteps; every step here is guided (maxIterToAlter 25).
  t.is(log.images[0].steps.length, 4);
  for (const s of log.images[0].steps) {
    t.true(typeof s.loss === 'number' && Number.isFinite(s.loss));
    t.true(typeof s.indicator === 'number' && Number.isFinite(s.indicator));
  }
  t.true(fs.existsSync(path.join(outDir, 'e2e-attention-step0.png')));
});

test('the same seed gives the same image', (t) => {
  const a = cli(['generate', 'a red cat', '--model', prepared, '--steps', '2', '--seed', '11', '--mode', 'none', '--out', outDir, '--name', 'same-a', '-q']);
  const b = cli(['generate', 'a red cat', '--model', prepared, '--steps', '2', '--seed', '11', '--mode', 'none', '--out', outDir, '--name', 'same-b', '-q']);
  t.is(a.status, 0, a.stderr);
  t.is(b.status, 0, b.stderr);
  t.deepEqual(PNG.sync.read(fs.readFileSync(path.join(outDir, 'same-a.png'))).data, PNG.sync.read(fs.readFileSync(path.join(outDir, 'same-b.png'))).data);
});

test('a guided mode on an unprepared model exits 4 and names the prepare command', (t) => {
  const r = cli(['generate', 'a red cat and a blue dog', '--model', unprepared, '--steps', '2', '--seed', '1', '--out', outDir]);
  t.is(r.status, 4);
  t.regex(r.stderr, /not prepared.*divbind-native prepare/s);
});

test('plain SD (--mode none) runs without preparation', (t) => {
  const r = cli(['generate', 'a red cat', '--model', unprepared, '--mode', 'none', '--steps', '2', '--seed', '1', '--out', outDir, '--name', 'plain', '-q']);
  t.is(r.status, 0, r.stderr);
  t.true(fs.existsSync(path.join(outDir, 'plain.png')));
});

test('a token index outside the prompt exits 3 and shows the token table', (t) => {
  const r = cli(['generate', 'a red cat', '--model', prepared, '--token-indices', '40', '--steps', '2', '--seed', '1', '--out', outDir]);
  t.is(r.status, 3, r.stderr);
  t.regex(r.stderr, /objects\[0\]/);
});

test('a missing model folder exits 4 with what to pass', (t) => {
  const r = cli(['generate', 'a red cat', '--model', path.join(outDir, 'nope'), '--steps', '2']);
  t.is(r.status, 4);
  t.regex(r.stderr, /model folder not found/);
});

test('unknown options exit 2', (t) => {
  const r = cli(['generate', 'a red cat', '--no-such-option']);
  t.is(r.status, 2);
});

test('info --json reports loss backends and the model inputs', (t) => {
  const r = cli(['info', '--model', prepared, '--json']);
  t.is(r.status, 0, r.stderr);
  const info = JSON.parse(r.stdout) as { loss: { backends: string[] }; model: { unet: { inputs: string[] }; prepared: { layers?: string[] } } };
  t.true(info.loss.backends.includes('js'));
  t.true(info.model.unet.inputs.some((s) => s.startsWith('timestep')));
  t.is(info.model.prepared.layers?.length, 10);
});
