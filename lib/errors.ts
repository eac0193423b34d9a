/**
 * The one error type of divbind-native. Every failure that a caller can act on is a DivbindError with a code;
 * the CLI maps codes to exit codes (lib/cli/errors.ts) and a server maps them to HTTP statuses. Messages name
 * the field or file at fault and the fix.
 */

/** What went wrong, coarse enough for a caller to branch on. */
export type DivbindErrorCode =
  /** A bad option or input value (token index out of range, prompt too long, unknown option). */
  | 'BAD_INPUT'
  /** The model folder or one of its components is missing. */
  | 'MODEL_MISSING'
  /** A component exists but is corrupt, truncated, of the wrong kind, or has the wrong inputs/outputs. */
  | 'MODEL_INVALID'
  /** The model is valid but this engine cannot use it (fp16 UNet, fused attention, no cross-attention). */
  | 'MODEL_UNSUPPORTED'
  /** The UNet has no (or a stale, incomplete or edited) prepared graph set: run `divbind-native prepare`. */
  | 'MODEL_NOT_PREPARED'
  /** An output location cannot be written (not a directory, no permission, would overwrite). */
  | 'OUTPUT'
  /** The numbers went bad during generation (non-finite latents or image). */
  | 'NUMERIC'
  /** The caller's AbortSignal fired. */
  | 'ABORTED';

export interface DivbindErrorDetails {
  /** The option, input or file at fault (e.g. 'steps', 'tokens.objects', 'unet/model.onnx'). */
  field?: string;
  /** What to do about it, e.g. 'run `divbind-native prepare <dir> --force`'. */
  fix?: string;
  cause?: unknown;
}

export class DivbindError extends Error {
  readonly code: DivbindErrorCode;
  readonly field?: string;
  readonly fix?: string;

  constructor(code: DivbindErrorCode, message: string, details: DivbindErrorDetails = {}) {
    super(details.fix ? `${message}: ${details.fix}` : message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'DivbindError';
    this.code = code;
    if (details.field !== undefined) this.field = details.field;
    if (details.fix !== undefined) this.fix = details.fix;
  }
}

export function isDivbindError(err: unknown, code?: DivbindErrorCode): err is DivbindError {
  return err instanceof DivbindError && (code === undefined || err.code === code);
}
