/**
 * The divbind-native CLI end to end, as a user runs it (a child process on the compiled entry point), on a private
 * copy of the tiny reference model.
 */
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
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
  const r = cli([
    'generate',
    'a red cat and a blue dog',
    '--model',
    prepared,
    '--steps',
    '3',
    '--seed',
    '5',
    '--mode',
    'tv_bind',
    '--objects',
    'cat,dog',
    '--attributes',
    'red,blue',
    '--out',
    outDir,
    '--name',
    'e2e',
    '--attention-maps',
    '0',
  ]);
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

// ------------------------------------------------------------------------------------------------ bad input

/** At most this many CLI processes at once: the tests run concurrently on a machine with few cores. */
const MAX_RUNNING = 3;
let running = 0;
const waiting: Array<() => void> = [];

async function cliAsync(args: string[], timeoutMs = 300_000): Promise<{ status: number | null; stdout: string; stderr: string }> {
  if (running >= MAX_RUNNING) await new Promise<void>((go) => waiting.push(go));
  running++;
  try {
    return await runCli(args, timeoutMs);
  } finally {
    running--;
    waiting.shift()?.();
  }
}

function runCli(args: string[], timeoutMs: number): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

/** A folder this process cannot create files in (root ignores permission bits, so then /proc). */
function unwritableFolder(): string {
  if (process.getuid?.() === 0) return '/proc';
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-ro-'));
  fs.chmodSync(d, 0o555);
  return d;
}

const BEFORE_LOAD: Array<[string, string[], RegExp]> = [
  ['--seed abc (fault 13)', ['--seed', 'abc'], /for --seed but received "abc"/],
  ['--threads -4 (fault 13)', ['--threads', '-4'], /for --threads but received -4/],
  ['--seed "" (fault 16)', ['--seed', ''], /for --seed but received ""/],
  ['--token-indices 3,,7 (fault 16)', ['--token-indices', '3,,7'], /--token-indices .*entry 2 is empty/],
  ['--token-indices 0x3 (fault 16)', ['--token-indices', '0x3'], /--token-indices\[0\] but received "0x3"/],
  ['--thresholds [] (fault 16)', ['--thresholds', '[]'], /--thresholds but received an array/],
  ['--thresholds null (fault 16)', ['--thresholds', 'null'], /--thresholds but received null/],
  ['--name ../../x (fault 16)', ['--name', '../../x'], /--name .*path separator/],
  ['--name "" (fault 16)', ['--name', ''], /--name .*it is empty/],
  ['--guidance 1e39 (fault 12)', ['--guidance', '1e39'], /number between 0 and 100 for --guidance/],
  ['--scale-factor 1e39 (fault 12)', ['--scale-factor', '1e39'], /number between 0 and 1000 for --scale-factor/],
  ['--mode tvbind', ['--mode', 'tvbind'], /did you mean 'tv_bind'\?/],
  ['--out "" (fault 10)', ['--out', ''], /a folder path for --out but received ""/],
  ['--out <a file> (fault 10)', ['--out', __filename], /is a file, not a folder/],
  ['--out <under a file> (fault 10)', ['--out', path.join(__filename, 'sub')], /a part of the path is a file/],
  ['--out <unwritable> (fault 10)', ['--out', unwritableFolder()], /is not writable|cannot create/],
];

for (const [name, args, message] of BEFORE_LOAD) {
  test(`${name} exits 3 before the model is loaded`, async (t) => {
    const r = await cliAsync(['generate', 'a red cat', '--model', prepared, '--steps', '2', '--out', outDir, ...args]);
    t.is(r.status, 3, r.stderr);
    t.regex(r.stderr, message);
    t.notRegex(r.stderr, /loading|model /, 'refused before loading the model');
  });
}

test('--name ../../x writes nothing outside --out (fault 16)', async (t) => {
  const inner = fs.mkdtempSync(path.join(outDir, 'inner-'));
  const r = await cliAsync(['generate', 'a red cat', '--model', prepared, '--mode', 'none', '--steps', '2', '--out', inner, '--name', '../escaped', '-q']);
  t.is(r.status, 3, r.stderr);
  t.false(fs.existsSync(path.join(outDir, 'escaped.png')));
});

test('--steps 1000 exits 3 naming the scheduler limit before generating (fault 7)', async (t) => {
  const r = await cliAsync(['generate', 'a red cat', '--model', prepared, '--steps', '1000', '--out', outDir, '--name', 'steps1000']);
  t.is(r.status, 3, r.stderr);
  t.regex(r.stderr, /between 1 and 999 for the pndm scheduler for steps but received 1000/);
  t.notRegex(r.stderr, /\[#/, 'no denoising step ran');
  t.false(fs.existsSync(path.join(outDir, 'steps1000.png')));
});

test('--latents /dev/zero and a FIFO exit 3 at once instead of reading forever or blocking (fault 4)', async (t) => {
  const fifo = path.join(outDir, 'latents.fifo');
  spawnSync('mkfifo', [fifo]);
  for (const file of ['/dev/zero', fifo]) {
    // The timeout only bounds a regression; the refusal itself takes one stat.
    const r = await cliAsync(['generate', 'a red cat', '--model', prepared, '--steps', '2', '--latents', file, '--out', outDir, '-q'], 120_000);
    t.is(r.status, 3, `${file}: ${r.stderr}`);
    t.regex(r.stderr, /character device|is a FIFO/);
  }
});

test('a 10 KB prompt exits 3 with a short message instead of being cut (fault 15)', async (t) => {
  const long = Array.from({ length: 1100 }, () => 'a red cat')
    .join(' ')
    .slice(0, 3999);
  const r = await cliAsync(['generate', long, '--model', prepared, '--token-indices', '80', '--steps', '2', '--out', outDir, '-q']);
  t.is(r.status, 3, r.stderr.slice(0, 500));
  t.regex(r.stderr, /prompt is \d+ tokens long but the text encoder takes at most 75/);
  t.true(r.stderr.length < 600, `stderr has ${r.stderr.length} characters`);
  const huge = `${long} ${long} ${long}`;
  const h = await cliAsync(['generate', huge, '--model', prepared, '--token-indices', '80', '--steps', '2', '--out', outDir, '-q']);
  t.is(h.status, 3);
  t.true(h.stderr.length < 600, `stderr has ${h.stderr.length} characters`);
});

test('a second run with the same --out and --name is refused unless --overwrite (fault 6)', async (t) => {
  const args = ['generate', 'a red cat', '--model', unprepared, '--mode', 'none', '--steps', '2', '--out', outDir, '--name', 'twice', '-q'];
  const first = await cliAsync([...args, '--seed', '1']);
  t.is(first.status, 0, first.stderr);
  const png = fs.readFileSync(path.join(outDir, 'twice.png'));
  const second = await cliAsync([...args, '--seed', '2']);
  t.is(second.status, 3, second.stderr);
  t.regex(second.stderr, /twice\.png already exists .*--overwrite/);
  t.notRegex(second.stderr, /\[#/, 'refused before generating');
  t.deepEqual(fs.readFileSync(path.join(outDir, 'twice.png')), png);
  const third = await cliAsync([...args, '--seed', '2', '--overwrite']);
  t.is(third.status, 0, third.stderr);
  t.notDeepEqual(fs.readFileSync(path.join(outDir, 'twice.png')), png);
  t.is((JSON.parse(textChunks(fs.readFileSync(path.join(outDir, 'twice.png'))).parameters) as { seed: string }).seed, '2');
});

test('without --seed the seed drawn is in the PNG, the log and the file name (fault 5)', async (t) => {
  const r = await cliAsync(['generate', 'a red cat', '--model', unprepared, '--mode', 'none', '--steps', '2', '--out', outDir, '--json', '-q']);
  t.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { files: string[]; seed: string };
  t.regex(out.seed, /^\d+$/);
  t.is(path.basename(out.files[0]), `a-red-cat-none-${out.seed}.png`);
  t.is((JSON.parse(textChunks(fs.readFileSync(out.files[0])).parameters) as { seed: string }).seed, out.seed);
  t.is((JSON.parse(fs.readFileSync(out.files[1], 'utf8')) as { seed: string }).seed, out.seed);
});

test('a VAE scaling_factor of 0 is refused instead of writing a black PNG with exit 0 (fault 12)', async (t) => {
  const copy = copyFixtureModel();
  try {
    fs.writeFileSync(path.join(copy, 'vae_decoder', 'config.json'), JSON.stringify({ scaling_factor: 0 }));
    const r = await cliAsync([
      'generate',
      'a red cat',
      '--model',
      copy,
      '--mode',
      'none',
      '--steps',
      '2',
      '--seed',
      '1',
      '--out',
      outDir,
      '--name',
      'black',
      '-q',
    ]);
    t.is(r.status, 4, r.stderr);
    t.regex(r.stderr, /"scaling_factor" must be a positive finite number but is 0/);
    t.false(fs.existsSync(path.join(outDir, 'black.png')));
  } finally {
    removeDir(copy);
  }
});
