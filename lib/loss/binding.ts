/**
 * Loads the C++ addon (native/addon) and types it as NativeBinding (native-types.ts).
 *
 * Search order, every attempt recorded for the error message:
 *  1. `DIVBIND_NATIVE_PATH`: a `.node` file, or a folder searched like the package root. When set, it is the
 *     only candidate: a broken override fails loudly instead of silently loading another binary.
 *  2. `build/Release/divbind_native.node`: a local build from source (`npm run build:native`, `npm rebuild
 *     --build-from-source`, or the install script's fallback). It wins over prebuilds so that a developer's
 *     fresh build (possibly with CUDA) is what runs, as with node-gyp-build.
 *  3. `prebuilds/<platform>-<arch>/*.node` (prebuildify --napi, CPU only), matched with node-gyp-build's tags.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { NativeBinding } from './native-types';

/** Package root: this file runs as dist/lib/loss/binding.js. */
const PACKAGE_ROOT = path.resolve(__dirname, '../../..');
const ADDON_FILE = 'divbind_native.node';

interface Attempt {
  what: string;
  error: string;
}

/** The subset of node-gyp-build 4 used here (it ships no types). */
interface NodeGypBuild {
  path(dir: string): string;
  parseTuple(name: string): { name: string; platform: string; architectures: string[] } | undefined;
  matchTuple(platform: string, arch: string): (t: unknown) => boolean;
  compareTuples(a: { architectures: string[] }, b: { architectures: string[] }): number;
  parseTags(file: string): { file: string } | undefined;
  matchTags(runtime: string, abi: string): (t: unknown) => boolean;
  compareTags(runtime: string): (a: unknown, b: unknown) => number;
}

function errorText(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as NodeJS.ErrnoException).code;
    const first = e.message.split('\n')[0];
    return code && !first.includes(code) ? `${code}: ${first}` : first;
  }
  return String(e);
}

function checkShape(value: unknown, file: string): NativeBinding {
  const b = value as Partial<NativeBinding> | null;
  if (!b || typeof b.attentionLoss !== 'function' || typeof b.attentionLossAsync !== 'function' || typeof b.features !== 'object' || b.features === null) {
    throw new Error(`${file} loaded but does not export attentionLoss, attentionLossAsync and features (an unrelated or outdated .node file)`);
  }
  return b as NativeBinding;
}

function requireAddon(file: string): NativeBinding {
  return checkShape(require(file), file);
}

/** prebuilds/<platform>-<arch>/<best tags>.node for this Node, or null (with why in `attempts`). */
function findPrebuild(root: string, attempts: Attempt[]): string | null {
  const dir = path.join(root, 'prebuilds');
  let gyp: NodeGypBuild;
  try {
    gyp = require('node-gyp-build') as NodeGypBuild;
  } catch (e) {
    attempts.push({ what: `${dir} (prebuilds)`, error: `node-gyp-build is not installed: ${errorText(e)}` });
    return null;
  }
  let tuples: string[] = [];
  try {
    tuples = fs.readdirSync(dir);
  } catch (e) {
    attempts.push({ what: `${dir} (prebuilds)`, error: errorText(e) });
    return null;
  }
  const tuple = tuples
    .map((n) => gyp.parseTuple(n))
    .filter(gyp.matchTuple(process.platform, process.arch))
    .sort((a, b) => gyp.compareTuples(a!, b!))[0];
  if (!tuple) {
    attempts.push({
      what: `${dir} (prebuilds)`,
      error: `no prebuild for ${process.platform}-${process.arch} (found: ${tuples.join(', ') || 'none'})`,
    });
    return null;
  }
  const sub = path.join(dir, tuple.name);
  const files = fs.readdirSync(sub);
  const winner = files
    .map((f) => gyp.parseTags(f))
    .filter(gyp.matchTags('node', process.versions.modules))
    .sort(gyp.compareTags('node'))[0] as { file: string } | undefined;
  if (!winner) {
    attempts.push({ what: sub, error: `no file matches Node-API/ABI ${process.versions.modules} (found: ${files.join(', ') || 'none'})` });
    return null;
  }
  return path.join(sub, winner.file);
}

/** Candidate files in search order; each resolver runs only when the previous ones failed to load. */
function candidates(attempts: Attempt[]): Array<{ what: string; file: () => string | null }> {
  const override = process.env.DIVBIND_NATIVE_PATH;
  if (override) {
    const what = `DIVBIND_NATIVE_PATH=${override}`;
    try {
      if (fs.statSync(override).isDirectory()) {
        const release = path.join(override, 'build', 'Release', ADDON_FILE);
        const direct = path.join(override, ADDON_FILE);
        if (fs.existsSync(direct)) return [{ what, file: () => direct }];
        if (fs.existsSync(release)) return [{ what, file: () => release }];
        return [{ what, file: () => findPrebuild(override, attempts) }];
      }
      return [{ what, file: () => path.resolve(override) }];
    } catch (e) {
      attempts.push({ what, error: errorText(e) });
      return [];
    }
  }
  return [
    { what: 'local build', file: () => path.join(PACKAGE_ROOT, 'build', 'Release', ADDON_FILE) },
    { what: 'prebuild', file: () => findPrebuild(PACKAGE_ROOT, attempts) },
  ];
}

function loadError(attempts: Attempt[]): Error {
  const napi = process.versions.napi ?? 'unknown';
  const lines = [
    `divbind-native: could not load the native addon for ${process.platform}-${process.arch} ` + `(Node ${process.versions.node}, Node-API ${napi}).`,
    'Tried:',
    ...attempts.map((a) => `  - ${a.what}: ${a.error}`),
    'Possible fixes:',
  ];
  const all = attempts.map((a) => a.error).join('\n');
  if (/GLIBC_|CXXABI_|GLIBCXX_/.test(all)) {
    lines.push('  - the binary needs a newer glibc/libstdc++ than this system has: build it from source (next line)');
  }
  lines.push(
    '  - build from source: npm rebuild divbind-native --build-from-source (needs cmake >= 3.19 and a C++17 ' +
      'compiler, e.g. `apt-get install cmake g++` or `brew install cmake`)',
    '  - or point DIVBIND_NATIVE_PATH at a built divbind_native.node',
    "  - or use the pure-TypeScript backend (backend: 'js'), which works without the addon",
  );
  return new Error(lines.join('\n'));
}

let cached: { binding: NativeBinding | null; error: Error | null; path: string | null } | null = null;

function load(): { binding: NativeBinding | null; error: Error | null; path: string | null } {
  const attempts: Attempt[] = [];
  for (const c of candidates(attempts)) {
    const file = c.file();
    if (file === null) continue; // the resolver recorded why
    try {
      return { binding: requireAddon(file), error: null, path: file };
    } catch (e) {
      attempts.push({ what: `${c.what} ${file}`, error: errorText(e) });
    }
  }
  return { binding: null, error: loadError(attempts), path: null };
}

/** The addon, or null and the load error (computed once, then cached). */
export function tryLoadNativeBinding(): { binding: NativeBinding | null; error: Error | null } {
  cached ??= load();
  return { binding: cached.binding, error: cached.error };
}

/** The addon; throws one Error listing platform, Node-API version, every path tried and the fixes. */
export function loadNativeBinding(): NativeBinding {
  const { binding, error } = tryLoadNativeBinding();
  if (!binding) throw error!;
  return binding;
}

/** Path of the loaded addon file (for `divbind-native info`), or null when it did not load. */
export function nativeBindingPath(): string | null {
  tryLoadNativeBinding();
  return cached!.path;
}
