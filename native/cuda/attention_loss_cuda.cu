// CUDA twin of native/core/attention_loss.cc. Spec: docs/divide-and-bind.md §1, §2, §9.
// The CPU core is the oracle; every formula below mirrors one of its stages (same order of operations where
// it matters for rounding), in double, with only the outputs rounded to float.
//
// Shape legend: T text length; kept tokens [lo, lo+tk); r0 object resolution, n0 = r0*r0; K object tokens;
// a layer is probs (heads, r*r, T). Sources: s = 0 object maps (layers with r == r0), s = 1 attribute maps
// (tv_bind with attributes: layers with r in attribute_resolutions, nearest-sampled to r0).
//
// Kernels, in stream order (three launches per call):
//  1. aggregate_kernel   grid (n0, sources): one block per output pixel reads the kept-token row of every
//     (layer, head) map of the source at the sampled pixel (warps over maps, lanes along T: coalesced), sums in
//     double, then the temperature softmax over the kept tokens -> soft[s][o][j]. Each input value is read
//     once; NaN/Inf found here is reported through an atomicMin key (first layer, then first index).
//  2. token_forward_kernel  grid (K): smoothing, max, TV, JSD, per-token value v_s -> stats[K]; the last block
//     to finish picks the selected token as the CPU does (first maximum) and runs the analytic backward of the
//     small (r0 x r0) stages down to the softmax column -> cg[s][o].
//  3. write_grads_kernel  (device path) every gradient float written exactly once, zeros included, so no
//     separate memset pass is needed. The host path instead copies soft/cg back and expands the rows on the
//     host like the CPU core does.
// Small call descriptions (map pointers, layer list, token columns) travel as kernel parameters.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>

#include "attention_loss_cuda.h"
#include "attention_loss_cuda_internal.h"

namespace divbind::cuda {
namespace {

// ------------------------------------------------------------------------------------------------
// Error handling: every CUDA call and launch is checked; failures become std::runtime_error.

[[noreturn]] void throw_cuda(cudaError_t e, const char* what, int line) {
  std::ostringstream m;
  m << "CUDA error in " << what << " (attention_loss_cuda.cu:" << line << "): " << cudaGetErrorName(e) << ": "
    << cudaGetErrorString(e);
  throw std::runtime_error(m.str());
}

#define DB_CUDA(call)                                                 \
  do {                                                                \
    const cudaError_t db_err_ = (call);                               \
    if (db_err_ != cudaSuccess) throw_cuda(db_err_, #call, __LINE__); \
  } while (0)

// After a <<<...>>> launch: configuration errors surface here, execution errors at the next sync.
#define DB_LAUNCHED(name) DB_CUDA(cudaGetLastError())

constexpr int kThreads = 256;  // every kernel; the reductions assume a multiple of 32, at most 1024
constexpr int kStats = 8;      // per token: m, tv, jsd, has_jsd, coefficient, value
enum Stat { kMax = 0, kTv = 1, kJsd = 2, kHasJsd = 3, kCoef = 4, kValue = 5 };
enum Mode { kModeMax = 0, kModeTv = 1, kModeTvBind = 2, kModeTvMax = 3 };
constexpr unsigned long long kNoNan = ~0ull;

// One (layer, head) map of a source as the aggregation reads it.
struct MapDesc {
  const float* head;  // probs of this head: (res*res, T)
  int res;            // storage resolution (r, or r0 for rows the host path packed already sampled)
  int orig_res;       // the layer's resolution (for error messages)
  int layer;          // index into the caller's layer list
  int head_index;
};

// One gradient buffer as the write kernel sees it (device path).
struct WriteLayer {
  float* grad;
  int heads;
  int res;
  int obj;   // r == r0
  int attr;  // r in attribute_resolutions (and attributes active)
};

// Small call descriptions travel as kernel parameters (no host-to-device copy on the critical path) when they
// fit; larger ones are uploaded. Kernel parameters above 4 KB need CUDA >= 12.1 on sm_70+ (this is sm_90).
constexpr int kInlineMaps = 192;   // SD 1.x tv_bind: 40 object + 80 attribute maps
constexpr int kInlineLayers = 64;  // SD 1.x: 16 cross-attention layers
constexpr int kInlineTokens = 32;

struct Meta {
  MapDesc maps[kInlineMaps];
  WriteLayer layers[kInlineLayers];
};

struct Params {
  int T, lo, tk, r0, n0, K;
  int mode, hinge, neighbor, smoothing, attr_active;
  int inline_meta;  // maps / layers are in the Meta kernel parameter, else at maps / wlayers
  int inline_cols;  // token columns are in cols, else at tok_col / attr_col
  int with_backward;
  float inv_T;  // 1/T, for the write kernel's element -> (pixel, token) split
  double w[3];
  double temperature, rho_low, rho_high, tv_switch, eps, coef, w_tv, w_max;
  double inv_maps[2];
  int map_begin[2], map_count[2];
  int cols[2][kInlineTokens];
  const MapDesc* maps;
  const WriteLayer* wlayers;
  const int* tok_col;           // (K) column in the kept range
  const int* attr_col;          // (K) column or -1
  double* soft;                 // (2, n0, tk) token softmax per source
  double* amap;                 // (K, n0) smoothed object maps
  double* cmap;                 // (K, n0) smoothed attribute maps (tokens with an attribute)
  double* scratch;              // (6, n0) backward scratch
  double* stats;                // (K, kStats)
  double* cg;                   // (2, n0) gradient coefficient per pixel: temperature * dS * S_col / N
  int* sel;                     // selected token, any gradient, attribute gradient
  unsigned long long* nan_key;  // atomicMin target; reset to kNoNan by token_forward_kernel for the next call
  unsigned long long* nan_out;  // this call's key, copied back to the host
  unsigned* counter;            // token blocks done; the last one runs the backward, then resets it to 0
  float* out_obj;               // (K, n0) or null
  float* out_attr;              // (K, n0) or null
};

__device__ __forceinline__ int tok_col_at(const Params& P, int i) {
  return P.inline_cols ? P.cols[0][i] : P.tok_col[i];
}
__device__ __forceinline__ int attr_col_at(const Params& P, int i) {
  return P.inline_cols ? P.cols[1][i] : P.attr_col[i];
}

// ------------------------------------------------------------------------------------------------
// Block helpers

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_max(double v) {
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Reduction over the whole block; every thread gets the result. sh: 33 doubles of shared memory.
template <bool kIsMax>
__device__ double block_reduce(double v, double* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = kIsMax ? warp_max(v) : warp_sum(v);
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double x = lane < nw ? sh[lane] : (kIsMax ? -INFINITY : 0.0);
    x = kIsMax ? warp_max(x) : warp_sum(x);
    if (lane == 0) sh[32] = x;
  }
  __syncthreads();
  const double r = sh[32];
  __syncthreads();  // sh may be reused right away
  return r;
}
// N reductions at once (bit i of kMaxMask: value i is a max, else a sum); one set of barriers for all.
// sh: 33 * N doubles of shared memory.
template <int N, unsigned kMaxMask>
__device__ void block_reduce_n(double (&v)[N], double* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = ((kMaxMask >> i) & 1u) ? warp_max(v[i]) : warp_sum(v[i]);
  if (lane == 0)
#pragma unroll
    for (int i = 0; i < N; ++i) sh[i * 33 + warp] = v[i];
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const bool is_max = (kMaxMask >> i) & 1u;
      double x = lane < nw ? sh[i * 33 + lane] : (is_max ? -INFINITY : 0.0);
      x = is_max ? warp_max(x) : warp_sum(x);
      if (lane == 0) sh[i * 33 + 32] = x;
    }
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = sh[i * 33 + 32];
  __syncthreads();
}
__device__ __forceinline__ double block_sum(double v, double* sh) { return block_reduce<false>(v, sh); }
__device__ __forceinline__ double block_max(double v, double* sh) { return block_reduce<true>(v, sh); }

__device__ __forceinline__ int nearest_index(int o, int n_in, int n_out) {
  return static_cast<int>((static_cast<long long>(o) * n_in) / n_out);
}
__device__ __forceinline__ int reflect(int i, int n) { return i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i); }
__device__ __forceinline__ double sgn(double d) { return d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0); }

// ------------------------------------------------------------------------------------------------
// 1. Aggregation + token softmax. grid (n0, sources), block kThreads.
//    soft[s][o][j] = softmax_j(temperature * (1/N_s) * sum_{maps} probs[map, sampled(o), lo + j])

__device__ void report_nonfinite(const Params& P, const MapDesc& d, int s, int o, int t) {
  const int y = nearest_index(o / P.r0, d.orig_res, P.r0), x = nearest_index(o % P.r0, d.orig_res, P.r0);
  const unsigned long long hw = static_cast<unsigned long long>(d.orig_res) * d.orig_res;
  unsigned long long index = ((d.head_index * hw) + static_cast<unsigned long long>(y) * d.orig_res + x) * P.T + t;
  index = index < (1ull << 40) ? index : (1ull << 40) - 1;
  // The CPU core scans object layers first, then attribute layers, each in layer order: same key order.
  const unsigned long long key =
      (static_cast<unsigned long long>(s) << 62) | (static_cast<unsigned long long>(d.layer & 0x3fffff) << 40) | index;
  atomicMin(P.nan_key, key);
}

constexpr int kAggChunks = 4;  // kept tokens per pass: 4 x 32 lanes (T = 77 needs one pass)

__global__ void __launch_bounds__(kThreads, 4)
    aggregate_kernel(const __grid_constant__ Params P, const __grid_constant__ Meta meta) {
  __shared__ double red[kThreads / 32][kAggChunks * 32];
  __shared__ double sh[33];
  const int o = blockIdx.x, s = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int oy = o / P.r0, ox = o % P.r0;
  const MapDesc* maps = (P.inline_meta ? meta.maps : P.maps) + P.map_begin[s];
  const int nm = P.map_count[s];
  double* out = P.soft + (static_cast<size_t>(s) * P.n0 + o) * P.tk;

  for (int base = 0; base < P.tk; base += kAggChunks * 32) {
    double acc[kAggChunks] = {};
    // one warp per (layer, head) map, lanes along the tokens (coalesced); two maps = eight loads in flight
    int m = warp;
    for (; m + nw < nm; m += 2 * nw) {
      const MapDesc d0 = maps[m], d1 = maps[m + nw];
      // nearest sampling: output o reads input floor(o * res / r0); 32-bit (o < r0 <= 4096, res <= 4096)
      const float* r0p =
          d0.head + (static_cast<long long>((oy * d0.res) / P.r0) * d0.res + (ox * d0.res) / P.r0) * P.T + P.lo + base;
      const float* r1p =
          d1.head + (static_cast<long long>((oy * d1.res) / P.r0) * d1.res + (ox * d1.res) / P.r0) * P.T + P.lo + base;
      float v0[kAggChunks], v1[kAggChunks];
#pragma unroll
      for (int u = 0; u < kAggChunks; ++u) {
        const bool ok = base + u * 32 + lane < P.tk;
        v0[u] = ok ? __ldg(r0p + u * 32 + lane) : 0.f;
        v1[u] = ok ? __ldg(r1p + u * 32 + lane) : 0.f;
      }
#pragma unroll
      for (int u = 0; u < kAggChunks; ++u) {
        const int t = P.lo + base + u * 32 + lane;
        if (!isfinite(v0[u])) report_nonfinite(P, d0, s, o, t);
        if (!isfinite(v1[u])) report_nonfinite(P, d1, s, o, t);
        acc[u] += v0[u];
        acc[u] += v1[u];
      }
    }
    if (m < nm) {
      const MapDesc d0 = maps[m];
      const float* r0p =
          d0.head + (static_cast<long long>((oy * d0.res) / P.r0) * d0.res + (ox * d0.res) / P.r0) * P.T + P.lo + base;
#pragma unroll
      for (int u = 0; u < kAggChunks; ++u) {
        const bool ok = base + u * 32 + lane < P.tk;
        const float v = ok ? __ldg(r0p + u * 32 + lane) : 0.f;
        if (!isfinite(v)) report_nonfinite(P, d0, s, o, P.lo + base + u * 32 + lane);
        acc[u] += v;
      }
    }
#pragma unroll
    for (int u = 0; u < kAggChunks; ++u) red[warp][u * 32 + lane] = acc[u];
    __syncthreads();
    for (int j = threadIdx.x; j < kAggChunks * 32 && base + j < P.tk; j += blockDim.x) {
      double sum = 0;
      for (int w = 0; w < nw; ++w) sum += red[w][j];
      out[base + j] = sum * P.inv_maps[s];  // mean over the source's (layer, head) maps
    }
    __syncthreads();
  }
  // S[o, :] = softmax(temperature * mean[o, :]) over the kept tokens (CPU: token_softmax_forward)
  double mx = -INFINITY;
  for (int j = threadIdx.x; j < P.tk; j += blockDim.x) mx = fmax(mx, P.temperature * out[j]);
  mx = block_max(mx, sh);
  double z = 0;
  for (int j = threadIdx.x; j < P.tk; j += blockDim.x) {
    const double e = exp(P.temperature * out[j] - mx);
    out[j] = e;
    z += e;
  }
  z = block_sum(z, sh);
  const double inv = 1.0 / z;
  for (int j = threadIdx.x; j < P.tk; j += blockDim.x) out[j] *= inv;
}

// ------------------------------------------------------------------------------------------------
// 2. Per-token forward. grid (K), block kThreads; every loop strides over the n0 pixels.

// A[y, x] = sum_{a,b} w[a] w[b] S[refl(y+a-1), refl(x+b-1)] for column col of soft (n0, tk)
__device__ double smooth_at(const Params& P, const double* soft, int col, int p) {
  if (!P.smoothing) return soft[static_cast<size_t>(p) * P.tk + col];
  const int r0 = P.r0, y = p / r0, x = p % r0;
  double acc = 0;
  for (int a = 0; a < 3; ++a) {
    const int yy = reflect(y + a - 1, r0);
    for (int b = 0; b < 3; ++b) {
      const int xx = reflect(x + b - 1, r0);
      acc += P.w[a] * P.w[b] * soft[static_cast<size_t>(yy * r0 + xx) * P.tk + col];
    }
  }
  return acc;
}

// Per-thread partial sums of TV's two terms: TV = H/pairs + V/pairs (CPU: tv_forward)
__device__ void tv_partials(const Params& P, const double* A, double* h, double* v) {
  const int r0 = P.r0;
  for (int p = threadIdx.x; p < P.n0; p += blockDim.x) {
    const int y = p / r0, x = p % r0;
    if (x + 1 < r0) *h += fabs(A[p] - A[p + 1]);
    if (P.neighbor) {
      if (y + 1 < r0) *v += fabs(A[p] - A[p + r0]);
    } else if (y >= 1) {
      *v += fabs(A[(r0 - 1) * r0 + x] - A[p]);
    }
  }
}

struct JsdScalars {
  double m_o, m_c, scale, zp, mxq, zq, pmax, tau;
};

// CPU: jsd_forward's scalars. p = softmax(O), q = softmax(C * m_o / m_c), tau = rho * max(p). sh: 99 doubles.
__device__ JsdScalars jsd_scalars(const Params& P, const double* A, const double* C, double rho, double* sh) {
  JsdScalars j;
  double r1[2] = {-INFINITY, -INFINITY};  // max(O), max(C)
  for (int p = threadIdx.x; p < P.n0; p += blockDim.x) {
    r1[0] = fmax(r1[0], A[p]);
    r1[1] = fmax(r1[1], C[p]);
  }
  block_reduce_n<2, 3u>(r1, sh);
  j.m_o = r1[0];
  j.m_c = r1[1];
  j.scale = j.m_o / j.m_c;
  double r2[2] = {0.0, -INFINITY};  // sum exp(O - m_o), max(C * scale)
  for (int p = threadIdx.x; p < P.n0; p += blockDim.x) {
    r2[0] += exp(1.0 * A[p] - j.m_o);
    r2[1] = fmax(r2[1], j.scale * C[p]);
  }
  block_reduce_n<2, 2u>(r2, sh);
  j.zp = r2[0];
  j.mxq = r2[1];
  double r3[2] = {0.0, -INFINITY};  // sum exp(C * scale - mxq), max(p)
  for (int p = threadIdx.x; p < P.n0; p += blockDim.x) {
    r3[0] += exp(j.scale * C[p] - j.mxq);
    r3[1] = fmax(r3[1], exp(1.0 * A[p] - j.m_o) / j.zp);
  }
  block_reduce_n<2, 2u>(r3, sh);
  j.zq = r3[0];
  j.pmax = r3[1];
  j.tau = rho * j.pmax;
  return j;
}
__device__ __forceinline__ double p_at(const JsdScalars& j, const double* A, int p) {
  return exp(1.0 * A[p] - j.m_o) / j.zp;
}
__device__ __forceinline__ double q_at(const JsdScalars& j, const double* C, int p) {
  return exp(j.scale * C[p] - j.mxq) / j.zq;
}

__device__ __forceinline__ double binding_rho(const Params& P, double tv) {
  return tv < P.tv_switch ? P.rho_low : P.rho_high;
}

// ------------------------------------------------------------------------------------------------
// 3. Selection + backward of the small stages, run by one block (the last token block to finish).

// Taps of the reflect-padded 3-tap filter that read input index yy: pairs (output y, tap a).
__device__ __forceinline__ int smooth_taps(int yy, int n, int* ys, int* as) {
  int c = 0;
  for (int a = 0; a < 3; ++a) {
    const int y = yy - a + 1;
    if (y >= 0 && y < n) {
      ys[c] = y;
      as[c] = a;
      ++c;
    }
  }
  if (yy == 1) {
    ys[c] = 0;
    as[c] = 0;
    ++c;
  }  // output 0 reads refl(-1) = 1
  if (yy == n - 2) {
    ys[c] = n - 1;
    as[c] = 2;
    ++c;
  }  // output n-1 reads refl(n) = n-2
  return c;
}

// d_in[p] = sum over (output, tap) reading p of w[a] w[b] d_out[output] (CPU: smooth_backward, gathered)
__device__ double smooth_adjoint_at(const Params& P, const double* d_out, int p) {
  if (!P.smoothing) return d_out[p];
  const int r0 = P.r0, yy = p / r0, xx = p % r0;
  int ys[5], as[5], xs[5], bs[5];
  const int ny = smooth_taps(yy, r0, ys, as), nx = smooth_taps(xx, r0, xs, bs);
  double acc = 0;
  for (int u = 0; u < ny; ++u)
    for (int v = 0; v < nx; ++v) acc += P.w[as[u]] * P.w[bs[v]] * d_out[ys[u] * r0 + xs[v]];
  return acc;
}

// The selected token and the seeds of its backward (dL/dm, dL/dTV), as the CPU core's select_token and
// token_backward. Thread 0 selects; every thread returns the same seed.
struct BackwardSeed {
  int s;
  bool any;       // L has a gradient (false: A&E hinge at 1 - m <= 0)
  bool jsd_grad;  // tv_bind and the token has a JSD term
  double m, tv, d_m, d_tv;
};

__device__ BackwardSeed backward_seed(const Params& P, int* s_sel) {
  if (threadIdx.x == 0) {
    // L = max_s(-v_s) (or max_s hinge_s): Python's builtin max keeps the FIRST maximal element.
    int sel = 0;
    for (int s = 1; s < P.K; ++s) {
      const double cand = P.hinge ? __ldcg(P.stats + s * kStats + kValue) : -__ldcg(P.stats + s * kStats + kValue);
      const double best = P.hinge ? __ldcg(P.stats + sel * kStats + kValue) : -__ldcg(P.stats + sel * kStats + kValue);
      if (cand > best) sel = s;
    }
    *s_sel = sel;
  }
  __syncthreads();
  BackwardSeed b;
  b.s = *s_sel;
  const double* st = P.stats + static_cast<size_t>(b.s) * kStats;
  b.m = __ldcg(st + kMax);
  b.tv = __ldcg(st + kTv);
  b.any = true;
  b.d_m = b.d_tv = 0;
  switch (P.mode) {
    case kModeMax:
      if (P.hinge && !(1.0 - b.m > 0))
        b.any = false;  // hinge: no gradient when 1 - m <= 0
      else
        b.d_m = -1.0;
      break;
    case kModeTv: b.d_tv = -1.0; break;
    case kModeTvMax:
      b.d_m = -P.w_max;
      b.d_tv = -P.w_tv;
      break;
    default: b.d_tv = -1.0; break;
  }
  b.jsd_grad = P.mode == kModeTvBind && __ldcg(st + kHasJsd) != 0.0;
  if (threadIdx.x == 0) {
    P.sel[0] = b.s;
    P.sel[1] = b.any ? 1 : 0;
    P.sel[2] = b.any && b.jsd_grad ? 1 : 0;
  }
  return b;
}

// dA, dC (n0) += backward of v's binding term -coef * JSD(A, C). gp, gq: (n0) scratch. ties_a: ties of A's max.
// In the forward this was (CPU jsd_forward): JSD of p' = relu(p - tau) + eps and q' = relu(q - tau) + eps
__device__ void jsd_backward_block(const Params& P, const double* A, const double* C, double* dA, double* dC,
                                   double* gp, double* gq, double tv, double ties_a, double* sh) {
  const int n = P.n0;
  const double rho = binding_rho(P, tv), d_j = P.coef;
  const JsdScalars js = jsd_scalars(P, A, C, rho, sh);
  // 4. j += 1/2 p' (ln p' - ln M) + 1/2 q' (ln q' - ln M): dj/dp' = 1/2 ln(p'/M), same for q'
  // 3. p' = relu(p - tau) + eps, q' = relu(q - tau) + eps (relu'(0) = 0)
  double part = 0, pt = 0;
  for (int p = threadIdx.x; p < n; p += blockDim.x) {
    const double pv = p_at(js, A, p), qv = q_at(js, C, p);
    const double pp = fmax(pv - js.tau, 0.0) + P.eps, qq = fmax(qv - js.tau, 0.0) + P.eps;
    const double mm = 0.5 * (pp + qq);
    const double g_p = pv - js.tau > 0 ? d_j * 0.5 * log(pp / mm) : 0.0;
    const double g_q = qv - js.tau > 0 ? d_j * 0.5 * log(qq / mm) : 0.0;
    part += g_p + g_q;
    pt += pv == js.pmax ? 1.0 : 0.0;
    gp[p] = g_p;
    gq[p] = g_q;
  }
  double r2[2] = {part, pt};
  block_reduce_n<2, 0u>(r2, sh);
  const double d_tau = -r2[0];
  const double ties_p = r2[1];
  // 2. tau = rho * max(p): split evenly among ties
  const double share_tau = rho * d_tau / ties_p;
  double qg = 0;
  for (int p = threadIdx.x; p < n; p += blockDim.x) {
    if (p_at(js, A, p) == js.pmax) gp[p] += share_tau;
    qg += q_at(js, C, p) * gq[p];
  }
  qg = block_sum(qg, sh);
  // 1b. q = softmax(C * m_o / m_c): g_x = q (g_q - <q, g_q>)
  double ds = 0, ct = 0, pg = 0;
  for (int p = threadIdx.x; p < n; p += blockDim.x) {
    const double gx = q_at(js, C, p) * (gq[p] - qg);
    dC[p] += gx * js.scale;
    ds += gx * C[p];
    ct += C[p] == js.m_c ? 1.0 : 0.0;
    pg += p_at(js, A, p) * gp[p];
  }
  double r3[3] = {ds, ct, pg};
  block_reduce_n<3, 0u>(r3, sh);
  const double d_scale = r3[0];
  const double ties_c = r3[1];
  pg = r3[2];
  // scale = max(O) / max(C);  1a. p = softmax(O): d_o = p (g_p - <p, g_p>)
  const double share_o = (d_scale / js.m_c) / ties_a;
  const double share_c = (-d_scale * js.m_o / (js.m_c * js.m_c)) / ties_c;
  for (int p = threadIdx.x; p < n; p += blockDim.x) {
    if (A[p] == js.m_o) dA[p] += share_o;
    if (C[p] == js.m_c) dC[p] += share_c;
    dA[p] += p_at(js, A, p) * (gp[p] - pg);
  }
}

// dA (n0) += backward of the map max (d_m) and of TV (d_tv). ties_a: ties of A at its max m.
__device__ void max_tv_backward_block(const Params& P, const double* A, double* dA, const BackwardSeed& b,
                                      double ties_a) {
  const int n = P.n0;
  if (b.d_m != 0.0) {
    // In the forward this was: m = max(A); split evenly among ties
    const double share = b.d_m / ties_a;
    for (int p = threadIdx.x; p < n; p += blockDim.x)
      if (A[p] == b.m) dA[p] += share;
  }
  if (b.d_tv == 0.0) return;
  // In the forward this was: TV = H/pairs + V/pairs (gathered per pixel: each |.| pair it takes part in)
  const int r0 = P.r0, last = (r0 - 1) * r0;
  const double g = b.d_tv / (static_cast<double>(r0) * (r0 - 1));
  for (int p = threadIdx.x; p < n; p += blockDim.x) {
    const int y = p / r0, x = p % r0;
    double acc = 0;
    if (P.neighbor) {
      if (y + 1 < r0) acc += g * sgn(A[p] - A[p + r0]);
      if (y >= 1) acc -= g * sgn(A[p - r0] - A[p]);
    } else {
      if (y >= 1) acc -= g * sgn(A[last + x] - A[p]);
      if (y == r0 - 1)
        for (int yy = 1; yy < r0; ++yy) acc += g * sgn(A[last + x] - A[yy * r0 + x]);
    }
    if (x + 1 < r0) acc += g * sgn(A[p] - A[p + 1]);
    if (x >= 1) acc -= g * sgn(A[p - 1] - A[p]);
    dA[p] += acc;
  }
}

// Smoothing backward, then the softmax column: cg[o] = temperature * dS[o] * S[o, col] / N, per source.
__device__ void column_backward_block(const Params& P, const double* dA, const double* dC, int s, bool jsd_grad) {
  const int n = P.n0;
  const double* soft0 = P.soft;
  const double* soft1 = P.soft + static_cast<size_t>(n) * P.tk;
  const int col = tok_col_at(P, s), acol = attr_col_at(P, s);
  for (int p = threadIdx.x; p < n; p += blockDim.x) {
    const double g0 = smooth_adjoint_at(P, dA, p) * P.temperature;
    P.cg[p] = soft0[static_cast<size_t>(p) * P.tk + col] * g0 * P.inv_maps[0];
    if (jsd_grad) {
      const double g1 = smooth_adjoint_at(P, dC, p) * P.temperature;
      P.cg[n + p] = soft1[static_cast<size_t>(p) * P.tk + acol] * g1 * P.inv_maps[1];
    } else {
      P.cg[n + p] = 0.0;
    }
  }
}

// Run by the last token block to finish (see token_forward_kernel). Other blocks wrote the stats and maps it
// reads, so those reads bypass L1 (__ldcg) after the fence; the selected token's maps are copied to scratch.
__device__ void token_backward_body(const Params& P, double* sh, int* s_sel) {
  const int n = P.n0;
  const BackwardSeed b = backward_seed(P, s_sel);
  if (!b.any) {
    for (int p = threadIdx.x; p < n; p += blockDim.x) P.cg[p] = P.cg[n + p] = 0.0;
    return;
  }
  double* A = P.scratch;  // (6, n0): A, C copies, dA, dC, gp, gq
  double* C = A + n;
  double* dA = C + n;
  double* dC = dA + n;
  double* gp = dC + n;
  double* gq = gp + n;
  for (int p = threadIdx.x; p < n; p += blockDim.x) {
    A[p] = __ldcg(P.amap + static_cast<size_t>(b.s) * n + p);
    C[p] = b.jsd_grad ? __ldcg(P.cmap + static_cast<size_t>(b.s) * n + p) : 0.0;
    dA[p] = dC[p] = 0.0;
  }
  __syncthreads();
  // ties of A at its max (shared by the map max and the binding rescale)
  double cnt = 0;
  for (int p = threadIdx.x; p < n; p += blockDim.x) cnt += A[p] == b.m ? 1.0 : 0.0;
  const double ties_a = block_sum(cnt, sh);
  if (b.jsd_grad) jsd_backward_block(P, A, C, dA, dC, gp, gq, b.tv, ties_a, sh);
  max_tv_backward_block(P, A, dA, b, ties_a);
  __syncthreads();
  column_backward_block(P, dA, dC, b.s, b.jsd_grad);
}

__global__ void __launch_bounds__(kThreads) token_forward_kernel(const __grid_constant__ Params P) {
  __shared__ double sh[3 * 33];
  const int i = blockIdx.x, n = P.n0;
  if (i == 0 && threadIdx.x == 0) {  // the aggregation is complete: hand its NaN key over, re-arm for the next call
    *P.nan_out = *P.nan_key;
    *P.nan_key = kNoNan;
  }
  double* A = P.amap + static_cast<size_t>(i) * n;
  double* C = P.cmap + static_cast<size_t>(i) * n;
  const int col = tok_col_at(P, i);
  const int acol = attr_col_at(P, i);
  const bool has_attr = P.attr_active && acol >= 0;
  const double* soft0 = P.soft;
  const double* soft1 = P.soft + static_cast<size_t>(n) * P.tk;
  for (int p = threadIdx.x; p < n; p += blockDim.x) {
    const double a = smooth_at(P, soft0, col, p);
    A[p] = a;
    if (P.out_obj) P.out_obj[static_cast<size_t>(i) * n + p] = static_cast<float>(a);
    if (has_attr) {
      const double c = smooth_at(P, soft1, acol, p);
      C[p] = c;
      if (P.out_attr) P.out_attr[static_cast<size_t>(i) * n + p] = static_cast<float>(c);
    } else if (P.out_attr) {
      P.out_attr[static_cast<size_t>(i) * n + p] = 0.f;
    }
  }
  __syncthreads();
  double r[3] = {-INFINITY, 0.0, 0.0};  // max(A), H and V sums of TV
  for (int p = threadIdx.x; p < n; p += blockDim.x) r[0] = fmax(r[0], A[p]);
  tv_partials(P, A, &r[1], &r[2]);
  block_reduce_n<3, 1u>(r, sh);
  const double m = r[0];
  const double pairs = static_cast<double>(P.r0) * (P.r0 - 1);
  const double tv = r[1] / pairs + r[2] / pairs;
  double value = 0, jsd = 0, coef = 0;
  bool has_jsd = false;
  switch (P.mode) {
    case kModeMax: value = P.hinge ? fmax(0.0, 1.0 - m) : m; break;
    case kModeTv: value = tv; break;
    case kModeTvMax: value = P.w_tv * tv + P.w_max * m; break;
    default:  // tv_bind: the coefficient is reported for every token, used where there is a JSD term
      value = tv;
      coef = P.coef;
      if (has_attr) {
        const JsdScalars js = jsd_scalars(P, A, C, binding_rho(P, tv), sh);
        double part = 0;
        for (int p = threadIdx.x; p < n; p += blockDim.x) {
          const double pp = fmax(p_at(js, A, p) - js.tau, 0.0) + P.eps;  // p' = relu(p - tau) + eps
          const double qq = fmax(q_at(js, C, p) - js.tau, 0.0) + P.eps;  // q' = relu(q - tau) + eps
          const double lm = log(0.5 * (pp + qq));                        // ln M
          part += 0.5 * pp * (log(pp) - lm) + 0.5 * qq * (log(qq) - lm);
        }
        jsd = block_sum(part, sh);
        has_jsd = true;
        value = tv - P.coef * jsd;
      }
      break;
  }
  if (threadIdx.x == 0) {
    double* st = P.stats + static_cast<size_t>(i) * kStats;
    st[kMax] = m;
    st[kTv] = tv;
    st[kJsd] = jsd;
    st[kHasJsd] = has_jsd ? 1.0 : 0.0;
    st[kCoef] = coef;
    st[kValue] = value;
  }
  if (!P.with_backward) return;
  // The last token block to finish runs the selection and the backward (one launch less): classic
  // fence + atomic counter; the counter is re-armed to 0 for the next call.
  __shared__ int last, s_sel;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(P.counter, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (threadIdx.x == 0) *P.counter = 0u;
  token_backward_body(P, sh, &s_sel);
}

// ------------------------------------------------------------------------------------------------
// 4. Gradient write (device path). grid (X, layers): block (bx, l) writes the image rows (head, y) = bx, bx + X,
//    ... of layer l, res*T contiguous floats each, so every gradient float is written exactly once (no memset
//    pass). Image rows no output samples are zero-filled with 16-byte stores; the others are written flat
//    (16-byte stores; each element split into pixel x and token t). In the forward this was:
//    S = softmax(temperature * mean), mean = (1/N) sum of the sampled rows, so an input pixel's row is
//    sum over the outputs o that sample it of cg[o] * (delta_{j,col} - S[o, j]) on the kept tokens t = lo + j
//    (one output, or none, unless res < r0), and 0 elsewhere. README.md (optimisation log) has the earlier versions.

__device__ __forceinline__ int ceil_div_ll(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

// n floats at p (4-byte aligned) set to zero by the whole block: scalar head to 16-byte alignment, float4 body.
__device__ void block_zero(float* p, long long n) {
  const long long misalign = static_cast<long long>((reinterpret_cast<uintptr_t>(p) & 15) >> 2);
  const long long head = min(n, misalign ? 4 - misalign : 0);
  for (long long i = threadIdx.x; i < head; i += blockDim.x) p[i] = 0.f;
  float4* q = reinterpret_cast<float4*>(p + head);
  const long long n4 = (n - head) >> 2;
  const float4 z = make_float4(0.f, 0.f, 0.f, 0.f);
  for (long long i = threadIdx.x; i < n4; i += blockDim.x) q[i] = z;
  for (long long i = head + n4 * 4 + threadIdx.x; i < n; i += blockDim.x) p[i] = 0.f;
}

// Element i (= x * T + t) of an image row that has non-zero entries.
struct RowCtx {
  const double* cg0;    // cg[0] at (y, 0) when the layer is an object layer (res == r0), else null
  const double* soft0;  // S[0] at (y, 0)
  const double* cg1;    // cg[1] when attribute outputs sample this row, else null
  const double* soft1;
  const int* ox;  // (2, res) shared: outputs [ox[x], ox[res + x]) sample input column x
  int col0, col1, oy0, oy1, res, r0, T, lo, tk;
  float inv_T;
  bool fast_div, single;  // single: at most one output per input row/column (res >= r0)
};

__device__ __forceinline__ float row_value(const RowCtx& c, int i) {
  int x = c.fast_div ? __float2int_rz(__int2float_rn(i) * c.inv_T) : i / c.T;  // off by at most one when fast
  int t = i - x * c.T;
  if (t < 0) {
    --x;
    t += c.T;
  } else if (t >= c.T) {
    ++x;
    t -= c.T;
  }
  const int j = t - c.lo;
  if (j < 0 || j >= c.tk) return 0.f;
  double v = 0;
  if (c.cg0) v += c.cg0[x] * ((j == c.col0 ? 1.0 : 0.0) - c.soft0[static_cast<size_t>(x) * c.tk + j]);
  if (c.cg1) {
    const double d1 = j == c.col1 ? 1.0 : 0.0;
    if (c.single) {
      if (c.ox[x] < c.ox[c.res + x]) {
        const int o = c.oy0 * c.r0 + c.ox[x];
        v += c.cg1[o] * (d1 - c.soft1[static_cast<size_t>(o) * c.tk + j]);
      }
    } else {
      for (int oy = c.oy0; oy < c.oy1; ++oy)
        for (int ox = c.ox[x]; ox < c.ox[c.res + x]; ++ox) {
          const int o = oy * c.r0 + ox;
          v += c.cg1[o] * (d1 - c.soft1[static_cast<size_t>(o) * c.tk + j]);
        }
    }
  }
  return static_cast<float>(v);
}

__global__ void __launch_bounds__(kThreads)
    write_grads_kernel(const __grid_constant__ Params P, const __grid_constant__ Meta meta) {
  extern __shared__ int ox_range[];  // (2, res)
  const WriteLayer L = P.inline_meta ? meta.layers[blockIdx.y] : P.wlayers[blockIdx.y];
  const int r0 = P.r0, res = L.res, T = P.T;
  const bool any = P.sel[1] != 0;
  const bool obj = any && L.obj;
  const bool attr = any && P.sel[2] != 0 && L.attr;
  if (attr) {  // outputs o with floor(o * res / r0) == x: [ceil(x r0 / res), ceil((x+1) r0 / res))
    for (int x = threadIdx.x; x < res; x += blockDim.x) {
      ox_range[x] = ceil_div_ll(static_cast<long long>(x) * r0, res);
      ox_range[res + x] = min(r0, ceil_div_ll(static_cast<long long>(x + 1) * r0, res));
    }
    __syncthreads();
  }
  const long long image_rows = static_cast<long long>(L.heads) * res;
  const long long span = static_cast<long long>(res) * T;
  for (long long ir = blockIdx.x; ir < image_rows; ir += gridDim.x) {
    const int y = static_cast<int>(ir % res);
    float* dst = L.grad + ir * span;
    RowCtx c;
    c.oy0 = c.oy1 = 0;
    if (attr) {
      c.oy0 = ceil_div_ll(static_cast<long long>(y) * r0, res);
      c.oy1 = min(r0, ceil_div_ll(static_cast<long long>(y + 1) * r0, res));
    }
    if (!obj && c.oy0 >= c.oy1) {
      block_zero(dst, span);
      continue;
    }
    const int sel = P.sel[0];
    c.cg0 = obj ? P.cg + static_cast<size_t>(y) * r0 : nullptr;
    c.soft0 = P.soft + static_cast<size_t>(y) * r0 * P.tk;
    c.cg1 = c.oy0 < c.oy1 ? P.cg + P.n0 : nullptr;
    c.soft1 = P.soft + static_cast<size_t>(P.n0) * P.tk;
    c.col0 = tok_col_at(P, sel);
    c.col1 = attr_col_at(P, sel);
    c.ox = ox_range;
    c.res = res;
    c.r0 = r0;
    c.T = T;
    c.lo = P.lo;
    c.tk = P.tk;
    c.inv_T = P.inv_T;
    c.single = res >= r0;
    c.fast_div = span < (1LL << 24);  // i and i * (1/T) exact enough in float
    const int n = static_cast<int>(span);
    if ((reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
      float4* d4 = reinterpret_cast<float4*>(dst);
      for (int i4 = threadIdx.x; i4 < n / 4; i4 += blockDim.x) {
        const int i = i4 * 4;
        d4[i4] = make_float4(row_value(c, i), row_value(c, i + 1), row_value(c, i + 2), row_value(c, i + 3));
      }
      for (int i = (n / 4) * 4 + threadIdx.x; i < n; i += blockDim.x) dst[i] = row_value(c, i);
    } else {
      for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = row_value(c, i);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Host side: cached per-device workspace, the entry points. The plan is the CPU core's (native/core/plan.h).

// Byte layout shared by the device arena and the pinned host arena (each uses the parts it needs).
struct Layout {
  size_t nan_key, counter, maps, tok_col, attr_col, wlayers, soft, amap, cmap, scratch, cg, stats, sel, nan_out,
      out_maps, packed, total;
  static size_t align(size_t v) { return (v + 255) & ~size_t(255); }
  Layout(const Plan& p, size_t n_maps, size_t n_layers, size_t packed_floats) {
    size_t at = 0;
    auto take = [&at](size_t bytes) {
      const size_t here = at;
      at = align(at + bytes);
      return here;
    };
    const size_t n0 = size_t(p.p0), K = size_t(p.tokens);
    nan_key = take(16);  // offset 0 in every layout: the NaN key and the token counter outlive the call
    counter = nan_key + 8;
    maps = take(n_maps * sizeof(MapDesc));
    tok_col = take(K * sizeof(int));
    attr_col = take(K * sizeof(int));
    wlayers = take(n_layers * sizeof(WriteLayer));
    soft = take(2 * n0 * size_t(p.tk) * sizeof(double));
    amap = take(K * n0 * sizeof(double));
    cmap = take(K * n0 * sizeof(double));
    scratch = take(6 * n0 * sizeof(double));
    cg = take(2 * n0 * sizeof(double));
    stats = take(K * kStats * sizeof(double));  // stats, sel, nan_out: read back in one copy
    sel = take(4 * sizeof(int));
    nan_out = take(sizeof(unsigned long long));
    out_maps = take(2 * K * n0 * sizeof(float));
    packed = take(packed_floats * sizeof(float));
    total = at;
  }
  size_t meta_begin() const { return maps; }  // maps, columns and write layers: uploaded in one copy when needed
  size_t meta_end() const { return soft; }
  size_t results_begin() const { return stats; }
  size_t results_end() const { return nan_out + sizeof(unsigned long long); }
};

struct Workspace {
  std::mutex mutex;
  int device = 0;
  int sm_count = 0;
  cudaStream_t stream = nullptr;  // host path
  cudaEvent_t ev[6] = {};         // stage timing (benchmark only)
  char* dev = nullptr;
  size_t dev_cap = 0;
  char* host = nullptr;  // pinned
  size_t host_cap = 0;
  bool key_armed = false;  // nan_key holds kNoNan (re-armed in-kernel by every completed call)

  void reserve(size_t bytes) {
    if (bytes > dev_cap) {
      if (dev) DB_CUDA(cudaFree(dev));
      dev = nullptr;
      dev_cap = 0;
      key_armed = false;
      DB_CUDA(cudaMalloc(&dev, bytes));
      dev_cap = bytes;
    }
    if (bytes > host_cap) {
      if (host) DB_CUDA(cudaFreeHost(host));
      host = nullptr;
      host_cap = 0;
      DB_CUDA(cudaMallocHost(&host, bytes));
      host_cap = bytes;
    }
  }
};

// One workspace per device, created on first use and kept for the life of the process.
Workspace& workspace_for_current_device() {
  static std::mutex registry_mutex;
  static std::map<int, std::unique_ptr<Workspace>> registry;
  int device = 0;
  DB_CUDA(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto& slot = registry[device];
  if (!slot) {
    auto ws = std::make_unique<Workspace>();
    ws->device = device;
    DB_CUDA(cudaDeviceGetAttribute(&ws->sm_count, cudaDevAttrMultiProcessorCount, device));
    DB_CUDA(cudaStreamCreateWithFlags(&ws->stream, cudaStreamNonBlocking));
    for (cudaEvent_t& e : ws->ev) DB_CUDA(cudaEventCreate(&e));
    slot = std::move(ws);
  }
  return *slot;
}

void require_device() {
  std::string why;
  if (device_count(&why) == 0) throw std::runtime_error("CUDA backend unavailable: " + why);
}

void check_grads(const std::vector<LayerView>& layers, float* const* grads) {
  if (!grads) return;
  for (size_t i = 0; i < layers.size(); ++i)
    if (!grads[i])
      throw InvalidArgument("grads[" + std::to_string(i) + "]",
                            "grads[" + std::to_string(i) + "]: is a null buffer; pass one buffer per layer or no grads",
                            false);
}

// Device-path arguments must be memory the device can read/write: a host pointer would fault in a kernel.
void check_device_pointer(const void* ptr, const std::string& field) {
  if (!ptr) return;
  cudaPointerAttributes attr{};
  const cudaError_t e = cudaPointerGetAttributes(&attr, ptr);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    throw InvalidArgument(field,
                          field + ": is not CUDA memory (" + cudaGetErrorString(e) +
                              "); attention_loss_device takes device pointers, use attention_loss_host "
                              "for host buffers",
                          false);
  }
  const bool ok = attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged ||
                  (attr.type == cudaMemoryTypeHost && attr.devicePointer == ptr);
  if (!ok)
    throw InvalidArgument(field,
                          field +
                              ": is host memory the device cannot address; attention_loss_device "
                              "takes device pointers, use attention_loss_host for host buffers",
                          false);
}

// Fills the scalars and workspace pointers; the caller fills the map/layer descriptions (inline or uploaded).
Params make_params(const Plan& plan, const LossOptions& o, const Layout& lay, char* dev, size_t n_obj_maps,
                   size_t n_attr_maps, char* host_meta) {
  Params P{};
  P.T = plan.text_length;
  P.lo = plan.k0;
  P.tk = plan.tk;
  P.r0 = plan.r0;
  P.n0 = plan.p0;
  P.K = plan.tokens;
  P.mode = o.mode == LossMode::Max      ? kModeMax
           : o.mode == LossMode::Tv     ? kModeTv
           : o.mode == LossMode::TvBind ? kModeTvBind
                                        : kModeTvMax;
  P.hinge = o.mode == LossMode::Max && o.max_variant == MaxVariant::AttendExcite;
  P.neighbor = o.tv_vertical == TvVertical::Neighbor;
  P.smoothing = o.smoothing;
  P.attr_active = plan.attributes_active;
  P.inv_T = 1.0f / float(plan.text_length);
  // Same expressions as the CPU core's make_kernel, so the weights are bit-identical.
  const double e = std::exp(-1.0 / (4.0 * o.smoothing_sigma * o.smoothing_sigma));
  const double s = 1.0 + 2.0 * e;
  P.w[0] = e / s;
  P.w[1] = 1.0 / s;
  P.w[2] = e / s;
  P.temperature = o.temperature;
  P.rho_low = o.binding_rho_low_tv;
  P.rho_high = o.binding_rho_high_tv;
  P.tv_switch = o.binding_tv_switch;
  P.eps = o.binding_epsilon;
  P.coef = plan.coefficient;
  P.w_tv = o.tv_max_weight_tv;
  P.w_max = o.tv_max_weight_max;
  P.inv_maps[0] = plan.object_maps > 0 ? 1.0 / double(plan.object_maps) : 0.0;
  P.inv_maps[1] = plan.attribute_maps > 0 ? 1.0 / double(plan.attribute_maps) : 0.0;
  P.map_begin[0] = 0;
  P.map_count[0] = int(n_obj_maps);
  P.map_begin[1] = int(n_obj_maps);
  P.map_count[1] = int(n_attr_maps);
  P.inline_cols = plan.tokens <= kInlineTokens;
  if (P.inline_cols) {
    for (int i = 0; i < plan.tokens; ++i) {
      P.cols[0][i] = plan.token_columns[size_t(i)];
      P.cols[1][i] = plan.attribute_columns[size_t(i)];
    }
  } else {
    std::memcpy(host_meta + lay.tok_col, plan.token_columns.data(), plan.token_columns.size() * sizeof(int));
    std::memcpy(host_meta + lay.attr_col, plan.attribute_columns.data(), plan.attribute_columns.size() * sizeof(int));
  }
  P.maps = reinterpret_cast<const MapDesc*>(dev + lay.maps);
  P.wlayers = reinterpret_cast<const WriteLayer*>(dev + lay.wlayers);
  P.tok_col = reinterpret_cast<const int*>(dev + lay.tok_col);
  P.attr_col = reinterpret_cast<const int*>(dev + lay.attr_col);
  P.soft = reinterpret_cast<double*>(dev + lay.soft);
  P.amap = reinterpret_cast<double*>(dev + lay.amap);
  P.cmap = reinterpret_cast<double*>(dev + lay.cmap);
  P.scratch = reinterpret_cast<double*>(dev + lay.scratch);
  P.stats = reinterpret_cast<double*>(dev + lay.stats);
  P.cg = reinterpret_cast<double*>(dev + lay.cg);
  P.sel = reinterpret_cast<int*>(dev + lay.sel);
  P.nan_key = reinterpret_cast<unsigned long long*>(dev + lay.nan_key);
  P.nan_out = reinterpret_cast<unsigned long long*>(dev + lay.nan_out);
  P.counter = reinterpret_cast<unsigned*>(dev + lay.counter);
  return P;
}

// Puts the map and layer descriptions where the kernels will read them: in the Meta kernel parameter when they
// fit, else in the pinned host arena for upload. Returns whether anything must be uploaded.
bool place_meta(Params& P, Meta& meta, const std::vector<MapDesc>& maps, const std::vector<WriteLayer>& wl,
                const Layout& lay, char* host_meta) {
  P.inline_meta = maps.size() <= size_t(kInlineMaps) && wl.size() <= size_t(kInlineLayers);
  if (P.inline_meta) {
    std::copy(maps.begin(), maps.end(), meta.maps);
    std::copy(wl.begin(), wl.end(), meta.layers);
  } else {
    std::memcpy(host_meta + lay.maps, maps.data(), maps.size() * sizeof(MapDesc));
    std::memcpy(host_meta + lay.wlayers, wl.data(), wl.size() * sizeof(WriteLayer));
  }
  return !P.inline_meta || !P.inline_cols;
}

// Kernels 1-2 on stream: aggregation, then the per-token forward whose last block runs the backward when
// with_backward. marks: null, or two events recorded after each (stage timing for the benchmark).
void launch_core(Workspace& ws, Params& P, const Meta& meta, bool with_backward, cudaStream_t stream,
                 const cudaEvent_t* marks) {
  const int sources = P.attr_active ? 2 : 1;
  P.with_backward = with_backward ? 1 : 0;
  if (!ws.key_armed) {  // first call on this arena, or the last call did not complete
    DB_CUDA(cudaMemsetAsync(P.nan_key, 0xff, sizeof(unsigned long long), stream));
    DB_CUDA(cudaMemsetAsync(P.counter, 0, sizeof(unsigned), stream));
  }
  ws.key_armed = false;  // until this call completes
  aggregate_kernel<<<dim3(unsigned(P.n0), unsigned(sources)), kThreads, 0, stream>>>(P, meta);
  DB_LAUNCHED("aggregate_kernel");
  if (marks) DB_CUDA(cudaEventRecord(marks[0], stream));
  token_forward_kernel<<<unsigned(P.K), kThreads, 0, stream>>>(P);
  DB_LAUNCHED("token_forward_kernel");
  if (marks) DB_CUDA(cudaEventRecord(marks[1], stream));
}

// Reads the per-token stats (pinned host copy) into a LossResult with the CPU core's aggregation rules.
LossResult assemble_result(const Plan& plan, const LossOptions& o, const double* stats) {
  LossResult result;
  result.tokens.resize(size_t(plan.tokens));
  for (int s = 0; s < plan.tokens; ++s) {
    const double* st = stats + size_t(s) * kStats;
    TokenDiagnostics& d = result.tokens[size_t(s)];
    d.token_index = o.token_indices[size_t(s)];
    d.attribute_index = plan.attribute_columns[size_t(s)] >= 0 ? plan.attribute_columns[size_t(s)] + plan.k0 : -1;
    d.max_attention = st[kMax];
    d.tv = st[kTv];
    d.has_jsd = st[kHasJsd] != 0.0;
    d.jsd = d.has_jsd ? st[kJsd] : 0.0;
    d.coefficient = st[kCoef];
    d.value = st[kValue];
  }
  const bool hinge = o.mode == LossMode::Max && o.max_variant == MaxVariant::AttendExcite;
  int selected = 0;
  for (int s = 1; s < plan.tokens; ++s) {
    const double cand = hinge ? result.tokens[size_t(s)].value : -result.tokens[size_t(s)].value;
    const double best = hinge ? result.tokens[size_t(selected)].value : -result.tokens[size_t(selected)].value;
    if (cand > best) selected = s;
  }
  result.loss = hinge ? result.tokens[size_t(selected)].value : -result.tokens[size_t(selected)].value;
  const bool by_max = o.mode == LossMode::Max || o.mode == LossMode::TvMax;
  result.indicator = std::numeric_limits<double>::infinity();
  for (const TokenDiagnostics& d : result.tokens)
    result.indicator = std::min(result.indicator, by_max ? d.max_attention : d.tv);
  return result;
}

// Turns a NaN/Inf key from the device into the CPU core's InvalidArgument (same field, same message).
[[noreturn]] void raise_nonfinite(unsigned long long key, const std::vector<LayerShape>& shapes, const Plan& plan,
                                  float value) {
  const int layer = int((key >> 40) & 0x3fffff);
  const unsigned long long at = key & ((1ull << 40) - 1);
  const LayerShape& l = shapes[size_t(layer)];
  const unsigned long long hw = (unsigned long long)l.resolution * l.resolution;
  const unsigned long long head = at / (hw * plan.text_length), rem = at % (hw * plan.text_length);
  const std::string field = "layers[" + std::to_string(layer) + "].data";
  std::ostringstream m;
  m << field << ": holds " << value << " at index " << at << " (head " << head << ", pixel " << rem / plan.text_length
    << ", token " << rem % plan.text_length << "); attention probabilities must be finite";
  throw InvalidArgument(field, m.str(), true);
}

// The host path's compact gradient from the device's token softmax and per-pixel coefficients, accumulated like
// the CPU core's aggregate_backward: an input pixel's row is the sum over the outputs o that sample it of
// cg[o] * (delta_{j,col} - S[o, j]) on the kept tokens, object source first.
void build_host_gradient(CompactGradient& g, const Plan& plan, const LossOptions& o, const int* sel, const double* soft,
                         const double* cg) {
  g.reset(plan.text_length, plan.r0, plan.k0, plan.tk);
  const int s = sel[0];
  const bool any = sel[1] != 0, attr_g = sel[2] != 0;
  if (!any) return;
  const int tk = plan.tk, n0 = plan.p0;
  auto add = [&](ResolutionGradient& rg, bool first_source, int src, int col) {
    const double* sf = soft + size_t(src) * n0 * tk;
    const double* c = cg + size_t(src) * n0;
    accumulate_rows(rg, first_source, 0, n0,
                    [&](int p, int j) { return c[p] * ((j == col ? 1.0 : 0.0) - sf[size_t(p) * tk + j]); });
  };
  for (int r : gradient_resolutions(plan, o, attr_g)) {
    ResolutionGradient& rg = begin_resolution(g, r);
    const bool object = r == plan.r0;
    if (object) add(rg, true, 0, plan.token_columns[size_t(s)]);
    if (attr_g && is_attribute_resolution(o, r)) add(rg, !object, 1, plan.attribute_columns[size_t(s)]);
    finish_resolution(rg);
  }
}

LossResult run_device(const std::vector<LayerView>& layers, const LossOptions& options, float* const* grads,
                      float* object_maps, float* attribute_maps, cudaStream_t stream, detail::StageTimes* times) {
  validate(layers, options);
  check_grads(layers, grads);
  require_device();
  for (size_t i = 0; i < layers.size(); ++i) {
    check_device_pointer(layers[i].probs, "layers[" + std::to_string(i) + "].data");
    if (grads) check_device_pointer(grads[i], "grads[" + std::to_string(i) + "]");
  }
  check_device_pointer(object_maps, "objectMaps");
  check_device_pointer(attribute_maps, "attributeMaps");
  const Plan plan = make_plan(layers, options);
  Workspace& ws = workspace_for_current_device();
  std::lock_guard<std::mutex> lock(ws.mutex);

  std::vector<MapDesc> maps;
  for (int src = 0; src < 2; ++src)
    for (int id : src == 0 ? plan.object_layers : plan.attribute_layers) {
      const LayerView& l = layers[size_t(id)];
      const int64_t per_head = int64_t(l.resolution) * l.resolution * plan.text_length;
      for (int h = 0; h < l.heads; ++h) maps.push_back({l.probs + h * per_head, l.resolution, l.resolution, id, h});
    }
  std::vector<WriteLayer> wl;
  long long max_image_rows = 1;
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerView& l = layers[i];
    wl.push_back(
        {grads ? grads[i] : nullptr, l.heads, l.resolution, plan.is_object[i] ? 1 : 0, plan.is_attribute[i] ? 1 : 0});
    max_image_rows = std::max(max_image_rows, (long long)l.heads * l.resolution);
  }
  if (grads && wl.size() > 65535)
    throw InvalidArgument(
        "layers", "layers: at most 65535 layers are supported by the CUDA backend, got " + std::to_string(wl.size()),
        true);
  for (const LayerView& l : layers)
    if (grads && (long long)l.resolution * plan.text_length > 0x7fffffffLL)
      throw InvalidArgument("layers", "layers: resolution * T must stay below 2^31 for the CUDA backend", true);
  const Layout lay(plan, maps.size(), wl.size(), 0);
  ws.reserve(lay.total);
  Meta meta{};
  Params P = make_params(plan, options, lay, ws.dev, size_t(plan.object_maps), size_t(plan.attribute_maps), ws.host);
  const bool upload = place_meta(P, meta, maps, wl, lay, ws.host);
  P.out_obj = object_maps;
  P.out_attr = attribute_maps;
  cudaEvent_t* ev = times ? ws.ev : nullptr;  // [0] start, [1] uploaded, [2] aggregated, [3] tokens, [5] written
  if (ev) DB_CUDA(cudaEventRecord(ev[0], stream));
  if (upload)
    DB_CUDA(cudaMemcpyAsync(ws.dev + lay.meta_begin(), ws.host + lay.meta_begin(), lay.meta_end() - lay.meta_begin(),
                            cudaMemcpyHostToDevice, stream));
  if (ev) DB_CUDA(cudaEventRecord(ev[1], stream));
  launch_core(ws, P, meta, grads != nullptr, stream, ev ? ev + 2 : nullptr);
  if (grads) {
    // one block per image row (head, y) of the largest layer, one grid row per layer; blocks loop beyond 65535
    int max_res = 1;
    for (const LayerView& l : layers) max_res = std::max(max_res, l.resolution);
    const unsigned bx = unsigned(std::min<long long>(max_image_rows, 65535));
    write_grads_kernel<<<dim3(bx, unsigned(wl.size())), kThreads, 2 * size_t(max_res) * sizeof(int), stream>>>(P, meta);
    DB_LAUNCHED("write_grads_kernel");
  }
  if (ev) DB_CUDA(cudaEventRecord(ev[5], stream));
  DB_CUDA(cudaMemcpyAsync(ws.host + lay.results_begin(), ws.dev + lay.results_begin(),
                          lay.results_end() - lay.results_begin(), cudaMemcpyDeviceToHost, stream));
  DB_CUDA(cudaStreamSynchronize(stream));
  ws.key_armed = true;
  if (ev) {
    DB_CUDA(cudaEventElapsedTime(&times->total_ms, ev[0], ev[5]));
    DB_CUDA(cudaEventElapsedTime(&times->upload_ms, ev[0], ev[1]));
    DB_CUDA(cudaEventElapsedTime(&times->aggregate_ms, ev[1], ev[2]));
    DB_CUDA(cudaEventElapsedTime(&times->tokens_ms, ev[2], ev[3]));
    DB_CUDA(cudaEventElapsedTime(&times->write_ms, ev[3], ev[5]));
  }
  const unsigned long long key = *reinterpret_cast<const unsigned long long*>(ws.host + lay.nan_out);
  if (key != kNoNan) {
    const int layer = int((key >> 40) & 0x3fffff);
    float value = 0;
    DB_CUDA(cudaMemcpy(&value, layers[size_t(layer)].probs + (key & ((1ull << 40) - 1)), sizeof(float),
                       cudaMemcpyDeviceToHost));
    raise_nonfinite(key, layer_shapes(layers), plan, value);
  }
  return assemble_result(plan, options, reinterpret_cast<const double*>(ws.host + lay.stats));
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Public entry points

int device_count(std::string* error) {
  try {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      if (error) *error = std::string("cudaGetDeviceCount: ") + cudaGetErrorName(e) + ": " + cudaGetErrorString(e);
      return 0;
    }
    if (n == 0) {
      if (error) *error = "the CUDA driver reports no device";
      return 0;
    }
    if (error) error->clear();
    return n;
  } catch (const std::exception& ex) {
    if (error) *error = ex.what();
    return 0;
  } catch (...) {
    if (error) *error = "unknown error while counting CUDA devices";
    return 0;
  }
}

LossResult attention_loss_host(const std::vector<LayerView>& layers, const LossOptions& options, float* const* grads,
                               float* object_maps, float* attribute_maps, const GradState* grad_prior) {
  validate(layers, options);
  check_grads(layers, grads);
  require_device();
  HostCall call(layers, options);
  LossResult result = call.compute(grads != nullptr);
  call.write_maps(object_maps, attribute_maps);
  if (grads) result.grad_states = write_gradients(grads, layer_shapes(layers), call.gradient(), grad_prior);
  return result;
}

// Only the rows the loss reads travel: every pixel of the object layers, the sampled pixels of the attribute
// layers (packed already sampled, so the kernel sees an r0 x r0 layer).
HostCall::HostCall(const std::vector<LayerView>& layers, const LossOptions& options)
    : options_(options), plan_(make_plan(layers, options)), shapes_(layer_shapes(layers)) {
  const size_t T = size_t(plan_.text_length), n0 = size_t(plan_.p0);
  packed_.resize(size_t(plan_.object_maps + plan_.attribute_maps) * n0 * T);
  size_t at = 0;
  for (int src = 0; src < 2; ++src)
    for (int id : src == 0 ? plan_.object_layers : plan_.attribute_layers) {
      const LayerView& l = layers[size_t(id)];
      const int r = l.resolution;
      const int64_t per_head = int64_t(r) * r * plan_.text_length;
      for (int h = 0; h < l.heads; ++h) {
        const float* head = l.probs + h * per_head;
        if (src == 0) {
          std::memcpy(packed_.data() + at, head, n0 * T * sizeof(float));
        } else {
          for (size_t o = 0; o < n0; ++o)
            std::memcpy(packed_.data() + at + o * T, head + sampled_pixel(int(o), r, plan_.r0) * plan_.text_length,
                        T * sizeof(float));
        }
        maps_.push_back({src, id, h, r});
        at += n0 * T;
      }
    }
}

LossResult HostCall::compute(bool with_grad) {
  require_device();
  Workspace& ws = workspace_for_current_device();
  std::lock_guard<std::mutex> lock(ws.mutex);
  const size_t n0 = size_t(plan_.p0), K = size_t(plan_.tokens);
  const Layout lay(plan_, maps_.size(), 0, packed_.size());
  ws.reserve(lay.total);
  std::memcpy(ws.host + lay.packed, packed_.data(), packed_.size() * sizeof(float));
  const float* dp = reinterpret_cast<const float*>(ws.dev + lay.packed);
  std::vector<MapDesc> maps;
  maps.reserve(maps_.size());
  for (size_t m = 0; m < maps_.size(); ++m)
    maps.push_back({dp + m * n0 * plan_.text_length, plan_.r0, maps_[m].resolution, maps_[m].layer, maps_[m].head});
  Meta meta{};
  Params P =
      make_params(plan_, options_, lay, ws.dev, size_t(plan_.object_maps), size_t(plan_.attribute_maps), ws.host);
  place_meta(P, meta, maps, {}, lay, ws.host);
  float* dev_maps = reinterpret_cast<float*>(ws.dev + lay.out_maps);
  P.out_obj = dev_maps;
  P.out_attr = dev_maps + K * n0;
  cudaStream_t stream = ws.stream;
  // descriptors (when not inline) and the packed rows: [meta_begin, meta_end) then the packed block
  DB_CUDA(cudaMemcpyAsync(ws.dev + lay.meta_begin(), ws.host + lay.meta_begin(), lay.meta_end() - lay.meta_begin(),
                          cudaMemcpyHostToDevice, stream));
  DB_CUDA(cudaMemcpyAsync(ws.dev + lay.packed, ws.host + lay.packed, packed_.size() * sizeof(float),
                          cudaMemcpyHostToDevice, stream));
  launch_core(ws, P, meta, with_grad, stream, nullptr);
  // results, the maps and, for the gradient, the token softmax and the per-pixel coefficients
  DB_CUDA(cudaMemcpyAsync(ws.host + lay.results_begin(), ws.dev + lay.results_begin(),
                          lay.results_end() - lay.results_begin(), cudaMemcpyDeviceToHost, stream));
  DB_CUDA(cudaMemcpyAsync(ws.host + lay.out_maps, ws.dev + lay.out_maps, 2 * K * n0 * sizeof(float),
                          cudaMemcpyDeviceToHost, stream));
  if (with_grad) {
    DB_CUDA(cudaMemcpyAsync(ws.host + lay.soft, ws.dev + lay.soft, 2 * n0 * size_t(plan_.tk) * sizeof(double),
                            cudaMemcpyDeviceToHost, stream));
    DB_CUDA(
        cudaMemcpyAsync(ws.host + lay.cg, ws.dev + lay.cg, 2 * n0 * sizeof(double), cudaMemcpyDeviceToHost, stream));
  }
  DB_CUDA(cudaStreamSynchronize(stream));
  ws.key_armed = true;
  const unsigned long long key = *reinterpret_cast<const unsigned long long*>(ws.host + lay.nan_out);
  if (key != kNoNan) throw_nonfinite(key);
  const float* hm = reinterpret_cast<const float*>(ws.host + lay.out_maps);
  maps_out_.assign(hm, hm + 2 * K * n0);
  if (with_grad)
    build_host_gradient(gradient_, plan_, options_, reinterpret_cast<const int*>(ws.host + lay.sel),
                        reinterpret_cast<const double*>(ws.host + lay.soft),
                        reinterpret_cast<const double*>(ws.host + lay.cg));
  return assemble_result(plan_, options_, reinterpret_cast<const double*>(ws.host + lay.stats));
}

void HostCall::write_maps(float* object_maps, float* attribute_maps) const {
  const size_t n = size_t(plan_.tokens) * size_t(plan_.p0);
  if (object_maps) std::memcpy(object_maps, maps_out_.data(), n * sizeof(float));
  if (attribute_maps) std::memcpy(attribute_maps, maps_out_.data() + n, n * sizeof(float));
}

// The device's key names (source, layer, index in the layer); the value is read from the packed copy.
void HostCall::throw_nonfinite(unsigned long long key) const {
  const int source = int(key >> 62), layer = int((key >> 40) & 0x3fffff);
  const unsigned long long at = key & ((1ull << 40) - 1);
  const int64_t T = plan_.text_length, r = shapes_[size_t(layer)].resolution;
  const int64_t head = int64_t(at) / (r * r * T), pixel = (int64_t(at) / T) % (r * r), t = int64_t(at) % T;
  float value = std::numeric_limits<float>::quiet_NaN();
  for (size_t m = 0; m < maps_.size(); ++m) {
    if (maps_[m].source != source || maps_[m].layer != layer || maps_[m].head != head) continue;
    for (int o = 0; o < plan_.p0; ++o)
      if (sampled_pixel(o, int(r), plan_.r0) == pixel) {
        value = packed_[(m * size_t(plan_.p0) + size_t(o)) * size_t(T) + size_t(t)];
        break;
      }
  }
  raise_nonfinite(key, shapes_, plan_, value);
}

LossResult attention_loss_device(const std::vector<LayerView>& layers, const LossOptions& options,
                                 float* const* grads_device, float* object_maps_device, float* attribute_maps_device,
                                 void* cuda_stream) {
  return run_device(layers, options, grads_device, object_maps_device, attribute_maps_device,
                    static_cast<cudaStream_t>(cuda_stream), nullptr);
}

namespace detail {

LossResult attention_loss_device_timed(const std::vector<LayerView>& layers, const LossOptions& options,
                                       float* const* grads_device, float* object_maps_device,
                                       float* attribute_maps_device, void* cuda_stream, StageTimes* times) {
  StageTimes local;
  return run_device(layers, options, grads_device, object_maps_device, attribute_maps_device,
                    static_cast<cudaStream_t>(cuda_stream), times ? times : &local);
}

__global__ void busy_wait_kernel(unsigned long long ns) {
  const unsigned long long start = clock64();
  // clock64 counts SM cycles; 2 GHz is an upper bound for these parts, so this waits at least ns nanoseconds
  while (clock64() - start < ns * 2ull) {}
}

void enqueue_busy_wait(void* cuda_stream, unsigned microseconds) {
  busy_wait_kernel<<<1, 1, 0, static_cast<cudaStream_t>(cuda_stream)>>>(1000ull * microseconds);
  DB_LAUNCHED("busy_wait_kernel");
}

TrafficEstimate estimate_traffic(const std::vector<LayerView>& layers, const LossOptions& options, bool with_grads) {
  validate(layers, options);
  const Plan plan = make_plan(layers, options);
  TrafficEstimate t;
  const double row_bytes = double(plan.tk) * sizeof(float);
  t.bytes_read = double(plan.object_maps) * plan.p0 * row_bytes;
  for (int id : plan.attribute_layers) {
    const int r = layers[size_t(id)].resolution;
    // distinct sampled pixels: for r >= r0 every output reads its own pixel, for r < r0 all r*r are read
    const double pixels = r >= plan.r0 ? double(plan.p0) : double(r) * r;
    t.bytes_read += double(layers[size_t(id)].heads) * pixels * row_bytes;
  }
  if (with_grads)
    for (const LayerView& l : layers) t.bytes_written += double(l.length) * sizeof(float);
  return t;
}

}  // namespace detail
}  // namespace divbind::cuda
