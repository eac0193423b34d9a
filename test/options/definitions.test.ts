/**
 * The option definitions and what comes from them without a model: the checks (checkGenerateOptions), the strict
 * command-line parsing (generateOptionsFromFlags), the JSON Schema (validated with ajv, as fastify does) and the
 * CLI's flags. The checks and the schema must agree on every case below.
 */
import test from 'ava';
import Ajv from 'ajv';
import { Command } from 'commander';
import { DivbindError } from '../../lib/errors';
import { LOSS_DEFAULTS } from '../../lib/loss/validate';
import {
  GENERATE_OPTIONS,
  GENERATE_OPTION_NAMES,
  addGenerateFlags,
  checkGenerateOptions,
  generateOptionsFromFlags,
  generateOptionsJsonSchema,
  type GenerateOptions,
} from '../../lib/options/index';

function refusal(t: import('ava').ExecutionContext, fn: () => unknown, field: string, message?: RegExp): DivbindError {
  const err = t.throws(fn, { instanceOf: DivbindError }) as DivbindError;
  t.is(err.code, 'BAD_INPUT', err.message);
  t.is(err.field, field, err.message);
  if (message) t.regex(err.message, message);
  return err;
}

test('checkGenerateOptions applies the fixed defaults of the definitions and leaves model defaults open', (t) => {
  const o = checkGenerateOptions({ prompt: 'a cat' });
  for (const name of GENERATE_OPTION_NAMES) {
    const def = GENERATE_OPTIONS[name] as { default?: unknown };
    if (name === 'prompt') t.is(o.prompt, 'a cat');
    else t.deepEqual(o[name], def.default, name);
  }
  t.is(o.steps, 50);
  t.is(o.mode, 'tv_bind');
  t.is(o.seed, undefined);
});

test('a misspelt option is refused with the closest name (API and nested objects)', (t) => {
  refusal(t, () => checkGenerateOptions({ prompt: 'a cat', stpes: 3 }), 'stpes', /Unknown option "stpes".*did you mean steps\?/);
  refusal(t, () => checkGenerateOptions({ prompt: 'a cat', guidance_scale: 3 }), 'guidance_scale', /did you mean guidanceScale\?/);
  refusal(t, () => checkGenerateOptions({ prompt: 'a cat', loss: { temprature: 3 } }), 'loss.temprature', /did you mean temperature\?/);
  refusal(t, () => checkGenerateOptions({ prompt: 'a cat', tokens: { object: ['cat'] } }), 'tokens.object', /did you mean objects\?/);
  refusal(t, () => checkGenerateOptions({ prompt: 'a cat', refinement: { initStep: 5, others: 3 } }), 'refinement.others', /did you mean other\?/);
  refusal(t, () => checkGenerateOptions({ steps: 3 }), 'prompt', /prompt is missing/);
});

test('values out of range are refused naming the field (fault 12, 16)', (t) => {
  const p = { prompt: 'a cat' };
  refusal(t, () => checkGenerateOptions({ ...p, guidanceScale: 1e39 }), 'guidanceScale', /between 0 and 100/);
  refusal(t, () => checkGenerateOptions({ ...p, scaleFactor: 1e39 }), 'scaleFactor', /between 0 and 1000/);
  refusal(t, () => checkGenerateOptions({ ...p, guidanceScale: Number.NaN }), 'guidanceScale');
  refusal(t, () => checkGenerateOptions({ ...p, steps: 0 }), 'steps');
  refusal(t, () => checkGenerateOptions({ ...p, steps: 2.5 }), 'steps');
  refusal(t, () => checkGenerateOptions({ ...p, refinement: { initStep: -1, other: 5 } }), 'refinement.initStep');
  refusal(t, () => checkGenerateOptions({ ...p, refinement: { initStep: 5 } }), 'refinement.other');
  refusal(t, () => checkGenerateOptions({ ...p, refinement: 'fast' }), 'refinement');
  refusal(t, () => checkGenerateOptions({ ...p, seed: '' }), 'seed');
  refusal(t, () => checkGenerateOptions({ ...p, seed: 2 ** 60 }), 'seed', /as a bigint or a string/);
  refusal(t, () => checkGenerateOptions({ ...p, seed: 2n ** 64n }), 'seed');
  refusal(t, () => checkGenerateOptions({ ...p, thresholds: [] }), 'thresholds', /\{\} turns refinement off/);
  refusal(t, () => checkGenerateOptions({ ...p, thresholds: null }), 'thresholds');
  refusal(t, () => checkGenerateOptions({ ...p, thresholds: { x: 1 } }), 'thresholds key');
  refusal(t, () => checkGenerateOptions({ ...p, thresholds: { 0: Number.POSITIVE_INFINITY } }), 'thresholds[0]');
  refusal(t, () => checkGenerateOptions({ ...p, scaleRange: [1] }), 'scaleRange');
  refusal(t, () => checkGenerateOptions({ ...p, mode: 'tvbind' }), 'mode', /did you mean 'tv_bind'\?/);
  refusal(t, () => checkGenerateOptions({ ...p, tokens: { objects: [] } }), 'tokens.objects');
  refusal(t, () => checkGenerateOptions({ ...p, loss: { temperature: 'hot' } }), 'loss.temperature');
  refusal(t, () => checkGenerateOptions({ ...p, latents: '' }), 'latents');
  refusal(t, () => checkGenerateOptions({ ...p, onStep: 3 }), 'onStep');
  refusal(t, () => checkGenerateOptions({ ...p, prompt: 'x'.repeat(5000) }), 'prompt');
  t.is(checkGenerateOptions({ ...p, seed: '18446744073709551615' }).seed, 2n ** 64n - 1n);
  t.deepEqual(checkGenerateOptions({ ...p, thresholds: {} }).thresholds, {});
  t.deepEqual(checkGenerateOptions({ ...p, refinement: { initStep: 10, other: 5 } }).refinement, { initStep: 10, other: 5 });
});

/** commander's parse of `generate <args>` with the generate flags only. */
function flags(args: string[]): { prompt: string; values: Record<string, unknown> } {
  let prompt = '';
  let values: Record<string, unknown> = {};
  const cmd = addGenerateFlags(new Command('generate'))
    .exitOverride()
    .action((p: string, v: Record<string, unknown>) => {
      prompt = p;
      values = v;
    });
  cmd.parse(['a red cat', ...args], { from: 'user' });
  return { prompt, values };
}

function fromArgs(args: string[]): GenerateOptions {
  const { prompt, values } = flags(args);
  return generateOptionsFromFlags(prompt, values);
}

test('command-line values are parsed strictly (faults 13, 16)', (t) => {
  refusal(t, () => fromArgs(['--seed', 'abc']), '--seed');
  refusal(t, () => fromArgs(['--seed', '']), '--seed');
  refusal(t, () => fromArgs(['--seed', '1.5']), '--seed');
  refusal(t, () => fromArgs(['--token-indices', '3,,7']), '--token-indices', /entry 2 is empty/);
  refusal(t, () => fromArgs(['--token-indices', '0x3']), '--token-indices[0]');
  refusal(t, () => fromArgs(['--token-indices', '']), '--token-indices');
  refusal(t, () => fromArgs(['--attribute-indices', '2']), '--attribute-indices', /needs --token-indices/);
  refusal(t, () => fromArgs(['--objects', 'cat', '--token-indices', '3']), '--token-indices', /not both/);
  refusal(t, () => fromArgs(['--objects', 'cat,,dog']), '--objects');
  refusal(t, () => fromArgs(['--steps', '1e3']), '--steps');
  refusal(t, () => fromArgs(['--steps', '']), '--steps');
  refusal(t, () => fromArgs(['--guidance', '1e39']), '--guidance');
  refusal(t, () => fromArgs(['--guidance', 'Infinity']), '--guidance');
  refusal(t, () => fromArgs(['--scale-factor', '1e39']), '--scale-factor');
  refusal(t, () => fromArgs(['--thresholds', '[]']), '--thresholds');
  refusal(t, () => fromArgs(['--thresholds', 'null']), '--thresholds');
  refusal(t, () => fromArgs(['--thresholds', '{0:1}']), '--thresholds', /JSON text/);
  refusal(t, () => fromArgs(['--refinement', 'fast']), '--refinement');
  refusal(t, () => fromArgs(['--mode', 'bogus']), '--mode');
  refusal(t, () => fromArgs(['--attn-res', '16.5']), '--attn-res');
  refusal(t, () => fromArgs(['--latents', '']), '--latents');
});

test('command-line values become the API options they name', (t) => {
  const o = fromArgs([
    '--seed',
    '18446744073709551615',
    '--steps',
    '7',
    '-g',
    '3.5',
    '--mode',
    'max',
    '--token-indices',
    '2,5',
    '--attribute-indices',
    '0,4',
    '--thresholds',
    '{"0":0.1}',
    '--refinement',
    '10,5',
    '--scale-range',
    '1,0.25',
    '--attn-res',
    '8',
    '--attr-res',
    '32,16',
    '--tv-vertical',
    'neighbor',
    '--attention-maps',
    '0,3',
    '-n',
    'blurry',
    '--images',
    '2',
  ]);
  t.deepEqual(o, {
    prompt: 'a red cat',
    seed: 2n ** 64n - 1n,
    steps: 7,
    guidanceScale: 3.5,
    mode: 'max',
    tokens: { objects: [2, 5], attributes: [null, 4] },
    thresholds: { 0: 0.1 },
    refinement: { initStep: 10, other: 5 },
    scaleRange: [1, 0.25],
    loss: { attentionResolution: 8, attributeResolutions: [32, 16], tvVertical: 'neighbor' },
    attentionMapsAt: [0, 3],
    negativePrompt: 'blurry',
    imagesPerPrompt: 2,
  });
  t.deepEqual(fromArgs(['--objects', 'cat,dog#2', '--attributes', 'red,-']).tokens, { objects: ['cat', 'dog#2'], attributes: ['red', null] });
  // Omitted flags are omitted options: the plan, not commander, applies the defaults.
  t.deepEqual(fromArgs([]), { prompt: 'a red cat' });
});

test('--help shows each flag with the default of its definition', (t) => {
  const help = addGenerateFlags(new Command('generate').configureHelp({ helpWidth: 1000 })).helpInformation();
  t.regex(help, /--steps <n>\s+inference steps .*\(default: 50\)/);
  t.regex(help, /--guidance <scale>\s+classifier-free guidance scale \(default: 7\.5\)/);
  t.regex(help, /--mode <mode>.*\(default: tv_bind\)/);
  t.regex(help, /--seed <n>.*\(default: a random seed, recorded with the result\)/);
  t.regex(help, /--scale-range <start,end>.*\(default: 1,0\.5\)/);
  t.regex(help, new RegExp(`--tv-vertical <mode>.*\\(default: ${LOSS_DEFAULTS.tvVertical}\\)`));
});

// ------------------------------------------------------------------------------------------ JSON Schema

const ajv = new Ajv({ allErrors: true, strict: true });
const validate = ajv.compile(generateOptionsJsonSchema());

function checks(options: unknown): boolean {
  try {
    checkGenerateOptions(options);
    return true;
  } catch (err) {
    if (!(err instanceof DivbindError)) throw err;
    return false;
  }
}

const JSON_CASES: Array<[string, Record<string, unknown>]> = [
  ['minimal', { prompt: 'a cat' }],
  [
    'everything',
    {
      prompt: 'a red cat',
      negativePrompt: '',
      mode: 'tv_bind',
      tokens: { objects: ['cat', 3], attributes: ['red', null], piece: 'first' },
      guidanceScale: 7.5,
      steps: 50,
      height: 512,
      width: 512,
      seed: '18446744073709551615',
      imagesPerPrompt: 2,
      scheduler: 'euler',
      lossBackend: 'js',
      maxIterToAlter: 25,
      scaleFactor: 20,
      scaleRange: [1, 0.5],
      thresholds: { 0: 0.05, 10: 0.2 },
      refinement: { initStep: 100, other: 50 },
      loss: { temperature: 50, smoothing: false, attributeResolutions: [32], tvMaxWeights: [1, 0.3] },
      attentionMapsAt: [0, 10],
    },
  ],
  ['numeric seed', { prompt: 'a', seed: 42 }],
  ['preset refinement', { prompt: 'a', refinement: 'paper' }],
  ['misspelt', { prompt: 'a', stpes: 3 }],
  ['no prompt', { steps: 3 }],
  ['huge guidance', { prompt: 'a', guidanceScale: 1e39 }],
  ['negative guidance', { prompt: 'a', guidanceScale: -1 }],
  ['fractional steps', { prompt: 'a', steps: 2.5 }],
  ['too many steps', { prompt: 'a', steps: 1001 }],
  ['bad mode', { prompt: 'a', mode: 'tvbind' }],
  ['empty seed', { prompt: 'a', seed: '' }],
  ['hex seed', { prompt: 'a', seed: '0x3' }],
  ['array thresholds', { prompt: 'a', thresholds: [] }],
  ['null thresholds', { prompt: 'a', thresholds: null }],
  ['threshold key', { prompt: 'a', thresholds: { x: 0.1 } }],
  ['threshold value', { prompt: 'a', thresholds: { 0: 200 } }],
  ['cap zero', { prompt: 'a', refinement: { initStep: 0, other: 5 } }],
  ['cap missing', { prompt: 'a', refinement: { initStep: 5 } }],
  ['loss misspelt', { prompt: 'a', loss: { temprature: 5 } }],
  ['loss type', { prompt: 'a', loss: { temperature: 'hot' } }],
  ['loss mode', { prompt: 'a', loss: { mode: 'max' } }],
  ['tokens empty', { prompt: 'a', tokens: { objects: [] } }],
  ['tokens blank word', { prompt: 'a', tokens: { objects: [' '] } }],
  ['tokens misspelt', { prompt: 'a', tokens: { object: [2] } }],
  ['scale range', { prompt: 'a', scaleRange: [1, 0.5, 0.2] }],
  ['images', { prompt: 'a', imagesPerPrompt: 65 }],
  ['long prompt', { prompt: 'x'.repeat(4001) }],
  ['maps', { prompt: 'a', attentionMapsAt: [-1] }],
];

for (const [name, options] of JSON_CASES) {
  test(`JSON Schema and checkGenerateOptions agree: ${name}`, (t) => {
    const byChecks = checks(options);
    t.is(validate(options), byChecks, JSON.stringify(validate.errors));
  });
}

test('the JSON Schema carries every JSON option with its doc and fixed default, and no file path', (t) => {
  const schema = generateOptionsJsonSchema() as { properties: Record<string, { description: string; default?: unknown }>; required: string[] };
  t.deepEqual(
    Object.keys(schema.properties),
    GENERATE_OPTION_NAMES.filter((n) => !['latents', 'signal', 'onStep'].includes(n)),
  );
  t.deepEqual(schema.required, ['prompt']);
  for (const [name, prop] of Object.entries(schema.properties)) {
    const def = GENERATE_OPTIONS[name as keyof typeof GENERATE_OPTIONS] as { doc: string; default?: unknown };
    t.true(prop.description.startsWith(def.doc), name);
    t.deepEqual(prop.default, def.default, name);
  }
  // A server must never take a path from a request.
  t.false(validate({ prompt: 'a', latents: '/etc/passwd' }));
  // Independent copies: editing one export does not change the next.
  (generateOptionsJsonSchema() as { properties: Record<string, { default?: unknown }> }).properties.scaleRange.default = [9, 9];
  t.deepEqual((generateOptionsJsonSchema() as { properties: Record<string, { default?: unknown }> }).properties.scaleRange.default, [1, 0.5]);
});

test('the API type refuses misspelt and mistyped options at compile time', (t) => {
  // These lines are checked by tsc when the tests build; @ts-expect-error fails the build if no error is found.
  // @ts-expect-error misspelt option
  const misspelt: GenerateOptions = { prompt: 'a', stpes: 3 };
  // @ts-expect-error unknown mode
  const badMode: GenerateOptions = { prompt: 'a', mode: 'tvbind' };
  // @ts-expect-error the prompt is required
  const noPrompt: GenerateOptions = { steps: 3 };
  const fine: GenerateOptions = { prompt: 'a', seed: 3n, scaleRange: [1, 0.5], refinement: 'paper', onStep: (e) => e.image };
  t.is([misspelt, badMode, noPrompt, fine].length, 4);
});
