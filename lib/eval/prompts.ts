/**
 * Prompts of the Shapes benchmark: the closed caption grammar of the Shapes world (tools/shapes/data.py), read into
 * the objects a prompt requests, the tokens the guided methods optimise, and a category; and prompt files.
 *
 * Grammar (case, extra spaces and trailing . ! ? ; : are ignored):
 *   prompt  := object ( ("," | "and" | ", and") object )*
 *   object  := [ "a" | "an" ] [colour] shape  |  ("two" | "three") [colour] shapes
 *   colour  := red | green | blue | yellow | purple | orange | white | black
 *   shape   := circle | square | triangle;   shapes := circles | squares | triangles
 * "two circles and a square" requests three objects: two circles and one square.
 */
import * as fs from 'node:fs';
import { DivbindError } from '../errors';
import type { SelectionSpec } from '../pipeline/token-selection';
import { PALETTE, SHAPES, type ShapeName } from './detector';
import type { RequestedObject } from './score';

const ARTICLES = new Set(['a', 'an']);
const COUNTS: Readonly<Record<string, number>> = { two: 2, three: 3 };
const COLOURS = new Set(Object.keys(PALETTE));
const SINGULAR = new Map<string, ShapeName>(SHAPES.map((s) => [s, s]));
const PLURAL = new Map<string, ShapeName>(SHAPES.map((s) => [`${s}s`, s]));
/** Every word a prompt may use, in the order the error messages list them. */
export const VOCABULARY: readonly string[] = [...ARTICLES, ...Object.keys(COUNTS), 'and', ',', ...COLOURS, ...SINGULAR.keys(), ...PLURAL.keys()];

/** One noun phrase of a prompt: "two red circles" = { count 2, colour red, shape circle, shapeWord circles }. */
export interface Mention {
  count: number;
  colour: string | null;
  shape: ShapeName;
  /** The shape word as written (singular or plural): the object token of the guided methods. */
  shapeWord: string;
}

export interface ParsedPrompt {
  /** The prompt as given to the model: lower-case, single spaces, "x, y", no trailing punctuation. */
  text: string;
  mentions: Mention[];
  /** One entry per requested object instance ("two circles" gives two). */
  objects: RequestedObject[];
}

export const CATEGORIES = ['single', 'two', 'two_colour', 'three'] as const;
export type Category = (typeof CATEGORIES)[number];
const OBJECTS_IN: Readonly<Record<Category, number>> = { single: 1, two: 2, two_colour: 2, three: 3 };

function badPrompt(prompt: string, message: string): DivbindError {
  return new DivbindError('BAD_INPUT', `prompt ${JSON.stringify(prompt)}: ${message}`, { field: 'prompt' });
}

/** Lower-cased words and commas; trailing sentence punctuation dropped. */
function words(prompt: string): string[] {
  const s = prompt
    .normalize('NFKC')
    .toLowerCase()
    .trim()
    .replace(/[\s.!?;:]+$/u, '');
  return s
    .replace(/,/g, ' , ')
    .split(/\s+/u)
    .filter((w) => w.length > 0);
}

/** Splits at "," / "and" / ", and" into the words of each object description. */
function splitObjects(prompt: string, ws: string[]): string[][] {
  const parts: string[][] = [[]];
  ws.forEach((w, i) => {
    if (w !== ',' && w !== 'and') {
      parts[parts.length - 1].push(w);
      return;
    }
    // ", and" (serial comma) is one separator.
    if (w === 'and' && ws[i - 1] === ',') return;
    if (parts[parts.length - 1].length === 0) throw badPrompt(prompt, `"${w}" must follow an object (e.g. "a circle ${w} a square")`);
    parts.push([]);
  });
  if (parts[parts.length - 1].length === 0) throw badPrompt(prompt, `the prompt ends with "${ws[ws.length - 1] ?? ''}": an object must follow`);
  return parts;
}

function parseMention(prompt: string, part: string[]): Mention {
  const phrase = part.join(' ');
  let i = 0;
  let count: number | null = null;
  if (ARTICLES.has(part[i])) {
    count = 1;
    i++;
  } else if (Object.hasOwn(COUNTS, part[i] ?? '')) {
    count = COUNTS[part[i]];
    i++;
  }
  const colour = COLOURS.has(part[i]) ? part[i++] : null;
  const shapeWord = part[i];
  if (shapeWord === undefined) throw badPrompt(prompt, `"${phrase}" names no shape (expected circle, square or triangle after "${part[i - 1]}")`);
  const shape = SINGULAR.get(shapeWord) ?? PLURAL.get(shapeWord);
  if (shape === undefined) throw badPrompt(prompt, `unexpected "${shapeWord}" in "${phrase}" (an object is [a|an|two|three] [colour] shape)`);
  if (i + 1 < part.length) throw badPrompt(prompt, `unexpected "${part[i + 1]}" after "${shapeWord}" in "${phrase}" (separate objects with "," or "and")`);
  const plural = PLURAL.has(shapeWord);
  if (count === null && plural) throw badPrompt(prompt, `"${shapeWord}" needs a count ("two ${shapeWord}" or "three ${shapeWord}")`);
  if (count !== null && count > 1 && !plural) throw badPrompt(prompt, `"${part[0]}" needs the plural "${shapeWord}s"`);
  if (count === 1 && plural) throw badPrompt(prompt, `"${part[0]}" needs the singular "${shape}"`);
  return { count: count ?? 1, colour, shape, shapeWord };
}

/** Reads a prompt of the Shapes grammar; a DivbindError (BAD_INPUT) names the offending word otherwise. */
export function parsePrompt(prompt: string): ParsedPrompt {
  if (typeof prompt !== 'string') throw new DivbindError('BAD_INPUT', `Expected a prompt string but received ${typeof prompt}`, { field: 'prompt' });
  const ws = words(prompt);
  if (ws.length === 0) throw badPrompt(prompt, 'empty prompt');
  const unknown = ws.find((w) => !VOCABULARY.includes(w));
  if (unknown !== undefined) throw badPrompt(prompt, `unknown word "${unknown}" (the Shapes vocabulary is ${VOCABULARY.join(' ')})`);
  const mentions = splitObjects(prompt, ws).map((part) => parseMention(prompt, part));
  const objects = mentions.flatMap((m) => Array.from({ length: m.count }, () => ({ shape: m.shape, colour: m.colour })));
  return { text: ws.join(' ').replace(/ ,/g, ','), mentions, objects };
}

/**
 * Token selection for the guided methods: one object token per mention, the shape word as written ("circles" in
 * "two circles": D&B's TV loss spreads one token's attention over several instances), and the colour word aligned
 * with it (null when none). A word repeated in the prompt is addressed as word#k, counted in prompt order.
 */
export function guidanceTokens(p: ParsedPrompt): SelectionSpec {
  const seen = new Map<string, number>();
  const ref = (w: string) => {
    const k = (seen.get(w) ?? 0) + 1;
    seen.set(w, k);
    return k === 1 ? w : `${w}#${k}`;
  };
  const objects: string[] = [];
  const attributes: Array<string | null> = [];
  for (const m of p.mentions) {
    attributes.push(m.colour === null ? null : ref(m.colour));
    objects.push(ref(m.shapeWord));
  }
  return attributes.some((a) => a !== null) ? { objects, attributes } : { objects };
}

/** single: 1 object; two: 2 objects, no colour named; two_colour: 2 objects, a colour named; three: 3 objects. */
export function inferCategory(p: ParsedPrompt): Category {
  const n = p.objects.length;
  if (n === 1) return 'single';
  if (n === 2) return p.mentions.some((m) => m.colour !== null) ? 'two_colour' : 'two';
  if (n === 3) return 'three';
  throw badPrompt(p.text, `${n} objects: the categories (${CATEGORIES.join(', ')}) hold 1 to 3`);
}

/** One prompt line of a prompt file. */
export interface PromptLine {
  file: string;
  line: number;
  category: Category;
  prompt: ParsedPrompt;
  /** 0 for the first line with this prompt, 1 for the second, …: each repetition runs on fresh seeds. */
  occurrence: number;
}

function lineError(file: string, line: number, err: unknown): DivbindError {
  const message = err instanceof Error ? err.message : String(err);
  return new DivbindError('BAD_INPUT', `${file}:${line}: ${message}`, { field: `${file}:${line}`, cause: err });
}

function parseCategory(raw: string, p: ParsedPrompt): Category {
  const name = raw.trim().toLowerCase();
  if (!(CATEGORIES as readonly string[]).includes(name)) {
    throw new DivbindError('BAD_INPUT', `unknown category "${raw.trim()}" (expected one of ${CATEGORIES.join(', ')})`, { field: 'category' });
  }
  const category = name as Category;
  if (OBJECTS_IN[category] !== p.objects.length) {
    throw new DivbindError('BAD_INPUT', `category "${category}" is for ${OBJECTS_IN[category]} object(s) but "${p.text}" requests ${p.objects.length}`, {
      field: 'category',
    });
  }
  return category;
}

/**
 * Parses a prompt file's text: one prompt per line, optionally `category<TAB>prompt`; `#` starts a comment (whole
 * line or trailing); blank lines are skipped. A prompt repeated on several lines keeps its category and gets
 * `occurrence` 1, 2, … (fresh seeds, see lineSeeds). Errors name the file, the line and the word.
 */
export function parsePromptFile(text: string, file: string): PromptLine[] {
  const out: PromptLine[] = [];
  const first = new Map<string, PromptLine>();
  text
    .replace(/^\ufeff/, '')
    .split(/\r?\n/)
    .forEach((raw, i) => {
      const line = i + 1;
      const content = raw.replace(/#.*$/, '').trim();
      if (content === '') return;
      try {
        const fields = content.split('\t');
        if (fields.length > 2) throw new DivbindError('BAD_INPUT', `${fields.length} tab-separated fields; expected "prompt" or "category<TAB>prompt"`);
        const prompt = parsePrompt(fields[fields.length - 1]);
        const category = fields.length === 2 ? parseCategory(fields[0], prompt) : inferCategory(prompt);
        const earlier = first.get(prompt.text);
        if (earlier && earlier.category !== category) {
          throw new DivbindError('BAD_INPUT', `"${prompt.text}" is in category ${category} here but ${earlier.category} on line ${earlier.line}`);
        }
        const entry: PromptLine = { file, line, category, prompt, occurrence: out.filter((o) => o.prompt.text === prompt.text).length };
        if (!earlier) first.set(prompt.text, entry);
        out.push(entry);
      } catch (err) {
        throw lineError(file, line, err);
      }
    });
  if (out.length === 0) throw new DivbindError('BAD_INPUT', `${file}: no prompts (one per line, optionally category<TAB>prompt)`, { field: 'prompts' });
  return out;
}

export function readPromptFile(file: string): PromptLine[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new DivbindError('BAD_INPUT', `cannot read the prompt file ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, {
      field: 'prompts',
      cause: err,
    });
  }
  return parsePromptFile(text, file);
}

/**
 * Seeds of a prompt line: the run's seeds S for the first line with a prompt; its k-th repetition shifts them by
 * k·(max S − min S + 1), so that every image of a prompt has its own noise.
 */
export function lineSeeds(seeds: readonly number[], occurrence: number): number[] {
  if (seeds.length === 0) return [];
  const span = Math.max(...seeds) - Math.min(...seeds) + 1;
  return seeds.map((s) => s + occurrence * span);
}
