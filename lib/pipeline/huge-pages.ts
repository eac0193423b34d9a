/**
 * Transparent huge pages for malloc'd memory. The sessions run without an arena (lib/pipeline/ort.ts), and the blocks
 * glibc does not keep for the next run (above 32 MiB: self-attention scores, onnxruntime's planned buffers) are mapped
 * afresh every run and faulted in 4 KiB at a time: on SD 1.5 at 256², ~38k faults per CFG call and ~84k per guidance
 * step. glibc backs its heap and mappings with 2 MiB pages when the tunable glibc.malloc.hugetlb=1 is set (2.35+),
 * which the kernel honours when THP is "madvise". Tunables are read once, at process start, so the CLI restarts
 * itself in place (execve: same pid, argv and stdio) with the tunable added; library users set it themselves.
 * Measured in README ("Allocator").
 */
import * as fs from 'node:fs';
import { tryLoadNativeBinding } from '../loss/binding';

const HUGETLB = 'glibc.malloc.hugetlb';
export const HUGE_PAGES_TUNABLE = `${HUGETLB}=1`;

export type TransparentHugePages = 'always' | 'madvise' | 'never' | 'unknown';

export interface HugePagesState {
  /** The kernel's THP mode (/sys/kernel/mm/transparent_hugepage/enabled). */
  transparentHugePages: TransparentHugePages;
  /** Whether malloc'd memory gets huge pages: THP "always", or "madvise" with the glibc tunable set. */
  malloc: boolean;
  /** Why not, or how. */
  reason: string;
}

export function transparentHugePages(): TransparentHugePages {
  try {
    const mode = /\[(\w+)\]/.exec(fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'))?.[1];
    return mode === 'always' || mode === 'madvise' || mode === 'never' ? mode : 'unknown';
  } catch {
    return 'unknown';
  }
}

/** The running glibc's [major, minor]; undefined on other C libraries and platforms. */
export function glibcVersion(): [number, number] | undefined {
  if (process.platform !== 'linux') return undefined;
  const header = (process.report.getReport() as { header: { glibcVersionRuntime?: string } }).header;
  const m = /^(\d+)\.(\d+)/.exec(header.glibcVersionRuntime ?? '');
  return m ? [Number(m[1]), Number(m[2])] : undefined;
}

/** Whether this glibc knows the huge-pages tunable (2.35+). */
export function glibcHasHugePagesTunable(): boolean {
  const v = glibcVersion();
  return v !== undefined && (v[0] > 2 || (v[0] === 2 && v[1] >= 35));
}

/** The glibc.malloc.hugetlb value GLIBC_TUNABLES sets (the last one counts), if any. */
function hugetlbSetting(env: NodeJS.ProcessEnv): string | undefined {
  const settings = (env.GLIBC_TUNABLES ?? '').split(':').filter((t) => t.startsWith(`${HUGETLB}=`));
  return settings.at(-1)?.slice(HUGETLB.length + 1);
}

/** What this process gets, and why. */
export function hugePagesState(env: NodeJS.ProcessEnv = process.env): HugePagesState {
  const thp = transparentHugePages();
  if (thp === 'always') return { transparentHugePages: thp, malloc: true, reason: 'THP is "always"' };
  if (thp !== 'madvise') return { transparentHugePages: thp, malloc: false, reason: `THP is "${thp}"` };
  if (hugetlbSetting(env) === '1') return { transparentHugePages: thp, malloc: true, reason: `GLIBC_TUNABLES has ${HUGE_PAGES_TUNABLE}` };
  return { transparentHugePages: thp, malloc: false, reason: `GLIBC_TUNABLES lacks ${HUGE_PAGES_TUNABLE}` };
}

/**
 * `env` with glibc's huge-pages tunable added (`on`) or taken out, and DIVBIND_HUGE_PAGES to match: for child
 * processes, which read GLIBC_TUNABLES when they start.
 */
export function environmentWithHugePages(on: boolean, env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const others = (env.GLIBC_TUNABLES ?? '').split(':').filter((t) => t !== '' && !t.startsWith(`${HUGETLB}=`));
  const tunables = on ? [...others, HUGE_PAGES_TUNABLE] : others;
  const out: NodeJS.ProcessEnv = { ...env, DIVBIND_HUGE_PAGES: on ? '1' : '0' };
  if (tunables.length > 0) out.GLIBC_TUNABLES = tunables.join(':');
  else delete out.GLIBC_TUNABLES;
  return out;
}

/**
 * Restarts this process with huge pages for malloc where that helps and nobody said otherwise: Linux, glibc 2.35+,
 * THP "madvise", no glibc.malloc.hugetlb in GLIBC_TUNABLES, DIVBIND_HUGE_PAGES not "0". Call it first thing, before
 * anything is read from stdin or started. Returns (with the reason) only when it did not restart.
 */
export function relaunchWithHugePages(env: NodeJS.ProcessEnv = process.env): string {
  if (env.DIVBIND_HUGE_PAGES === '0') return 'DIVBIND_HUGE_PAGES=0';
  const state = hugePagesState(env);
  if (state.malloc || state.transparentHugePages !== 'madvise') return state.reason;
  if (hugetlbSetting(env) !== undefined) return `GLIBC_TUNABLES sets ${HUGETLB}`;
  if (!glibcHasHugePagesTunable()) return 'needs glibc 2.35 or later';
  const execSelf = tryLoadNativeBinding().binding?.execSelf;
  if (execSelf === undefined) return 'the native addon is not loaded';
  const environment = Object.entries(environmentWithHugePages(true, env)).flatMap(([k, v]) => (v === undefined ? [] : [`${k}=${v}`]));
  return execSelf(environment);
}
