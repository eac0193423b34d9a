/**
 * Image output. Oracles: the diffusers post-processing formula evaluated independently in float64 with half-even
 * rounding (exact bytes expected, except at the float32 rounding boundary, which the test input avoids), pngjs decoding
 * the files back (it verifies every chunk CRC), and hand-computed blend values at pixel centres (±1 for rounding).
 */
import test from 'ava';
import { PNG } from 'pngjs';
import { attentionGrid, crc32, encodePng, gridLayout, imageFromDecoderOutput, jet, readPngText, upsampleBilinear } from '../../lib/pipeline/image';

test('imageFromDecoderOutput: x/2+0.5, clamp, ×255, round half to even, CHW → HWC', (t) => {
  const H = 2;
  const W = 3;
  const vals = [-1.5, -1, -0.5, 0, 0.5, 1, 1.5, 0.25, -0.25, 0.9, -0.9, 0.1, 0.3, -0.3, 0.7, -0.7, 0.05, -0.05];
  const data = Float32Array.from(vals);
  const img = imageFromDecoderOutput(data, [1, 3, H, W]);
  t.is(img.length, H * W * 3);
  t.deepEqual(Array.from(imageFromDecoderOutput(data, H, W)), Array.from(img), '(data, height, width) form');
  for (let c = 0; c < 3; c++) {
    for (let p = 0; p < H * W; p++) {
      const x = Math.min(1, Math.max(0, data[c * H * W + p] / 2 + 0.5)) * 255;
      const r = Math.round(x);
      const expected = Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 === 1 ? r - 1 : r;
      t.is(img[p * 3 + c], expected, `c=${c} p=${p}`);
    }
  }
  // 0 → 0.5·255 = 127.5 → 128 (half to even); −1 → 0; 1 → 255; clamps beyond.
  t.is(img[1 * 3 + 0], 0);
  t.is(img[3 * 3 + 0], 128);
  t.is(img[5 * 3 + 0], 255);
  t.is(img[0], 0);
  const batch = imageFromDecoderOutput(Float32Array.from([...vals, ...vals.map((v) => -v)]), [2, 3, H, W], 1);
  t.is(batch[5 * 3], 0);
  t.throws(() => imageFromDecoderOutput(data, [1, 4, H, W]), { instanceOf: RangeError, message: /Expected shape \[batch, 3, height, width\]/ });
  t.throws(() => imageFromDecoderOutput(data, [1, 3, 3, 3]), { instanceOf: RangeError, message: /needs 27 values but data has 18/ });
  t.throws(() => imageFromDecoderOutput(Array.from(vals) as unknown as Float32Array, [1, 3, H, W]), { instanceOf: TypeError });
});

test('encodePng writes a valid RGB PNG with tEXt/iTXt chunks right after IHDR', (t) => {
  const W = 5;
  const H = 4;
  const rgb = Uint8Array.from({ length: W * H * 3 }, (_, i) => (i * 37) % 256);
  const png = encodePng(rgb, W, H, { prompt: 'a purple dog', seed: '2702', note: 'naïve — ☃' });
  const decoded = PNG.sync.read(png); // pngjs checks the CRC of every chunk
  t.is(decoded.width, W);
  t.is(decoded.height, H);
  for (let p = 0; p < W * H; p++) {
    t.deepEqual(
      [decoded.data[p * 4], decoded.data[p * 4 + 1], decoded.data[p * 4 + 2], decoded.data[p * 4 + 3]],
      [rgb[p * 3], rgb[p * 3 + 1], rgb[p * 3 + 2], 255],
    );
  }
  t.deepEqual(readPngText(png), { prompt: 'a purple dog', seed: '2702', note: 'naïve — ☃' });
  t.is(png.toString('latin1', 37, 41), 'tEXt', 'first text chunk follows IHDR');
  t.is(crc32(Buffer.from('IEND', 'latin1')), 0xae426082, 'CRC of an empty IEND chunk');
  t.throws(() => encodePng(rgb, W, H, { '': 'x' }), { instanceOf: RangeError, message: /not a PNG keyword/ });
  t.throws(() => encodePng(rgb, W + 1, H), { instanceOf: RangeError, message: '6×4 RGB needs 72 bytes but rgb has 60'.replace(/^/, 'encodePng: ') });
  t.throws(() => encodePng(rgb, 0, H), { instanceOf: RangeError, message: /width/ });
});

test('upsampleBilinear follows half-pixel centres (torch align_corners=False)', (t) => {
  const m = Float32Array.from([0, 1, 2, 3]);
  const up = upsampleBilinear(m, 2, 2, 4, 4);
  // Row 0: x sources −0.25→0 (clamped), 0.25, 0.75, 1.25→1: values 0, 0.25, 0.75, 1.
  t.deepEqual(Array.from(up.slice(0, 4)), [0, 0.25, 0.75, 1]);
  // Row 1 (source y 0.25): 0.5·0.25 … add 2·0.25.
  t.deepEqual(Array.from(up.slice(4, 8)), [0.5, 0.75, 1.25, 1.5]);
  t.deepEqual(Array.from(up.slice(12, 16)), [2, 2.25, 2.75, 3]);
});

test('attentionGrid: layout, label bar, heat-map blend at known pixels, text chunks', (t) => {
  const W = 32;
  const H = 32;
  const rgb = new Uint8Array(W * H * 3).fill(100);
  // Map 0: hot in the top-left cell only; map 1: uniform (normalised to 1 everywhere).
  const hot = new Float32Array(16);
  hot[0] = 2;
  const flat = new Float32Array(16).fill(0.3);
  const png = attentionGrid({ rgb, width: W, height: H }, [hot, flat], ['dog', 'bench'], { alpha: 0.5, textChunks: { prompt: 'a dog and a bench' } });
  const img = PNG.sync.read(png);
  const L = gridLayout(3, W, H, 12, 4, 3);
  t.is(img.width, L.width);
  t.is(img.height, L.height);
  t.is(img.width, 3 * 32 + 4 * 4);
  t.is(img.height, 32 + 12 + 2 * 4);
  const px = (x: number, y: number) => [0, 1, 2].map((c) => img.data[(y * img.width + x) * 4 + c]);
  const near = (got: number[], want: number[], what: string) =>
    t.true(
      got.every((g, i) => Math.abs(g - want[i]) <= 1),
      `${what}: ${got} vs ${want}`,
    );
  // Tile 0 is the plain image.
  t.deepEqual(px(L.origins[0].x + 5, L.origins[0].y + 5), [100, 100, 100]);
  // Tile 1, pixel (0,0): the 4×4 map upsampled ×8 keeps cell (0,0) = max → jet(1) = (127.5, 0, 0).
  const j1 = jet(1);
  near(
    px(L.origins[1].x, L.origins[1].y),
    j1.map((h) => 0.5 * 100 + 0.5 * h),
    'hot corner',
  );
  // Far corner of tile 1: value 0 → jet(0) = (0, 0, 127.5).
  near(
    px(L.origins[1].x + W - 1, L.origins[1].y + H - 1),
    jet(0).map((h) => 0.5 * 100 + 0.5 * h),
    'cold corner',
  );
  // Tile 2 is uniform → normalised to 1 everywhere.
  near(
    px(L.origins[2].x + 17, L.origins[2].y + 9),
    j1.map((h) => 0.5 * 100 + 0.5 * h),
    'flat map',
  );
  // Gaps keep the background; the label bar holds some ink (text) and bar colour.
  t.deepEqual(px(1, 1), [32, 32, 32]);
  const barRow = L.origins[1].y - 12 + 2;
  const barPixels = Array.from({ length: W }, (_, x) => px(L.origins[1].x + x, barRow + 1));
  t.true(barPixels.some((p) => p[0] === 240) && barPixels.some((p) => p[0] === 48), 'label ink on the bar');
  t.deepEqual(readPngText(png), { Labels: 'dog\nbench', prompt: 'a dog and a bench' });
});

test('attentionGrid: (rgb, width, height, stacked maps, resolution, labels) form equals the array form', (t) => {
  const W = 16;
  const H = 8;
  const rgb = Uint8Array.from({ length: W * H * 3 }, (_, i) => (i * 7) % 256);
  const a = Float32Array.from({ length: 16 }, (_, i) => i);
  const b = Float32Array.from({ length: 16 }, (_, i) => 16 - i);
  const stacked = new Float32Array(32);
  stacked.set(a, 0);
  stacked.set(b, 16);
  const viaArray = attentionGrid({ rgb, width: W, height: H }, [a, b], ['x', 'y']);
  const viaStack = attentionGrid(rgb, W, H, stacked, 4, ['x', 'y']);
  t.deepEqual(PNG.sync.read(viaStack).data, PNG.sync.read(viaArray).data);
  t.throws(() => attentionGrid(rgb, W, H, new Float32Array(20), 4), { instanceOf: RangeError, message: /k·4·4 values but has 20/ });
  t.throws(() => attentionGrid(rgb, W, H, stacked, 0), { instanceOf: RangeError, message: /resolution/ });
});

test('attentionGrid: columns wrap, minmax normalisation, validation', (t) => {
  const W = 8;
  const H = 8;
  const rgb = new Uint8Array(W * H * 3);
  const m = Float32Array.from({ length: 4 }, (_, i) => 1 + i);
  const png = attentionGrid({ rgb, width: W, height: H }, [m, m, m], [], { columns: 2, includeImage: false, normalize: 'minmax', alpha: 1, gap: 0 });
  const img = PNG.sync.read(png);
  t.is(img.width, 16);
  t.is(img.height, 16);
  // alpha 1, minmax: the minimum cell (0,0) maps to jet(0) exactly.
  t.deepEqual([img.data[0], img.data[1], img.data[2]], jet(0).map(Math.round));
  // The 4th grid cell (no tile) stays background.
  t.deepEqual([img.data[(15 * 16 + 15) * 4], img.data[(15 * 16 + 15) * 4 + 1]], [32, 32]);
  t.throws(() => attentionGrid({ rgb, width: W, height: H }, []), { instanceOf: TypeError, message: /non-empty array/ });
  t.throws(() => attentionGrid({ rgb, width: W, height: H }, [new Float32Array(5)]), { instanceOf: RangeError, message: /maps\[0\] has 5 values/ });
  t.throws(() => attentionGrid({ rgb, width: W, height: H }, [m], ['a', 'b']), { instanceOf: RangeError, message: /labels has 2 entries but maps has 1/ });
  t.throws(() => attentionGrid({ rgb, width: W, height: H }, [m], [], { alpha: 2 }), { instanceOf: RangeError, message: /alpha/ });
});
