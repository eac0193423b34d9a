/**
 * Object detector for Shapes-world images (64×64 RGB, tools/shapes/data.py): palette segmentation, connected
 * components, shape classification. No learning: every step is a fixed rule so the benchmark cannot be gamed by
 * the model under test.
 *
 * 1. Background colour = per-channel median of the border pixels (the scenes have a grey, lightly tinted
 *    background; objects rarely cover much of the border).
 * 2. Each pixel goes to the nearest of {background, the named colours} in RGB; a named colour is accepted only
 *    within `maxColourDistance` (generated colours drift) and when it is nearer than the background.
 * 3. 4-connected components per colour; components below `minArea` pixels are noise (the smallest rendered
 *    object, a triangle of circumradius 8.2 px, covers ≈ 87 px).
 * 4. Shape from the ratio ρ = area / (π·R²), R = largest centre-to-pixel distance + 0.5: a disc gives 1, a
 *    square 2/π ≈ 0.64, an equilateral triangle 3√3/(4π) ≈ 0.41, independent of size and rotation.
 */

export const SHAPES = ['circle', 'square', 'triangle'] as const;
export type ShapeName = (typeof SHAPES)[number];

/** The named colours of the Shapes world (tools/shapes/data.py COLOURS). */
export const PALETTE: Readonly<Record<string, readonly [number, number, number]>> = {
  red: [220, 30, 30],
  green: [30, 170, 50],
  blue: [30, 70, 230],
  yellow: [245, 225, 30],
  purple: [150, 40, 190],
  orange: [250, 140, 20],
  white: [250, 250, 250],
  black: [15, 15, 15],
};

/** Prototype ρ per shape (see the header). */
const RHO: Record<ShapeName, number> = { circle: 1, square: 2 / Math.PI, triangle: (3 * Math.sqrt(3)) / (4 * Math.PI) };

export interface DetectorOptions {
  /** Named colours; default PALETTE. */
  palette?: Readonly<Record<string, readonly [number, number, number]>>;
  /** Smallest component kept, in pixels. Default 30. */
  minArea?: number;
  /** Largest RGB distance at which a pixel still counts as a named colour. Default 110. */
  maxColourDistance?: number;
}

export interface Detection {
  colour: string;
  shape: ShapeName;
  /** Pixels in the component. */
  area: number;
  /** Centroid, pixels. */
  cx: number;
  cy: number;
  /** Bounding box, inclusive-exclusive. */
  box: [number, number, number, number];
  /** area / (π R²), the shape feature. */
  rho: number;
  /** 1 at the prototype ρ, falling to 0 halfway to the nearest other prototype: how clear the shape is. */
  shapeConfidence: number;
}

export interface ImageInput {
  rgb: Uint8Array;
  width: number;
  height: number;
}

function checkImage(img: ImageInput): void {
  if (img === null || typeof img !== 'object') throw new TypeError('Expected an image { rgb, width, height }');
  if (!(img.rgb instanceof Uint8Array)) throw new TypeError('Expected image.rgb to be a Uint8Array (RGB, 3 bytes per pixel)');
  for (const k of ['width', 'height'] as const) {
    if (!Number.isInteger(img[k]) || img[k] < 1) throw new RangeError(`Expected a positive integer image.${k} but received ${String(img[k])}`);
  }
  if (img.rgb.length !== img.width * img.height * 3) {
    throw new RangeError(`image.rgb has ${img.rgb.length} bytes but width × height × 3 = ${img.width * img.height * 3}`);
  }
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[s.length >> 1];
}

/** Background colour: per-channel median over the one-pixel border. */
export function backgroundColour(img: ImageInput): [number, number, number] {
  checkImage(img);
  const { rgb, width: w, height: h } = img;
  const ch: number[][] = [[], [], []];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (y !== 0 && y !== h - 1 && x !== 0 && x !== w - 1) continue;
      const o = (y * w + x) * 3;
      for (let c = 0; c < 3; c++) ch[c].push(rgb[o + c]);
    }
  }
  return [median(ch[0]), median(ch[1]), median(ch[2])];
}

/** Per-pixel label: −1 background, else the index into Object.keys(palette). */
export function segment(img: ImageInput, options: DetectorOptions = {}): Int16Array {
  checkImage(img);
  const palette = options.palette ?? PALETTE;
  const maxD = options.maxColourDistance ?? 110;
  if (!(maxD > 0)) throw new RangeError(`Expected maxColourDistance > 0 but received ${maxD}`);
  const cols = Object.values(palette);
  const bg = backgroundColour(img);
  const { rgb } = img;
  const n = img.width * img.height;
  const out = new Int16Array(n);
  for (let i = 0; i < n; i++) {
    const r = rgb[3 * i],
      g = rgb[3 * i + 1],
      b = rgb[3 * i + 2];
    let best = -1;
    let bestD = (r - bg[0]) ** 2 + (g - bg[1]) ** 2 + (b - bg[2]) ** 2;
    for (let k = 0; k < cols.length; k++) {
      const d = (r - cols[k][0]) ** 2 + (g - cols[k][1]) ** 2 + (b - cols[k][2]) ** 2;
      if (d < bestD && d <= maxD * maxD) {
        bestD = d;
        best = k;
      }
    }
    out[i] = best;
  }
  return out;
}

export function classifyShape(rho: number): { shape: ShapeName; confidence: number } {
  const order = [...SHAPES].sort((a, b) => Math.abs(rho - RHO[a]) - Math.abs(rho - RHO[b]));
  const best = order[0];
  const d = Math.abs(rho - RHO[best]);
  // Half the gap to the nearest other prototype: the decision boundary.
  const gap = Math.min(...SHAPES.filter((s) => s !== best).map((s) => Math.abs(RHO[s] - RHO[best]))) / 2;
  return { shape: best, confidence: Math.max(0, 1 - d / gap) };
}

/** Detects the objects of one image, largest first. */
export function detect(img: ImageInput, options: DetectorOptions = {}): Detection[] {
  const minArea = options.minArea ?? 30;
  if (!Number.isInteger(minArea) || minArea < 1) throw new RangeError(`Expected a positive integer minArea but received ${minArea}`);
  const labels = segment(img, options);
  const names = Object.keys(options.palette ?? PALETTE);
  const { width: w, height: h } = img;
  const seen = new Uint8Array(w * h);
  const stack = new Int32Array(w * h);
  const found: Detection[] = [];
  for (let start = 0; start < w * h; start++) {
    const lab = labels[start];
    if (lab < 0 || seen[start]) continue;
    // Flood fill (4-connected) collecting the component's pixels.
    const pixels: number[] = [];
    let sp = 0;
    stack[sp++] = start;
    seen[start] = 1;
    while (sp > 0) {
      const p = stack[--sp];
      pixels.push(p);
      const x = p % w,
        y = (p - x) / w;
      const nb = [x > 0 ? p - 1 : -1, x < w - 1 ? p + 1 : -1, y > 0 ? p - w : -1, y < h - 1 ? p + w : -1];
      for (const q of nb) {
        if (q >= 0 && !seen[q] && labels[q] === lab) {
          seen[q] = 1;
          stack[sp++] = q;
        }
      }
    }
    if (pixels.length < minArea) continue;
    let sx = 0,
      sy = 0,
      x0 = w,
      y0 = h,
      x1 = 0,
      y1 = 0;
    for (const p of pixels) {
      const x = p % w,
        y = (p - x) / w;
      sx += x + 0.5;
      sy += y + 0.5;
      x0 = Math.min(x0, x);
      y0 = Math.min(y0, y);
      x1 = Math.max(x1, x + 1);
      y1 = Math.max(y1, y + 1);
    }
    const cx = sx / pixels.length,
      cy = sy / pixels.length;
    let r2 = 0;
    for (const p of pixels) {
      const x = p % w,
        y = (p - x) / w;
      r2 = Math.max(r2, (x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2);
    }
    const R = Math.sqrt(r2) + 0.5;
    const rho = pixels.length / (Math.PI * R * R);
    const { shape, confidence } = classifyShape(rho);
    found.push({ colour: names[lab], shape, area: pixels.length, cx, cy, box: [x0, y0, x1, y1], rho, shapeConfidence: confidence });
  }
  return found.sort((a, b) => b.area - a.area);
}
