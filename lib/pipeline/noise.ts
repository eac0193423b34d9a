/**
 * Initial-noise generation.
 *
 * `randnTorchCpu` / `TorchCpuGenerator` reproduce `torch.manual_seed(seed); torch.randn(shape)` on PyTorch's CPU
 * generator bit for bit (implemented from PyTorch's BSD sources: c10 mt19937, ATen uniform_real_distribution /
 * normal_distribution, and the CPU `normal_fill` kernels, including the AVX2 one with its Cephes log/sincos and the
 * multiply-adds GCC fuses in it). Verified against torch 1.13.1 (x86-64, AVX2 dispatch); other builds that fuse
 * differently, or the portable kernel used on ARM, can differ in the last bit (see TorchCpuKernel).
 * Seeds from the official Divide & Bind notebooks use a CUDA generator (Philox), which this does not reproduce; for
 * per-seed parity with those runs import the latents with `readLatentsNpy`.
 */
import { NPY_MAX_HEADER_BYTES, parseNpy, readBoundedFile } from '../util/npy';
import { fmaf } from '../schedulers/float32';

// ------------------------------------------------------------------------------------------------ mt19937

const MT_N = 624;
const MT_M = 397;

/**
 * The 32-bit Mersenne Twister as PyTorch seeds it: `torch.manual_seed(s)` keeps only the low 32 bits of the
 * 64-bit seed for the state (c10 `mt19937::init_with_uint32`).
 */
export class Mt19937 {
  private readonly state = new Uint32Array(MT_N);
  private index = MT_N;

  constructor(seed: number | bigint) {
    const s = normaliseSeed(seed, 'seed');
    this.state[0] = Number(s & 0xffffffffn);
    for (let j = 1; j < MT_N; j++) {
      const prev = this.state[j - 1];
      const x = (prev ^ (prev >>> 30)) >>> 0;
      // 1812433253 * x mod 2^32 without losing bits in float64: split the multiplier.
      this.state[j] = ((Math.imul(1812433253, x) >>> 0) + j) >>> 0;
    }
  }

  private twist(): void {
    const st = this.state;
    for (let k = 0; k < MT_N; k++) {
      const y = (st[k] & 0x80000000) | (st[(k + 1) % MT_N] & 0x7fffffff);
      let v = st[(k + MT_M) % MT_N] ^ (y >>> 1);
      if (y & 1) v ^= 0x9908b0df;
      st[k] = v >>> 0;
    }
    this.index = 0;
  }

  /** Next uint32 (`CPUGeneratorImpl::random`). */
  nextUint32(): number {
    if (this.index >= MT_N) this.twist();
    let y = this.state[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** A float in [0, 1) with 24 random bits, as `uniform_real_distribution<float>(0, 1)`. */
  nextFloat24(): number {
    return (this.nextUint32() & 0xffffff) * 2 ** -24;
  }

  /**
   * A double in [0, 1) with 53 random bits, as `uniform_real_distribution<double>(0, 1)`: `random64()` is
   * (first draw << 32) | second draw, masked to its low 53 bits.
   */
  nextDouble53(): number {
    const hi = this.nextUint32();
    const lo = this.nextUint32();
    return ((hi & 0x1fffff) * 2 ** 32 + lo) * 2 ** -53;
  }
}

function normaliseSeed(seed: number | bigint, field: string): bigint {
  if (typeof seed === 'number') {
    if (!Number.isSafeInteger(seed)) {
      throw new RangeError(`Expected a safe integer (or a bigint) for ${field} but received ${seed}; pass large seeds as bigint`);
    }
    seed = BigInt(seed);
  } else if (typeof seed !== 'bigint') {
    throw new TypeError(`Expected a number or bigint for ${field} but received ${typeof seed}`);
  }
  // torch.manual_seed accepts [-2^63, 2^64) and reinterprets negative seeds as uint64.
  if (seed < -(2n ** 63n) || seed >= 2n ** 64n) {
    throw new RangeError(`Expected ${field} in [-2^63, 2^64) like torch.manual_seed but received ${seed}`);
  }
  return seed < 0n ? seed + 2n ** 64n : seed;
}

// ------------------------------------------------------------------------------------------ float32 helpers

const f32 = Math.fround;
const cvtBuf = new DataView(new ArrayBuffer(4));
function bitsOf(x: number): number {
  cvtBuf.setFloat32(0, x, true);
  return cvtBuf.getUint32(0, true);
}
function floatOf(bits: number): number {
  cvtBuf.setUint32(0, bits >>> 0, true);
  return cvtBuf.getFloat32(0, true);
}

// Constants of PyTorch's avx_mathfun.h (the Cephes single-precision polynomials, zlib licence), as float32.
const LOG_P = [
  7.0376836292e-2, -1.151461031e-1, 1.167699874e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
].map(f32);
const LOG_Q1 = f32(-2.1219444e-4);
const LOG_Q2 = f32(0.693359375);
const SQRTHF = f32(Math.SQRT1_2);
const DP1 = f32(-0.78515625);
const DP2 = f32(-2.4187564849853516e-4);
const DP3 = f32(-3.774894977445941e-8);
const SINCOF = [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1].map(f32);
const COSCOF = [2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2].map(f32);
const FOPI = f32(1.27323954473516);
const TWO_PI_F = f32(2 * Math.PI);

/** One lane of `log256_ps`: every operation rounded to float32 in the kernel's order. */
function logAvx(xIn: number): number {
  if (xIn <= 0) return NaN;
  let x = Math.max(xIn, 2 ** -126);
  const bits = bitsOf(x);
  let e = f32((bits >>> 23) - 0x7f + 1);
  x = floatOf((bits & ~0x7f800000) | bitsOf(0.5));
  const below = x < SQRTHF;
  const tmp = below ? x : 0;
  x = f32(x - 1);
  if (below) e = f32(e - 1);
  x = f32(x + tmp);
  const z = f32(x * x);
  let y = LOG_P[0];
  for (let k = 1; k < LOG_P.length; k++) y = fmaf(y, x, LOG_P[k]);
  y = f32(y * x);
  y = fmaf(y, z, f32(e * LOG_Q1));
  y = f32(y - f32(z * 0.5));
  x = f32(x + y);
  return fmaf(e, LOG_Q2, x);
}

/** One lane of `sincos256_ps` for x ≥ 0 (Box-Muller angles are non-negative). Returns [sin, cos]. */
function sinCosAvx(xIn: number, out: Float64Array): void {
  let x = Math.abs(xIn);
  let j = Math.trunc(f32(x * FOPI)) | 0;
  j = (j + 1) & ~1;
  const y = f32(j);
  const sinNeg = ((j & 4) !== 0) !== xIn < 0;
  const polyIsSin = (j & 2) === 0;
  const cosNeg = (~(j - 2) & 4) !== 0;
  x = fmaf(y, DP1, x);
  x = fmaf(y, DP2, x);
  x = fmaf(y, DP3, x);
  const z = f32(x * x);
  let c = COSCOF[0];
  c = fmaf(c, z, COSCOF[1]);
  c = fmaf(c, z, COSCOF[2]);
  c = f32(c * z);
  c = fmaf(c, z, -f32(z * 0.5));
  c = f32(c + 1);
  let s = SINCOF[0];
  s = fmaf(s, z, SINCOF[1]);
  s = fmaf(s, z, SINCOF[2]);
  s = f32(s * z);
  s = fmaf(s, x, x);
  const sinV = polyIsSin ? s : c;
  const cosV = polyIsSin ? c : s;
  out[0] = sinNeg ? -sinV : sinV;
  out[1] = cosNeg ? -cosV : cosV;
}

// ------------------------------------------------------------------------------------------------ normal_

/**
 * Which of PyTorch's CPU `normal_` kernels to reproduce for float32 tensors with ≥ 16 elements:
 * - 'avx2': `normal_fill_AVX2` (Cephes log/sincos polynomials in float32). PyTorch dispatches to it on x86-64 CPUs
 *   with AVX2, i.e. almost every desktop and server (also AVX-512 ones, whose default capability is AVX2).
 * - 'default': the portable `normal_fill` (libm logf/cosf/sinf), used on ARM (Apple silicon, Graviton) and on x86
 *   with `ATEN_CPU_CAPABILITY=default`. JS has only double-precision Math, so this path rounds Math.log/cos/sin to
 *   float32; it can differ from glibc's float functions by 1 ulp in rare elements.
 */
export type TorchCpuKernel = 'avx2' | 'default';

export interface RandnOptions {
  /** Element type of the tensor torch would create; default 'float32'. */
  dtype?: 'float32' | 'float64';
  /** float32 ≥ 16 elements only: the kernel to reproduce (see TorchCpuKernel); default 'avx2'. */
  kernel?: TorchCpuKernel;
}

function checkShape(shape: unknown): number {
  if (!Array.isArray(shape)) throw new TypeError(`Expected an array of integers for shape but received ${typeof shape}`);
  let n = 1;
  shape.forEach((d, i) => {
    if (typeof d !== 'number' || !Number.isInteger(d) || d < 0) {
      throw new RangeError(`Expected a non-negative integer for shape[${i}] but received ${String(d)}`);
    }
    n *= d;
  });
  if (n > 2 ** 31) throw new RangeError(`shape [${shape.join(', ')}] has ${n} elements; at most 2^31 are supported`);
  return n;
}

/** Box-Muller on 8 + 8 uniforms starting at `i` (`normal_fill_16_AVX2`). */
function fill16Avx(d: Float32Array, i: number, sc: Float64Array): void {
  for (let j = 0; j < 8; j++) {
    const u1 = f32(1 - d[i + j]);
    const u2 = d[i + j + 8];
    const radius = f32(Math.sqrt(f32(-2 * logAvx(u1))));
    sinCosAvx(f32(TWO_PI_F * u2), sc);
    // fmadd(n, std = 1, mean = 0) is exact, so it is left out.
    d[i + j] = f32(radius * sc[1]);
    d[i + j + 8] = f32(radius * sc[0]);
  }
}

/** `normal_fill_16<float>`: float libm calls; the angle is computed in double, then stored as float. */
function fill16DefaultF32(d: Float32Array, i: number): void {
  for (let j = 0; j < 8; j++) {
    const u1 = f32(1 - d[i + j]);
    const u2 = d[i + j + 8];
    const radius = f32(Math.sqrt(f32(-2 * f32(Math.log(u1)))));
    const theta = f32(2 * Math.PI * u2);
    d[i + j] = f32(radius * f32(Math.cos(theta)));
    d[i + j + 8] = f32(radius * f32(Math.sin(theta)));
  }
}

/** `normal_fill_16<double>`. */
function fill16F64(d: Float64Array, i: number): void {
  for (let j = 0; j < 8; j++) {
    const u1 = 1 - d[i + j];
    const u2 = d[i + j + 8];
    const radius = Math.sqrt(-2 * Math.log(u1));
    const theta = 2 * Math.PI * u2;
    d[i + j] = radius * Math.cos(theta);
    d[i + j + 8] = radius * Math.sin(theta);
  }
}

/**
 * PyTorch's CPU generator (`torch.Generator().manual_seed(seed)`): an mt19937 plus the cached second Box-Muller value
 * of the scalar path. Successive `randn` calls continue the same stream, as successive torch.randn calls do.
 */
export class TorchCpuGenerator {
  private readonly mt: Mt19937;
  /** `next_double_normal_sample`: r·sin θ left over from the scalar path. */
  private cachedNormal: number | undefined;

  constructor(seed: number | bigint) {
    this.mt = new Mt19937(seed);
  }

  /**
   * `torch.randn(shape, dtype, generator=this)`. Tensors with ≥ 16 elements use the vectorised kernel: all uniforms
   * are drawn first, Box-Muller pairs element j with j + 8 inside each block of 16, and when the size is not a
   * multiple of 16 the last 16 elements are redrawn and recomputed. Smaller tensors use the scalar
   * `normal_distribution<double>` path, which returns r·cos θ and caches r·sin θ for the next element (or call).
   */
  randn(shape: number[], dtype?: 'float32'): Float32Array;
  randn(shape: number[], dtype: 'float64'): Float64Array;
  randn(shape: number[], options: RandnOptions & { dtype?: 'float32' }): Float32Array;
  randn(shape: number[], options: RandnOptions & { dtype: 'float64' }): Float64Array;
  randn(shape: number[], dtypeOrOptions?: 'float32' | 'float64' | RandnOptions): Float32Array | Float64Array;
  randn(shape: number[], dtypeOrOptions: 'float32' | 'float64' | RandnOptions = {}): Float32Array | Float64Array {
    const opts: RandnOptions = typeof dtypeOrOptions === 'string' ? { dtype: dtypeOrOptions } : (dtypeOrOptions ?? {});
    const dtype = opts.dtype ?? 'float32';
    if (dtype !== 'float32' && dtype !== 'float64') {
      throw new RangeError(`Expected 'float32' or 'float64' for dtype but received ${String(dtype)}`);
    }
    const kernel = opts.kernel ?? 'avx2';
    if (kernel !== 'avx2' && kernel !== 'default') {
      throw new RangeError(`Expected 'avx2' or 'default' for kernel but received ${String(kernel)}`);
    }
    const n = checkShape(shape);
    const gen = this.mt;

    if (n < 16) {
      const out = dtype === 'float32' ? new Float32Array(n) : new Float64Array(n);
      for (let i = 0; i < n; i++) {
        if (this.cachedNormal !== undefined) {
          out[i] = this.cachedNormal;
          this.cachedNormal = undefined;
          continue;
        }
        const u1 = gen.nextDouble53();
        const u2 = gen.nextDouble53();
        const r = Math.sqrt(-2 * Math.log(1 - u2));
        const theta = 2 * Math.PI * u1;
        this.cachedNormal = r * Math.sin(theta);
        out[i] = r * Math.cos(theta);
      }
      return out;
    }

    if (dtype === 'float64') {
      const d = new Float64Array(n);
      for (let i = 0; i < n; i++) d[i] = gen.nextDouble53();
      for (let i = 0; i + 16 <= n; i += 16) fill16F64(d, i);
      if (n % 16 !== 0) {
        for (let i = n - 16; i < n; i++) d[i] = gen.nextDouble53();
        fill16F64(d, n - 16);
      }
      return d;
    }

    const d = new Float32Array(n);
    for (let i = 0; i < n; i++) d[i] = gen.nextFloat24();
    const sc = new Float64Array(2);
    const fill = kernel === 'avx2' ? (i: number) => fill16Avx(d, i, sc) : (i: number) => fill16DefaultF32(d, i);
    for (let i = 0; i + 16 <= n; i += 16) fill(i);
    if (n % 16 !== 0) {
      for (let i = n - 16; i < n; i++) d[i] = gen.nextFloat24();
      fill(n - 16);
    }
    return d;
  }
}

/** `torch.manual_seed(seed); torch.randn(shape, dtype)` on the CPU generator, bit for bit (see TorchCpuGenerator). */
export function randnTorchCpu(seed: number | bigint, shape: number[], dtype?: 'float32'): Float32Array;
export function randnTorchCpu(seed: number | bigint, shape: number[], dtype: 'float64'): Float64Array;
export function randnTorchCpu(seed: number | bigint, shape: number[], options: RandnOptions & { dtype?: 'float32' }): Float32Array;
export function randnTorchCpu(seed: number | bigint, shape: number[], options: RandnOptions & { dtype: 'float64' }): Float64Array;
export function randnTorchCpu(seed: number | bigint, shape: number[], dtypeOrOptions: 'float32' | 'float64' | RandnOptions = {}): Float32Array | Float64Array {
  return new TorchCpuGenerator(seed).randn(shape, dtypeOrOptions);
}

// ------------------------------------------------------------------------------------------- latents I/O

/**
 * Reads initial latents from a .npy file (float32, or float64 converted to float32) and checks the shape, so that
 * runs can start from the exact noise of a PyTorch/CUDA run. The read is bounded by the expected shape (float64,
 * plus the header) and refuses FIFOs and devices, so a wrong path fails at once instead of hanging.
 */
export function readLatentsNpy(file: string, expectedShape: number[]): Float32Array {
  if (typeof file !== 'string' || file.length === 0) {
    throw new TypeError(`Expected a file path for latents but received ${typeof file === 'string' ? 'an empty string' : typeof file}`);
  }
  const count = checkShape(expectedShape);
  let buf: Buffer;
  try {
    buf = readBoundedFile(file, NPY_MAX_HEADER_BYTES + count * 8, 'latents');
  } catch (err) {
    if (err instanceof RangeError) throw err;
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new Error(`latents: cannot read ${file} (${code}); save them with numpy.save('latents.npy', latents.cpu().numpy())`);
  }
  const arr = parseNpy(buf, file);
  const same = arr.shape.length === expectedShape.length && arr.shape.every((d, i) => d === expectedShape[i]);
  if (!same) {
    throw new RangeError(
      `latents: ${file} has shape [${arr.shape.join(', ')}] but the pipeline needs [${expectedShape.join(', ')}] (batch, channels, height/f, width/f with f the VAE factor)`,
    );
  }
  let out: Float32Array;
  if (arr.data instanceof Float32Array) out = arr.data;
  else if (arr.data instanceof Float64Array) out = Float32Array.from(arr.data);
  else throw new TypeError(`latents: ${file} has dtype ${arr.dtype}; expected float32 or float64`);
  for (let i = 0; i < out.length; i++) {
    if (!Number.isFinite(out[i])) throw new RangeError(`latents: ${file} holds a non-finite value (${out[i]}) at flat index ${i}`);
  }
  return out;
}
