// Divide & Bind / Attend-and-Excite attention losses: forward and analytic backward (CPU).
// Spec: docs/divide-and-bind.md §1, §2, §9. Implemented from the spec only.
//
// Shape legend (used in every comment below):
//   T   text length (77 for SD 1.x)          [k0, k1]  kept token range, Tk = k1 - k0 + 1
//   r0  object resolution (16), P0 = r0*r0   K         number of object tokens
//   a layer is probs (heads, r*r, T) row-major
//
// Layout of the file: the pipeline stages, each `x_forward` directly above `x_backward` (the backward blocks
// quote the forward line they differentiate, in reverse order), then the three stages of loss_stages.h and the
// public entry points. Every intermediate is double; only the final gradients and maps are rounded to float.
// Argument checks and planning: plan.cc; writing the gradients: gradient_write.cc.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <sstream>

#include "attention_loss.h"
#include "loss_stages.h"
#include "parallel.h"
#include "simd.h"

namespace divbind {
namespace {

// Below these sizes a second thread costs more than it saves (the hand-over takes a few microseconds).
constexpr int64_t kSplitFloats = int64_t(1) << 18;  // floats read by the aggregation
constexpr int64_t kSplitExps = int64_t(1) << 14;    // exponentials of the token softmax

// ------------------------------------------------------------------------------------------------
// 1. Aggregation: mean over (layer, head) maps, nearest-subsampled to r0, kept tokens only.

// A sum of floats in double cannot overflow, so a non-finite mean means a NaN/Inf was read: find and name it.
[[noreturn]] void throw_first_nonfinite(const std::vector<LayerView>& layers, const std::vector<int>& ids,
                                        const Plan& plan) {
  const int T = plan.text_length, tk = plan.tk, r0 = plan.r0;
  for (int id : ids) {
    const LayerView& l = layers[id];
    const int r = l.resolution;
    const int64_t hw = int64_t(r) * r;
    for (int h = 0; h < l.heads; ++h)
      for (int p = 0; p < plan.p0; ++p) {
        const int64_t at = (int64_t(h) * hw + sampled_pixel(p, r, r0)) * T + plan.k0;
        for (int j = 0; j < tk; ++j)
          if (!std::isfinite(l.probs[at + j])) {
            std::ostringstream m;
            m << "holds " << l.probs[at + j] << " at index " << at + j << " (head " << h << ", pixel "
              << sampled_pixel(p, r, r0) << ", token " << plan.k0 + j << "); attention probabilities must be finite";
            fail(indexed("layers", size_t(id)) + ".data", m.str(), true);
          }
      }
  }
  fail("layers", "a non-finite attention probability was read", true);  // unreachable: the mean saw one
}

// Rows of the pixels that output pixels [p_begin, p_end) sample lie far apart at r > r0 (every 2nd or 4th pixel
// of every 2nd or 4th image row): the hardware prefetcher does not see the pattern, so each row is requested
// this many pixels ahead (4: 0.40 ms to read SD 512²'s 9 MB on two threads, 12: 0.35 ms, 16: no better).
constexpr int kPrefetchAhead = 12;

inline void prefetch_row(const float* row, int floats) {
#if defined(__GNUC__)
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int offset = 0; offset < floats * 4; offset += 64) __builtin_prefetch(bytes + offset);
  __builtin_prefetch(bytes + floats * 4 - 1);  // the last line, when the row does not start on a line
#else
  (void)row;
  (void)floats;
#endif
}

// out rows [p_begin, p_end) of (P0, Tk) += probs[head, sampled_pixel(p), k0 + j] for every (layer in ids, head).
DIVBIND_CPU_CLONES void aggregate_rows(double* out, const std::vector<LayerView>& layers, const std::vector<int>& ids,
                                       const Plan& plan, int p_begin, int p_end) {
  const int T = plan.text_length, tk = plan.tk, r0 = plan.r0;
  for (int id : ids) {
    const LayerView& l = layers[id];
    const int r = l.resolution;
    const int64_t hw = int64_t(r) * r;
    for (int h = 0; h < l.heads; ++h) {
      const float* head = l.probs + int64_t(h) * hw * T + plan.k0;
      for (int p = p_begin; p < p_end; ++p) {
        if (p + kPrefetchAhead < p_end) prefetch_row(head + sampled_pixel(p + kPrefetchAhead, r, r0) * T, tk);
        const float* row = head + sampled_pixel(p, r, r0) * T;
        double* acc = out + size_t(p) * tk;
        for (int j = 0; j < tk; ++j) acc[j] += row[j];
      }
    }
  }
}

// Rows [p_begin, p_end) of out (P0, Tk) = (1/N) * sum_{layer in ids, head} probs[head, sampled_pixel(p), k0 + j];
// false when a non-finite value was read.
bool aggregate_forward(std::vector<double>& out, const std::vector<LayerView>& layers, const std::vector<int>& ids,
                       int64_t n_maps, const Plan& plan, int64_t p_begin, int64_t p_end) {
  const int tk = plan.tk;
  std::fill(out.data() + p_begin * tk, out.data() + p_end * tk, 0.0);
  aggregate_rows(out.data(), layers, ids, plan, int(p_begin), int(p_end));
  const double inv = 1.0 / double(n_maps);
  bool finite = true;
  for (double* v = out.data() + p_begin * tk; v != out.data() + p_end * tk; ++v) {
    *v *= inv;
    finite &= std::isfinite(*v);
  }
  return finite;
}

// grad rows [p_begin, p_end) of the mean (P0, Tk) -> the gradient rows of one resolution r (added to rg).
// In the forward this was: out[p, j] += probs[head, sampled_pixel(p), k0 + j] / N for every (layer, head).
// Every head of every layer at that resolution receives the same row, so it is built once here.
void aggregate_backward(ResolutionGradient& rg, bool first_source, const std::vector<double>& d_mean, int64_t n_maps,
                        const Plan& plan, int p_begin, int p_end) {
  const int tk = plan.tk;
  const double inv = 1.0 / double(n_maps);
  const double* d = d_mean.data();
  accumulate_rows(rg, first_source, p_begin, p_end, [&](int p, int j) { return d[size_t(p) * tk + j] * inv; });
}

// ------------------------------------------------------------------------------------------------
// 2. Token softmax: S[p, j] = softmax_j(temperature * mean[p, j]) over the Tk kept tokens.

// Rows [p_begin, p_end) of S, in passes over the block: logits less each row's maximum, then every exponential of
// the block in one flat loop (a 75-token row would leave a scalar remainder of the 12-term polynomial per row),
// then the row sums. Maxima and sums keep eight lanes in a fixed order, so every clone rounds alike.
DIVBIND_CPU_CLONES void softmax_rows(double* soft, const double* mean, double temperature, int tk, int64_t p_begin,
                                     int64_t p_end) {
  constexpr int kLanes = 8;
  for (int64_t p = p_begin; p < p_end; ++p) {
    const double* x = mean + p * tk;
    double* s = soft + p * tk;
    double m[kLanes];
    std::fill(m, m + kLanes, -std::numeric_limits<double>::infinity());
    int j = 0;
    for (; j + kLanes <= tk; j += kLanes)
      for (int k = 0; k < kLanes; ++k) m[k] = std::max(m[k], temperature * x[j + k]);
    for (int k = 0; j < tk; ++j, ++k) m[k] = std::max(m[k], temperature * x[j]);
    const double mx = std::max(std::max(std::max(m[0], m[1]), std::max(m[2], m[3])),
                               std::max(std::max(m[4], m[5]), std::max(m[6], m[7])));
    for (j = 0; j < tk; ++j) s[j] = temperature * x[j] - mx;
  }
  double* block = soft + p_begin * tk;
  const int64_t n = (p_end - p_begin) * tk;
  for (int64_t i = 0; i < n; ++i) block[i] = exp_nonpositive(block[i]);
  for (int64_t p = p_begin; p < p_end; ++p) {
    double* s = soft + p * tk;
    double z[kLanes] = {};
    int j = 0;
    for (; j + kLanes <= tk; j += kLanes)
      for (int k = 0; k < kLanes; ++k) z[k] += s[j + k];
    for (int k = 0; j < tk; ++j, ++k) z[k] += s[j];
    const double inv = 1.0 / (((z[0] + z[1]) + (z[2] + z[3])) + ((z[4] + z[5]) + (z[6] + z[7])));
    for (j = 0; j < tk; ++j) s[j] *= inv;
  }
}

// Only column `col` of S carries a gradient (d_col, (P0)); rows [p_begin, p_end) of d_mean (P0, Tk) are overwritten.
// In the forward this was: S[p, :] = softmax(temperature * mean[p, :]); then A = S[:, col].
//   dlogit[p, j] = S[p, j] * (delta_{j,col} - S[p, col]) * d_col[p];  d_mean = temperature * dlogit.
void token_softmax_backward(std::vector<double>& d_mean, const std::vector<double>& soft,
                            const std::vector<double>& d_col, int col, double temperature, int tk, int p_begin,
                            int p_end) {
  for (int p = p_begin; p < p_end; ++p) {
    const double* s = soft.data() + size_t(p) * tk;
    double* d = d_mean.data() + size_t(p) * tk;
    const double g = d_col[size_t(p)] * temperature;
    const double c = s[col] * g;
    for (int j = 0; j < tk; ++j) d[j] = -s[j] * c;
    d[col] += s[col] * g;
  }
}

// ------------------------------------------------------------------------------------------------
// 3. Gaussian smoothing: 3x3 separable kernel, 1-D weights exp(-((x-1)/(2 sigma))^2) normalised, reflect pad 1.

struct Kernel {
  double w[3];
};

Kernel make_kernel(double sigma) {
  const double e = std::exp(-1.0 / (4.0 * sigma * sigma));  // x = 0 and x = 2: ((x-1)/(2 sigma))^2 = 1/(4 sigma^2)
  const double s = 1.0 + 2.0 * e;
  return Kernel{{e / s, 1.0 / s, e / s}};
}

inline int reflect(int i, int n) { return i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i); }

// out (r0, r0) from column col of in (P0, stride): out[y, x] = sum_{a,b} w[a] w[b] in[refl(y+a-1), refl(x+b-1)]
void smooth_forward(double* out, const double* in, int stride, int col, int r0, const Kernel* k) {
  for (int y = 0; y < r0; ++y)
    for (int x = 0; x < r0; ++x) {
      if (!k) {
        out[y * r0 + x] = in[size_t(y * r0 + x) * stride + col];
        continue;
      }
      double acc = 0;
      for (int a = 0; a < 3; ++a) {
        const int yy = reflect(y + a - 1, r0);
        for (int b = 0; b < 3; ++b) {
          const int xx = reflect(x + b - 1, r0);
          acc += k->w[a] * k->w[b] * in[size_t(yy * r0 + xx) * stride + col];
        }
      }
      out[y * r0 + x] = acc;
    }
}

// d_in (P0) overwritten from d_out (r0, r0).
// In the forward this was: out[y, x] = sum_{a,b} w[a] w[b] in[refl(y+a-1), refl(x+b-1)]
void smooth_backward(double* d_in, const double* d_out, int r0, const Kernel* k) {
  const int p0 = r0 * r0;
  if (!k) {
    std::copy(d_out, d_out + p0, d_in);
    return;
  }
  std::fill(d_in, d_in + p0, 0.0);
  for (int y = 0; y < r0; ++y)
    for (int x = 0; x < r0; ++x) {
      const double g = d_out[y * r0 + x];
      for (int a = 0; a < 3; ++a) {
        const int yy = reflect(y + a - 1, r0);
        for (int b = 0; b < 3; ++b) d_in[yy * r0 + reflect(x + b - 1, r0)] += k->w[a] * k->w[b] * g;
      }
    }
}

// ------------------------------------------------------------------------------------------------
// 4. Map max: m = max(A) over the (r0, r0) map.

double map_max_forward(const double* a, int n) { return *std::max_element(a, a + n); }

// In the forward this was: m = max(A). Full-tensor max: the gradient is split evenly among ties.
void map_max_backward(double* d_a, const double* a, int n, double d_m) {
  const double m = map_max_forward(a, n);
  const int ties = static_cast<int>(std::count(a, a + n, m));
  const double share = d_m / ties;
  for (int i = 0; i < n; ++i)
    if (a[i] == m) d_a[i] += share;
}

// ------------------------------------------------------------------------------------------------
// 5. Total variation (spec §2.2): TV = H + V, each a mean absolute difference over r0*(r0-1) pairs.
//    H: A[y, x] vs A[y, x+1].  V official: A[r0-1, x] vs A[y, x] for y = 1..r0-1 (last-row quirk);
//    V neighbor: A[y, x] vs A[y+1, x] for y = 0..r0-2.

inline double sgn(double d) { return d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0); }  // |x|'(0) = 0

double tv_forward(const double* a, int r0, TvVertical vertical) {
  double h = 0, v = 0;
  for (int y = 0; y < r0; ++y)
    for (int x = 0; x + 1 < r0; ++x) h += std::fabs(a[y * r0 + x] - a[y * r0 + x + 1]);
  if (vertical == TvVertical::Official) {
    const double* last = a + (r0 - 1) * r0;
    for (int y = 1; y < r0; ++y)
      for (int x = 0; x < r0; ++x) v += std::fabs(last[x] - a[y * r0 + x]);
  } else {
    for (int y = 0; y + 1 < r0; ++y)
      for (int x = 0; x < r0; ++x) v += std::fabs(a[y * r0 + x] - a[(y + 1) * r0 + x]);
  }
  const double pairs = double(r0) * (r0 - 1);
  return h / pairs + v / pairs;
}

// d_a (r0, r0) accumulated.
void tv_backward(double* d_a, const double* a, int r0, TvVertical vertical, double d_tv) {
  const double g = d_tv / (double(r0) * (r0 - 1));
  // 2. In the forward this was: v += |A[r0-1, x] - A[y, x]| (official) or |A[y, x] - A[y+1, x]| (neighbor)
  if (vertical == TvVertical::Official) {
    const int last = (r0 - 1) * r0;
    for (int y = 1; y < r0; ++y)
      for (int x = 0; x < r0; ++x) {
        const double s = g * sgn(a[last + x] - a[y * r0 + x]);
        d_a[last + x] += s;
        d_a[y * r0 + x] -= s;
      }
  } else {
    for (int y = 0; y + 1 < r0; ++y)
      for (int x = 0; x < r0; ++x) {
        const double s = g * sgn(a[y * r0 + x] - a[(y + 1) * r0 + x]);
        d_a[y * r0 + x] += s;
        d_a[(y + 1) * r0 + x] -= s;
      }
  }
  // 1. In the forward this was: h += |A[y, x] - A[y, x+1]|
  for (int y = 0; y < r0; ++y)
    for (int x = 0; x + 1 < r0; ++x) {
      const double s = g * sgn(a[y * r0 + x] - a[y * r0 + x + 1]);
      d_a[y * r0 + x] += s;
      d_a[y * r0 + x + 1] -= s;
    }
}

// ------------------------------------------------------------------------------------------------
// 6. Binding JSD (spec §2.3) between object map O and attribute map C, both (P0).

// Forward intermediates, all (P0) except the scalars; views into ws.scratch.
struct JsdState {
  double *p, *q, *pp, *qq;  // spatial softmaxes and their thresholded versions p', q'
  double m_o, m_c, tau;
};

DIVBIND_CPU_CLONES void spatial_softmax(double* out, const double* x, int n, double scale) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int i = 0; i < n; ++i) mx = std::max(mx, scale * x[i]);
  for (int i = 0; i < n; ++i) out[i] = exp_nonpositive(scale * x[i] - mx);  // a loop of its own: it vectorizes
  double z = 0;
  for (int i = 0; i < n; ++i) z += out[i];
  for (int i = 0; i < n; ++i) out[i] /= z;
}

double jsd_forward(JsdState& st, std::vector<double>& scratch, const double* o, const double* c, int n, double rho,
                   double eps) {
  scratch.resize(size_t(4) * n);
  st.p = scratch.data();
  st.q = st.p + n;
  st.pp = st.q + n;
  st.qq = st.pp + n;
  st.m_o = map_max_forward(o, n);                // max(O)
  st.m_c = map_max_forward(c, n);                // max(C)
  spatial_softmax(st.p, o, n, 1.0);              // p = softmax(vec O)
  spatial_softmax(st.q, c, n, st.m_o / st.m_c);  // q = softmax(vec C * max(O) / max(C))
  st.tau = rho * map_max_forward(st.p, n);       // tau = rho * max(p), shared by p and q
  double j = 0;
  for (int i = 0; i < n; ++i) {
    st.pp[i] = std::max(st.p[i] - st.tau, 0.0) + eps;         // p' = relu(p - tau) + eps
    st.qq[i] = std::max(st.q[i] - st.tau, 0.0) + eps;         // q' = relu(q - tau) + eps
    const double lm = std::log(0.5 * (st.pp[i] + st.qq[i]));  // ln M
    j += 0.5 * st.pp[i] * (std::log(st.pp[i]) - lm) + 0.5 * st.qq[i] * (std::log(st.qq[i]) - lm);
  }
  return j;
}

// d_o, d_c (P0) accumulated. Recomputes the forward (P0 is small) so the caller keeps no state.
void jsd_backward(double* d_o, double* d_c, std::vector<double>& scratch, const double* o, const double* c, int n,
                  double rho, double eps, double d_j) {
  JsdState st;
  jsd_forward(st, scratch, o, c, n, rho, eps);
  // reuse p'/q' storage for the gradients wrt p and q once their values are consumed
  double d_tau = 0;
  for (int i = 0; i < n; ++i) {
    // 4. In the forward this was: j += 1/2 p' (ln p' - ln M) + 1/2 q' (ln q' - ln M), M = (p' + q')/2
    //    dj/dp' = 1/2 ln(p'/M) (the other terms cancel), same for q'.
    const double m = 0.5 * (st.pp[i] + st.qq[i]);
    const double g_pp = d_j * 0.5 * std::log(st.pp[i] / m);
    const double g_qq = d_j * 0.5 * std::log(st.qq[i] / m);
    // 3. In the forward this was: p' = relu(p - tau) + eps; q' = relu(q - tau) + eps  (relu'(0) = 0)
    const double g_p = st.p[i] - st.tau > 0 ? g_pp : 0.0;
    const double g_q = st.q[i] - st.tau > 0 ? g_qq : 0.0;
    d_tau -= g_p + g_q;
    st.pp[i] = g_p;
    st.qq[i] = g_q;
  }
  double* g_p = st.pp;
  double* g_q = st.qq;
  // 2. In the forward this was: tau = rho * max(p)
  map_max_backward(g_p, st.p, n, rho * d_tau);
  // 1b. In the forward this was: q = softmax(C * m_o / m_c) -> g_x = q (g_q - <q, g_q>)
  double qg = 0;
  for (int i = 0; i < n; ++i) qg += st.q[i] * g_q[i];
  const double scale = st.m_o / st.m_c;
  double d_scale = 0;
  for (int i = 0; i < n; ++i) {
    const double g_x = st.q[i] * (g_q[i] - qg);  // gradient wrt x = C * scale
    d_c[i] += g_x * scale;
    d_scale += g_x * c[i];
  }
  // scale = max(O) / max(C)
  map_max_backward(d_o, o, n, d_scale / st.m_c);
  map_max_backward(d_c, c, n, -d_scale * st.m_o / (st.m_c * st.m_c));
  // 1a. In the forward this was: p = softmax(O)
  double pg = 0;
  for (int i = 0; i < n; ++i) pg += st.p[i] * g_p[i];
  for (int i = 0; i < n; ++i) d_o[i] += st.p[i] * (g_p[i] - pg);
}

double binding_rho(const LossOptions& o, double tv) {
  return tv < o.binding_tv_switch ? o.binding_rho_low_tv : o.binding_rho_high_tv;
}

// ------------------------------------------------------------------------------------------------
// 7. The loss over the maps: forward per token, selection, backward of the selected token.

// Token softmax of both sources' means (the attribute one only when attributes are active): two threads take the
// same halves of the output pixels as the reading did, so each finds its rows in its own cache.
void token_softmaxes(Workspace& ws, const LossOptions& o) {
  const Plan& plan = ws.plan;
  const int p0 = plan.p0, tk = plan.tk;
  const int64_t sources = plan.attributes_active ? 2 : 1;
  ws.object_soft.resize(ws.object_mean.size());
  if (plan.attributes_active) ws.attribute_soft.resize(ws.attribute_mean.size());
  run_split(p0 / 2, p0, sources * p0 * tk >= kSplitExps, [&](int64_t p_begin, int64_t p_end) {
    softmax_rows(ws.object_soft.data(), ws.object_mean.data(), o.temperature, tk, p_begin, p_end);
    if (plan.attributes_active)
      softmax_rows(ws.attribute_soft.data(), ws.attribute_mean.data(), o.temperature, tk, p_begin, p_end);
  });
}

// maps (K, P0) = smooth(S[:, col_s]) of one source; tokens without a column (col < 0) keep zeros.
void smooth_maps(std::vector<double>& maps, const std::vector<double>& soft, const std::vector<int>& columns,
                 const Plan& plan, const Kernel* k) {
  for (int s = 0; s < plan.tokens; ++s)
    if (columns[size_t(s)] >= 0)
      smooth_forward(maps.data() + size_t(s) * plan.p0, soft.data(), plan.tk, columns[size_t(s)], plan.r0, k);
}

// Diagnostics of token s: m, TV and, in tv_bind with an attribute, JSD; value v_s as in attention_loss.h.
TokenDiagnostics token_forward(Workspace& ws, const LossOptions& o, int s) {
  const Plan& plan = ws.plan;
  const int p0 = plan.p0;
  const double* a = ws.object_maps.data() + size_t(s) * p0;
  TokenDiagnostics d;
  d.token_index = o.token_indices[size_t(s)];
  d.attribute_index = plan.attribute_columns[size_t(s)] >= 0 ? plan.attribute_columns[size_t(s)] + plan.k0 : -1;
  d.max_attention = map_max_forward(a, p0);
  d.tv = tv_forward(a, plan.r0, o.tv_vertical);
  switch (o.mode) {
    case LossMode::Max:
      d.value = o.max_variant == MaxVariant::DivBind ? d.max_attention : std::max(0.0, 1.0 - d.max_attention);
      break;
    case LossMode::Tv: d.value = d.tv; break;
    case LossMode::TvMax: d.value = o.tv_max_weight_tv * d.tv + o.tv_max_weight_max * d.max_attention; break;
    case LossMode::TvBind:
      d.value = d.tv;
      d.coefficient = plan.coefficient;  // reported for every token in tv_bind, used where there is a JSD
      if (plan.attributes_active && plan.attribute_columns[size_t(s)] >= 0) {
        JsdState st;
        d.jsd = jsd_forward(st, ws.scratch, a, ws.attribute_maps.data() + size_t(s) * p0, p0, binding_rho(o, d.tv),
                            o.binding_epsilon);
        d.has_jsd = true;
        d.value = d.tv - plan.coefficient * d.jsd;
      }
      break;
  }
  return d;
}

bool is_hinge(const LossOptions& o) { return o.mode == LossMode::Max && o.max_variant == MaxVariant::AttendExcite; }

// L = max_s(-v_s) (A&E: max_s v_s) and the threshold indicator; returns the selected token. Python's builtin
// max keeps the FIRST maximal element (strict >).
int select_token(LossResult& result, const LossOptions& o) {
  const bool hinge = is_hinge(o);
  auto score = [&](int s) { return hinge ? result.tokens[size_t(s)].value : -result.tokens[size_t(s)].value; };
  int selected = 0;
  for (int s = 1; s < int(result.tokens.size()); ++s)
    if (score(s) > score(selected)) selected = s;
  result.loss = score(selected);
  const bool by_max = o.mode == LossMode::Max || o.mode == LossMode::TvMax;
  result.indicator = std::numeric_limits<double>::infinity();
  for (const TokenDiagnostics& d : result.tokens)
    result.indicator = std::min(result.indicator, by_max ? d.max_attention : d.tv);
  return selected;
}

// Backward of the per-token value of the selected token s down to its maps (ws.d_object_map, ws.d_attribute_map).
// In the forward this was: L = -v_s (D&B), or L = max(0, 1 - m_s) (A&E hinge: no gradient when 1 - m <= 0).
// Returns false when L has no gradient at all; sets *attribute_gradient when the attribute map has one.
bool token_backward(Workspace& ws, const LossOptions& o, int s, const TokenDiagnostics& chosen,
                    bool* attribute_gradient) {
  const Plan& plan = ws.plan;
  const int p0 = plan.p0, r0 = plan.r0;
  const double* a = ws.object_maps.data() + size_t(s) * p0;
  const double* c = ws.attribute_maps.data() + size_t(s) * p0;
  ws.d_object_map.assign(size_t(p0), 0.0);
  ws.d_attribute_map.assign(size_t(p0), 0.0);
  *attribute_gradient = false;
  switch (o.mode) {
    case LossMode::Max:
      if (is_hinge(o) && !(1.0 - chosen.max_attention > 0)) return false;
      map_max_backward(ws.d_object_map.data(), a, p0, -1.0);  // dL/dm = -1 in both variants
      break;
    case LossMode::Tv: tv_backward(ws.d_object_map.data(), a, r0, o.tv_vertical, -1.0); break;
    case LossMode::TvMax:  // v = w_tv * TV + w_max * m
      map_max_backward(ws.d_object_map.data(), a, p0, -o.tv_max_weight_max);
      tv_backward(ws.d_object_map.data(), a, r0, o.tv_vertical, -o.tv_max_weight_tv);
      break;
    case LossMode::TvBind:  // v = TV - coef * JSD(O, C); rho depends on TV through a step, which has no gradient.
      if (chosen.has_jsd) {
        jsd_backward(ws.d_object_map.data(), ws.d_attribute_map.data(), ws.scratch, a, c, p0, binding_rho(o, chosen.tv),
                     o.binding_epsilon, plan.coefficient);
        *attribute_gradient = true;
      }
      tv_backward(ws.d_object_map.data(), a, r0, o.tv_vertical, -1.0);
      break;
  }
  return true;
}

// The resolutions that receive a gradient, ascending, each begun in ws.gradient (slots made before any thread fills
// one, since making one may move the others).
void begin_resolutions(Workspace& ws, const LossOptions& o, bool attribute_gradient) {
  for (int r : gradient_resolutions(ws.plan, o, attribute_gradient)) begin_resolution(ws.gradient, r);
}

// Output pixels [p_begin, p_end) from the smoothed maps' column gradients to the compact gradient: token softmax
// backward of each source, then every resolution's rows (object rows first where a resolution takes both).
void backward_rows(Workspace& ws, const LossOptions& o, int s, bool attribute_gradient, int p_begin, int p_end) {
  const Plan& plan = ws.plan;
  token_softmax_backward(ws.d_object_mean, ws.object_soft, ws.d_object_col, plan.token_columns[size_t(s)],
                         o.temperature, plan.tk, p_begin, p_end);
  if (attribute_gradient)
    token_softmax_backward(ws.d_attribute_mean, ws.attribute_soft, ws.d_attribute_col,
                           plan.attribute_columns[size_t(s)], o.temperature, plan.tk, p_begin, p_end);
  for (size_t i = 0; i < ws.gradient.count; ++i) {
    ResolutionGradient& rg = ws.gradient.slots[i];
    const bool object = rg.geometry.resolution == plan.r0;
    if (object) aggregate_backward(rg, true, ws.d_object_mean, plan.object_maps, plan, p_begin, p_end);
    if (attribute_gradient && is_attribute_resolution(o, rg.geometry.resolution))
      aggregate_backward(rg, !object, ws.d_attribute_mean, plan.attribute_maps, plan, p_begin, p_end);
    finish_rows(rg, p_begin, p_end);
  }
}

// Backward of the whole loss for the selected token s into ws.gradient (left empty when L has no gradient).
// Down to the maps' columns on this thread (P0 values per source), then per output pixel on two threads, with
// the halves the forward used, when no gradient row is shared by both halves.
void loss_backward(Workspace& ws, const LossOptions& o, int s, const TokenDiagnostics& chosen, const Kernel* k) {
  const Plan& plan = ws.plan;
  const int p0 = plan.p0, tk = plan.tk;
  ws.gradient.reset(plan.text_length, plan.r0, plan.k0, tk);
  bool attribute_gradient = false;
  if (!token_backward(ws, o, s, chosen, &attribute_gradient)) return;
  ws.d_object_col.resize(size_t(p0));
  smooth_backward(ws.d_object_col.data(), ws.d_object_map.data(), plan.r0, k);
  ws.d_object_mean.resize(size_t(p0) * tk);  // every entry is written by backward_rows
  if (attribute_gradient) {
    ws.d_attribute_col.resize(size_t(p0));
    smooth_backward(ws.d_attribute_col.data(), ws.d_attribute_map.data(), plan.r0, k);
    ws.d_attribute_mean.resize(size_t(p0) * tk);
  }
  begin_resolutions(ws, o, attribute_gradient);
  const int split = p0 / 2;
  bool independent = true;
  for (size_t i = 0; i < ws.gradient.count; ++i) independent &= rows_split_at(ws.gradient.slots[i].geometry, split);
  const int64_t work = int64_t(ws.gradient.count + (attribute_gradient ? 2 : 1)) * p0 * tk;
  run_split(split, p0, independent && work >= kSplitExps, [&](int64_t p_begin, int64_t p_end) {
    backward_rows(ws, o, s, attribute_gradient, int(p_begin), int(p_end));
  });
}

Workspace& thread_workspace() {  // the addon runs on the JS thread or a libuv pool thread: each keeps its own
  thread_local Workspace ws;
  return ws;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// The three stages (loss_stages.h)

void read_layers(Workspace& ws, const std::vector<LayerView>& layers, const LossOptions& options) {
  ws.plan = make_plan(layers, options);
  const Plan& plan = ws.plan;
  const int p0 = plan.p0, tk = plan.tk;
  ws.object_mean.resize(size_t(p0) * tk);  // every entry is written by aggregate_forward
  if (plan.attributes_active) ws.attribute_mean.resize(size_t(p0) * tk);
  // Two threads take one half of the output pixels each: every row is summed in the same order either way.
  std::atomic<bool> object_finite{true}, attribute_finite{true};
  const int64_t floats = (plan.object_maps + (plan.attributes_active ? plan.attribute_maps : 0)) * p0 * tk;
  run_split(p0 / 2, p0, floats >= kSplitFloats, [&](int64_t p_begin, int64_t p_end) {
    if (!aggregate_forward(ws.object_mean, layers, plan.object_layers, plan.object_maps, plan, p_begin, p_end))
      object_finite.store(false, std::memory_order_relaxed);
    if (plan.attributes_active &&
        !aggregate_forward(ws.attribute_mean, layers, plan.attribute_layers, plan.attribute_maps, plan, p_begin, p_end))
      attribute_finite.store(false, std::memory_order_relaxed);
  });
  if (!object_finite.load(std::memory_order_relaxed)) throw_first_nonfinite(layers, plan.object_layers, plan);
  if (!attribute_finite.load(std::memory_order_relaxed)) throw_first_nonfinite(layers, plan.attribute_layers, plan);
}

LossResult compute_loss(Workspace& ws, const LossOptions& options, bool with_grad) {
  const Plan& plan = ws.plan;
  const Kernel kernel = make_kernel(options.smoothing_sigma);
  const Kernel* k = options.smoothing ? &kernel : nullptr;
  // forward: maps (K, P0) of both sources; attribute maps only in tv_bind with attributes, zeros otherwise
  ws.object_maps.assign(size_t(plan.tokens) * plan.p0, 0.0);
  ws.attribute_maps.assign(size_t(plan.tokens) * plan.p0, 0.0);
  token_softmaxes(ws, options);
  smooth_maps(ws.object_maps, ws.object_soft, plan.token_columns, plan, k);
  if (plan.attributes_active) smooth_maps(ws.attribute_maps, ws.attribute_soft, plan.attribute_columns, plan, k);
  LossResult result;
  result.tokens.reserve(size_t(plan.tokens));
  for (int s = 0; s < plan.tokens; ++s) result.tokens.push_back(token_forward(ws, options, s));
  const int selected = select_token(result, options);
  // backward: only the selected token's value reaches L
  if (with_grad) loss_backward(ws, options, selected, result.tokens[size_t(selected)], k);
  return result;
}

void write_maps(const Workspace& ws, float* object_maps, float* attribute_maps) {
  if (object_maps)
    for (size_t i = 0; i < ws.object_maps.size(); ++i) object_maps[i] = static_cast<float>(ws.object_maps[i]);
  if (attribute_maps)
    for (size_t i = 0; i < ws.attribute_maps.size(); ++i) attribute_maps[i] = static_cast<float>(ws.attribute_maps[i]);
}

// ------------------------------------------------------------------------------------------------
// Public entry points

void validate(const std::vector<LayerView>& layers, const LossOptions& options) { (void)make_plan(layers, options); }

LossResult attention_loss(const std::vector<LayerView>& layers, const LossOptions& options, float* const* grads,
                          float* object_maps_out, float* attribute_maps_out, const GradState* grad_prior) {
  if (grads)
    for (size_t i = 0; i < layers.size(); ++i)
      if (!grads[i]) fail(indexed("grads", i), "is a null buffer; pass one buffer per layer or no grads", false);
  Workspace& ws = thread_workspace();
  read_layers(ws, layers, options);
  LossResult result = compute_loss(ws, options, grads != nullptr);
  write_maps(ws, object_maps_out, attribute_maps_out);
  if (grads) result.grad_states = write_gradients(grads, layer_shapes(layers), ws.gradient, grad_prior);
  return result;
}

}  // namespace divbind
