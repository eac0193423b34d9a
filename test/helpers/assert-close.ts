/**
 * Float comparison for tests: |actual − expected| <= atol + rtol·|expected|, NaN == NaN, ±Inf equal only to itself.
 * Failures list the first 10 mismatches and the largest differences (llm.c validate_result, ORT assertFloatEqual).
 */
import type { ExecutionContext } from 'ava';

export interface Tolerance {
  atol: number;
  rtol: number;
}

export function isClose(actual: number, expected: number, tol: Tolerance): boolean {
  if (Number.isNaN(expected) || Number.isNaN(actual)) return Number.isNaN(expected) && Number.isNaN(actual);
  if (!Number.isFinite(expected) || !Number.isFinite(actual)) return actual === expected;
  return Math.abs(actual - expected) <= tol.atol + tol.rtol * Math.abs(expected);
}

/** Asserts one scalar; the message names label and the tolerance. */
export function assertClose(t: ExecutionContext, actual: number, expected: number, tol: Tolerance, label: string): void {
  t.true(
    isClose(actual, expected, tol),
    `${label}: got ${actual}, expected ${expected} (|diff| ${Math.abs(actual - expected)} > atol ${tol.atol} + rtol ${tol.rtol}·|expected|)`,
  );
}

export interface CloseReport {
  ok: boolean;
  mismatches: number;
  maxAbsDiff: number;
  text: string;
}

/** Elementwise comparison of two arrays; does not assert. */
export function compareArrays(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tolerance, label: string): CloseReport {
  if (actual.length !== expected.length) {
    return { ok: false, mismatches: -1, maxAbsDiff: NaN, text: `${label}: length ${actual.length} != expected ${expected.length}` };
  }
  let mismatches = 0;
  let maxAbsDiff = 0;
  const lines: string[] = [];
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    const d = Math.abs(a - e);
    if (Number.isFinite(d) && d > maxAbsDiff) maxAbsDiff = d;
    if (!isClose(a, e, tol)) {
      mismatches++;
      if (lines.length < 10) lines.push(`  [${i}] got ${a}, expected ${e}`);
    }
  }
  const text =
    mismatches === 0
      ? `${label}: OK (max |diff| ${maxAbsDiff})`
      : `${label}: ${mismatches} of ${expected.length} values outside atol ${tol.atol} + rtol ${tol.rtol}·|expected| (max |diff| ${maxAbsDiff})\n${lines.join('\n')}`;
  return { ok: mismatches === 0, mismatches, maxAbsDiff, text };
}

export function assertAllClose(t: ExecutionContext, actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tolerance, label: string): void {
  const report = compareArrays(actual, expected, tol, label);
  t.true(report.ok, report.text);
}

/** ‖actual − expected‖₂ / ‖expected‖₂ (0 when both are zero, Infinity when only expected is zero). */
export function relativeL2(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < expected.length; i++) {
    const d = actual[i] - expected[i];
    num += d * d;
    den += expected[i] * expected[i];
  }
  if (den === 0) return num === 0 ? 0 : Infinity;
  return Math.sqrt(num / den);
}
