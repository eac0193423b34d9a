/**
 * HTTP errors of the server. Every error answer has one shape, `{ error: { code, message, field?, fix? } }`;
 * library failures keep their DivbindError code and field. HttpError is the transport's own error (401, 404, 413,
 * 429, 503), not a library error.
 */
import { type DivbindError, isDivbindError, type DivbindErrorCode } from '../errors';

export type HttpErrorCode =
  | DivbindErrorCode
  | 'UNAUTHORIZED'
  | 'NOT_FOUND'
  | 'CONFLICT'
  | 'PAYLOAD_TOO_LARGE'
  | 'UNSUPPORTED_MEDIA_TYPE'
  | 'QUEUE_FULL'
  | 'RATE_LIMITED'
  | 'UNAVAILABLE'
  | 'INTERNAL';

export interface ErrorBody {
  error: { code: HttpErrorCode; message: string; field?: string; fix?: string };
}

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: HttpErrorCode,
    message: string,
    readonly details: { field?: string; fix?: string; headers?: Record<string, string> } = {},
  ) {
    super(message);
    this.name = 'HttpError';
  }

  body(): ErrorBody {
    const { field, fix } = this.details;
    return { error: { code: this.code, message: this.message, ...(field ? { field } : {}), ...(fix ? { fix } : {}) } };
  }
}

/**
 * The status of a library error found while checking a request: the caller's mistake (400), or a request this
 * model cannot serve as configured (422: not prepared for that size, unsupported); a broken model folder is the
 * server's problem (503).
 */
export function statusOfCode(code: DivbindErrorCode): number {
  switch (code) {
    case 'BAD_INPUT':
      return 400;
    case 'MODEL_NOT_PREPARED':
    case 'MODEL_UNSUPPORTED':
      return 422;
    case 'MODEL_MISSING':
    case 'MODEL_INVALID':
      return 503;
    default:
      return 500;
  }
}

/** A DivbindError's message without the fix its constructor appended (the answer carries the fix apart). */
export function ownMessage(err: DivbindError): string {
  return err.fix && err.message.endsWith(`: ${err.fix}`) ? err.message.slice(0, -(err.fix.length + 2)) : err.message;
}

/** A library error as an answer with `status`, keeping code, field and fix. */
export function fromDivbindError(err: DivbindError, status = statusOfCode(err.code), field = err.field): HttpError {
  return new HttpError(status, err.code, ownMessage(err), { field, fix: err.fix });
}

/** A thrown value as an HttpError (library errors keep code, field and fix). */
export function toHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  if (isDivbindError(err)) return fromDivbindError(err);
  return new HttpError(500, 'INTERNAL', 'internal error');
}

export function notFound(what: string, field?: string): HttpError {
  return new HttpError(404, 'NOT_FOUND', `${what} not found`, { field });
}
