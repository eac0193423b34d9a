/**
 * The Shapes detector against rendered ground truth: test/fixtures/shapes/scenes.{png,json} (240 scenes, 469
 * objects, rendered by tools/shapes/make_fixtures.py with the training renderer tools/shapes/data.py).
 * An object counts as found when a detection has its colour and shape and its centroid lies inside the true box.
 * Bars: ≥ 95 % of objects found and classified; ≤ 5 % spurious detections. Plus the shape feature's prototypes
 * and the input checks.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PNG } from 'pngjs';
import { classifyShape, detect, segment, PALETTE, type Detection } from '../../lib/eval/detector';
import { scoreImage } from '../../lib/eval/score';

const ROOT = path.resolve(__dirname, '../../..');
const FIX = path.join(ROOT, 'test', 'fixtures', 'shapes');

interface Scene {
  tile: number;
  caption: string;
  objects: Array<{ shape: string; colour: string; box: [number, number, number, number] }>;
}

function tiles(): { scenes: Scene[]; images: Uint8Array[] } {
  const meta = JSON.parse(fs.readFileSync(path.join(FIX, 'scenes.json'), 'utf8')) as { tile: number; cols: number; scenes: Scene[] };
  const png = PNG.sync.read(fs.readFileSync(path.join(FIX, 'scenes.png')));
  const T = meta.tile;
  const images = meta.scenes.map((s) => {
    const r = Math.floor(s.tile / meta.cols),
      c = s.tile % meta.cols;
    const rgb = new Uint8Array(T * T * 3);
    for (let y = 0; y < T; y++) {
      for (let x = 0; x < T; x++) {
        const src = ((r * T + y) * png.width + c * T + x) * 4; // pngjs decodes to RGBA
        const dst = (y * T + x) * 3;
        rgb[dst] = png.data[src];
        rgb[dst + 1] = png.data[src + 1];
        rgb[dst + 2] = png.data[src + 2];
      }
    }
    return rgb;
  });
  return { scenes: meta.scenes, images };
}

test('detector finds and classifies ≥ 95 % of rendered objects, ≤ 5 % spurious', (t) => {
  const { scenes, images } = tiles();
  let total = 0,
    found = 0,
    detections = 0,
    matched = 0;
  const confusion: Record<string, number> = {};
  scenes.forEach((scene, i) => {
    const det = detect({ rgb: images[i], width: 64, height: 64 });
    detections += det.length;
    const used = new Set<Detection>();
    for (const obj of scene.objects) {
      total++;
      const [x0, y0, x1, y1] = obj.box;
      const hit = det.find((d) => !used.has(d) && d.colour === obj.colour && d.shape === obj.shape && d.cx >= x0 && d.cx <= x1 && d.cy >= y0 && d.cy <= y1);
      if (hit) {
        used.add(hit);
        found++;
      } else {
        const same = det.find((d) => d.colour === obj.colour);
        const key = `${obj.colour} ${obj.shape} → ${same ? same.shape : 'missing'}`;
        confusion[key] = (confusion[key] ?? 0) + 1;
      }
    }
    matched += used.size;
  });
  const recall = found / total;
  const spurious = (detections - matched) / detections;
  t.log(`objects ${total}, found+classified ${found} (${(100 * recall).toFixed(1)} %), detections ${detections}, spurious ${(100 * spurious).toFixed(1)} %`);
  t.log(`misses: ${JSON.stringify(confusion)}`);
  t.true(total >= 400, 'fixture should hold ≥ 400 objects');
  t.true(recall >= 0.95, `recall ${recall}`);
  t.true(spurious <= 0.05, `spurious ${spurious}`);
});

/** 3×3 box blur then uniform noise in ±amp (a fixed LCG): generated images are softer and noisier than renders. */
function degrade(rgb: Uint8Array, w: number, h: number, amp: number, seed: number): Uint8Array {
  const out = new Uint8Array(rgb.length);
  let s = seed >>> 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < 3; c++) {
        let sum = 0,
          n = 0;
        for (let dy = -1; dy <= 1; dy++) {
          for (let dx = -1; dx <= 1; dx++) {
            const xx = x + dx,
              yy = y + dy;
            if (xx < 0 || yy < 0 || xx >= w || yy >= h) continue;
            sum += rgb[(yy * w + xx) * 3 + c];
            n++;
          }
        }
        s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
        const noise = ((s / 2 ** 32) * 2 - 1) * amp;
        out[(y * w + x) * 3 + c] = Math.max(0, Math.min(255, Math.round(sum / n + noise)));
      }
    }
  }
  return out;
}

test('detector stays ≥ 90 % on blurred, noisy renders (±20 levels)', (t) => {
  const { scenes, images } = tiles();
  let total = 0,
    found = 0;
  scenes.forEach((scene, i) => {
    const det = detect({ rgb: degrade(images[i], 64, 64, 20, i + 1), width: 64, height: 64 });
    for (const obj of scene.objects) {
      total++;
      const [x0, y0, x1, y1] = obj.box;
      if (det.some((d) => d.colour === obj.colour && d.shape === obj.shape && d.cx >= x0 && d.cx <= x1 && d.cy >= y0 && d.cy <= y1)) found++;
    }
  });
  t.log(`degraded: ${found}/${total} (${((100 * found) / total).toFixed(1)} %)`);
  t.true(found / total >= 0.9);
});

test('scoring a rendered scene against its own caption is perfect', (t) => {
  const { scenes, images } = tiles();
  let perfect = 0;
  scenes.forEach((scene, i) => {
    const s = scoreImage(
      scene.objects.map((o) => ({ shape: o.shape as 'circle', colour: o.colour })),
      detect({ rgb: images[i], width: 64, height: 64 }),
    );
    if (s.success && s.countExact) perfect++;
  });
  t.log(`${perfect}/${scenes.length} scenes scored perfect`);
  t.true(perfect / scenes.length >= 0.9);
});

test('shape feature prototypes: disc 1, square 2/π, triangle 3√3/4π', (t) => {
  t.is(classifyShape(1).shape, 'circle');
  t.is(classifyShape(2 / Math.PI).shape, 'square');
  t.is(classifyShape((3 * Math.sqrt(3)) / (4 * Math.PI)).shape, 'triangle');
  t.is(classifyShape(1).confidence, 1);
  t.true(classifyShape(0.82).confidence < 0.05); // halfway between circle (1) and square (0.637)
});

test('an exact disc and a square drawn here are detected with their colours', (t) => {
  const w = 64,
    h = 64;
  const rgb = new Uint8Array(w * h * 3).fill(128);
  const put = (x: number, y: number, c: readonly number[]) => rgb.set(c, (y * w + x) * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if ((x + 0.5 - 18) ** 2 + (y + 0.5 - 20) ** 2 <= 100) put(x, y, PALETTE.red);
      if (x >= 36 && x < 52 && y >= 34 && y < 50) put(x, y, PALETTE.blue);
    }
  }
  const det = detect({ rgb, width: w, height: h });
  t.deepEqual(det.map((d) => `${d.colour} ${d.shape}`).sort(), ['blue square', 'red circle']);
  const sq = det.find((d) => d.colour === 'blue')!;
  t.deepEqual(sq.box, [36, 34, 52, 50]);
  t.is(sq.area, 256);
});

test('bad input gives clear errors', (t) => {
  t.throws(() => detect({ rgb: new Uint8Array(10), width: 64, height: 64 }), { instanceOf: RangeError, message: /width × height × 3 = 12288/ });
  t.throws(() => detect({ rgb: [] as unknown as Uint8Array, width: 1, height: 1 }), { instanceOf: TypeError, message: /Uint8Array/ });
  t.throws(() => detect({ rgb: new Uint8Array(3), width: 0.5, height: 1 }), { instanceOf: RangeError, message: /image.width/ });
  t.throws(() => segment({ rgb: new Uint8Array(3), width: 1, height: 1 }, { maxColourDistance: 0 }), { instanceOf: RangeError, message: /maxColourDistance/ });
  t.throws(() => scoreImage([], []), { instanceOf: TypeError });
});
