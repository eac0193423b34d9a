/**
 * Maps errors to messages and exit codes for every command. A DivbindError maps by its code (never by a name
 * string); TypeError/RangeError still mean a bad value from code that has not moved to DivbindError yet.
 */
import { DivbindError, type DivbindErrorCode } from '../errors';
import { CliError, EXIT } from './exit-codes';

/** Exit code per DivbindError code. Exhaustive: a new code does not compile until it is mapped here. */
export const EXIT_FOR_CODE: Readonly<Record<DivbindErrorCode, number>> = {
  BAD_INPUT: EXIT.BAD_INPUT,
  OUTPUT: EXIT.BAD_INPUT,
  MODEL_MISSING: EXIT.MODEL,
  MODEL_INVALID: EXIT.MODEL,
  MODEL_UNSUPPORTED: EXIT.MODEL,
  MODEL_NOT_PREPARED: EXIT.MODEL,
  // Non-finite numbers in a run that passed every input check: not something the user can fix by a flag.
  NUMERIC: EXIT.FAILURE,
  ABORTED: EXIT.INTERRUPTED,
};

export function exitCodeFor(err: unknown): number {
  if (err instanceof DivbindError) return EXIT_FOR_CODE[err.code];
  if (err instanceof CliError) return err.exitCode;
  if (err instanceof TypeError || err instanceof RangeError) return EXIT.BAD_INPUT;
  if (err instanceof Error && err.name === 'AbortError') return EXIT.INTERRUPTED;
  return EXIT.FAILURE;
}

/** `error: <message>` (a stack only with DIVBIND_DEBUG=1). */
export function printCliError(err: unknown): void {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`\nerror: ${message}\n`);
  if (process.env.DIVBIND_DEBUG === '1' && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
}

/** Prints the error and exits with the mapped code. */
export function handleCliError(err: unknown): never {
  printCliError(err);
  process.exit(exitCodeFor(err));
}
