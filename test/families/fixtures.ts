/**
 * The SD 2.x and SDXL reference models and their PyTorch golden data (test/fixtures/README.md, "SD 2.x and SDXL
 * reference models and golden data"; tools/README.md, "what the TypeScript side needs"), as the family tests read
 * them.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readNpy } from '../../lib/util/npy';
import { fixturePath } from '../helpers/fixtures';

export interface FamilyFixture {
  family: 'sd2' | 'sdxl';
  /** Folder under test/fixtures/models/. */
  model: string;
  /** Folder under test/fixtures/. */
  golden: string;
  /** The family's image side and attention resolutions (tools/README.md). */
  side: number;
  attentionResolution: number;
  attributeResolutions: number[];
  guidanceScale: number;
}

export const SD2: FamilyFixture = {
  family: 'sd2',
  model: 'tiny-sd2',
  golden: 'golden-sd2',
  side: 768,
  attentionResolution: 24,
  attributeResolutions: [96, 48],
  guidanceScale: 7.5,
};
export const SDXL: FamilyFixture = {
  family: 'sdxl',
  model: 'tiny-sdxl',
  golden: 'golden-sdxl',
  side: 1024,
  attentionResolution: 32,
  attributeResolutions: [64],
  guidanceScale: 5,
};

export function goldenPath(f: FamilyFixture, ...parts: string[]): string {
  return fixturePath(f.golden, ...parts);
}

export function goldenJson<T>(f: FamilyFixture, ...parts: string[]): T {
  return JSON.parse(fs.readFileSync(goldenPath(f, ...parts), 'utf8')) as T;
}

/** A golden array as float32 (the inputs the models get) or float64 (references), with its shape. */
export function goldenArray(f: FamilyFixture, ...parts: string[]): { data: Float32Array | Float64Array; shape: number[] } {
  const a = readNpy(goldenPath(f, ...parts));
  if (!(a.data instanceof Float32Array) && !(a.data instanceof Float64Array)) throw new Error(`${path.join(...parts)}: expected a float array, got ${a.dtype}`);
  return { data: a.data, shape: a.shape };
}

/** Row `k` of a [n, ...] array. */
export function row<T extends Float32Array | Float64Array>(data: T, n: number, k: number): T {
  const size = data.length / n;
  return data.subarray(k * size, (k + 1) * size) as T;
}
