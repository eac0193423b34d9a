/** Exit codes of the divbind-native CLI (documented in the README). */
export const EXIT = {
  OK: 0,
  /** Unexpected failure (a bug, or an error from onnxruntime). */
  FAILURE: 1,
  /** Bad command line: unknown option, missing argument. */
  USAGE: 2,
  /** Bad input values: token index out of range, prompt too long, invalid option value, unwritable output. */
  BAD_INPUT: 3,
  /** Model missing, corrupt, unsupported or not prepared (DivbindError MODEL_*; see errors.ts). */
  MODEL: 4,
  /** Interrupted by SIGINT/SIGTERM. */
  INTERRUPTED: 130,
} as const;

/** An error that the CLI reports without a stack, with a chosen exit code (prefer DivbindError with a code). */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
    this.name = 'CliError';
  }
}
