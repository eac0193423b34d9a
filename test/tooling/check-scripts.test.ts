/**
 * The repository checks run by `npm run lint` that are our own scripts: scripts/check-function-length.mjs (C++/CUDA
 * function bodies ≤ 80 lines of code) and scripts/check-spec-refs.mjs (every § citation resolves to a section of
 * docs/). Each runs as `npm run lint` runs it, on small files written here.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '../../..');
/** The section sign, spelt so that this file's made-up citations are not checked as real ones. */
const S = '\u00a7';

function run(script: string, args: string[], cwd = ROOT): { code: number | null; out: string } {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'scripts', script), ...args], { cwd, encoding: 'utf8' });
  return { code: r.status, out: r.stdout + r.stderr };
}

function tempDir(t: { teardown: (fn: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-check-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A C++ function body of `n` code lines, with blank and comment lines in between that do not count. */
function body(n: number): string {
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    lines.push(`  x += ${i};  // a trailing comment`);
    if (i % 10 === 0) lines.push('', '  // a comment line', '  /* a block', '     comment */');
  }
  return lines.join('\n');
}

test('check-function-length: counts code lines only and fails above the limit, naming the function', (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'a.cc');
  fs.writeFileSync(
    file,
    [
      '#include <vector>',
      '#define BLOCK(x) do { x; } while (0)',
      'namespace ns {',
      'static const int kTable[] = {1, 2, 3};',
      'struct S {',
      '  int v{0};',
      '  explicit S(int a) : v{a} {',
      body(3),
      '  }',
      '  int exactly_eighty() const {',
      body(80),
      '  }',
      '};',
      'extern "C" {',
      'int too_long(int a, const char* s = "{") {',
      '  auto f = [&](int y) { return y + a; };',
      body(80),
      '}',
      '}',
      '}  // namespace ns',
      '',
    ].join('\n'),
  );
  const r = run('check-function-length.mjs', [file]);
  t.is(r.code, 1, r.out);
  t.regex(r.out, /a\.cc:\d+: too_long has 81 lines of code \(max 80\)/);
  t.notRegex(r.out, /exactly_eighty|kTable|S has/);
  t.regex(r.out, /1 functions over 80 lines/);
  t.is(run('check-function-length.mjs', ['--max', '81', file]).code, 0);
});

test('check-function-length: CUDA kernels with launch bounds are named by their own name', (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'k.cu');
  fs.writeFileSync(file, `__global__ void __launch_bounds__(256) kernel(float* out, int n) {\n${body(90)}\n}\n`);
  const r = run('check-function-length.mjs', [file]);
  t.is(r.code, 1);
  t.regex(r.out, /k\.cu:1: kernel has 90 lines of code/);
});

test('check-spec-refs: a § must be a numbered section of the doc the line cites', (t) => {
  const dir = tempDir(t);
  fs.mkdirSync(path.join(dir, 'docs'));
  fs.mkdirSync(path.join(dir, 'lib'));
  fs.writeFileSync(path.join(dir, 'docs/divide-and-bind.md'), '# T\n\n## 1. One\n\n## 2. Two\n\n### 2.1 Sub\n');
  fs.writeFileSync(path.join(dir, 'docs/onnx-export.md'), `# O\n\n## 1. Folder\n\n## 5. Shapes\n\nSee ${S}1 and ${S}9.\n`);
  fs.writeFileSync(
    path.join(dir, 'lib/a.ts'),
    [
      `// spec ${S}2.1 and ${S}1`, // ok: docs/divide-and-bind.md
      `// (docs/onnx-export.md ${S}5)`, // ok
      `// spec ${S}3`, // no section 3 in divide-and-bind.md
      `// docs/onnx-export.md ${S}2`, // no section 2 there
      `// ../shared/spec/divide-and-bind.md ${S}1`, // outside the repository
      `const sect = '${S}';`, // not a citation
    ].join('\n'),
  );
  const r = run('check-spec-refs.mjs', ['lib', 'docs'], dir);
  t.is(r.code, 1, r.out);
  const problems = r.out.split('\n').filter((l) => /^\S+:\d+: /.test(l));
  t.deepEqual(problems, [
    `lib/a.ts:3: ${S}3 is not a section of docs/divide-and-bind.md`,
    `lib/a.ts:4: ${S}2 is not a section of docs/onnx-export.md`,
    'lib/a.ts:5: cites a spec outside the repository; cite docs/divide-and-bind.md or docs/onnx-export.md',
    `docs/onnx-export.md:7: ${S}9 is not a section of docs/onnx-export.md`,
  ]);
});

test('check-spec-refs: every § citation in the repository resolves', (t) => {
  const r = run('check-spec-refs.mjs', []);
  t.is(r.code, 0, r.out);
  t.regex(r.out, /0 unresolved § citations/);
});
