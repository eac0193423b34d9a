/**
 * API key check (serve --api-key, or DIVBIND_API_KEY): every route but the probes (/healthz, /readyz) needs
 * `Authorization: Bearer <key>`, `X-API-Key: <key>` or HTTP Basic with the key as password (what A1111 clients
 * send with --api-auth). Runs before the body is read, so an unauthorised request costs no parsing and never
 * reaches the queue.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { HttpError } from './http-errors';

/** Routes that answer without a key: orchestrators probe them unauthenticated. */
export const OPEN_PATHS: readonly string[] = ['/healthz', '/readyz'];

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

/** The key a request presents, if any. */
export function presentedKey(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  if (typeof header === 'string') {
    const [scheme, value = ''] = header.split(/\s+/, 2);
    if (/^bearer$/i.test(scheme)) return value;
    if (/^basic$/i.test(scheme)) {
      const decoded = Buffer.from(value, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      return colon >= 0 ? decoded.slice(colon + 1) : undefined;
    }
  }
  const apiKey = request.headers['x-api-key'];
  return typeof apiKey === 'string' ? apiKey : undefined;
}

/** An onRequest hook that refuses requests without the key (401); constant-time comparison. */
export function requireApiKey(key: string): (request: FastifyRequest) => Promise<void> {
  const expected = digest(key);
  return async (request) => {
    const path = request.url.split('?', 1)[0];
    if (OPEN_PATHS.includes(path)) return;
    const given = presentedKey(request);
    if (given === undefined || !timingSafeEqual(digest(given), expected)) {
      throw new HttpError(401, 'UNAUTHORIZED', given === undefined ? 'an API key is required' : 'the API key is wrong', {
        fix: 'send Authorization: Bearer <key> (or X-API-Key: <key>)',
        headers: { 'www-authenticate': 'Bearer realm="divbind-native"' },
      });
    }
  };
}
