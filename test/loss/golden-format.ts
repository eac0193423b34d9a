/**
 * Reader for the PyTorch golden loss fixtures (test/fixtures/losses/index.json, written by tools/):
 * { "version": 1, "cases": [ { name, options (LossOptions, camelCase), layers: [ { file, heads, resolution,
 * place } ], expected: { loss, indicator, tokens: [ { tokenIndex, attributeIndex, maxAttention, tv, jsd,
 * coefficient, value } ] }, grads: [ file ] } ] }. Layer files are float32 (heads, r², T); grads float64,
 * same shapes; paths relative to the index's folder. Every field is checked so a format drift fails loudly.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readNpy } from '../../lib/util/npy';
import type { AttentionLayer, LayerPlace, LossOptions, TokenDiagnostics } from '../../lib/loss/types';

export const GOLDEN_VERSION = 1;

export interface GoldenCase {
  name: string;
  options: LossOptions;
  layers: AttentionLayer[];
  expected: { loss: number; indicator: number; tokens: TokenDiagnostics[] };
  grads: Float64Array[];
}

function fail(where: string, what: string): never {
  throw new Error(`golden fixtures: ${where}: ${what}`);
}

function num(where: string, v: unknown): number {
  if (typeof v !== 'number') fail(where, `expected a number, got ${JSON.stringify(v)}`);
  return v;
}

function numOrNull(where: string, v: unknown): number | null {
  return v === null ? null : num(where, v);
}

export function loadGoldenIndex(indexFile: string): GoldenCase[] {
  const dir = path.dirname(indexFile);
  const raw = JSON.parse(fs.readFileSync(indexFile, 'utf8')) as Record<string, unknown>;
  if (raw.version !== GOLDEN_VERSION)
    fail(indexFile, `version ${JSON.stringify(raw.version)}, this test reads version ${GOLDEN_VERSION}; regenerate the fixtures`);
  if (!Array.isArray(raw.cases) || raw.cases.length === 0) fail(indexFile, '"cases" must be a non-empty array');
  return raw.cases.map((c: Record<string, unknown>, ci: number): GoldenCase => {
    const at = `cases[${ci}]${typeof c.name === 'string' ? ` (${c.name})` : ''}`;
    if (typeof c.name !== 'string') fail(at, 'missing "name"');
    if (typeof c.options !== 'object' || c.options === null) fail(at, 'missing "options"');
    if (!Array.isArray(c.layers) || c.layers.length === 0) fail(at, '"layers" must be a non-empty array');
    const layers = c.layers.map((l: Record<string, unknown>, li: number): AttentionLayer => {
      const lat = `${at}.layers[${li}]`;
      if (typeof l.file !== 'string') fail(lat, 'missing "file"');
      const heads = num(`${lat}.heads`, l.heads);
      const resolution = num(`${lat}.resolution`, l.resolution);
      const npy = readNpy(path.join(dir, l.file));
      if (npy.dtype !== 'float32') fail(lat, `${l.file} is ${npy.dtype}, expected float32`);
      const shape = npy.shape.join(',');
      if (npy.shape.length !== 3 || npy.shape[0] !== heads || npy.shape[1] !== resolution * resolution) {
        fail(lat, `${l.file} has shape (${shape}), expected (${heads}, ${resolution * resolution}, T)`);
      }
      return { data: npy.data as Float32Array, heads, resolution, place: l.place as LayerPlace };
    });
    const e = c.expected as Record<string, unknown> | undefined;
    if (!e || !Array.isArray(e.tokens)) fail(at, 'missing "expected.tokens"');
    const tokens = e.tokens.map((t: Record<string, unknown>, ti: number): TokenDiagnostics => {
      const tat = `${at}.expected.tokens[${ti}]`;
      return {
        tokenIndex: num(`${tat}.tokenIndex`, t.tokenIndex),
        attributeIndex: numOrNull(`${tat}.attributeIndex`, t.attributeIndex),
        maxAttention: num(`${tat}.maxAttention`, t.maxAttention),
        tv: num(`${tat}.tv`, t.tv),
        jsd: numOrNull(`${tat}.jsd`, t.jsd),
        coefficient: num(`${tat}.coefficient`, t.coefficient),
        value: num(`${tat}.value`, t.value),
      };
    });
    if (!Array.isArray(c.grads) || c.grads.length !== layers.length) fail(at, `"grads" must list ${layers.length} files (one per layer)`);
    const grads = c.grads.map((f: unknown, gi: number) => {
      if (typeof f !== 'string') fail(`${at}.grads[${gi}]`, 'expected a file name');
      const npy = readNpy(path.join(dir, f));
      if (npy.dtype !== 'float64') fail(`${at}.grads[${gi}]`, `${f} is ${npy.dtype}, expected float64`);
      if (npy.data.length !== layers[gi].data.length) fail(`${at}.grads[${gi}]`, `${f} has ${npy.data.length} values, layer has ${layers[gi].data.length}`);
      return npy.data as Float64Array;
    });
    return {
      name: c.name,
      options: c.options as LossOptions,
      layers,
      expected: { loss: num(`${at}.expected.loss`, e.loss), indicator: num(`${at}.expected.indicator`, e.indicator), tokens },
      grads,
    };
  });
}
