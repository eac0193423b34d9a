/**
 * Labelled image grids of the benchmark: a title line (the prompt), one column per seed, one row per method, and
 * under each tile a bar with the detector's verdict (green success, red failure). Text is drawn with a built-in
 * 5×7 pixel font (upper case, digits and a few signs), so no font files or image libraries are needed.
 */

export interface RgbImage {
  rgb: Uint8Array;
  width: number;
  height: number;
}

/** 5×7 glyphs, one 5-bit row per entry, top row first, bit 4 = leftmost pixel. */
const FONT: Readonly<Record<string, readonly number[]>> = {
  A: [0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
  B: [0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e],
  C: [0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e],
  D: [0x1c, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1c],
  E: [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f],
  F: [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10],
  G: [0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f],
  H: [0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
  I: [0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e],
  J: [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c],
  K: [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
  L: [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f],
  M: [0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11],
  N: [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
  O: [0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
  P: [0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10],
  Q: [0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d],
  R: [0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11],
  S: [0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e],
  T: [0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
  U: [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
  V: [0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04],
  W: [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a],
  X: [0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11],
  Y: [0x11, 0x11, 0x11, 0x0a, 0x04, 0x04, 0x04],
  Z: [0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f],
  0: [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e],
  1: [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e],
  2: [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f],
  3: [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e],
  4: [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02],
  5: [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e],
  6: [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e],
  7: [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
  8: [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e],
  9: [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c],
  ' ': [0, 0, 0, 0, 0, 0, 0],
  _: [0, 0, 0, 0, 0, 0, 0x1f],
  ',': [0, 0, 0, 0, 0x0c, 0x04, 0x08],
  '.': [0, 0, 0, 0, 0, 0x0c, 0x0c],
  '-': [0, 0, 0, 0x1f, 0, 0, 0],
  '(': [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
  ')': [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
  '&': [0x0c, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0d],
  ':': [0, 0x0c, 0x0c, 0, 0x0c, 0x0c, 0],
  '#': [0x0a, 0x0a, 0x1f, 0x0a, 0x1f, 0x0a, 0x0a],
  '/': [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
  '%': [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
  '+': [0, 0x04, 0x04, 0x1f, 0x04, 0x04, 0],
  '=': [0, 0, 0x1f, 0, 0x1f, 0, 0],
  '?': [0x0e, 0x11, 0x01, 0x02, 0x04, 0, 0x04],
};
export const GLYPH_W = 5;
export const GLYPH_H = 7;
/** Horizontal advance per character (glyph + 1 pixel). */
export const ADVANCE = GLYPH_W + 1;

/** Draws text (upper-cased; unknown characters as "?") into an RGB canvas, clipped to it. */
export function drawText(canvas: RgbImage, text: string, x0: number, y0: number, colour: readonly [number, number, number] = [0, 0, 0]): void {
  [...text.toUpperCase()].forEach((ch, k) => {
    const rows = FONT[ch] ?? FONT['?'];
    for (let r = 0; r < GLYPH_H; r++) {
      for (let c = 0; c < GLYPH_W; c++) {
        if (!((rows[r] >> (GLYPH_W - 1 - c)) & 1)) continue;
        const x = x0 + k * ADVANCE + c,
          y = y0 + r;
        if (x < 0 || y < 0 || x >= canvas.width || y >= canvas.height) continue;
        canvas.rgb.set(colour, (y * canvas.width + x) * 3);
      }
    }
  });
}

function blit(canvas: RgbImage, img: RgbImage, ox: number, oy: number, zoom: number): void {
  for (let y = 0; y < img.height * zoom; y++) {
    for (let x = 0; x < img.width * zoom; x++) {
      const s = (Math.floor(y / zoom) * img.width + Math.floor(x / zoom)) * 3;
      canvas.rgb.set(img.rgb.subarray(s, s + 3), ((oy + y) * canvas.width + ox + x) * 3);
    }
  }
}

function fill(canvas: RgbImage, x0: number, y0: number, w: number, h: number, colour: readonly [number, number, number]): void {
  for (let y = y0; y < y0 + h; y++) for (let x = x0; x < x0 + w; x++) canvas.rgb.set(colour, (y * canvas.width + x) * 3);
}

export interface GridSpec {
  title: string;
  rowLabels: string[];
  columnLabels: string[];
  /** tiles[row][column], all the same size. */
  tiles: RgbImage[][];
  /** verdicts[row][column]: success (green bar) or failure (red bar); omit for no bars. */
  verdicts?: boolean[][];
  /** Pixel repetition of the tiles; default 2 for tiles up to 128 pixels, else 1. */
  zoom?: number;
}

/** Layout constants of labelledGrid (exported for tests and docs). */
export const GRID = { gap: 2, bar: 3, margin: 4, line: GLYPH_H + 4 } as const;

/** Builds the labelled grid: title, column labels above, row labels on the left, a verdict bar under each tile. */
export function labelledGrid(spec: GridSpec): RgbImage {
  const rows = spec.tiles.length;
  const cols = rows > 0 ? spec.tiles[0].length : 0;
  if (rows === 0 || cols === 0) throw new RangeError('labelledGrid: no tiles');
  if (spec.rowLabels.length !== rows || spec.columnLabels.length !== cols)
    throw new RangeError(`labelledGrid: ${rows}×${cols} tiles need ${rows} row and ${cols} column labels`);
  const { width: w, height: h } = spec.tiles[0][0];
  const zoom = spec.zoom ?? (Math.max(w, h) <= 128 ? 2 : 1);
  const { gap, bar, margin, line } = GRID;
  const left = margin + Math.max(...spec.rowLabels.map((l) => l.length)) * ADVANCE + margin;
  const top = 2 * line;
  const cellW = w * zoom + gap,
    cellH = h * zoom + (spec.verdicts ? bar : 0) + gap;
  const width = Math.max(left + cols * cellW + gap, margin + spec.title.length * ADVANCE + margin);
  const canvas: RgbImage = { rgb: new Uint8Array(width * (top + rows * cellH + gap) * 3).fill(255), width, height: top + rows * cellH + gap };
  drawText(canvas, spec.title, margin, 2);
  spec.columnLabels.forEach((label, c) => drawText(canvas, label, left + c * cellW, line + 2));
  spec.tiles.forEach((row, r) => {
    if (row.length !== cols) throw new RangeError(`labelledGrid: row ${r} has ${row.length} tiles, expected ${cols}`);
    const oy = top + r * cellH;
    drawText(canvas, spec.rowLabels[r], margin, oy + Math.floor((h * zoom - GLYPH_H) / 2));
    row.forEach((tile, c) => {
      if (tile.width !== w || tile.height !== h) throw new RangeError('labelledGrid: tiles differ in size');
      const ox = left + c * cellW;
      blit(canvas, tile, ox, oy, zoom);
      if (spec.verdicts) fill(canvas, ox, oy + h * zoom, w * zoom, bar, spec.verdicts[r][c] ? [30, 170, 50] : [220, 30, 30]);
    });
  });
  return canvas;
}
