/**
 * Outputs of the benchmark: results.json (the schema of issue 13 plus the paired differences and the
 * configuration), records.json (one entry per image), results.md (tables) and the labelled grids.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DivbindError } from '../errors';
import type { GuidanceMode } from '../pipeline/guidance';
import { encodePng } from '../pipeline/image';
import type { ImageRecord, PromptEntry } from './benchmark';
import { labelledGrid, type RgbImage } from './grid';
import { CATEGORIES, type Category } from './prompts';
import { BOOTSTRAP_REPLICATES, BOOTSTRAP_SEED, hashString, pairedBootstrap, type Interval } from './stats';

export const METHOD_LABELS: Readonly<Record<GuidanceMode, string>> = {
  none: 'SD (none)',
  max: 'A&E (max)',
  tv: 'D&B (tv)',
  tv_bind: 'D&B (tv_bind)',
  tv_max: 'D&B (tv_max)',
};

export interface GridTile {
  image: RgbImage;
  success: boolean;
}

export interface CategoryResult {
  n: number;
  success: number;
  ci95: [number, number];
}

export interface MethodResult {
  secondsPerImage: number;
  categories: Partial<Record<Category, CategoryResult>>;
}

export interface Results {
  methods: Record<string, MethodResult>;
  /** "a-b": per category, mean(a) − mean(b) over the same prompt × seed pairs, with its paired interval. */
  differences: Record<string, Partial<Record<Category, { n: number; difference: number; ci95: [number, number] }>>>;
  bootstrap: { replicates: number; seed: number; resampled: string; interval: string };
  config: Record<string, unknown>;
}

/** Creates outDir (and grids/) before any image is made, so an unwritable folder fails at once. */
export function prepareOutDir(outDir: string): void {
  try {
    fs.mkdirSync(path.join(outDir, 'grids'), { recursive: true });
  } catch (err) {
    throw new DivbindError('OUTPUT', `cannot create the output folder ${outDir}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, {
      field: 'outDir',
      cause: err,
    });
  }
}

export function gridFileName(e: PromptEntry): string {
  const slug = e.prompt.text.replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
  return path.join('grids', `${e.category}-${String(e.index).padStart(2, '0')}-${slug}.png`);
}

/** Writes one prompt's grid; tiles in job order (seed-major, then method). Returns the file path. */
export function writeGrid(outDir: string, e: PromptEntry, methods: readonly GuidanceMode[], tiles: GridTile[]): string {
  const at = (r: number, c: number) => tiles[c * methods.length + r];
  const rows = methods.map((_, r) => e.seeds.map((_, c) => at(r, c)));
  const grid = labelledGrid({
    title: e.prompt.text,
    rowLabels: [...methods],
    columnLabels: e.seeds.map((s) => `seed ${s}`),
    tiles: rows.map((row) => row.map((t) => t.image)),
    verdicts: rows.map((row) => row.map((t) => t.success)),
  });
  const file = path.join(outDir, gridFileName(e));
  fs.writeFileSync(
    file,
    encodePng(grid.rgb, grid.width, grid.height, { prompt: e.prompt.text, rows: methods.join(','), columns: `seeds ${e.seeds.join(',')}` }),
  );
  return file;
}

/** Method pairs whose paired difference is reported: every method against plain SD, and D&B against A&E. */
export function differencePairs(methods: readonly GuidanceMode[]): Array<[GuidanceMode, GuidanceMode]> {
  const pairs: Array<[GuidanceMode, GuidanceMode]> = [];
  if (methods.includes('none')) for (const m of methods) if (m !== 'none') pairs.push([m, 'none']);
  if (methods.includes('max')) for (const m of ['tv', 'tv_bind', 'tv_max'] as const) if (methods.includes(m)) pairs.push([m, 'max']);
  return pairs;
}

/** Per category: a paired bootstrap over its prompt × seed pairs (records in canonical order, so reproducible). */
export function summarise(records: ImageRecord[], methods: readonly GuidanceMode[]): Pick<Results, 'methods' | 'differences'> {
  const out: Pick<Results, 'methods' | 'differences'> = { methods: {}, differences: {} };
  for (const m of methods) {
    const mine = records.filter((r) => r.method === m);
    out.methods[m] = { secondsPerImage: mine.reduce((a, r) => a + r.seconds, 0) / Math.max(1, mine.length), categories: {} };
  }
  const pairs = differencePairs(methods);
  for (const [a, b] of pairs) out.differences[`${a}-${b}`] = {};
  for (const c of CATEGORIES) {
    const inCat = records.filter((r) => r.category === c);
    if (inCat.length === 0) continue;
    const outcomes = Object.fromEntries(methods.map((m) => [m, inCat.filter((r) => r.method === m).map((r) => (r.success ? 1 : 0))]));
    const boot = pairedBootstrap(outcomes, pairs, { seed: (BOOTSTRAP_SEED ^ hashString(c)) >>> 0 });
    for (const m of methods) out.methods[m].categories[c] = { n: boot.n, success: boot.methods[m].estimate, ci95: boot.methods[m].ci95 };
    for (const [a, b] of pairs) {
      const d: Interval = boot.differences[`${a}-${b}`];
      out.differences[`${a}-${b}`][c] = { n: boot.n, difference: d.estimate, ci95: d.ci95 };
    }
  }
  return out;
}

const pct = (x: number) => (100 * x).toFixed(1);

function mainTable(r: Pick<Results, 'methods' | 'differences'>, methods: readonly GuidanceMode[]): string[] {
  const cats = CATEGORIES.filter((c) => r.methods[methods[0]].categories[c] !== undefined);
  const lines = [`| category | pairs | ${methods.map((m) => METHOD_LABELS[m]).join(' | ')} |`, `|---|---:|${methods.map(() => '---:').join('|')}|`];
  for (const c of cats) {
    const cells = methods.map((m) => {
      const x = r.methods[m].categories[c] as CategoryResult;
      return `${pct(x.success)} % [${pct(x.ci95[0])}, ${pct(x.ci95[1])}]`;
    });
    lines.push(`| ${c} | ${r.methods[methods[0]].categories[c]?.n} | ${cells.join(' | ')} |`);
  }
  lines.push(`| seconds / image | | ${methods.map((m) => r.methods[m].secondsPerImage.toFixed(2)).join(' | ')} |`);
  return lines;
}

function differenceTable(r: Pick<Results, 'methods' | 'differences'>): string[] {
  const keys = Object.keys(r.differences);
  if (keys.length === 0) return [];
  const cats = CATEGORIES.filter((c) => r.differences[keys[0]][c] !== undefined);
  const label = (k: string) => k.split('-').join(' − ');
  const lines = [`| category | ${keys.map(label).join(' | ')} |`, `|---|${keys.map(() => '---:').join('|')}|`];
  for (const c of cats) {
    lines.push(
      `| ${c} | ${keys
        .map((k) => {
          const d = r.differences[k][c] as { difference: number; ci95: [number, number] };
          return `${d.difference >= 0 ? '+' : ''}${pct(d.difference)} [${pct(d.ci95[0])}, ${pct(d.ci95[1])}]`;
        })
        .join(' | ')} |`,
    );
  }
  return lines;
}

function perPromptTable(entries: PromptEntry[], records: ImageRecord[], methods: readonly GuidanceMode[]): string[] {
  const lines = [`| category | prompt | ${methods.join(' | ')} | grid |`, `|---|---|${methods.map(() => '---:').join('|')}|---|`];
  for (const e of entries) {
    const counts = methods.map((m) => {
      const rs = records.filter((r) => r.prompt === e.prompt.text && r.method === m);
      return `${rs.filter((r) => r.success).length}/${rs.length}`;
    });
    lines.push(`| ${e.category} | ${e.prompt.text} | ${counts.join(' | ')} | [grid](${gridFileName(e).split(path.sep).join('/')}) |`);
  }
  return lines;
}

export function markdownReport(r: Results, entries: PromptEntry[], records: ImageRecord[], methods: readonly GuidanceMode[]): string {
  const c = r.config;
  const params = Object.values((c.parameters ?? {}) as Record<string, { steps?: number } | undefined>);
  const steps = params.find((p) => p?.steps !== undefined)?.steps ?? '?';
  return [
    '# Shapes benchmark',
    '',
    `Prompts \`${String(c.prompts)}\` (${entries.length} prompts), seeds ${(c.seeds as number[]).join(', ')} per line, ${steps} steps${c.quick ? ', quick variant' : ''}; model \`${String(c.model)}\`; ${String(c.workers)} worker(s).`,
    '',
    'Success: every object the prompt requests is detected, counts honoured ("two circles" needs two circles), with the colour the prompt names, under the best one-to-one matching of requested objects to detections (lib/eval/score.ts). Extra detected objects do not fail an image (counts are minimums).',
    `Cells: success rate over prompt × seed pairs and its 95 % interval, a paired percentile bootstrap over those pairs (B = ${r.bootstrap.replicates}, fixed seed: the same resampled pairs for every method).`,
    '',
    ...mainTable(r, methods),
    '',
    ...(Object.keys(r.differences).length ? ['Paired differences in percentage points, 95 % interval:', '', ...differenceTable(r), ''] : []),
    `Grids: \`grids/<category>-<nn>-<prompt>.png\`, rows = ${methods.map((m) => METHOD_LABELS[m]).join(' / ')}, columns = seeds; the bar under each image is the verdict (green success, red failure).`,
    '',
    '## Per prompt',
    '',
    ...perPromptTable(entries, records, methods),
    '',
  ].join('\n');
}

export interface WriteInput {
  entries: PromptEntry[];
  records: ImageRecord[];
  methods: readonly GuidanceMode[];
  config: Record<string, unknown>;
}

export function writeResults(outDir: string, input: WriteInput): { results: Results; markdown: string; files: string[] } {
  const results: Results = {
    ...summarise(input.records, input.methods),
    bootstrap: {
      replicates: BOOTSTRAP_REPLICATES,
      seed: BOOTSTRAP_SEED,
      resampled: 'prompt × seed pairs within a category, the same draws for every method',
      interval: 'percentile 2.5 / 97.5',
    },
    config: input.config,
  };
  const markdown = markdownReport(results, input.entries, input.records, input.methods);
  const files = ['results.json', 'records.json', 'results.md'].map((f) => path.join(outDir, f));
  fs.writeFileSync(files[0], `${JSON.stringify(results, null, 2)}\n`);
  fs.writeFileSync(files[1], `${JSON.stringify(input.records, null, 1)}\n`);
  fs.writeFileSync(files[2], markdown);
  return { results, markdown, files };
}
