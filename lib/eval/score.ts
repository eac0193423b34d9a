/**
 * Scoring one generated image against what its prompt requested: maximum one-to-one matchings between the
 * requested object instances and the detections (Kuhn's augmenting paths: exact for any number of detections).
 *
 * Success: every requested instance is matched to its own detection of the same shape and, where the prompt names
 * one, the same colour. "two circles and a square" needs two circles and a square; extra detected objects do not
 * fail an image (so counts are minimums: three circles satisfy "two circles").
 */
import type { Detection, ShapeName } from './detector';

export interface RequestedObject {
  shape: ShapeName;
  /** null: the prompt names no colour for this object. */
  colour: string | null;
}

export interface ImageScore {
  /** The benchmark's verdict: every requested object present (counts honoured) with its named colour. */
  success: boolean;
  /** Requested instances in the best full matching (shape, and colour where named). */
  matched: number;
  /** Requested instances matched by shape alone (colours ignored). */
  shapesFound: number;
  /** Every requested shape present, counts honoured, colours ignored. */
  allPresent: boolean;
  requested: number;
  requestedColoured: number;
  detected: number;
  /** Exactly as many objects detected as requested (informational; not part of success). */
  countExact: boolean;
}

/** Size of a maximum matching between left items 0..nLeft−1 and right items 0..nRight−1 where ok(i, j). */
export function maximumMatching(nLeft: number, nRight: number, ok: (i: number, j: number) => boolean): number {
  const owner = new Int32Array(nRight).fill(-1);
  const augment = (i: number, visited: Uint8Array): boolean => {
    for (let j = 0; j < nRight; j++) {
      if (visited[j] || !ok(i, j)) continue;
      visited[j] = 1;
      if (owner[j] < 0 || augment(owner[j], visited)) {
        owner[j] = i;
        return true;
      }
    }
    return false;
  };
  let size = 0;
  for (let i = 0; i < nLeft; i++) if (augment(i, new Uint8Array(nRight))) size++;
  return size;
}

export function scoreImage(requested: readonly RequestedObject[], detections: readonly Detection[]): ImageScore {
  if (!Array.isArray(requested) || requested.length === 0) throw new TypeError('Expected a non-empty array of requested objects');
  const match = (ok: (r: RequestedObject, d: Detection) => boolean) =>
    maximumMatching(requested.length, detections.length, (i, j) => ok(requested[i], detections[j]));
  const matched = match((r, d) => r.shape === d.shape && (r.colour === null || r.colour === d.colour));
  const shapesFound = match((r, d) => r.shape === d.shape);
  return {
    success: matched === requested.length,
    matched,
    shapesFound,
    allPresent: shapesFound === requested.length,
    requested: requested.length,
    requestedColoured: requested.filter((r) => r.colour !== null).length,
    detected: detections.length,
    countExact: detections.length === requested.length,
  };
}
