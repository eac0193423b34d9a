/**
 * Every option of `generate`, defined once: name, kind (type and range), default, doc and command-line flag.
 * From this table come the API type (GenerateOptions), the checks (check.ts), the resolved plan (plan.ts), the
 * recorded parameters (describe.ts), the CLI flags (cli.ts) and the JSON Schema (schema.ts). Defaults that
 * depend on the model or on other options are named here in words (`defaultFrom`) and computed in plan.ts.
 */
import { DivbindError } from '../errors';
import type { LossBackend, LossOptions } from '../loss/types';
import { LOSS_DEFAULTS, LOSS_OPTION_KEYS } from '../loss/validate';
import { GUIDANCE_MODES, REFINEMENT_PRESETS, defaultThresholds, refinementCaps, type RefinementCaps, type RefinementPreset } from '../pipeline/guidance';
import type { StepEvent } from '../pipeline/sampler';
import type { SelectionSpec } from '../pipeline/token-selection';
import { SCHEDULER_NAMES } from '../schedulers/index';
import {
  apiOnly,
  badInput,
  checkKeys,
  integer,
  list,
  number,
  oneOf,
  pair,
  plainObject,
  seed,
  text,
  thresholdMap,
  withParse,
  type JsonSchema,
  type Kind,
} from './kinds';

/** Several flags that together make one option (`--objects` + `--attributes` → tokens). */
export interface CliGroup {
  flags: ReadonlyArray<{ flags: string; doc: string }>;
  /** The option's value from the parsed flags (keyed by commander's attribute names); undefined when none was given. */
  read(values: Record<string, string | undefined>): unknown;
}

export interface OptionDefinition<In = unknown, Out = In> {
  readonly kind: Kind<In, Out>;
  /** One line for --help, the JSON Schema description and the docs. */
  readonly doc: string;
  /** Fixed default. */
  readonly default?: Out;
  /** A default that depends on the model or on other options, in words; plan.ts computes it. */
  readonly defaultFrom?: string;
  /** A command-line flag ("-s, --steps <n>"), several flags, or none (API only). */
  readonly cli?: string | CliGroup;
  /** Whether result.parameters and the PNG record it (default true). */
  readonly record?: boolean;
}

function option<In, Out>(d: Omit<OptionDefinition<In, Out>, 'default'>): OptionDefinition<In, Out> {
  return d;
}

function withDefault<In, Out>(d: Omit<OptionDefinition<In, Out>, 'default'> & { default: NoInfer<Out> }): OptionDefinition<In, Out> & { default: Out } {
  return d;
}

// ------------------------------------------------------------------------------------------------ kinds

/** Generous bound on the prompt's characters; the real limit is the text encoder's tokens (plan.ts). */
const PROMPT_CHARS = 4000;
/** At most this many guided objects (the paper uses 2-4). */
const MAX_OBJECTS = 16;
/** Static bound for token indices; plan.ts checks them against the prompt's token table. */
const MAX_TOKEN_INDEX = 4096;
const LOSS_BACKENDS = ['native', 'js', 'cuda'] as const satisfies readonly LossBackend[];

const tokenIndex = integer(1, MAX_TOKEN_INDEX);
const promptText = text(PROMPT_CHARS, 'the text encoder reads at most 75 tokens of it');
const word = text(200);

/** An object or attribute: a token index (SOT = 0), a word ("dog", "dog#2") or, for attributes, null = none. */
function tokenRef(allowNone: boolean): Kind<number | string | null> {
  const expected = allowNone ? 'a token index, a word, or null (no attribute)' : 'a token index or a word';
  return {
    expected,
    check: (v, field) => {
      if ((allowNone && v === null) || (typeof v === 'number' && Number.isInteger(v)) || (typeof v === 'string' && v.trim() !== ''))
        return v as number | string | null;
      throw badInput(field, expected, v);
    },
    schema: { anyOf: [{ type: 'integer' }, { type: 'string', pattern: '\\S', maxLength: 200 }, ...(allowNone ? [{ type: 'null' }] : [])] },
  };
}

const PIECES = ['last', 'first'] as const;

/** Which tokens to guide; selectTokens (plan.ts) checks them against the prompt. */
const tokensKind: Kind<SelectionSpec> = (() => {
  const objects = list(tokenRef(false), 1, MAX_OBJECTS);
  const attributes = list(tokenRef(true), 1, MAX_OBJECTS);
  const piece = oneOf(PIECES);
  const expected = 'an object { objects?, attributes?, piece? }';
  return {
    expected,
    check: (v, field) => {
      if (!plainObject(v)) throw badInput(field, expected, v, 'e.g. { objects: ["cat", "dog"], attributes: ["red", null] }');
      checkKeys(v, ['objects', 'attributes', 'piece'], field, `${field}.`);
      const out: SelectionSpec = {};
      if (v.objects !== undefined) out.objects = objects.check(v.objects, `${field}.objects`) as Array<number | string>;
      if (v.attributes !== undefined) out.attributes = attributes.check(v.attributes, `${field}.attributes`);
      if (v.piece !== undefined) out.piece = piece.check(v.piece, `${field}.piece`);
      return out;
    },
    schema: {
      type: 'object',
      properties: { objects: objects.schema, attributes: attributes.schema, piece: piece.schema },
      additionalProperties: false,
    },
  };
})();

function refused(field: string, message: string, fix?: string): DivbindError {
  return new DivbindError('BAD_INPUT', message, { field, fix });
}

const tokensCli: CliGroup = {
  flags: [
    { flags: '--objects <words>', doc: 'object words to guide, comma-separated (dog,bench; dog#2 = the 2nd "dog")' },
    { flags: '--attributes <words>', doc: 'attribute words aligned with --objects ("-" = none), e.g. purple,green' },
    { flags: '--token-indices <list>', doc: 'object token indices (SOT = 0), e.g. 2,5; see `divbind-native tokens`' },
    { flags: '--attribute-indices <list>', doc: 'attribute token indices aligned with --token-indices (0 = none)' },
  ],
  read(v) {
    if (v.tokenIndices !== undefined) {
      if (v.objects !== undefined || v.attributes !== undefined) {
        throw refused('--token-indices', 'use either --token-indices (with --attribute-indices) or --objects (with --attributes), not both');
      }
      const objects = list(tokenIndex, 1, MAX_OBJECTS).parse!(v.tokenIndices, '--token-indices');
      const attributes =
        v.attributeIndices === undefined
          ? undefined
          : list(integer(0, MAX_TOKEN_INDEX), 1, MAX_OBJECTS).parse!(v.attributeIndices, '--attribute-indices').map((a) => (a > 0 ? a : null));
      return { objects, attributes };
    }
    if (v.attributeIndices !== undefined) throw refused('--attribute-indices', '--attribute-indices needs --token-indices (aligned lists, 0 = none)');
    if (v.objects !== undefined) {
      const objects = list(word, 1, MAX_OBJECTS).parse!(v.objects, '--objects');
      const attributes =
        v.attributes === undefined ? undefined : list(word, 1, MAX_OBJECTS).parse!(v.attributes, '--attributes').map((a) => (a === '-' ? null : a));
      return { objects, attributes };
    }
    if (v.attributes !== undefined) throw refused('--attributes', '--attributes needs --objects (aligned lists, "-" = none)');
    return undefined;
  },
};

/** Refinement caps: a preset, or explicit caps (iterations at loop index 0, and at the other threshold keys). */
const refinementKind: Kind<RefinementPreset | RefinementCaps> = (() => {
  const preset = oneOf(REFINEMENT_PRESETS);
  const cap = integer(1, 1000);
  const expected = `${preset.expected}, or caps { initStep, other } (each ${cap.expected})`;
  const check = (v: unknown, field: string): RefinementPreset | RefinementCaps => {
    if (typeof v === 'string') return preset.check(v, field);
    if (!plainObject(v)) throw badInput(field, expected, v);
    checkKeys(v, ['initStep', 'other'], field, `${field}.`);
    return { initStep: cap.check(v.initStep, `${field}.initStep`), other: cap.check(v.other, `${field}.other`) };
  };
  const parse = (t: string, field: string): RefinementPreset | RefinementCaps => {
    if (!t.includes(',')) return preset.check(t, field);
    const caps = list(cap, 2, 2).parse!(t, field);
    return { initStep: caps[0], other: caps[1] };
  };
  return {
    expected,
    check,
    parse,
    schema: {
      anyOf: [
        preset.schema,
        {
          type: 'object',
          properties: { initStep: cap.schema, other: cap.schema },
          required: ['initStep', 'other'],
          additionalProperties: false,
        },
      ],
    },
  };
})();

/**
 * Loss parameters a generate() call may set (spec §9, defaults in lib/loss). The mode, token indices, EOT
 * position and step index come from the other options and the prompt.
 */
export type GenerateLossOptions = Omit<LossOptions, 'mode' | 'tokenIndices' | 'attributeIndices' | 'stepIndex' | 'eotIndex'>;

const NOT_LOSS_OPTIONS: readonly string[] = ['mode', 'tokenIndices', 'attributeIndices', 'stepIndex', 'eotIndex'];
export const GENERATE_LOSS_KEYS = LOSS_OPTION_KEYS.filter((k) => !NOT_LOSS_OPTIONS.includes(k)) as ReadonlyArray<keyof GenerateLossOptions>;

/** JSON Schema of a loss option, from the JSON type of its default (the loss core checks the values). */
function schemaOfExample(example: unknown): JsonSchema {
  if (Array.isArray(example)) return { type: 'array', items: example.length > 0 ? schemaOfExample(example[0]) : {} };
  return { type: typeof example === 'number' ? 'number' : typeof example };
}

const lossKind: Kind<GenerateLossOptions> = (() => {
  const properties: Record<string, JsonSchema> = {};
  for (const key of GENERATE_LOSS_KEYS) properties[key] = schemaOfExample(LOSS_DEFAULTS[key as keyof typeof LOSS_DEFAULTS]);
  const expected = `an object with some of ${GENERATE_LOSS_KEYS.join(', ')}`;
  return {
    expected,
    check: (v, field) => {
      if (!plainObject(v)) throw badInput(field, expected, v);
      checkKeys(v, GENERATE_LOSS_KEYS, 'loss options', `${field}.`);
      for (const [key, value] of Object.entries(v)) {
        const want = properties[key];
        const got = Array.isArray(value) ? 'array' : typeof value;
        if (value !== undefined && got !== want.type) throw badInput(`${field}.${key}`, `a value of type ${String(want.type)}`, value);
      }
      return { ...v } as GenerateLossOptions;
    },
    schema: { type: 'object', properties, additionalProperties: false },
  };
})();

const lossCli: CliGroup = {
  flags: [
    { flags: '--attn-res <r>', doc: "object attention resolution (default: the model's, or height/32)" },
    { flags: '--attr-res <list>', doc: "attribute source resolutions, e.g. 64,32 (default: the model's, or 4r,2r)" },
    { flags: '--tv-vertical <mode>', doc: `vertical TV term: official|neighbor (default: ${LOSS_DEFAULTS.tvVertical})` },
    { flags: '--token-slice <mode>', doc: `token slice before the softmax: all-but-last|until-eot (default: ${LOSS_DEFAULTS.tokenSlice})` },
  ],
  read(v) {
    const out: Partial<GenerateLossOptions> = {};
    const resolution = integer(1, 4096);
    if (v.attnRes !== undefined) out.attentionResolution = resolution.parse!(v.attnRes, '--attn-res');
    if (v.attrRes !== undefined) out.attributeResolutions = list(resolution, 1, 8).parse!(v.attrRes, '--attr-res');
    if (v.tvVertical !== undefined) out.tvVertical = v.tvVertical as GenerateLossOptions['tvVertical'];
    if (v.tokenSlice !== undefined) out.tokenSlice = v.tokenSlice as GenerateLossOptions['tokenSlice'];
    return Object.keys(out).length > 0 ? out : undefined;
  },
};

const latentsKind = withParse(
  apiOnly<Float32Array | string>(
    'a Float32Array [n, 4, h, w] or a .npy file path',
    (v) => v instanceof Float32Array || (typeof v === 'string' && v.length > 0),
  ),
  (t, field) => {
    if (t.length === 0) throw badInput(field, 'a .npy file path', t);
    return t;
  },
);

// ------------------------------------------------------------------------------------------------ table

const thresholdsDoc = `per mode (spec §3): max ${JSON.stringify(defaultThresholds('max'))}, tv/tv_bind/tv_max ${JSON.stringify(defaultThresholds('tv'))}`;
const capsDoc = (p: RefinementPreset) => `${refinementCaps(p, 'tv').initStep}/${refinementCaps(p, 'tv').other}`;

export const GENERATE_OPTIONS = {
  prompt: option({ kind: promptText, doc: 'text prompt, at most 75 CLIP tokens: a longer prompt is refused, not cut', cli: '<prompt>' }),
  negativePrompt: withDefault({
    kind: promptText,
    default: '',
    doc: 'negative prompt (the unconditional text of classifier-free guidance)',
    cli: '-n, --negative <prompt>',
  }),
  mode: withDefault({
    kind: oneOf(GUIDANCE_MODES),
    default: 'tv_bind',
    doc: 'none = plain SD, max = Attend-and-Excite, tv / tv_bind / tv_max = Divide & Bind',
    cli: '--mode <mode>',
  }),
  tokens: option({
    kind: tokensKind,
    doc: 'tokens to guide: object indices (SOT = 0) or words, attributes aligned with them',
    defaultFrom: 'a part-of-speech parse of the prompt',
    cli: tokensCli,
  }),
  guidanceScale: withDefault({ kind: number(0, 100), default: 7.5, doc: 'classifier-free guidance scale', cli: '-g, --guidance <scale>' }),
  steps: withDefault({
    kind: integer(1, 1000),
    default: 50,
    doc: 'inference steps (PNDM runs steps + 1 timesteps); at most what the scheduler allows',
    cli: '-s, --steps <n>',
  }),
  height: option({
    kind: integer(8, 4096),
    doc: 'image height in pixels, a multiple of the VAE factor (8 for SD exports, 4 for the bundled model)',
    defaultFrom: "the prepared size, else the UNet's",
    cli: '--height <px>',
  }),
  width: option({
    kind: integer(8, 4096),
    doc: 'image width in pixels, a multiple of the VAE factor (8 for SD exports, 4 for the bundled model)',
    defaultFrom: "the prepared size, else the UNet's",
    cli: '--width <px>',
  }),
  seed: option({
    kind: seed(),
    doc: 'seed of the initial noise (torch.randn on the CPU generator, bit-exact)',
    defaultFrom: 'a random seed, recorded with the result',
    cli: '--seed <n>',
  }),
  latents: option({
    kind: latentsKind,
    doc: 'initial latents [n, 4, h/f, w/f] (f: the VAE factor) as float32/float64 .npy (replaces the seed)',
    cli: '--latents <file.npy>',
  }),
  imagesPerPrompt: withDefault({ kind: integer(1, 64), default: 1, doc: 'images for this prompt (one noise draw of shape [n, 4, h, w])', cli: '--images <n>' }),
  scheduler: option({
    kind: oneOf(SCHEDULER_NAMES),
    doc: 'scheduler: pndm, ddim or euler',
    defaultFrom: "the model's scheduler_config.json",
    cli: '--scheduler <name>',
  }),
  lossBackend: option({
    kind: oneOf(LOSS_BACKENDS),
    doc: 'loss backend: native, js or cuda',
    defaultFrom: 'native when the addon loads, else js',
    cli: '--loss-backend <name>',
  }),
  maxIterToAlter: withDefault({ kind: integer(0, 1000), default: 25, doc: 'latent updates run for loop indices below this', cli: '--max-iter-to-alter <n>' }),
  scaleFactor: withDefault({ kind: number(0, 1000), default: 20, doc: 'step size α_i = scaleFactor·√linspace(scaleRange)[i]', cli: '--scale-factor <x>' }),
  scaleRange: withDefault({ kind: pair(number(0, 10)), default: [1, 0.5], doc: 'start and end of the step-size decay', cli: '--scale-range <start,end>' }),
  thresholds: option({
    kind: thresholdMap(1000, number(0, 100)),
    doc: 'refinement thresholds {loop index: θ}, e.g. {"0":0.05,"10":0.2}; {} = no refinement',
    defaultFrom: thresholdsDoc,
    cli: '--thresholds <json>',
  }),
  refinement: withDefault({
    kind: refinementKind,
    default: 'official-latest',
    doc: `refinement caps: official-latest (${capsDoc('official-latest')}), paper (${capsDoc('paper')} for D&B), or "initStep,other"`,
    cli: '--refinement <caps>',
  }),
  loss: option({
    kind: lossKind,
    doc: 'loss parameters (spec §9)',
    defaultFrom: 'lib/loss defaults; attentionResolution from the model or height/32; mode max uses the A&E hinge',
    cli: lossCli,
  }),
  attentionMapsAt: option({
    kind: list(integer(0, 1000), 1, 64),
    doc: 'loop indices at which to save attention heat-map grids',
    cli: '--attention-maps <steps>',
  }),
  signal: option({ kind: apiOnly<AbortSignal>('an AbortSignal', (v) => v instanceof AbortSignal), doc: 'cancels the generation', record: false }),
  onStep: option({
    kind: apiOnly<(event: StepEvent & { image: number }) => void>('a function', (v) => typeof v === 'function'),
    doc: 'progress: one event per denoising step',
    record: false,
  }),
} satisfies Record<string, OptionDefinition<unknown, unknown>>;

export type GenerateOptionName = keyof typeof GENERATE_OPTIONS;
type Defs = typeof GENERATE_OPTIONS;
type InOf<D> = D extends OptionDefinition<infer In, unknown> ? In : never;
type OutOf<D> = D extends OptionDefinition<unknown, infer Out> ? Out : never;

/** What generate() takes: every option but the prompt may be omitted. */
export type GenerateOptions = { prompt: string } & { [K in Exclude<GenerateOptionName, 'prompt'>]?: InOf<Defs[K]> };

/** Options after the model-free checks, fixed defaults applied; model-dependent ones may still be undefined. */
export type CheckedGenerateOptions = {
  [K in GenerateOptionName]: Defs[K] extends { default: unknown } ? OutOf<Defs[K]> : K extends 'prompt' ? string : OutOf<Defs[K]> | undefined;
};

export function definitionOf(name: GenerateOptionName): OptionDefinition<unknown, unknown> {
  return GENERATE_OPTIONS[name] as OptionDefinition<unknown, unknown>;
}

export const GENERATE_OPTION_NAMES = Object.keys(GENERATE_OPTIONS) as GenerateOptionName[];
