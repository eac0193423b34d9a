// Divide & Bind / Attend-and-Excite attention losses: forward and analytic backward (CPU).
// Spec: docs/divide-and-bind.md §1, §2, §9. Implemented from the spec only.
//
// Shape legend (used in every comment below):
//   T   text length (77 for SD 1.x)          [k0, k1]  kept token range, Tk = k1 - k0 + 1
//   r0  object resolution (16), P0 = r0*r0   K         number of object tokens
//   a layer is probs (heads, r*r, T) row-major
//
// Layout of the file: validation / planning, then the pipeline stages, each `x_forward` directly above
// `x_backward`; the backward blocks quote the forward line they differentiate, in reverse order. Every
// intermediate is double; only the final gradients are rounded to float.
#include "attention_loss.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <system_error>
#include <thread>
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#endif

// Gradient buffers at least this large (all layers together) are written with non-temporal stores.
#ifndef DIVBIND_STREAM_THRESHOLD_BYTES
#define DIVBIND_STREAM_THRESHOLD_BYTES (8LL << 20)
#endif

namespace divbind {
namespace {

// ------------------------------------------------------------------------------------------------
// Validation and planning

[[noreturn]] void fail(const std::string& field, const std::string& text, bool range) {
  throw InvalidArgument(field, field + ": " + text, range);
}

std::string num(double v) {  // shortest readable form for messages: 1.5, 1e-05, nan
  std::ostringstream m;
  m << v;
  return m.str();
}

std::string indexed(const char* name, size_t i) {
  return std::string(name) + "[" + std::to_string(i) + "]";
}

const char* slice_text(TokenSlice s) { return s == TokenSlice::AllButLast ? "1:-1" : "1:eotIndex"; }

// Everything derived from (layers, options) once: which layers feed which map, the kept tokens.
struct Plan {
  int text_length = 0;
  int k0 = 1, k1 = 0, tk = 0;  // kept tokens [k0, k1], Tk of them
  int r0 = 0, p0 = 0;
  int tokens = 0;                  // K
  std::vector<int> object_layers;  // indices into layers with r == r0
  std::vector<int> attribute_layers;
  int64_t object_maps = 0;     // sum of heads over object_layers (the mean's denominator)
  int64_t attribute_maps = 0;  // same for attribute_layers
  bool attributes_active = false;  // tv_bind and some token has an attribute
  std::vector<int> token_columns;      // (K) column in the kept range
  std::vector<int> attribute_columns;  // (K) column, -1 = none
  double coefficient = 0;              // binding coefficient at step_index (tv_bind)
};

void check_finite(const char* field, double v) {
  if (!std::isfinite(v)) fail(field, "must be a finite number, got " + num(v), true);
}

Plan make_plan(const std::vector<LayerView>& layers, const LossOptions& o) {
  Plan plan;
  // --- scalar options
  if (o.text_length < 3)
    fail("textLength", "must be >= 3 (SOT, at least one kept token, one dropped position), got " +
                           std::to_string(o.text_length), true);
  if (o.attention_resolution < 2)
    fail("attentionResolution",
         "must be >= 2 (reflect padding and TV need two rows), got " + std::to_string(o.attention_resolution),
         true);
  if (o.attention_resolution > 4096)
    fail("attentionResolution", "must be <= 4096, got " + std::to_string(o.attention_resolution), true);
  if (o.step_index < 0) fail("stepIndex", "must be >= 0, got " + std::to_string(o.step_index), true);
  check_finite("temperature", o.temperature);
  if (!(o.temperature > 0)) fail("temperature", "must be > 0, got " + num(o.temperature), true);
  check_finite("smoothingSigma", o.smoothing_sigma);
  if (!(o.smoothing_sigma > 0))
    fail("smoothingSigma", "must be > 0, got " + num(o.smoothing_sigma), true);
  check_finite("bindingRhoLowTv", o.binding_rho_low_tv);
  check_finite("bindingRhoHighTv", o.binding_rho_high_tv);
  check_finite("bindingTvSwitch", o.binding_tv_switch);
  check_finite("bindingEpsilon", o.binding_epsilon);
  if (!(o.binding_epsilon > 0))
    fail("bindingEpsilon", "must be > 0 (it keeps the JSD logarithms finite), got " +
                               num(o.binding_epsilon), true);
  check_finite("tvMaxWeights[0]", o.tv_max_weight_tv);
  check_finite("tvMaxWeights[1]", o.tv_max_weight_max);
  switch (o.mode) {
    case LossMode::Max: case LossMode::Tv: case LossMode::TvBind: case LossMode::TvMax: break;
    default: fail("mode", "must be one of 'max', 'tv', 'tv_bind', 'tv_max'", true);
  }
  if (o.token_slice != TokenSlice::AllButLast && o.token_slice != TokenSlice::UntilEot)
    fail("tokenSlice", "must be 'all-but-last' or 'until-eot'", true);
  if (o.tv_vertical != TvVertical::Official && o.tv_vertical != TvVertical::Neighbor)
    fail("tvVertical", "must be 'official' or 'neighbor'", true);
  if (o.max_variant != MaxVariant::DivBind && o.max_variant != MaxVariant::AttendExcite)
    fail("maxVariant", "must be 'divbind' or 'attend-excite'", true);

  // --- token slice
  plan.text_length = o.text_length;
  plan.k0 = 1;
  if (o.token_slice == TokenSlice::AllButLast) {
    plan.k1 = o.text_length - 2;
  } else {
    if (o.eot_index < 2 || o.eot_index > o.text_length - 1)
      fail("eotIndex", "must be an integer in 2.." + std::to_string(o.text_length - 1) +
                           " when tokenSlice is 'until-eot' (T=" + std::to_string(o.text_length) + "), got " +
                           std::to_string(o.eot_index), true);
    plan.k1 = o.eot_index - 1;
  }
  plan.tk = plan.k1 - plan.k0 + 1;
  const std::string kept = std::to_string(plan.k0) + ".." + std::to_string(plan.k1) + " (slice " +
                           slice_text(o.token_slice) + " of T=" + std::to_string(o.text_length) + ")";

  // --- tokens
  if (o.token_indices.empty()) fail("tokenIndices", "must list at least one object token", true);
  plan.tokens = static_cast<int>(o.token_indices.size());
  for (size_t i = 0; i < o.token_indices.size(); ++i) {
    const int k = o.token_indices[i];
    if (k < plan.k0 || k > plan.k1)
      fail(indexed("tokenIndices", i), std::to_string(k) + " is outside the kept token range " + kept +
                                           "; token indices count from SOT = 0", true);
    for (size_t j = 0; j < i; ++j)
      if (o.token_indices[j] == k)
        fail(indexed("tokenIndices", i), std::to_string(k) + " repeats tokenIndices[" + std::to_string(j) +
                                             "]; list each object token once", true);
    plan.token_columns.push_back(k - plan.k0);
  }
  if (!o.attribute_indices.empty() && o.attribute_indices.size() != o.token_indices.size())
    fail("attributeIndices", "has " + std::to_string(o.attribute_indices.size()) + " entries but tokenIndices has " +
                                 std::to_string(o.token_indices.size()) +
                                 "; give one entry per object token (-1 or null = no attribute)", true);
  bool any_attribute = false;
  for (size_t i = 0; i < o.attribute_indices.size(); ++i) {
    const int a = o.attribute_indices[i];
    if (a <= 0) { plan.attribute_columns.push_back(-1); continue; }
    if (a < plan.k0 || a > plan.k1)
      fail(indexed("attributeIndices", i), std::to_string(a) + " is outside the kept token range " + kept +
                                               "; use -1 (or null) for no attribute; indices count from SOT = 0",
           true);
    plan.attribute_columns.push_back(a - plan.k0);
    any_attribute = true;
  }
  if (o.attribute_indices.empty()) plan.attribute_columns.assign(o.token_indices.size(), -1);
  plan.attributes_active = o.mode == LossMode::TvBind && any_attribute;

  // --- binding schedule
  if (o.binding_coefficients.empty())
    fail("bindingCoefficients", "must list at least one [fromStepIndex, coefficient] pair", true);
  for (size_t i = 0; i < o.binding_coefficients.size(); ++i) {
    const auto& c = o.binding_coefficients[i];
    const std::string f = indexed("bindingCoefficients", i);
    if (i == 0 && c.from_step != 0)
      fail(f + "[0]", "the schedule must start at step 0 (it says which coefficient applies from the first step), got " +
                          std::to_string(c.from_step), true);
    if (i > 0 && c.from_step <= o.binding_coefficients[i - 1].from_step)
      fail(f + "[0]", "fromStepIndex " + std::to_string(c.from_step) + " must be greater than the previous entry's " +
                          std::to_string(o.binding_coefficients[i - 1].from_step) + "; sort the schedule ascending",
           true);
    if (!std::isfinite(c.coefficient)) fail(f + "[1]", "coefficient must be a finite number", true);
    if (c.from_step <= o.step_index) plan.coefficient = c.coefficient;  // the last entry in force
  }

  // --- attribute resolutions
  for (size_t i = 0; i < o.attribute_resolutions.size(); ++i) {
    const int r = o.attribute_resolutions[i];
    if (r < 1 || r > 4096)
      fail(indexed("attributeResolutions", i), "must be an integer in 1..4096, got " + std::to_string(r), true);
    for (size_t j = 0; j < i; ++j)
      if (o.attribute_resolutions[j] == r)
        fail(indexed("attributeResolutions", i), std::to_string(r) + " repeats attributeResolutions[" +
                                                     std::to_string(j) + "]; list each resolution once", true);
  }
  if (plan.attributes_active && o.attribute_resolutions.empty())
    fail("attributeResolutions", "must list at least one resolution when mode 'tv_bind' has attribute tokens",
         true);

  // --- layers
  if (layers.empty()) fail("layers", "must contain at least one attention layer", true);
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerView& l = layers[i];
    const std::string f = indexed("layers", i);
    if (l.heads < 1 || l.heads > 65536)
      fail(f + ".heads", "must be an integer in 1..65536, got " + std::to_string(l.heads), true);
    if (l.resolution < 1 || l.resolution > 4096)
      fail(f + ".resolution", "must be an integer in 1..4096, got " + std::to_string(l.resolution), true);
    if (l.place != LayerPlace::Down && l.place != LayerPlace::Mid && l.place != LayerPlace::Up)
      fail(f + ".place", "must be 'down', 'mid' or 'up'", true);
    const int64_t per_head = int64_t(l.resolution) * l.resolution;
    const int64_t per_token = per_head * l.heads;  // <= 2^40, no overflow below with T < 2^20
    const int64_t expected = per_token * o.text_length;
    if (l.length != expected) {
      std::ostringstream m;
      m << "has " << l.length << " floats but heads*resolution^2*T = " << l.heads << "*" << l.resolution
        << "^2*" << o.text_length << " = " << expected;
      if (l.length > 0 && l.length % per_token == 0)
        m << "; its length implies T=" << l.length / per_token
          << ", every layer must use the same text length T";
      else
        m << "; pass the layer's full (heads, resolution^2, T) probability tensor";
      fail(f + ".data", m.str(), true);
    }
    if (l.probs == nullptr) fail(f + ".data", "is a null buffer", false);
    if (l.resolution == o.attention_resolution) {
      plan.object_layers.push_back(static_cast<int>(i));
      plan.object_maps += l.heads;
    }
    if (plan.attributes_active &&
        std::find(o.attribute_resolutions.begin(), o.attribute_resolutions.end(), l.resolution) !=
            o.attribute_resolutions.end()) {
      plan.attribute_layers.push_back(static_cast<int>(i));
      plan.attribute_maps += l.heads;
    }
  }
  if (plan.object_layers.empty())
    fail("attentionResolution", "no layer has resolution " + std::to_string(o.attention_resolution) +
                                    "; pass the cross-attention layers of that resolution (16 for SD at 512x512)",
         true);
  if (plan.attributes_active)
    for (size_t i = 0; i < o.attribute_resolutions.size(); ++i) {
      const int r = o.attribute_resolutions[i];
      const bool found = std::any_of(layers.begin(), layers.end(), [r](const LayerView& l) { return l.resolution == r; });
      if (!found)
        fail(indexed("attributeResolutions", i),
             "no layer has resolution " + std::to_string(r) +
                 " but mode 'tv_bind' with attribute tokens needs it; pass those layers or drop the resolution", true);
    }
  plan.r0 = o.attention_resolution;
  plan.p0 = plan.r0 * plan.r0;
  return plan;
}

// Nearest resize index (torch mode='nearest'): output o of an n_out grid reads input floor(o*n_in/n_out).
inline int nearest(int o, int n_in, int n_out) { return static_cast<int>((int64_t(o) * n_in) / n_out); }

// Input pixel (of an r x r layer) read by output pixel p of the r0 x r0 grid.
inline int64_t sampled_pixel(int p, int r, int r0) {
  const int y = p / r0, x = p % r0;
  return int64_t(nearest(y, r, r0)) * r + nearest(x, r, r0);
}

// ------------------------------------------------------------------------------------------------
// Workspace: reused per thread so steady-state calls do not allocate (the addon runs on the JS thread
// or a libuv pool thread; each keeps its own).

struct Workspace {
  std::vector<double> object_mean, attribute_mean;    // (P0, Tk)
  std::vector<double> object_soft, attribute_soft;    // (P0, Tk) token softmax
  std::vector<double> object_maps, attribute_maps;    // (K, P0) smoothed maps
  std::vector<double> d_object_map, d_attribute_map;  // (P0) gradient wrt the selected token's maps
  std::vector<double> d_object_col, d_attribute_col;  // (P0) gradient wrt the softmax column
  std::vector<double> d_object_mean, d_attribute_mean;  // (P0, Tk)
  std::vector<double> scratch;                        // JSD intermediates
  std::vector<int> row_of_pixel;                      // (r*r) gradient row index or -1
  std::vector<double> rows;                           // (touched pixels, Tk) per-resolution gradient
  std::vector<float> rows_f;                          // (touched pixels, T) as written
  struct Lines {
    int resolution = 0;
    std::vector<int> line_of_row;  // (r) index into lines or -1 (an all-zero image row)
    std::vector<float> lines;      // (image rows with a touched pixel, r*T)
  };
  std::vector<Lines> gradient_lines;  // one per resolution that receives a gradient
};

Workspace& workspace() {
  thread_local Workspace ws;
  return ws;
}

// ------------------------------------------------------------------------------------------------
// 1. Aggregation: mean over (layer, head) maps, nearest-subsampled to r0, kept tokens only.

// out (P0, Tk) = (1/N) * sum_{layer in ids, head} probs[head, sampled_pixel(p), k0 + j]
void aggregate_forward(std::vector<double>& out, const std::vector<LayerView>& layers,
                       const std::vector<int>& ids, int64_t n_maps, const Plan& plan) {
  const int T = plan.text_length, tk = plan.tk, r0 = plan.r0;
  out.assign(size_t(plan.p0) * tk, 0.0);
  for (int id : ids) {
    const LayerView& l = layers[id];
    const int r = l.resolution;
    const int64_t hw = int64_t(r) * r;
    for (int h = 0; h < l.heads; ++h) {
      const float* head = l.probs + int64_t(h) * hw * T;
      for (int p = 0; p < plan.p0; ++p) {
        const float* row = head + sampled_pixel(p, r, r0) * T + plan.k0;
        double* acc = out.data() + size_t(p) * tk;
        for (int j = 0; j < tk; ++j) acc[j] += row[j];
      }
    }
  }
  const double inv = 1.0 / double(n_maps);
  bool finite = true;
  for (double& v : out) {
    v *= inv;
    finite &= std::isfinite(v);
  }
  if (finite) return;
  // A sum of floats in double cannot overflow, so a non-finite mean means a NaN/Inf was read: find it.
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
              << sampled_pixel(p, r, r0) << ", token " << plan.k0 + j
              << "); attention probabilities must be finite";
            fail(indexed("layers", size_t(id)) + ".data", m.str(), true);
          }
      }
  }
}

// grad (P0, Tk) of the mean -> per input pixel rows of one resolution r (accumulated into ws.rows).
// In the forward this was: out[p, j] += probs[head, sampled_pixel(p), k0 + j] / N for every (layer, head).
// Every head of every layer at that resolution receives the same row, so it is built once here.
void aggregate_backward_rows(Workspace& ws, const std::vector<double>& d_mean, int64_t n_maps, int r,
                             const Plan& plan) {
  const int tk = plan.tk;
  const double inv = 1.0 / double(n_maps);
  for (int p = 0; p < plan.p0; ++p) {
    const int64_t pix = sampled_pixel(p, r, plan.r0);
    int& row = ws.row_of_pixel[size_t(pix)];
    if (row < 0) {
      row = static_cast<int>(ws.rows.size() / size_t(tk));
      ws.rows.resize(ws.rows.size() + size_t(tk), 0.0);
    }
    double* dst = ws.rows.data() + size_t(row) * tk;
    const double* src = d_mean.data() + size_t(p) * tk;
    for (int j = 0; j < tk; ++j) dst[j] += src[j] * inv;  // several p share a pixel when r < r0
  }
}

// Writes n floats (src, or zeros when src == nullptr) to dst. With `stream`, non-temporal stores: at SD size
// the gradient buffers (66 MB) dwarf the caches, and plain stores would first read every line they write
// (read-for-ownership), doubling the memory traffic that bounds this call. The caller issues the fence.
void store_floats(float* dst, const float* src, size_t n, bool stream) {
#if defined(__SSE2__) || defined(_M_X64)
  if (stream) {
    size_t i = 0;
    for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15) != 0; ++i) dst[i] = src ? src[i] : 0.0f;
    if (src) {
      for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
    } else {
      const __m128 zero = _mm_setzero_ps();
      for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, zero);
    }
    for (; i < n; ++i) dst[i] = src ? src[i] : 0.0f;
    return;
  }
#else
  (void)stream;
#endif
  if (src) std::memcpy(dst, src, n * sizeof(float));
  else std::memset(dst, 0, n * sizeof(float));
}

void store_fence() {
#if defined(__SSE2__) || defined(_M_X64)
  _mm_sfence();  // non-temporal stores are weakly ordered: publish them before another thread reads
#endif
}

// Builds, for one resolution r, every image row (r pixels x T floats) that holds a touched pixel: the gradient
// row of each touched pixel (from ws.rows_f), zeros elsewhere.
void build_gradient_lines(Workspace::Lines& out, const Workspace& ws, int r, int T) {
  const size_t line = size_t(r) * T;
  out.resolution = r;
  out.line_of_row.assign(size_t(r), -1);
  out.lines.clear();
  for (int y = 0; y < r; ++y) {
    bool touched = false;
    for (int x = 0; x < r && !touched; ++x) touched = ws.row_of_pixel[size_t(y) * r + x] >= 0;
    if (!touched) continue;
    out.line_of_row[size_t(y)] = static_cast<int>(out.lines.size() / line);
    out.lines.resize(out.lines.size() + line, 0.0f);
    float* dst = out.lines.data() + out.lines.size() - line;
    for (int x = 0; x < r; ++x) {
      const int row = ws.row_of_pixel[size_t(y) * r + x];
      if (row >= 0) std::memcpy(dst + size_t(x) * T, ws.rows_f.data() + size_t(row) * T, size_t(T) * sizeof(float));
    }
  }
}

// Writes heads [h0, h1) of one layer's gradient (heads, r*r, T) image row by image row, each float once.
// lines == nullptr: the layer gets no gradient (all zeros).
void write_layer_gradient(float* grad, const LayerView& l, const Workspace::Lines* lines, int T, int h0, int h1,
                          bool stream) {
  const int r = l.resolution;
  const size_t line = size_t(r) * T;
  if (!lines) {
    store_floats(grad + size_t(h0) * r * line, nullptr, size_t(h1 - h0) * r * line, stream);
    return;
  }
  for (int h = h0; h < h1; ++h)
    for (int y = 0; y < r; ++y) {
      const int k = lines->line_of_row[size_t(y)];
      store_floats(grad + (size_t(h) * r + y) * line, k < 0 ? nullptr : lines->lines.data() + size_t(k) * line,
                   line, stream);
    }
}

// Writes every layer's gradient; with threads == 2 the (layer, head) blocks are split in two halves of equal
// bytes, the second half on a helper thread (memory-bound: it helps where one core cannot saturate memory).
void write_gradients(float* const* grads, const std::vector<LayerView>& layers, const Workspace& ws, int T,
                     bool stream, int threads) {
  std::vector<const Workspace::Lines*> src(layers.size(), nullptr);
  for (size_t i = 0; i < layers.size(); ++i)
    for (const Workspace::Lines& g : ws.gradient_lines)
      if (g.resolution == layers[i].resolution) src[i] = &g;
  // blocks are (layer, head); `from`/`to` index the flattened list
  auto run = [&](int64_t from, int64_t to) {
    int64_t at = 0;
    for (size_t i = 0; i < layers.size(); ++i) {
      const int64_t b = std::max<int64_t>(from - at, 0), e = std::min<int64_t>(to - at, layers[i].heads);
      if (b < e) write_layer_gradient(grads[i], layers[i], src[i], T, int(b), int(e), stream);
      at += layers[i].heads;
    }
    if (stream) store_fence();
  };
  int64_t blocks = 0;
  for (const LayerView& l : layers) blocks += l.heads;
  if (threads < 2 || blocks < 2) {
    run(0, blocks);
    return;
  }
  // split point: first block at which the cumulative size reaches half the total
  int64_t total = 0, acc = 0, split = 0;
  for (const LayerView& l : layers) total += l.length;
  for (size_t i = 0; i < layers.size() && acc * 2 < total; ++i)
    for (int h = 0; h < layers[i].heads && acc * 2 < total; ++h, ++split) acc += layers[i].length / layers[i].heads;
  std::thread helper;
  try {
    helper = std::thread(run, split, blocks);
  } catch (const std::system_error&) {  // no thread available: do it all here
    run(0, blocks);
    return;
  }
  run(0, split);
  helper.join();
}

// ------------------------------------------------------------------------------------------------
// 2. Token softmax: S[p, j] = softmax_j(temperature * mean[p, j]) over the Tk kept tokens.

void token_softmax_forward(std::vector<double>& soft, const std::vector<double>& mean, double temperature,
                           int p0, int tk) {
  soft.resize(mean.size());
  for (int p = 0; p < p0; ++p) {
    const double* x = mean.data() + size_t(p) * tk;
    double* s = soft.data() + size_t(p) * tk;
    double mx = -std::numeric_limits<double>::infinity();
    for (int j = 0; j < tk; ++j) mx = std::max(mx, temperature * x[j]);
    double z = 0;
    for (int j = 0; j < tk; ++j) z += (s[j] = std::exp(temperature * x[j] - mx));
    const double inv = 1.0 / z;
    for (int j = 0; j < tk; ++j) s[j] *= inv;
  }
}

// Only column `col` of S carries a gradient (d_col, (P0)); d_mean (P0, Tk) is overwritten.
// In the forward this was: S[p, :] = softmax(temperature * mean[p, :]); then A = S[:, col].
//   dlogit[p, j] = S[p, j] * (delta_{j,col} - S[p, col]) * d_col[p];  d_mean = temperature * dlogit.
void token_softmax_backward(std::vector<double>& d_mean, const std::vector<double>& soft,
                            const std::vector<double>& d_col, int col, double temperature, int p0, int tk) {
  d_mean.assign(size_t(p0) * tk, 0.0);
  for (int p = 0; p < p0; ++p) {
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

struct JsdState {  // forward intermediates, all (P0) except the scalars; views into ws.scratch
  double *p, *q, *pp, *qq;  // spatial softmaxes and their thresholded versions p', q'
  double m_o, m_c, tau;
};

void spatial_softmax(double* out, const double* x, int n, double scale) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int i = 0; i < n; ++i) mx = std::max(mx, scale * x[i]);
  double z = 0;
  for (int i = 0; i < n; ++i) z += (out[i] = std::exp(scale * x[i] - mx));
  for (int i = 0; i < n; ++i) out[i] /= z;
}

double jsd_forward(JsdState& st, std::vector<double>& scratch, const double* o, const double* c, int n, double rho,
                   double eps) {
  scratch.resize(size_t(4) * n);
  st.p = scratch.data();
  st.q = st.p + n;
  st.pp = st.q + n;
  st.qq = st.pp + n;
  st.m_o = map_max_forward(o, n);                 // max(O)
  st.m_c = map_max_forward(c, n);                 // max(C)
  spatial_softmax(st.p, o, n, 1.0);               // p = softmax(vec O)
  spatial_softmax(st.q, c, n, st.m_o / st.m_c);   // q = softmax(vec C * max(O) / max(C))
  st.tau = rho * map_max_forward(st.p, n);        // tau = rho * max(p), shared by p and q
  double j = 0;
  for (int i = 0; i < n; ++i) {
    st.pp[i] = std::max(st.p[i] - st.tau, 0.0) + eps;  // p' = relu(p - tau) + eps
    st.qq[i] = std::max(st.q[i] - st.tau, 0.0) + eps;  // q' = relu(q - tau) + eps
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

std::atomic<int> g_gradient_threads{0};  // 0 = not set yet: DIVBIND_THREADS or the default

int gradient_threads() {
  int n = g_gradient_threads.load(std::memory_order_relaxed);
  if (n > 0) return n;
  n = kDefaultGradientThreads;
  if (const char* env = std::getenv("DIVBIND_THREADS")) {
    const int v = std::atoi(env);
    if (v >= 1) n = std::min(v, 2);
  }
  g_gradient_threads.store(n, std::memory_order_relaxed);
  return n;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Public entry points

void set_gradient_threads(int threads) { g_gradient_threads.store(std::clamp(threads, 1, 2), std::memory_order_relaxed); }

void validate(const std::vector<LayerView>& layers, const LossOptions& options) { (void)make_plan(layers, options); }

LossResult attention_loss(const std::vector<LayerView>& layers, const LossOptions& options, float* const* grads,
                          float* object_maps_out, float* attribute_maps_out) {
  const Plan plan = make_plan(layers, options);
  if (grads)
    for (size_t i = 0; i < layers.size(); ++i)
      if (!grads[i]) fail(indexed("grads", i), "is a null buffer; pass one buffer per layer or no grads", false);
  Workspace& ws = workspace();
  const int p0 = plan.p0, tk = plan.tk, r0 = plan.r0, K = plan.tokens;
  const Kernel kernel = make_kernel(options.smoothing_sigma);
  const Kernel* k = options.smoothing ? &kernel : nullptr;

  // ---- forward
  // 1. object mean (P0, Tk) -> token softmax -> smoothed maps (K, P0)
  aggregate_forward(ws.object_mean, layers, plan.object_layers, plan.object_maps, plan);
  token_softmax_forward(ws.object_soft, ws.object_mean, options.temperature, p0, tk);
  ws.object_maps.resize(size_t(K) * p0);
  for (int s = 0; s < K; ++s)
    smooth_forward(ws.object_maps.data() + size_t(s) * p0, ws.object_soft.data(), tk, plan.token_columns[s], r0, k);
  // 2. attribute maps (tv_bind with attributes only)
  ws.attribute_maps.assign(size_t(K) * p0, 0.0);
  if (plan.attributes_active) {
    aggregate_forward(ws.attribute_mean, layers, plan.attribute_layers, plan.attribute_maps, plan);
    token_softmax_forward(ws.attribute_soft, ws.attribute_mean, options.temperature, p0, tk);
    for (int s = 0; s < K; ++s)
      if (plan.attribute_columns[s] >= 0)
        smooth_forward(ws.attribute_maps.data() + size_t(s) * p0, ws.attribute_soft.data(), tk,
                       plan.attribute_columns[s], r0, k);
  }
  // 3. per-token values
  LossResult result;
  result.tokens.resize(size_t(K));
  for (int s = 0; s < K; ++s) {
    TokenDiagnostics& d = result.tokens[size_t(s)];
    const double* a = ws.object_maps.data() + size_t(s) * p0;
    d.token_index = options.token_indices[size_t(s)];
    d.attribute_index = plan.attribute_columns[s] >= 0 ? plan.attribute_columns[s] + plan.k0 : -1;
    d.max_attention = map_max_forward(a, p0);
    d.tv = tv_forward(a, r0, options.tv_vertical);
    switch (options.mode) {
      case LossMode::Max:
        d.value = options.max_variant == MaxVariant::DivBind ? d.max_attention
                                                             : std::max(0.0, 1.0 - d.max_attention);
        break;
      case LossMode::Tv: d.value = d.tv; break;
      case LossMode::TvMax: d.value = options.tv_max_weight_tv * d.tv + options.tv_max_weight_max * d.max_attention; break;
      case LossMode::TvBind:
        d.value = d.tv;
        d.coefficient = plan.coefficient;  // reported for every token in tv_bind, used where there is a JSD
        if (plan.attributes_active && plan.attribute_columns[s] >= 0) {
          JsdState st;
          d.jsd = jsd_forward(st, ws.scratch, a, ws.attribute_maps.data() + size_t(s) * p0, p0,
                              binding_rho(options, d.tv), options.binding_epsilon);
          d.has_jsd = true;
          d.value = d.tv - plan.coefficient * d.jsd;
        }
        break;
    }
  }
  // 4. aggregation. Python's builtin max keeps the FIRST maximal element (strict >).
  const bool hinge = options.mode == LossMode::Max && options.max_variant == MaxVariant::AttendExcite;
  int selected = 0;
  for (int s = 1; s < K; ++s) {
    const double cand = hinge ? result.tokens[size_t(s)].value : -result.tokens[size_t(s)].value;
    const double best = hinge ? result.tokens[size_t(selected)].value : -result.tokens[size_t(selected)].value;
    if (cand > best) selected = s;
  }
  const TokenDiagnostics& chosen = result.tokens[size_t(selected)];
  result.loss = hinge ? chosen.value : -chosen.value;
  const bool by_max = options.mode == LossMode::Max || options.mode == LossMode::TvMax;
  result.indicator = std::numeric_limits<double>::infinity();
  for (const TokenDiagnostics& d : result.tokens)
    result.indicator = std::min(result.indicator, by_max ? d.max_attention : d.tv);

  if (object_maps_out)
    for (size_t i = 0; i < ws.object_maps.size(); ++i) object_maps_out[i] = static_cast<float>(ws.object_maps[i]);
  if (attribute_maps_out)
    for (size_t i = 0; i < ws.attribute_maps.size(); ++i)
      attribute_maps_out[i] = static_cast<float>(ws.attribute_maps[i]);
  if (!grads) return result;

  // ---- backward: only the selected token's value reaches L.
  // In the forward this was: L = -v_sel (D&B), or L = max(0, 1 - m_sel) (A&E hinge: no gradient when 1 - m <= 0).
  const int s = selected;
  const double* a = ws.object_maps.data() + size_t(s) * p0;
  const double* c = ws.attribute_maps.data() + size_t(s) * p0;
  ws.d_object_map.assign(size_t(p0), 0.0);
  ws.d_attribute_map.assign(size_t(p0), 0.0);
  bool any_gradient = true;
  bool attribute_gradient = false;
  switch (options.mode) {
    case LossMode::Max:
      if (hinge && !(1.0 - chosen.max_attention > 0)) any_gradient = false;
      else map_max_backward(ws.d_object_map.data(), a, p0, -1.0);  // dL/dm = -1 in both variants
      break;
    case LossMode::Tv: tv_backward(ws.d_object_map.data(), a, r0, options.tv_vertical, -1.0); break;
    case LossMode::TvMax:
      // v = w_tv * TV + w_max * m
      map_max_backward(ws.d_object_map.data(), a, p0, -options.tv_max_weight_max);
      tv_backward(ws.d_object_map.data(), a, r0, options.tv_vertical, -options.tv_max_weight_tv);
      break;
    case LossMode::TvBind:
      // v = TV - coef * JSD(O, C); rho depends on TV through a step, which has no gradient.
      if (chosen.has_jsd) {
        jsd_backward(ws.d_object_map.data(), ws.d_attribute_map.data(), ws.scratch, a, c, p0,
                     binding_rho(options, chosen.tv), options.binding_epsilon, plan.coefficient);
        attribute_gradient = true;
      }
      tv_backward(ws.d_object_map.data(), a, r0, options.tv_vertical, -1.0);
      break;
  }

  // Every gradient float is written exactly once (zeros included). Streaming stores only pay off when the
  // buffers are far larger than the caches (a small call's caller reads them straight back).
  const int T = plan.text_length;
  int64_t total = 0;
  for (const LayerView& l : layers) total += l.length;
  const bool stream = total * int64_t(sizeof(float)) >= int64_t(DIVBIND_STREAM_THRESHOLD_BYTES);
  if (any_gradient) {
    // smoothing -> token softmax backward, per map family
    ws.d_object_col.resize(size_t(p0));
    smooth_backward(ws.d_object_col.data(), ws.d_object_map.data(), r0, k);
    token_softmax_backward(ws.d_object_mean, ws.object_soft, ws.d_object_col, plan.token_columns[s],
                           options.temperature, p0, tk);
    if (attribute_gradient) {
      ws.d_attribute_col.resize(size_t(p0));
      smooth_backward(ws.d_attribute_col.data(), ws.d_attribute_map.data(), r0, k);
      token_softmax_backward(ws.d_attribute_mean, ws.attribute_soft, ws.d_attribute_col,
                             plan.attribute_columns[s], options.temperature, p0, tk);
    }
    // Mean backward per resolution: every (layer, head) of one resolution gets the same rows.
    std::vector<int> resolutions;
    for (int id : plan.object_layers) resolutions.push_back(layers[id].resolution);
    if (attribute_gradient)
      for (int id : plan.attribute_layers) resolutions.push_back(layers[id].resolution);
    std::sort(resolutions.begin(), resolutions.end());
    resolutions.erase(std::unique(resolutions.begin(), resolutions.end()), resolutions.end());
    ws.gradient_lines.resize(resolutions.size());
    for (size_t ri = 0; ri < resolutions.size(); ++ri) {
      const int r = resolutions[ri];
      ws.row_of_pixel.assign(size_t(r) * r, -1);
      ws.rows.clear();
      if (r == r0) aggregate_backward_rows(ws, ws.d_object_mean, plan.object_maps, r, plan);
      if (attribute_gradient &&
          std::find(options.attribute_resolutions.begin(), options.attribute_resolutions.end(), r) !=
              options.attribute_resolutions.end())
        aggregate_backward_rows(ws, ws.d_attribute_mean, plan.attribute_maps, r, plan);
      const size_t n_rows = ws.rows.size() / size_t(tk);
      ws.rows_f.assign(n_rows * size_t(T), 0.0f);  // zeros outside the kept tokens
      for (size_t i = 0; i < n_rows; ++i)
        for (int j = 0; j < tk; ++j) ws.rows_f[i * T + plan.k0 + j] = static_cast<float>(ws.rows[i * tk + j]);
      build_gradient_lines(ws.gradient_lines[ri], ws, r, T);
    }
  } else {
    ws.gradient_lines.clear();
  }
  write_gradients(grads, layers, ws, T, stream, stream ? gradient_threads() : 1);
  return result;
}

}  // namespace divbind
