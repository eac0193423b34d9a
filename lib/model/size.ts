/**
 * Which image sizes a UNet export can run, one rule for `prepare` and the pipeline: a dim the export fixes allows
 * only that size; a dynamic dim allows multiples of the VAE factor (the UNet's own downsampling may ask for more,
 * which shape inference reports). Missing sizes default to the fixed dim, else the other given dim, else the
 * folder's default latent side (its family's: lib/model/family.ts; SD 1.x: 64 latent pixels).
 */
import { DivbindError } from '../errors';

export interface ImageSize {
  height: number;
  width: number;
}

/** Latent side used when neither the caller nor the export fixes it (SD 1.x: 64 → 512 px). */
export const DEFAULT_LATENT_SIDE = 64;
/** Largest image side accepted (pixels). */
export const MAX_IMAGE_SIDE = 8192;

export interface SizeRule {
  /** Image pixels per latent pixel. */
  factor: number;
  /** Latent height and width fixed by the export; null when dynamic. */
  fixedLatent: { h: number | null; w: number | null };
  /** The UNet file, for messages. */
  unet: string;
  /** Latent side of a dynamic dim when no size is asked for (the model family's default). */
  defaultLatent: number;
}

/** 'W×H', the order of every size in messages. */
export function formatSize(s: ImageSize): string {
  return `${s.width}×${s.height}`;
}

/** The rule for a UNet whose sample input has `sampleDims` ([B, C, h, w]; strings/null = dynamic). */
export function sizeRule(
  sampleDims: ReadonlyArray<number | string | null | undefined>,
  factor: number,
  unet = 'unet/model.onnx',
  defaultLatent = DEFAULT_LATENT_SIDE,
): SizeRule {
  const fixed = (d: unknown) => (typeof d === 'number' && d > 0 ? d : null);
  return { factor, fixedLatent: { h: fixed(sampleDims[2]), w: fixed(sampleDims[3]) }, unet, defaultLatent };
}

/** The size used when none is asked for. */
export function defaultImageSize(rule: SizeRule): ImageSize {
  return resolveImageSize(rule);
}

function checkSide(v: unknown, field: 'height' | 'width', factor: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < factor || v > MAX_IMAGE_SIDE || v % factor !== 0) {
    throw new DivbindError(
      'BAD_INPUT',
      `Expected a multiple of ${factor} between ${factor} and ${MAX_IMAGE_SIDE} for ${field} ` +
        `but received ${JSON.stringify(v)} (${factor} is the VAE's scale factor)`,
      { field },
    );
  }
  return v;
}

/**
 * The image size for a request: checked against the VAE factor and against the dims the export fixes. A size a
 * fixed export cannot run is BAD_INPUT naming the size that works (preparing another size could not help).
 */
export function resolveImageSize(rule: SizeRule, height?: number, width?: number): ImageSize {
  const f = rule.factor;
  if (height !== undefined) checkSide(height, 'height', f);
  if (width !== undefined) checkSide(width, 'width', f);
  const fixedH = rule.fixedLatent.h === null ? null : rule.fixedLatent.h * f;
  const fixedW = rule.fixedLatent.w === null ? null : rule.fixedLatent.w * f;
  const size = {
    height: height ?? fixedH ?? width ?? rule.defaultLatent * f,
    width: width ?? fixedW ?? height ?? rule.defaultLatent * f,
  };
  if ((fixedH !== null && size.height !== fixedH) || (fixedW !== null && size.width !== fixedW)) {
    const works =
      fixedH !== null && fixedW !== null
        ? `only ${fixedW}×${fixedH}`
        : fixedH !== null
          ? `only height ${fixedH} (any width that is a multiple of ${f})`
          : `only width ${fixedW} (any height that is a multiple of ${f})`;
    throw new DivbindError('BAD_INPUT', `${rule.unet} is exported for ${works}; ${formatSize(size)} was requested`, {
      field: fixedH !== null && size.height !== fixedH ? 'height' : 'width',
      fix: `pass ${fixedH !== null ? `height ${fixedH}` : ''}${fixedH !== null && fixedW !== null ? ' and ' : ''}${fixedW !== null ? `width ${fixedW}` : ''} or leave them out (other sizes need a UNet exported with dynamic height/width)`,
    });
  }
  return size;
}

/** Latent dims [h, w] of an image size. */
export function latentSize(size: ImageSize, factor: number): [number, number] {
  return [size.height / factor, size.width / factor];
}
