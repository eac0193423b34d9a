/**
 * Scoring one generated image against what its prompt asked for: best one-to-one matching of the requested
 * objects to the detections (at most 3! = 6 assignments per image, so exhaustive search is exact and cheap).
 */
import type { Detection, ShapeName } from './detector';

export interface RequestedObject {
  shape: ShapeName;
  /** null: the prompt names no colour for this object. */
  colour: string | null;
}

export interface ImageScore {
  /** Requested objects matched by a detection of the same shape (colour ignored). */
  shapesFound: number;
  /** Requested coloured objects matched by a detection of the same shape AND colour. */
  boundFound: number;
  requested: number;
  requestedColoured: number;
  detected: number;
  /** Every requested shape is there. */
  allPresent: boolean;
  /** Every requested object is there with its requested colour (only colours the prompt names count). */
  allBound: boolean;
  /** Exactly as many objects as requested. */
  countCorrect: boolean;
}

function permutations(n: number, k: number): number[][] {
  // All injective maps from k requested objects into n detections (−1 = unmatched), as index arrays.
  const out: number[][] = [];
  const cur: number[] = [];
  const used = new Array<boolean>(n).fill(false);
  const rec = (i: number) => {
    if (i === k) {
      out.push([...cur]);
      return;
    }
    cur.push(-1);
    rec(i + 1);
    cur.pop();
    for (let j = 0; j < n; j++) {
      if (used[j]) continue;
      used[j] = true;
      cur.push(j);
      rec(i + 1);
      cur.pop();
      used[j] = false;
    }
  };
  rec(0);
  return out;
}

function bestMatch(req: RequestedObject[], det: Detection[], ok: (r: RequestedObject, d: Detection) => boolean): number {
  if (req.length > 6) throw new RangeError(`at most 6 requested objects are supported, got ${req.length}`);
  // Cap the detections considered: the largest ones (det is sorted by area) — 8 is far more than a 64² scene holds.
  const d = det.slice(0, 8);
  let best = 0;
  for (const perm of permutations(d.length, req.length)) {
    let n = 0;
    perm.forEach((j, i) => {
      if (j >= 0 && ok(req[i], d[j])) n++;
    });
    best = Math.max(best, n);
  }
  return best;
}

export function scoreImage(requested: RequestedObject[], detections: Detection[]): ImageScore {
  if (!Array.isArray(requested) || requested.length === 0) throw new TypeError('Expected a non-empty array of requested objects');
  const shapesFound = bestMatch(requested, detections, (r, d) => r.shape === d.shape);
  const coloured = requested.filter((r) => r.colour !== null);
  const boundFound = coloured.length ? bestMatch(coloured, detections, (r, d) => r.shape === d.shape && r.colour === d.colour) : 0;
  return {
    shapesFound,
    boundFound,
    requested: requested.length,
    requestedColoured: coloured.length,
    detected: detections.length,
    allPresent: shapesFound === requested.length,
    allBound: coloured.length > 0 ? boundFound === coloured.length : shapesFound === requested.length,
    countCorrect: detections.length === requested.length,
  };
}
