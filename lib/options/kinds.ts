/**
 * Value kinds of the generate options. A kind checks a value given to the API, parses a command-line string
 * strictly, and states itself as JSON Schema, so the three cannot disagree. Every refusal is a DivbindError
 * 'BAD_INPUT' that names the field: "Expected <what> for <field> but received <value>[: <fix>]".
 */
import { DivbindError } from '../errors';
import { describeValue, suggestName } from '../loss/validate';

/** A JSON Schema (draft-07 keywords only, which fastify's ajv understands). */
export type JsonSchema = { [keyword: string]: unknown };

export interface Kind<In, Out = In> {
  /** What is allowed, in words: "an integer between 1 and 1000". */
  readonly expected: string;
  /** Checks a value given to the API; returns it normalised. */
  check(value: unknown, field: string): Out;
  /** Parses one command-line string strictly: no "", "0x3", "1e3" or "3,,7" where an integer is expected. */
  parse?(text: string, field: string): Out;
  /** JSON Schema of the value; absent for values JSON cannot carry (functions, typed arrays, file paths). */
  readonly schema?: JsonSchema;
  /** Type-level only: what callers may pass (Out is what they get back). */
  readonly accepts?: In;
}

export function badInput(field: string, expected: string, value: unknown, fix?: string): DivbindError {
  return new DivbindError('BAD_INPUT', `Expected ${expected} for ${field} but received ${describeValue(value)}`, { field, fix });
}

const INTEGER_TEXT = /^[+-]?\d+$/;
const DECIMAL_TEXT = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;

export function integer(min: number, max: number, fix?: string): Kind<number> {
  const expected = `an integer between ${min} and ${max}`;
  const check = (value: unknown, field: string): number => {
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) throw badInput(field, expected, value, fix);
    return value;
  };
  return {
    expected,
    check,
    parse: (text, field) => check(INTEGER_TEXT.test(text.trim()) ? Number(text) : text, field),
    schema: { type: 'integer', minimum: min, maximum: max },
  };
}

export function number(min: number, max: number, fix?: string): Kind<number> {
  const expected = `a number between ${min} and ${max}`;
  const check = (value: unknown, field: string): number => {
    if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) throw badInput(field, expected, value, fix);
    return value;
  };
  return {
    expected,
    check,
    parse: (text, field) => check(DECIMAL_TEXT.test(text.trim()) ? Number(text) : text, field),
    schema: { type: 'number', minimum: min, maximum: max },
  };
}

export function oneOf<T extends string>(values: readonly T[]): Kind<T> {
  const expected = `one of ${values.map((v) => `'${v}'`).join(', ')}`;
  const check = (value: unknown, field: string): T => {
    if (typeof value === 'string' && (values as readonly string[]).includes(value)) return value as T;
    const guess = typeof value === 'string' ? suggestName(value, values) : undefined;
    throw badInput(field, expected, value, guess ? `did you mean '${guess}'?` : undefined);
  };
  return { expected, check, parse: check, schema: { type: 'string', enum: [...values] } };
}

export function text(maxLength: number, fix?: string): Kind<string> {
  const expected = `a string of at most ${maxLength} characters`;
  const check = (value: unknown, field: string): string => {
    if (typeof value !== 'string' || value.length > maxLength) throw badInput(field, expected, value, fix);
    return value;
  };
  return { expected, check, parse: check, schema: { type: 'string', maxLength } };
}

/** torch.manual_seed's range; JSON carries seeds past 2^53 as decimal strings. */
const SEED_MIN = -(2n ** 63n);
const SEED_MAX = 2n ** 64n - 1n;

export function seed(): Kind<number | bigint | string, bigint> {
  const expected = 'an integer between -2^63 and 2^64 - 1 (a number, a bigint or a decimal string)';
  const check = (value: unknown, field: string): bigint => {
    let s: bigint | undefined;
    if (typeof value === 'bigint') s = value;
    else if (typeof value === 'number' && Number.isSafeInteger(value)) s = BigInt(value);
    else if (typeof value === 'string' && /^[+-]?\d{1,20}$/.test(value)) s = BigInt(value);
    if (s === undefined || s < SEED_MIN || s > SEED_MAX) {
      throw badInput(
        field,
        expected,
        value,
        typeof value === 'number' && Number.isInteger(value) ? 'pass seeds beyond 2^53 as a bigint or a string' : undefined,
      );
    }
    return s;
  };
  return {
    expected,
    check,
    parse: (t, field) => check(t.trim(), field),
    schema: {
      anyOf: [
        { type: 'integer', minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER },
        { type: 'string', pattern: '^[+-]?[0-9]{1,20}$' },
      ],
    },
  };
}

/** A list of items; on the command line comma-separated, with no empty entries. */
export function list<T>(item: Kind<T>, minItems: number, maxItems: number): Kind<T[]> {
  const expected = `an array of ${minItems} to ${maxItems} items, each ${item.expected}`;
  const check = (value: unknown, field: string): T[] => {
    if (!Array.isArray(value) || value.length < minItems || value.length > maxItems) throw badInput(field, expected, value);
    return value.map((v, i) => item.check(v, `${field}[${i}]`));
  };
  const parse = (t: string, field: string): T[] => {
    const parts = t.split(',').map((s) => s.trim());
    const empty = parts.indexOf('');
    if (empty >= 0) throw badInput(field, `a comma-separated list, each ${item.expected}`, t, `entry ${empty + 1} is empty`);
    if (!item.parse) throw new Error(`list: the item kind of ${field} cannot be parsed from text`);
    return check(
      parts.map((p, i) => item.parse!(p, `${field}[${i}]`)),
      field,
    );
  };
  return { expected, check, parse, schema: { type: 'array', items: item.schema, minItems, maxItems } };
}

/** Two numbers: [start, end]. */
export function pair(item: Kind<number>): Kind<[number, number]> {
  const inner = list(item, 2, 2);
  return { ...inner, expected: `[start, end], each ${item.expected}` } as Kind<[number, number]>;
}

/**
 * Refinement thresholds {loop index: θ threshold}. JSON object keys are strings, so keys are decimal integers;
 * on the command line the same object as JSON text.
 */
export function thresholdMap(maxIndex: number, value: Kind<number>): Kind<Record<number, number>> {
  const expected = `an object {loop index (0 to ${maxIndex}): threshold (${value.expected})}, e.g. {"0": 0.05, "10": 0.2}`;
  const check = (raw: unknown, field: string): Record<number, number> => {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw badInput(field, expected, raw, '{} turns refinement off');
    const out: Record<number, number> = {};
    for (const [key, v] of Object.entries(raw)) {
      if (!/^\d+$/.test(key) || Number(key) > maxIndex) throw badInput(`${field} key`, `a loop index between 0 and ${maxIndex}`, key);
      out[Number(key)] = value.check(v, `${field}[${key}]`);
    }
    return out;
  };
  const parse = (t: string, field: string): Record<number, number> => {
    let parsed: unknown;
    try {
      parsed = JSON.parse(t);
    } catch {
      throw badInput(field, `JSON text for ${expected}`, t);
    }
    return check(parsed, field);
  };
  return {
    expected,
    check,
    parse,
    schema: { type: 'object', propertyNames: { pattern: '^[0-9]+$' }, additionalProperties: value.schema },
  };
}

/** A value JSON and the command line cannot carry (AbortSignal, callbacks): API only. */
export function apiOnly<T>(expected: string, test: (value: unknown) => boolean): Kind<T> {
  return {
    expected,
    check: (value, field) => {
      if (!test(value)) throw badInput(field, expected, value);
      return value as T;
    },
  };
}

/** Known keys only: a misspelt key is refused with the closest known name. */
export function checkKeys(obj: object, known: readonly string[], where: string, fieldPrefix = ''): void {
  for (const key of Object.keys(obj)) {
    if (known.includes(key)) continue;
    const guess = suggestName(key, known);
    throw new DivbindError('BAD_INPUT', `Unknown option "${key}" in ${where}`, {
      field: `${fieldPrefix}${key}`,
      fix: guess ? `did you mean ${guess}?` : `known options: ${known.join(', ')}`,
    });
  }
}

export function plainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !ArrayBuffer.isView(value);
}

/** A file path on the command line; the API may pass other values through `check` (see latents). */
export function withParse<In, Out>(kind: Kind<In, Out>, parse: (text: string, field: string) => Out): Kind<In, Out> {
  return { ...kind, parse };
}
