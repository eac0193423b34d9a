/**
 * The Shapes benchmark prompt sets. Fixed prompts and seeds so runs are comparable across methods, models and
 * commits. Every prompt is parsed back into the objects it requests (parsePrompt), and the guided tokens are the
 * shape words (objects) and colour words (attributes), given to the pipeline as words.
 */
import { PALETTE, SHAPES, type ShapeName } from './detector';
import type { RequestedObject } from './score';

export interface BenchmarkPrompt {
  prompt: string;
  objects: RequestedObject[];
  /** Token selection for the pipeline: shape words, aligned colour words (null = none). */
  tokens: { objects: string[]; attributes?: Array<string | null> };
}

export interface PromptSet {
  name: string;
  title: string;
  prompts: BenchmarkPrompt[];
}

/**
 * Parses "a red circle", "a circle and a square", "a yellow circle, a blue square and a red triangle" (the
 * Shapes caption grammar) into requested objects. Throws a RangeError naming the unknown word otherwise.
 */
export function parsePrompt(prompt: string): RequestedObject[] {
  if (typeof prompt !== 'string' || prompt.trim() === '') throw new TypeError('Expected a non-empty prompt string');
  const parts = prompt.toLowerCase().trim().split(/\s*,\s*|\s+and\s+/);
  return parts.map((part) => {
    const words = part.split(/\s+/).filter((w) => w !== 'a' && w !== 'an');
    const shape = words[words.length - 1];
    if (!(SHAPES as readonly string[]).includes(shape)) {
      throw new RangeError(`prompt "${prompt}": "${shape}" is not a shape (expected one of ${SHAPES.join(', ')})`);
    }
    if (words.length > 2) throw new RangeError(`prompt "${prompt}": "${part}" should be "a [colour] shape"`);
    const colour = words.length === 2 ? words[0] : null;
    if (colour !== null && !(colour in PALETTE)) {
      throw new RangeError(`prompt "${prompt}": "${colour}" is not a named colour (expected one of ${Object.keys(PALETTE).join(', ')})`);
    }
    return { shape: shape as ShapeName, colour };
  });
}

export function benchmarkPrompt(prompt: string): BenchmarkPrompt {
  const objects = parsePrompt(prompt);
  // A word repeated in the prompt ("a circle and a circle") is addressed as word#k by the token selector.
  const seen = new Map<string, number>();
  const ref = (w: string) => {
    const k = (seen.get(w) ?? 0) + 1;
    seen.set(w, k);
    return k === 1 ? w : `${w}#${k}`;
  };
  const colourRefs = objects.map((o) => (o.colour === null ? null : ref(o.colour)));
  const shapeRefs = objects.map((o) => ref(o.shape));
  const coloured = objects.some((o) => o.colour !== null);
  return { prompt, objects, tokens: coloured ? { objects: shapeRefs, attributes: colourRefs } : { objects: shapeRefs } };
}

export const PROMPT_SETS: readonly PromptSet[] = [
  {
    name: 'two',
    title: 'two objects',
    prompts: ['a circle and a square', 'a square and a triangle', 'a triangle and a circle', 'a square and a circle'].map(benchmarkPrompt),
  },
  {
    name: 'binding',
    title: 'two coloured objects (binding)',
    prompts: [
      'a red circle and a blue square',
      'a yellow triangle and a green circle',
      'a purple square and an orange triangle',
      'a white circle and a black triangle',
      'a blue triangle and a red square',
      'a green square and a yellow circle',
    ].map(benchmarkPrompt),
  },
  {
    name: 'three',
    title: 'three coloured objects',
    prompts: [
      'a red circle, a blue square and a yellow triangle',
      'a green triangle, a purple circle and an orange square',
      'a white square, a black circle and a blue triangle',
      'a yellow circle, a red triangle and a green square',
    ].map(benchmarkPrompt),
  },
];

/** Seeds of the full benchmark (the quick variant takes the first two). */
export const SEEDS: readonly number[] = [0, 1, 2, 3, 4, 5, 6, 7];
