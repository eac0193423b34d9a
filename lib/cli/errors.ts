/** Maps errors to messages and exit codes for every command. */
import { isDivbindError, type DivbindErrorCode } from '../errors';
import { CliError, EXIT } from './exit-codes';

/** Exit code per DivbindError code (README "Exit codes"). */
const EXIT_FOR_CODE: Record<DivbindErrorCode, number> = {
  BAD_INPUT: EXIT.BAD_INPUT,
  OUTPUT: EXIT.BAD_INPUT,
  NUMERIC: EXIT.FAILURE,
  MODEL_MISSING: EXIT.MODEL,
  MODEL_INVALID: EXIT.MODEL,
  MODEL_UNSUPPORTED: EXIT.MODEL,
  MODEL_NOT_PREPARED: EXIT.MODEL,
  ABORTED: EXIT.INTERRUPTED,
};

const MODEL_ERRORS = new Set(['ModelError', 'ModelFolderError', 'PreparedModelError']);

export function exitCodeFor(err: unknown): number {
  if (err instanceof CliError) return err.exitCode;
  if (isDivbindError(err)) return EXIT_FOR_CODE[err.code];
  if (err instanceof Error && MODEL_ERRORS.has(err.name)) return EXIT.MODEL;
  if (err instanceof TypeError || err instanceof RangeError) return EXIT.BAD_INPUT;
  if (err instanceof Error && err.name === 'AbortError') return EXIT.INTERRUPTED;
  return EXIT.FAILURE;
}

/** Prints `error: <message>` (a stack only with DIVBIND_DEBUG=1) and exits with the mapped code. */
export function handleCliError(err: unknown): never {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`\nerror: ${message}\n`);
  if (process.env.DIVBIND_DEBUG === '1' && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  process.exit(exitCodeFor(err));
}
