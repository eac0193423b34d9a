/**
 * Huge pages for malloc (lib/pipeline/huge-pages.ts): the CLI restarts itself in place with glibc's tunable where the
 * kernel's THP mode is "madvise". The restart must keep the pid, argv, stdin and stdout, and never loop.
 */
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { tryLoadNativeBinding } from '../../lib/loss/binding';
import { environmentWithHugePages, glibcHasHugePagesTunable, HUGE_PAGES_TUNABLE, hugePagesState, transparentHugePages } from '../../lib/pipeline/huge-pages';
import { REPO_ROOT } from '../helpers/fixtures';

const CLI = path.join(REPO_ROOT, 'dist', 'lib', 'cli', 'index.js');
const HUGE_PAGES_JS = path.join(REPO_ROOT, 'dist', 'lib', 'pipeline', 'huge-pages.js');

/** Whether this machine restarts the CLI: THP "madvise", glibc 2.35+, the addon loaded. */
const restarts =
  process.platform === 'linux' && transparentHugePages() === 'madvise' && glibcHasHugePagesTunable() && tryLoadNativeBinding().binding !== undefined;

test('environmentWithHugePages adds or removes only the huge-pages tunable', (t) => {
  const on = environmentWithHugePages(true, { GLIBC_TUNABLES: 'glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=0', X: '1' });
  t.is(on.GLIBC_TUNABLES, `glibc.malloc.tcache_count=0:${HUGE_PAGES_TUNABLE}`);
  t.is(on.X, '1');
  t.is(on.DIVBIND_HUGE_PAGES, '1');
  const off = environmentWithHugePages(false, on);
  t.is(off.GLIBC_TUNABLES, 'glibc.malloc.tcache_count=0');
  t.is(off.DIVBIND_HUGE_PAGES, '0');
  t.false('GLIBC_TUNABLES' in environmentWithHugePages(false, { GLIBC_TUNABLES: HUGE_PAGES_TUNABLE }));
});

test('hugePagesState follows the kernel mode and the tunable', (t) => {
  const thp = transparentHugePages();
  const without = hugePagesState({});
  const withTunable = hugePagesState({ GLIBC_TUNABLES: HUGE_PAGES_TUNABLE });
  t.is(without.transparentHugePages, thp);
  t.is(without.malloc, thp === 'always');
  t.is(withTunable.malloc, thp === 'always' || thp === 'madvise');
  t.regex(without.reason, /THP|GLIBC_TUNABLES/);
});

test('execSelf refuses a bad environment naming it, without restarting', (t) => {
  const binding = tryLoadNativeBinding().binding;
  if (binding?.execSelf === undefined) {
    t.pass('no native addon');
    return;
  }
  const execSelf = binding.execSelf as unknown as (e: unknown) => string;
  t.throws(() => execSelf('PATH=/bin'), { instanceOf: TypeError, message: /environment must be an array/ });
  t.throws(() => execSelf(['A=1', 2]), { instanceOf: TypeError, message: /environment\[1\]/ });
});

test('the CLI restarts itself with huge pages where THP is "madvise"; DIVBIND_HUGE_PAGES=0 keeps it as it is', (t) => {
  const run = (env: NodeJS.ProcessEnv) => {
    const r = spawnSync(process.execPath, [CLI, 'info', '--json'], { encoding: 'utf8', env });
    t.is(r.status, 0, r.stderr);
    return (JSON.parse(r.stdout) as { memory: { hugePages: { malloc: boolean } } }).memory.hugePages;
  };
  const plain = environmentWithHugePages(false);
  delete plain.DIVBIND_HUGE_PAGES;
  t.is(run(plain).malloc, restarts || transparentHugePages() === 'always');
  t.is(run({ ...plain, DIVBIND_HUGE_PAGES: '0' }).malloc, transparentHugePages() === 'always');
  t.is(run({ ...plain, GLIBC_TUNABLES: 'glibc.malloc.hugetlb=0' }).malloc, transparentHugePages() === 'always');
});

test('the restart keeps the pid, argv, stdin and stdout, and happens once', async (t) => {
  const script = `
    const { relaunchWithHugePages } = require(${JSON.stringify(HUGE_PAGES_JS)});
    const why = relaunchWithHugePages();
    let input = '';
    process.stdin.on('data', (d) => (input += d)).on('end', () =>
      console.log(JSON.stringify({ pid: process.pid, argv: process.argv.slice(1), tunables: process.env.GLIBC_TUNABLES ?? '', why, input })));`;
  const env = environmentWithHugePages(false);
  delete env.DIVBIND_HUGE_PAGES;
  const child = spawn(process.execPath, ['-e', script, '--', 'a b', 'c'], { env, stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stdin.end('from stdin\n');
  const code = await new Promise((resolve) => child.on('exit', resolve));
  t.is(code, 0);
  const r = JSON.parse(out) as { pid: number; argv: string[]; tunables: string; why: string; input: string };
  t.is(r.pid, child.pid!);
  t.deepEqual(r.argv, ['a b', 'c']);
  t.is(r.input, 'from stdin\n');
  if (restarts) {
    t.is(r.tunables, HUGE_PAGES_TUNABLE);
    t.regex(r.why, /GLIBC_TUNABLES has/); // the restarted process asked again and was content
  } else {
    t.is(r.tunables, '');
  }
});
