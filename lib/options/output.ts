/**
 * Where a generation's files go: the output folder is checked (and created) before anything runs, base names
 * stay inside it, and existing files are never overwritten unless asked: a second run with the same --out and
 * --name is refused (DivbindError 'OUTPUT') before it generates, and the files are created exclusively, so two
 * runs racing for one name cannot silently replace each other's images.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DivbindError } from '../errors';
import { badInput } from './kinds';
import type { GenerationPlan } from './plan';

const MAX_BASE_NAME = 200;

/** A file base name: no folders, not hidden, not empty. */
export function checkBaseName(name: string, field = '--name'): string {
  const problem =
    name.length === 0
      ? 'it is empty'
      : /[/\\]/.test(name) || name === '..'
        ? 'it contains a path separator; use --out for the folder'
        : name.startsWith('.')
          ? 'it starts with "." (a hidden file)'
          : name.includes('\0')
            ? 'it contains a NUL character'
            : name.length > MAX_BASE_NAME
              ? `it is longer than ${MAX_BASE_NAME} characters`
              : null;
  if (problem !== null) throw badInput(field, 'a plain file name without folders (e.g. "cat-dog")', name, problem);
  return name;
}

/** "a red cat" → "a-red-cat": the prompt part of the default name. */
export function slug(prompt: string): string {
  return (
    prompt
      .toLowerCase()
      .replace(/[^a-z0-9]+/g, '-')
      .replace(/^-|-$/g, '')
      .slice(0, 60) || 'image'
  );
}

/** <prompt slug>-<mode>-<seed> (or "latents"), from the plan, so a random seed is in the name. */
export function defaultBaseName(plan: Pick<GenerationPlan, 'prompt' | 'mode' | 'seed'>): string {
  return `${slug(plan.prompt)}-${plan.mode}-${plan.seed === null ? 'latents' : String(plan.seed)}`;
}

function outputError(message: string, fix: string, cause?: unknown): DivbindError {
  return new DivbindError('OUTPUT', message, { field: '--out', fix, cause });
}

/** stat, or null when nothing is there; a file where a folder should be is an OUTPUT error. */
function statFolder(p: string, folder: string): fs.Stats | null {
  try {
    const stat = fs.statSync(p, { throwIfNoEntry: false }) ?? null;
    if (stat && !stat.isDirectory()) throw outputError(`--out ${folder}: ${p} is a file, not a folder`, 'pass a folder');
    return stat;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOTDIR')
      throw outputError(`--out ${folder}: a part of the path is a file, not a folder`, 'pass a folder', err);
    throw err;
  }
}

/**
 * Creates the output folder (and missing parents) one level at a time: node's recursive mkdir loops forever
 * where a parent exists but refuses children (e.g. /proc), so it is not used.
 */
function makeFolders(abs: string, folder: string): void {
  const missing: string[] = [];
  for (let p = abs; statFolder(p, folder) === null; p = path.dirname(p)) {
    missing.push(p);
    if (path.dirname(p) === p) break;
  }
  for (const dir of missing.reverse()) {
    try {
      fs.mkdirSync(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST' && statFolder(dir, folder)) continue;
      throw outputError(
        `cannot create the output folder ${folder} (${(err as NodeJS.ErrnoException).code ?? 'error'} at ${dir})`,
        'pass a folder you can write to',
        err,
      );
    }
  }
}

/** Creates the output folder if needed and proves it writable (a probe file), before any generation. */
export function prepareOutputFolder(folder: string): string {
  if (typeof folder !== 'string' || folder.length === 0) throw badInput('--out', 'a folder path', folder);
  const abs = path.resolve(folder);
  makeFolders(abs, folder);
  const probe = path.join(abs, `.divbind-write-test-${process.pid}`);
  try {
    fs.closeSync(fs.openSync(probe, 'wx'));
    fs.unlinkSync(probe);
  } catch (err) {
    throw outputError(`the output folder ${folder} is not writable (${(err as NodeJS.ErrnoException).code ?? 'error'})`, 'pass a folder you can write to', err);
  }
  return abs;
}

export interface OutputFiles {
  /** Per image: its PNG and its attention grids by loop index. */
  images: Array<{ png: string; attention: Array<{ index: number; file: string }> }>;
  log: string;
}

/** The files a plan will write under `folder` with base name `base`. */
export function outputFiles(folder: string, base: string, plan: Pick<GenerationPlan, 'imagesPerPrompt' | 'attentionMapsAt'>): OutputFiles {
  const images = Array.from({ length: plan.imagesPerPrompt }, (_, n) => {
    const stem = path.join(folder, plan.imagesPerPrompt > 1 ? `${base}-${n}` : base);
    return { png: `${stem}.png`, attention: plan.attentionMapsAt.map((index) => ({ index, file: `${stem}-attention-step${index}.png` })) };
  });
  return { images, log: path.join(folder, `${base}.json`) };
}

export function allFiles(files: OutputFiles): string[] {
  return [...files.images.flatMap((i) => [i.png, ...i.attention.map((a) => a.file)]), files.log];
}

/** Refuses, before generating, to replace files an earlier run wrote (unless overwrite). */
export function checkNotWritten(files: OutputFiles, overwrite: boolean): void {
  if (overwrite) return;
  const existing = allFiles(files).filter((f) => fs.existsSync(f));
  if (existing.length > 0) {
    throw new DivbindError('OUTPUT', `${existing[0]} already exists${existing.length > 1 ? ` (and ${existing.length - 1} more)` : ''}`, {
      field: '--name',
      fix: 'pass another --name or --out, or --overwrite to replace the files',
    });
  }
}

/** Writes one output file; without overwrite it is created exclusively (EEXIST if another run took the name). */
export function writeOutput(file: string, data: string | Uint8Array, overwrite: boolean): void {
  try {
    fs.writeFileSync(file, data, { flag: overwrite ? 'w' : 'wx' });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST')
      throw new DivbindError('OUTPUT', `${file} appeared while generating (another run with the same name?)`, {
        field: '--name',
        fix: 'pass another --name, or --overwrite',
        cause: err,
      });
    throw new DivbindError('OUTPUT', `cannot write ${file} (${code ?? 'error'})`, { field: '--out', cause: err });
  }
}
