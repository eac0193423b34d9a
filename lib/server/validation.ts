/**
 * Turns fastify's request errors into 400/413/415 answers that name the field. For the generate options the
 * message is the library's own (checkGenerateOptions names the field and the fix, "did you mean …?" for a
 * misspelt key), so the API, the CLI and the server say the same thing about the same mistake.
 */
import type { FastifyError } from 'fastify';
import { isDivbindError } from '../errors';
import { checkGenerateOptions } from '../index';
import { HttpError, fromDivbindError } from './http-errors';

interface SchemaError {
  keyword: string;
  instancePath: string;
  params: Record<string, unknown>;
  message?: string;
}

/** "/tokens/objects/0" → "tokens.objects[0]", with the missing or unknown property of `required`/`additionalProperties`. */
export function fieldOf(error: SchemaError): string {
  const parts = error.instancePath
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  const extra = error.params.missingProperty ?? error.params.additionalProperty;
  if (typeof extra === 'string') parts.push(extra);
  return parts.reduce((path, part) => (/^\d+$/.test(part) ? `${path}[${part}]` : path ? `${path}.${part}` : part), '');
}

/** Generate options inside a body, and the path they sit at ('' for the body itself, 'divbind.' for A1111). */
export interface EmbeddedOptions {
  options: Record<string, unknown>;
  prefix: string;
}

function describeSchemaError(error: SchemaError, field: string): string {
  switch (error.keyword) {
    case 'additionalProperties':
      return `Unknown field "${field}"`;
    case 'const':
      return `Expected ${JSON.stringify(error.params.allowedValue)} for ${field}`;
    case 'required':
      return `${field} is missing`;
    default:
      return `Invalid value for ${field}: ${error.message ?? 'not allowed'}`;
  }
}

/**
 * The first schema error as a 400. Where the body holds generate options, the library's own check runs on them
 * first: its message names the field in the API's words and adds the fix ("did you mean 'tv_bind'?").
 */
export function schemaError(
  errors: SchemaError[],
  embedded: EmbeddedOptions | null,
  fixFor: (field: string) => string | undefined = () => undefined,
): HttpError {
  const field = fieldOf(errors[0]) || 'body';
  if (embedded && field.startsWith(embedded.prefix)) {
    try {
      checkGenerateOptions(embedded.options);
    } catch (err) {
      if (isDivbindError(err)) return fromDivbindError(err, 400, `${embedded.prefix}${err.field ?? ''}` || field);
    }
  }
  return new HttpError(400, 'BAD_INPUT', describeSchemaError(errors[0], field), { field, fix: fixFor(field) });
}

/** fastify's own request errors (before validation) as answers naming what is wrong. */
export function requestError(err: FastifyError): HttpError | null {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new HttpError(413, 'PAYLOAD_TOO_LARGE', 'the request body is larger than this endpoint accepts', {
        field: 'body',
        fix: 'send fewer or smaller latents; see docs/serve.md for the limits',
      });
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new HttpError(415, 'UNSUPPORTED_MEDIA_TYPE', 'the body must be JSON', {
        field: 'content-type',
        fix: 'send Content-Type: application/json',
      });
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new HttpError(400, 'BAD_INPUT', 'the JSON body is empty', { field: 'body' });
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new HttpError(400, 'BAD_INPUT', `the body is not valid JSON: ${err.message}`, { field: 'body' });
    default:
      if (err.statusCode === 400) return new HttpError(400, 'BAD_INPUT', `malformed request: ${err.message}`, { field: 'body' });
      return null;
  }
}
