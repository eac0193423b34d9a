/** float32 arithmetic helpers for bit-exact ports of PyTorch CPU kernels. */

const f32 = Math.fround;
const dblBuf = new DataView(new ArrayBuffer(8));
/**
 * Single-precision fused multiply-add, correctly rounded: a·b is exact in double for float inputs, the sum is
 * rounded to odd in double (TwoSum gives the exact error), and rounding that to float cannot double-round.
 * PyTorch's CPU kernels are built with GCC, which contracts a·b + c into vfmadd (-ffp-contract=fast); ports of those
 * kernels must fuse in the same places to match bit for bit.
 */
export function fmaf(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const bb = s - p;
  const err = p - (s - bb) + (c - bb);
  if (err === 0 || !Number.isFinite(s)) return f32(s);
  dblBuf.setFloat64(0, s, true);
  const lo = dblBuf.getUint32(0, true);
  if ((lo & 1) === 0) {
    // Move one double ulp towards the exact value, which makes the last bit odd (sticky).
    const up = err > 0 === s > 0;
    // lo is even: +1 cannot carry; −1 borrows from the high word only when lo is 0.
    if (up) dblBuf.setUint32(0, lo + 1, true);
    else if (lo !== 0) dblBuf.setUint32(0, lo - 1, true);
    else {
      dblBuf.setUint32(0, 0xffffffff, true);
      dblBuf.setUint32(4, dblBuf.getUint32(4, true) - 1, true);
    }
    return f32(dblBuf.getFloat64(0, true));
  }
  return f32(s);
}
