/**
 * Where prepared graphs live. One rule, used by `prepare`, the pipeline and `info`:
 *   1. beside the model: <model>/unet/divbind/<size>/, when that folder can be written;
 *   2. else the cache: <cache root>/<folder name>-<hash of its absolute path>/<size>/, where the cache root is the
 *      `cacheDir` option, else $XDG_CACHE_HOME/divbind-native, else ~/.cache/divbind-native.
 * Lookups try both roots in that order.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** The cache root: the given directory, else $XDG_CACHE_HOME/divbind-native, else ~/.cache/divbind-native. */
export function cacheRoot(cacheDir?: string): string {
  if (cacheDir !== undefined) return path.resolve(cacheDir);
  const xdg = process.env.XDG_CACHE_HOME;
  return path.join(xdg !== undefined && path.isAbsolute(xdg) ? xdg : path.join(os.homedir(), '.cache'), 'divbind-native');
}

/** The cache directory of one model folder (its prepared sets are subfolders, one per size). */
export function cacheDirFor(modelDir: string, cacheDir?: string): string {
  const root = path.resolve(modelDir);
  const id = crypto.createHash('sha256').update(root).digest('hex').slice(0, 16);
  return path.join(cacheRoot(cacheDir), `${path.basename(root)}-${id}`);
}

/** The folder beside the UNet that holds the prepared sets when the model folder is writable. */
export function besideModelDir(modelDir: string): string {
  return path.join(path.resolve(modelDir), 'unet', 'divbind');
}

/** The roots that may hold prepared sets for `modelDir`, in lookup order. */
export function preparedRoots(modelDir: string, cacheDir?: string): string[] {
  return [besideModelDir(modelDir), cacheDirFor(modelDir, cacheDir)];
}

/** Creates `dir` if needed and checks that a file can be written there (access() alone misleads for root). */
export function isWritableDir(dir: string): boolean {
  try {
    fs.mkdirSync(dir, { recursive: true });
    const probe = path.join(dir, `.divbind-write-test-${process.pid}`);
    fs.writeFileSync(probe, '');
    fs.rmSync(probe);
    return true;
  } catch {
    return false;
  }
}
