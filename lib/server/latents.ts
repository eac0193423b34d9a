/**
 * Uploaded initial latents: a base64 .npy in the request body (`latents`), never a path. Checked and size-limited
 * at submission; the plan then checks the shape against the model.
 */
import { DivbindError } from '../errors';
import { parseNpy } from '../util/npy';

/** Largest .npy accepted: 8 MiB, e.g. 32 images of 512×512 (4×64×64 float32 each) with room to spare. */
export const MAX_LATENT_BYTES = 8 * 1024 * 1024;

/** JSON Schema of the `latents` field: base64 text of at most MAX_LATENT_BYTES. */
export const LATENTS_SCHEMA = {
  type: 'string',
  minLength: 1,
  maxLength: Math.ceil(MAX_LATENT_BYTES / 3) * 4,
  pattern: '^[A-Za-z0-9+/]+={0,2}$',
  description: `initial latents [images, 4, height/f, width/f] as a base64 .npy (float32 or float64, C order), at most ${MAX_LATENT_BYTES} bytes; replaces the seed`,
} as const;

function refused(message: string, fix?: string): DivbindError {
  return new DivbindError('BAD_INPUT', message, { field: 'latents', fix });
}

/** The latents of a base64 .npy, checked: 4-D float, `images` first, finite. */
export function decodeLatents(base64: string, images: number): Float32Array {
  const bytes = Buffer.from(base64, 'base64');
  if (bytes.length > MAX_LATENT_BYTES) throw refused(`latents are ${bytes.length} bytes, more than the ${MAX_LATENT_BYTES} accepted`);
  let array: ReturnType<typeof parseNpy>;
  try {
    array = parseNpy(bytes, 'latents');
  } catch (err) {
    throw refused((err as Error).message, 'send a base64 .npy of float32 values, shape [images, 4, height/f, width/f]');
  }
  const { shape, dtype, data } = array;
  if (shape.length !== 4 || !shape.every((d) => Number.isSafeInteger(d) && d > 0)) {
    throw refused(`Expected a 4-D shape [images, channels, height/f, width/f] for latents but received (${shape.join(', ')})`);
  }
  if (shape[0] !== images) {
    throw refused(`latents hold ${shape[0]} image(s) but imagesPerPrompt is ${images}`, 'make the first dimension imagesPerPrompt');
  }
  if (dtype !== 'float32' && dtype !== 'float64') throw refused(`Expected float32 or float64 latents but received ${dtype}`);
  const values = data instanceof Float32Array ? data : Float32Array.from(data as Float64Array);
  const bad = values.findIndex((v) => !Number.isFinite(v));
  if (bad >= 0) throw refused(`latents hold a non-finite value (${values[bad]}) at flat index ${bad}`);
  return values;
}
