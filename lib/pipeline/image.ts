/**
 * Image output: the VAE decoder's tensor → 8-bit RGB (as diffusers' numpy_to_pil), PNG encoding with tEXt/iTXt
 * metadata (the generation parameters), and attention heat-map grids for the chosen tokens.
 */
import { PNG } from 'pngjs';

export interface RgbImage {
  /** Interleaved RGB, row-major, width·height·3 bytes. */
  rgb: Uint8Array;
  width: number;
  height: number;
}

// ----------------------------------------------------------------------------------------------- decoder

const f32 = Math.fround;

/** numpy's round-half-to-even for the x·255 step of numpy_to_pil. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * VAE decoder output (float32 [batch, 3, H, W], values ≈ [-1, 1]) → interleaved RGB bytes (H·W·3): x/2 + 0.5 clamped
 * to [0, 1], then (x·255).round() in float32 like diffusers (`(image / 2 + 0.5).clamp(0, 1)` and numpy_to_pil).
 * Call as (data, [batch, 3, H, W], index?) or (data, height, width) for a single image.
 */
export function imageFromDecoderOutput(data: Float32Array, shape: readonly number[], index?: number): Uint8Array;
export function imageFromDecoderOutput(data: Float32Array, height: number, width: number): Uint8Array;
export function imageFromDecoderOutput(data: Float32Array, shapeOrHeight: readonly number[] | number, indexOrWidth?: number): Uint8Array {
  if (!(data instanceof Float32Array)) throw new TypeError(`imageFromDecoderOutput: Expected a Float32Array for data but received ${describe(data)}`);
  let shape: readonly number[];
  let index = 0;
  if (typeof shapeOrHeight === 'number') {
    if (typeof indexOrWidth !== 'number')
      throw new TypeError('imageFromDecoderOutput: Expected (data, height, width) or (data, [batch, 3, height, width], index?)');
    shape = [1, 3, shapeOrHeight, indexOrWidth];
  } else {
    shape = shapeOrHeight;
    index = indexOrWidth ?? 0;
  }
  if (!Array.isArray(shape) || shape.length !== 4 || shape[1] !== 3 || !shape.every((d) => Number.isInteger(d) && d > 0)) {
    throw new RangeError(`imageFromDecoderOutput: Expected shape [batch, 3, height, width] but received [${String(shape)}]`);
  }
  const [batch, , height, width] = shape;
  if (data.length !== batch * 3 * height * width) {
    throw new RangeError(`imageFromDecoderOutput: shape [${shape.join(', ')}] needs ${batch * 3 * height * width} values but data has ${data.length}`);
  }
  if (!Number.isInteger(index) || index < 0 || index >= batch)
    throw new RangeError(`imageFromDecoderOutput: Expected index in [0, ${batch - 1}] but received ${index}`);
  const plane = height * width;
  const base = index * 3 * plane;
  const rgb = new Uint8Array(plane * 3);
  for (let c = 0; c < 3; c++) {
    for (let p = 0; p < plane; p++) {
      let v = f32(f32(data[base + c * plane + p] / 2) + 0.5);
      // NaN (a diverged run) becomes 0, as numpy's uint8 cast gives on x86; keep it explicit.
      v = Number.isNaN(v) ? 0 : Math.min(1, Math.max(0, v));
      rgb[p * 3 + c] = roundHalfEven(f32(v * 255));
    }
  }
  return rgb;
}

// ------------------------------------------------------------------------------------------------- PNG

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (ISO 3309, as PNG uses) over the given bytes. */
export function crc32(...parts: Uint8Array[]): number {
  let c = 0xffffffff;
  for (const p of parts) for (let i = 0; i < p.length; i++) c = CRC_TABLE[(c ^ p[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(head.subarray(4, 8), data), 0);
  return Buffer.concat([head, data, crc]);
}

/** A tEXt chunk for Latin-1 text, else an uncompressed iTXt chunk (UTF-8). */
function textChunk(keyword: string, text: string): Buffer {
  // PNG keywords: 1–79 printable Latin-1 characters, no leading/trailing/double spaces.
  if (!/^[\x20-\x7e\xa1-\xff]{1,79}$/.test(keyword) || /^ | $| {2}/.test(keyword)) {
    throw new RangeError(
      `encodePng: text key ${JSON.stringify(keyword)} is not a PNG keyword (1-79 printable Latin-1 characters, no leading, trailing or double spaces)`,
    );
  }
  if (typeof text !== 'string') throw new TypeError(`encodePng: Expected a string for textChunks[${JSON.stringify(keyword)}] but received ${typeof text}`);
  // biome-ignore lint/suspicious/noControlCharactersInRegex: PNG tEXt allows newline (0x0a) and printable Latin-1 only.
  if (/^[\x0a\x20-\x7e\xa0-\xff]*$/.test(text)) {
    return chunk('tEXt', Buffer.concat([Buffer.from(keyword, 'latin1'), Buffer.from([0]), Buffer.from(text, 'latin1')]));
  }
  // iTXt: keyword \0 compression-flag(0) method(0) language-tag \0 translated-keyword \0 text(UTF-8)
  return chunk('iTXt', Buffer.concat([Buffer.from(keyword, 'latin1'), Buffer.from([0, 0, 0, 0, 0]), Buffer.from(text, 'utf8')]));
}

function checkImage(rgb: unknown, width: unknown, height: unknown, who: string): void {
  if (!(rgb instanceof Uint8Array)) throw new TypeError(`${who}: Expected a Uint8Array of RGB bytes but received ${describe(rgb)}`);
  if (typeof width !== 'number' || !Number.isInteger(width) || width < 1 || width > 65535)
    throw new RangeError(`${who}: Expected an integer between 1 and 65535 for width but received ${String(width)}`);
  if (typeof height !== 'number' || !Number.isInteger(height) || height < 1 || height > 65535)
    throw new RangeError(`${who}: Expected an integer between 1 and 65535 for height but received ${String(height)}`);
  if (rgb.length !== width * height * 3) throw new RangeError(`${who}: ${width}×${height} RGB needs ${width * height * 3} bytes but rgb has ${rgb.length}`);
}

/**
 * Encodes 8-bit RGB as PNG (colour type 2) and inserts one text chunk per entry of `textChunks` right after IHDR
 * (so readers that stop early still see them). Latin-1 values become tEXt, others iTXt.
 */
export function encodePng(rgb: Uint8Array, width: number, height: number, textChunks: Record<string, string> = {}): Buffer {
  checkImage(rgb, width, height, 'encodePng');
  const png = new PNG({ width, height, colorType: 2, inputColorType: 2, inputHasAlpha: false, bitDepth: 8 });
  png.data = Buffer.from(rgb.buffer, rgb.byteOffset, rgb.byteLength);
  const raw = PNG.sync.write(png, { colorType: 2, inputColorType: 2, inputHasAlpha: false, bitDepth: 8 });
  const texts = Object.entries(textChunks ?? {}).map(([k, v]) => textChunk(k, v));
  if (texts.length === 0) return raw;
  // Signature (8 bytes) + IHDR (4 length + 4 type + 13 data + 4 CRC).
  const ihdrEnd = 8 + 25;
  if (raw.toString('latin1', 12, 16) !== 'IHDR') throw new Error('encodePng: pngjs produced no IHDR chunk first');
  return Buffer.concat([raw.subarray(0, ihdrEnd), ...texts, raw.subarray(ihdrEnd)]);
}

/** Reads the tEXt/iTXt chunks of a PNG (checking their CRCs). */
export function readPngText(png: Buffer): Record<string, string> {
  if (png.length < 8 || png.readUInt32BE(0) !== 0x89504e47) throw new RangeError('readPngText: not a PNG file');
  const out: Record<string, string> = {};
  for (let off = 8; off + 12 <= png.length; ) {
    const len = png.readUInt32BE(off);
    const type = png.toString('latin1', off + 4, off + 8);
    const data = png.subarray(off + 8, off + 8 + len);
    const crc = png.readUInt32BE(off + 8 + len);
    if (crc !== crc32(png.subarray(off + 4, off + 8), data)) throw new RangeError(`readPngText: bad CRC in ${type} chunk at byte ${off}`);
    if (type === 'tEXt') {
      const z = data.indexOf(0);
      out[data.toString('latin1', 0, z)] = data.toString('latin1', z + 1);
    } else if (type === 'iTXt') {
      const z = data.indexOf(0);
      const key = data.toString('latin1', 0, z);
      if (data[z + 1] === 0) {
        const lang = data.indexOf(0, z + 3);
        const trans = data.indexOf(0, lang + 1);
        out[key] = data.toString('utf8', trans + 1);
      }
    }
    if (type === 'IEND') break;
    off += 12 + len;
  }
  return out;
}

// ---------------------------------------------------------------------------------------- attention grid

/** The classic "jet" colour map: blue → cyan → yellow → red, v in [0, 1]. Returns 0–255 floats. */
export function jet(v: number): [number, number, number] {
  const c = (x: number) => 255 * Math.min(1, Math.max(0, x));
  return [c(1.5 - Math.abs(4 * v - 3)), c(1.5 - Math.abs(4 * v - 2)), c(1.5 - Math.abs(4 * v - 1))];
}

/** Bilinear resize of an r×r map to h×w with half-pixel centres (torch interpolate, align_corners=False). */
export function upsampleBilinear(map: Float32Array, rows: number, cols: number, height: number, width: number): Float32Array {
  const out = new Float32Array(height * width);
  const sy = rows / height;
  const sx = cols / width;
  for (let y = 0; y < height; y++) {
    const fy = Math.max(0, (y + 0.5) * sy - 0.5);
    const y0 = Math.min(Math.floor(fy), rows - 1);
    const y1 = Math.min(y0 + 1, rows - 1);
    const wy = fy - y0;
    for (let x = 0; x < width; x++) {
      const fx = Math.max(0, (x + 0.5) * sx - 0.5);
      const x0 = Math.min(Math.floor(fx), cols - 1);
      const x1 = Math.min(x0 + 1, cols - 1);
      const wx = fx - x0;
      const top = map[y0 * cols + x0] * (1 - wx) + map[y0 * cols + x1] * wx;
      const bottom = map[y1 * cols + x0] * (1 - wx) + map[y1 * cols + x1] * wx;
      out[y * width + x] = top * (1 - wy) + bottom * wy;
    }
  }
  return out;
}

export interface AttentionGridOptions {
  /** Heat-map opacity in [0, 1]; default 0.5. */
  alpha?: number;
  /** 'max': divide by the map's maximum (as A&E's visualisation); 'minmax': stretch min..max to 0..1. Default 'max'. */
  normalize?: 'max' | 'minmax';
  /** Tiles per row; default all in one row. */
  columns?: number;
  /** Put the plain image first; default true. */
  includeImage?: boolean;
  /** Height of the label bar above each tile (0 = none); default 12 when labels are given. */
  titleBarHeight?: number;
  /** Space between tiles, in pixels; default 4. */
  gap?: number;
  /** PNG text chunks to embed. */
  textChunks?: Record<string, string>;
}

/** Layout numbers, exported so tests and callers can find tiles in the PNG. */
export interface GridLayout {
  width: number;
  height: number;
  tileWidth: number;
  tileHeight: number;
  bar: number;
  gap: number;
  columns: number;
  /** Top-left corner of each tile's image area (after its title bar). */
  origins: Array<{ x: number; y: number }>;
}

export function gridLayout(tiles: number, tileWidth: number, tileHeight: number, bar: number, gap: number, columns: number): GridLayout {
  const cols = Math.min(columns, tiles);
  const rows = Math.ceil(tiles / cols);
  const width = cols * tileWidth + (cols + 1) * gap;
  const height = rows * (tileHeight + bar) + (rows + 1) * gap;
  const origins = Array.from({ length: tiles }, (_, i) => ({
    x: gap + (i % cols) * (tileWidth + gap),
    y: gap + Math.floor(i / cols) * (tileHeight + bar + gap) + bar,
  }));
  return { width, height, tileWidth, tileHeight, bar, gap, columns: cols, origins };
}

const BACKGROUND = [32, 32, 32];
const BAR = [48, 48, 48];
const INK = [240, 240, 240];

/** The two call forms of attentionGrid, checked and brought to one. */
function gridArguments(args: unknown[]): { image: RgbImage; maps: Float32Array[]; side: number; labels: string[]; opts: AttentionGridOptions } {
  let image: RgbImage;
  let mapsIn: unknown;
  let labels: string[];
  let opts: AttentionGridOptions;
  let resolution: number | undefined;
  if (args[0] instanceof Uint8Array) {
    image = { rgb: args[0], width: args[1] as number, height: args[2] as number };
    mapsIn = args[3];
    resolution = args[4] as number;
    labels = (args[5] as string[] | undefined) ?? [];
    opts = (args[6] as AttentionGridOptions | undefined) ?? {};
    if (typeof resolution !== 'number' || !Number.isInteger(resolution) || resolution < 1) {
      throw new RangeError(`attentionGrid: Expected a positive integer for resolution but received ${String(resolution)}`);
    }
  } else {
    image = args[0] as RgbImage;
    mapsIn = args[1];
    labels = (args[2] as string[] | undefined) ?? [];
    opts = (args[3] as AttentionGridOptions | undefined) ?? {};
  }
  if (image === null || typeof image !== 'object') throw new TypeError('attentionGrid: Expected an image { rgb, width, height }');
  checkImage(image.rgb, image.width, image.height, 'attentionGrid');
  const maps = splitMaps(mapsIn, resolution);
  const side = Math.round(Math.sqrt(maps[0].length));
  maps.forEach((m, i) => {
    if (!(m instanceof Float32Array)) throw new TypeError(`attentionGrid: Expected a Float32Array for maps[${i}] but received ${describe(m)}`);
    if (m.length !== side * side || side === 0)
      throw new RangeError(`attentionGrid: maps[${i}] has ${m.length} values; every map must be square r×r with the same r (maps[0] is ${side}×${side})`);
  });
  if (!Array.isArray(labels) || labels.some((l) => typeof l !== 'string')) throw new TypeError('attentionGrid: Expected an array of strings for labels');
  if (labels.length > 0 && labels.length !== maps.length)
    throw new RangeError(`attentionGrid: labels has ${labels.length} entries but maps has ${maps.length}; give one label per map or none`);
  return { image, maps, side, labels, opts };
}

/**
 * One tile per token: the image with the token's attention map (r×r, upsampled bilinearly, normalised, jet colours)
 * alpha-blended on top, in a grid, each tile under a title bar with its label. Returns a PNG.
 * Call as (image, maps[], labels?, opts?) or (rgb, width, height, maps, resolution, labels?, opts?), where maps may be
 * one Float32Array holding k stacked r×r maps ([k, r, r], as the loss returns them).
 */
export function attentionGrid(image: RgbImage, maps: Float32Array[] | Float32Array, labels?: string[], opts?: AttentionGridOptions): Buffer;
export function attentionGrid(
  rgb: Uint8Array,
  width: number,
  height: number,
  maps: Float32Array[] | Float32Array,
  resolution: number,
  labels?: string[],
  opts?: AttentionGridOptions,
): Buffer;
export function attentionGrid(...args: unknown[]): Buffer {
  const { image, maps, side, labels, opts } = gridArguments(args);
  const alpha = opts.alpha ?? 0.5;
  if (typeof alpha !== 'number' || !(alpha >= 0 && alpha <= 1))
    throw new RangeError(`attentionGrid: Expected a number between 0 and 1 for alpha but received ${String(alpha)}`);
  const normalize = opts.normalize ?? 'max';
  if (normalize !== 'max' && normalize !== 'minmax')
    throw new RangeError(`attentionGrid: Expected 'max' or 'minmax' for normalize but received ${JSON.stringify(normalize)}`);
  const includeImage = opts.includeImage ?? true;
  const tiles = maps.length + (includeImage ? 1 : 0);
  const columns = opts.columns ?? tiles;
  if (!Number.isInteger(columns) || columns < 1) throw new RangeError(`attentionGrid: Expected a positive integer for columns but received ${String(columns)}`);
  const bar = opts.titleBarHeight ?? (labels.length > 0 ? 12 : 0);
  const gap = opts.gap ?? 4;
  if (!Number.isInteger(bar) || bar < 0 || !Number.isInteger(gap) || gap < 0)
    throw new RangeError('attentionGrid: titleBarHeight and gap must be non-negative integers');

  const { width: W, height: H } = image;
  const layout = gridLayout(tiles, W, H, bar, gap, columns);
  const out = new Uint8Array(layout.width * layout.height * 3);
  for (let p = 0; p < layout.width * layout.height; p++) out.set(BACKGROUND, p * 3);

  const blit = (tile: number, pixel: (x: number, y: number) => [number, number, number], label: string | null) => {
    const { x: ox, y: oy } = layout.origins[tile];
    for (let y = 0; y < bar; y++) for (let x = 0; x < W; x++) out.set(BAR, ((oy - bar + y) * layout.width + ox + x) * 3);
    if (label !== null && bar >= 9) drawText(out, layout.width, ox + 2, oy - bar + Math.floor((bar - 7) / 2), label, W - 4);
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const [r, g, b] = pixel(x, y);
        const o = ((oy + y) * layout.width + ox + x) * 3;
        out[o] = r;
        out[o + 1] = g;
        out[o + 2] = b;
      }
    }
  };
  const src = image.rgb;
  let tile = 0;
  if (includeImage) blit(tile++, (x, y) => [src[(y * W + x) * 3], src[(y * W + x) * 3 + 1], src[(y * W + x) * 3 + 2]], labels.length > 0 ? 'image' : null);
  maps.forEach((m, i) => {
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of m) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    const shift = normalize === 'minmax' ? lo : 0;
    const scale = hi - shift > 0 ? 1 / (hi - shift) : 0;
    const up = upsampleBilinear(m, side, side, H, W);
    blit(
      tile++,
      (x, y) => {
        const v = Math.min(1, Math.max(0, (up[y * W + x] - shift) * scale));
        const heat = jet(v);
        const o = (y * W + x) * 3;
        return [0, 1, 2].map((c) => Math.round((1 - alpha) * src[o + c] + alpha * heat[c])) as [number, number, number];
      },
      labels.length > 0 ? labels[i] : null,
    );
  });
  const text = { ...(labels.length > 0 ? { Labels: labels.join('\n') } : {}), ...(opts.textChunks ?? {}) };
  return encodePng(out, layout.width, layout.height, text);
}

// ------------------------------------------------------------------------------------------- bitmap font

/** 5×7 glyphs (rows top to bottom, '#' = ink) for the label bar; unknown characters print as '?'. */
const GLYPHS: Record<string, string> = {
  a: '.###.#...##...#######...##...##...#',
  b: '####.#...##...#####.#...##...#####.',
  c: '.###.#...##....#....#....#...#.###.',
  d: '####.#...##...##...##...##...#####.',
  e: '######....#....####.#....#....#####',
  f: '######....#....####.#....#....#....',
  g: '.###.#...##....#.####...##...#.####',
  h: '#...##...##...#######...##...##...#',
  i: '.###...#....#....#....#....#...###.',
  j: '..###...#....#....#....#.#..#..##..',
  k: '#...##..#.#.#..##...#.#..#..#.#...#',
  l: '#....#....#....#....#....#....#####',
  m: '#...###.###.#.##.#.##...##...##...#',
  n: '#...##...###..##.#.##..###...##...#',
  o: '.###.#...##...##...##...##...#.###.',
  p: '####.#...##...#####.#....#....#....',
  q: '.###.#...##...##...##.#.##..#..##.#',
  r: '####.#...##...#####.#.#..#..#.#...#',
  s: '.#####....#.....###.....#....#####.',
  t: '#####..#....#....#....#....#....#..',
  u: '#...##...##...##...##...##...#.###.',
  v: '#...##...##...##...##...#.#.#...#..',
  w: '#...##...##...##.#.##.#.##.#.#.#.#.',
  x: '#...##...#.#.#...#...#.#.#...##...#',
  y: '#...##...#.#.#...#....#....#....#..',
  z: '#####....#...#...#...#...#....#####',
  '0': '.###.#...##..###.#.###..##...#.###.',
  '1': '..#...##....#....#....#....#...###.',
  '2': '.###.#...#....#...#...#...#...#####',
  '3': '#####...#...#.....#.....##...#.###.',
  '4': '...#...##..#.#.#..#.#####...#....#.',
  '5': '######....####.....#....##...#.###.',
  '6': '..##..#...#....####.#...##...#.###.',
  '7': '#####....#...#...#...#....#....#...',
  '8': '.###.#...##...#.###.#...##...#.###.',
  '9': '.###.#...##...#.####....#...#..##..',
  ' ': '...................................',
  '.': '..........................##...##..',
  ',': '.....................##....#...#...',
  '-': '...............#####...............',
  _: '..............................#####',
  ':': '......##...##........##...##.......',
  '#': '.#.#..#.#.#####.#.#.#####.#.#..#.#.',
  '/': '....#....#...#...#...#...#....#....',
  '<': '...#...#...#...#.....#.....#.....#.',
  '>': '.#.....#.....#.....#...#...#...#...',
  '|': '..#....#....#....#....#....#....#..',
  '(': '...#...#...#....#....#.....#.....#.',
  ')': '.#.....#.....#....#....#...#...#...',
  "'": '..#....#...#.......................',
  '!': '..#....#....#....#....#.........#..',
  '?': '.###.#...#....#...#...#.........#..',
  '=': '..........#####.....#####..........',
  '+': '.......#....#..#####..#....#.......',
  '[': '.###..#....#....#....#....#....###.',
  ']': '.###....#....#....#....#....#..###.',
};

/** Maps as given (an array), or k stacked r×r maps in one array cut into k. */
function splitMaps(maps: unknown, resolution: number | undefined): Float32Array[] {
  if (maps instanceof Float32Array) {
    const r = resolution ?? Math.round(Math.sqrt(maps.length));
    const per = r * r;
    if (per === 0 || maps.length === 0 || maps.length % per !== 0) {
      throw new RangeError(`attentionGrid: a stacked maps array must hold k·${r}·${r} values but has ${maps.length}`);
    }
    return Array.from({ length: maps.length / per }, (_, k) => maps.subarray(k * per, (k + 1) * per));
  }
  if (!Array.isArray(maps) || maps.length === 0) throw new TypeError('attentionGrid: Expected a non-empty array of Float32Array maps (one r×r map per token)');
  return maps as Float32Array[];
}

function drawText(out: Uint8Array, stride: number, x0: number, y0: number, text: string, maxWidth: number): void {
  let x = x0;
  for (const ch of text.toLowerCase()) {
    if (x + 5 > x0 + maxWidth) break;
    const g = GLYPHS[ch] ?? GLYPHS['?'];
    for (let r = 0; r < 7; r++) {
      for (let c = 0; c < 5; c++) {
        if (g[r * 5 + c] === '#') out.set(INK, ((y0 + r) * stride + x + c) * 3);
      }
    }
    x += 6;
  }
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'object') return (v as object).constructor?.name ?? 'object';
  return typeof v;
}
