// Standalone tests of the C++ loss core (no Node): run by ctest (-DDIVBIND_BUILD_TESTS=ON).
//  1. forward vs a naive float64 reference written straight from the spec (dense loops, explicit padding,
//     spec kernel constants): loss, indicator and every diagnostic, tol 1e-12 abs + 1e-10 rel;
//  2. analytic gradient vs float64 central finite differences of the core's own forward, every mode and option;
//     step h = 1e-4 on each float input (the actual float step is used as the divisor);
//     tol |g - fd| <= 2e-5 * max|fd| + 2e-4 * |fd| (truncation O(h^2 f''') with temperature up to 100);
//  3. structural checks (zero gradients, overwrite semantics, tv_bind without attributes == tv, hinge cut-off);
//     the reuse contract: GradState priors give the full-write gradients bit for bit over a random call sequence;
//  4. validation: every bad input throws InvalidArgument with the field, the message and TypeError/RangeError kind.
// Prints one line per case and "OK"/"FAILED" at the end; exit status 1 on any failure.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attention_loss.h"
#include "gradient_write.h"
#include "parallel.h"
#include "simd.h"

using namespace divbind;

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("  NOT OK: %s\n", what.c_str());
  }
}

struct Input {
  std::vector<std::vector<float>> data;
  std::vector<LayerView> layers;
  void add(int heads, int r, int T, std::mt19937& rng, double peak) {
    // Rows are softmax-like probability vectors with a random peak, like real cross-attention.
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<float> d(size_t(heads) * r * r * T);
    for (size_t row = 0; row < d.size() / T; ++row) {
      double z = 0;
      std::vector<double> e(T);
      for (int t = 0; t < T; ++t) z += (e[t] = std::exp(peak * u(rng)));
      for (int t = 0; t < T; ++t) d[row * T + t] = float(e[t] / z);
    }
    data.push_back(std::move(d));
    layers.push_back(LayerView{nullptr, 0, heads, r, LayerPlace::Down});
    fix();
  }
  void fix() {
    for (size_t i = 0; i < layers.size(); ++i) {
      layers[i].probs = data[i].data();
      layers[i].length = int64_t(data[i].size());
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Naive float64 reference forward, written from the spec without sharing code with the core.

struct RefResult {
  double loss, indicator;
  std::vector<double> m, tv, jsd, value;
};

std::vector<double> ref_maps(const Input& in, const LossOptions& o, const std::vector<int>& res, int col) {
  const int r0 = o.attention_resolution, T = o.text_length;
  const int k1 = o.token_slice == TokenSlice::AllButLast ? T - 2 : o.eot_index - 1;
  // dense mean over (layer, head) maps, resized by nearest, over all T tokens
  std::vector<double> mean(size_t(r0) * r0 * T, 0.0);
  double n = 0;
  for (const LayerView& l : in.layers) {
    if (std::find(res.begin(), res.end(), l.resolution) == res.end()) continue;
    for (int h = 0; h < l.heads; ++h) {
      n += 1;
      for (int y = 0; y < r0; ++y)
        for (int x = 0; x < r0; ++x) {
          const int iy = int(std::floor(double(y) * l.resolution / r0)),
                    ix = int(std::floor(double(x) * l.resolution / r0));
          for (int t = 0; t < T; ++t)
            mean[(size_t(y) * r0 + x) * T + t] +=
                l.probs[((size_t(h) * l.resolution + iy) * l.resolution + ix) * T + t];
        }
    }
  }
  std::vector<double> s(size_t(r0) * r0);
  for (int p = 0; p < r0 * r0; ++p) {
    double z = 0;
    for (int t = 1; t <= k1; ++t) z += std::exp(o.temperature * mean[size_t(p) * T + t] / n);
    s[p] = std::exp(o.temperature * mean[size_t(p) * T + col] / n) / z;
  }
  if (!o.smoothing) return s;
  // explicit reflect-padded (r0+2)^2 image, 2-D kernel from the spec's 1-D formula
  std::vector<double> pad(size_t(r0 + 2) * (r0 + 2));
  auto refl = [r0](int i) { return i < 0 ? -i : (i > r0 - 1 ? 2 * (r0 - 1) - i : i); };
  for (int y = -1; y <= r0; ++y)
    for (int x = -1; x <= r0; ++x) pad[size_t(y + 1) * (r0 + 2) + x + 1] = s[size_t(refl(y)) * r0 + refl(x)];
  double g[3], gs = 0;
  for (int x = 0; x < 3; ++x) gs += (g[x] = std::exp(-std::pow((x - 1) / (2 * o.smoothing_sigma), 2)));
  std::vector<double> out(s.size());
  for (int y = 0; y < r0; ++y)
    for (int x = 0; x < r0; ++x) {
      double acc = 0;
      for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b) acc += g[a] * g[b] / (gs * gs) * pad[size_t(y + a) * (r0 + 2) + x + b];
      out[size_t(y) * r0 + x] = acc;
    }
  return out;
}

RefResult reference(const Input& in, const LossOptions& o) {
  const int r0 = o.attention_resolution, n = r0 * r0;
  RefResult r;
  double coef = 0;
  for (const auto& c : o.binding_coefficients)
    if (o.step_index >= c.from_step) coef = c.coefficient;
  for (size_t s = 0; s < o.token_indices.size(); ++s) {
    const std::vector<double> a = ref_maps(in, o, {r0}, o.token_indices[s]);
    const double m = *std::max_element(a.begin(), a.end());
    double h = 0, v = 0;
    for (int y = 0; y < r0; ++y)
      for (int x = 0; x < r0 - 1; ++x) h += std::abs(a[y * r0 + x] - a[y * r0 + x + 1]);
    for (int y = 1; y < r0; ++y)
      for (int x = 0; x < r0; ++x)
        v += o.tv_vertical == TvVertical::Official ? std::abs(a[(r0 - 1) * r0 + x] - a[y * r0 + x])
                                                   : std::abs(a[(y - 1) * r0 + x] - a[y * r0 + x]);
    const double tv = (h + v) / (r0 * (r0 - 1.0));
    double value = 0, jsd = NAN;
    switch (o.mode) {
      case LossMode::Max: value = o.max_variant == MaxVariant::DivBind ? m : std::max(0.0, 1 - m); break;
      case LossMode::Tv: value = tv; break;
      case LossMode::TvMax: value = o.tv_max_weight_tv * tv + o.tv_max_weight_max * m; break;
      case LossMode::TvBind: {
        value = tv;
        const int at = o.attribute_indices.empty() ? -1 : o.attribute_indices[s];
        if (at > 0) {
          std::vector<double> c = ref_maps(in, o, o.attribute_resolutions, at);
          const double mc = *std::max_element(c.begin(), c.end());
          for (double& x : c) x = x / mc * m;
          auto softmax = [](std::vector<double> x) {
            double z = 0;
            for (double& e : x) z += (e = std::exp(e));
            for (double& e : x) e /= z;
            return x;
          };
          std::vector<double> p = softmax(a), q = softmax(c);
          const double rho = tv < o.binding_tv_switch ? o.binding_rho_low_tv : o.binding_rho_high_tv;
          const double tau = rho * *std::max_element(p.begin(), p.end());
          jsd = 0;
          for (int i = 0; i < n; ++i) {
            const double pi = std::max(p[i] - tau, 0.0) + o.binding_epsilon;
            const double qi = std::max(q[i] - tau, 0.0) + o.binding_epsilon;
            const double mi = (pi + qi) / 2;
            jsd += 0.5 * pi * std::log(pi / mi) + 0.5 * qi * std::log(qi / mi);
          }
          value = tv - coef * jsd;
        }
        break;
      }
    }
    r.m.push_back(m);
    r.tv.push_back(tv);
    r.jsd.push_back(jsd);
    r.value.push_back(value);
  }
  const bool hinge = o.mode == LossMode::Max && o.max_variant == MaxVariant::AttendExcite;
  r.loss = -INFINITY;
  r.indicator = INFINITY;
  for (size_t s = 0; s < r.value.size(); ++s) {
    r.loss = std::max(r.loss, hinge ? r.value[s] : -r.value[s]);
    const bool by_max = o.mode == LossMode::Max || o.mode == LossMode::TvMax;
    r.indicator = std::min(r.indicator, by_max ? r.m[s] : r.tv[s]);
  }
  return r;
}

bool close(double a, double b, double atol, double rtol) { return std::abs(a - b) <= atol + rtol * std::abs(b); }

// ---------------------------------------------------------------------------------------------

struct Case {
  std::string name;
  LossOptions options;
  Input input;
};

// Standard small input: object layers at r0 = 4 (heads 2 and 3), attribute sources at 8 and 2 (r < r0 is
// nearest upsampling), an unused 3x3 layer, T = 9.
Input small_input(unsigned seed, double peak) {
  std::mt19937 rng(seed);
  Input in;
  in.add(2, 4, 9, rng, peak);
  in.add(3, 4, 9, rng, peak);
  in.add(2, 8, 9, rng, peak);
  in.add(1, 2, 9, rng, peak);
  in.add(1, 3, 9, rng, peak);
  return in;
}

LossOptions small_options(LossMode mode) {
  LossOptions o;
  o.mode = mode;
  o.text_length = 9;
  o.token_indices = {2, 5};
  o.attention_resolution = 4;
  o.attribute_resolutions = {8, 2};
  o.temperature = 40;
  return o;
}

void run_forward_and_gradient(Case c) {
  const Input& in = c.input;
  const LossOptions& o = c.options;
  std::printf("case %s\n", c.name.c_str());
  // forward vs reference
  const LossResult res = attention_loss(in.layers, o, nullptr);
  const RefResult ref = reference(in, o);
  check(close(res.loss, ref.loss, 1e-12, 1e-10),
        c.name + ": loss " + std::to_string(res.loss) + " vs reference " + std::to_string(ref.loss));
  check(close(res.indicator, ref.indicator, 1e-12, 1e-10), c.name + ": indicator");
  for (size_t s = 0; s < res.tokens.size(); ++s) {
    const TokenDiagnostics& d = res.tokens[s];
    check(close(d.max_attention, ref.m[s], 1e-12, 1e-10), c.name + ": maxAttention[" + std::to_string(s) + "]");
    check(close(d.tv, ref.tv[s], 1e-12, 1e-10), c.name + ": tv[" + std::to_string(s) + "]");
    check(close(d.value, ref.value[s], 1e-12, 1e-10), c.name + ": value[" + std::to_string(s) + "]");
    check(d.has_jsd == !std::isnan(ref.jsd[s]), c.name + ": has_jsd[" + std::to_string(s) + "]");
    if (d.has_jsd) check(close(d.jsd, ref.jsd[s], 1e-12, 1e-10), c.name + ": jsd[" + std::to_string(s) + "]");
  }
  if (o.mode == LossMode::TvBind) {  // the binding term must be the one differentiated
    size_t sel = 0;
    while (sel < res.tokens.size() && res.loss != -res.tokens[sel].value) ++sel;
    check(sel < res.tokens.size() && res.tokens[sel].has_jsd, c.name + ": selected token has a JSD term");
  }
  // analytic gradient (into buffers pre-filled with garbage: they must be overwritten)
  std::vector<std::vector<float>> g;
  std::vector<float*> gp;
  for (const auto& d : in.data) g.emplace_back(d.size(), 7.0f);
  for (auto& v : g) gp.push_back(v.data());
  attention_loss(in.layers, o, gp.data());
  // finite differences of the core's own forward
  Input work = in;
  work.fix();
  double max_fd = 0, max_err = 0;
  std::vector<std::vector<double>> fd(in.data.size());
  for (size_t i = 0; i < work.data.size(); ++i) {
    fd[i].resize(work.data[i].size());
    for (size_t e = 0; e < work.data[i].size(); ++e) {
      const float x = in.data[i][e];
      const float xp = x + 1e-4f, xm = x - 1e-4f;
      work.data[i][e] = xp;
      const double lp = attention_loss(work.layers, o, nullptr).loss;
      work.data[i][e] = xm;
      const double lm = attention_loss(work.layers, o, nullptr).loss;
      work.data[i][e] = x;
      fd[i][e] = (lp - lm) / (double(xp) - double(xm));
      max_fd = std::max(max_fd, std::abs(fd[i][e]));
    }
  }
  int bad = 0;
  for (size_t i = 0; i < fd.size(); ++i)
    for (size_t e = 0; e < fd[i].size(); ++e) {
      const double err = std::abs(g[i][e] - fd[i][e]);
      max_err = std::max(max_err, err);
      if (err > 2e-5 * max_fd + 2e-4 * std::abs(fd[i][e])) {
        if (bad++ < 5) std::printf("    layer %zu elem %zu: analytic %.9g fd %.9g\n", i, e, double(g[i][e]), fd[i][e]);
      }
    }
  check(bad == 0, c.name + ": " + std::to_string(bad) + " gradient entries off");
  check(max_fd > 0 || o.mode == LossMode::Max, c.name + ": gradient is identically zero");
  std::printf("  loss %.9g  max|fd| %.4g  max|analytic-fd| %.3g\n", res.loss, max_fd, max_err);
}

void gradient_cases() {
  {
    Case c{"max divbind", small_options(LossMode::Max), small_input(1, 3)};
    run_forward_and_gradient(c);
  }
  {
    Case c{"max attend-excite", small_options(LossMode::Max), small_input(2, 3)};
    c.options.max_variant = MaxVariant::AttendExcite;
    c.options.token_indices = {6, 1, 3};
    run_forward_and_gradient(c);
  }
  {
    Case c{"tv official", small_options(LossMode::Tv), small_input(3, 3)};
    c.options.temperature = 100;
    run_forward_and_gradient(c);
  }
  {
    Case c{"tv neighbor, sigma 0.8", small_options(LossMode::Tv), small_input(4, 3)};
    c.options.tv_vertical = TvVertical::Neighbor;
    c.options.smoothing_sigma = 0.8;
    run_forward_and_gradient(c);
  }
  {
    // (seed 5 put two compared pixels 1.7e-5 apart: FD straddles the |x| kink there, so another seed)
    Case c{"tv no smoothing, until-eot", small_options(LossMode::Tv), small_input(13, 3)};
    c.options.smoothing = false;
    c.options.token_slice = TokenSlice::UntilEot;
    c.options.eot_index = 6;
    run_forward_and_gradient(c);
  }
  {
    Case c{"tv_max", small_options(LossMode::TvMax), small_input(6, 3)};
    c.options.tv_max_weight_max = 0.7;
    run_forward_and_gradient(c);
  }
  {
    Case c{"tv_bind coef 1 (step 0)", small_options(LossMode::TvBind), small_input(7, 3)};
    c.options.attribute_indices = {3, 7};
    run_forward_and_gradient(c);
  }
  {
    // rho 0.9 clips most of p and q (relu inactive branch) and exercises tau's gradient.
    Case c{"tv_bind coef 5 (step 12), rho 0.9, one token without attribute", small_options(LossMode::TvBind),
           small_input(8, 3)};
    c.options.attribute_indices = {-1, 4};
    c.options.token_indices = {2, 6};
    c.options.step_index = 12;
    c.options.binding_rho_low_tv = 0.9;
    c.options.binding_rho_high_tv = 0.9;
    run_forward_and_gradient(c);
  }
  {
    // attribute resolutions include r0 itself: object and attribute gradients add on the same layers.
    Case c{"tv_bind attribute source includes r0, neighbor, no smoothing", small_options(LossMode::TvBind),
           small_input(9, 3)};
    c.options.attribute_indices = {4, 4};
    c.options.attribute_resolutions = {4, 8};
    c.options.tv_vertical = TvVertical::Neighbor;
    c.options.smoothing = false;
    c.options.step_index = 25;
    run_forward_and_gradient(c);
  }
  {
    // rho switches on TV; threshold below every TV -> rho_high everywhere, ties in nothing.
    Case c{"tv_bind custom schedule, temperature 100", small_options(LossMode::TvBind), small_input(10, 2)};
    c.options.attribute_indices = {7, 3};
    c.options.temperature = 100;
    c.options.binding_coefficients = {{0, 2.5}, {3, 7.0}};
    c.options.step_index = 3;
    c.options.binding_tv_switch = 0.0;
    run_forward_and_gradient(c);
  }
}

// ---------------------------------------------------------------------------------------------

void structural_cases() {
  std::printf("case structural\n");
  Input in = small_input(11, 3);
  LossOptions o = small_options(LossMode::TvBind);
  std::vector<std::vector<float>> g;
  std::vector<float*> gp;
  for (const auto& d : in.data) g.emplace_back(d.size(), 3.0f);
  for (auto& v : g) gp.push_back(v.data());
  // tv_bind without attributes == tv (same loss, same gradients)
  const LossResult a = attention_loss(in.layers, o, gp.data());
  std::vector<std::vector<float>> g_bind = g;
  o.mode = LossMode::Tv;
  const LossResult b = attention_loss(in.layers, o, gp.data());
  check(a.loss == b.loss && g_bind == g, "tv_bind without attributes equals tv");
  // layers at other resolutions get exact zeros; SOT and the dropped last position too
  bool zeros = std::all_of(g[2].begin(), g[2].end(), [](float v) { return v == 0; }) &&
               std::all_of(g[3].begin(), g[3].end(), [](float v) { return v == 0; }) &&
               std::all_of(g[4].begin(), g[4].end(), [](float v) { return v == 0; });
  for (size_t row = 0; row < g[0].size() / 9; ++row) zeros = zeros && g[0][row * 9] == 0 && g[0][row * 9 + 8] == 0;
  check(zeros, "gradients are zero outside the object layers and the kept tokens");
  // with attributes, the attribute layers at 8 only get gradient at the sampled pixels (even rows/cols)
  o.mode = LossMode::TvBind;
  o.attribute_indices = {3, 6};
  const LossResult c = attention_loss(in.layers, o, gp.data());
  bool sparse = true, some = false;
  for (int h = 0; h < 2; ++h)
    for (int y = 0; y < 8; ++y)
      for (int x = 0; x < 8; ++x)
        for (int t = 0; t < 9; ++t) {
          const float v = g[2][((size_t(h) * 8 + y) * 8 + x) * 9 + t];
          if ((y % 2 || x % 2) && v != 0) sparse = false;
          if (v != 0) some = true;
        }
  check(sparse && some, "attribute layer gradient only at nearest-sampled pixels");
  check(c.tokens[0].has_jsd && c.tokens[0].coefficient == 1.0 && c.tokens[0].attribute_index == 3,
        "diagnostics carry jsd, coefficient and attribute index");
  // maps out: attribute maps are zero for a token without attribute
  o.attribute_indices = {-1, 6};
  std::vector<float> om(2 * 16, -1), am(2 * 16, -1);
  const LossResult d = attention_loss(in.layers, o, nullptr, om.data(), am.data());
  check(std::all_of(am.begin(), am.begin() + 16, [](float v) { return v == 0; }) &&
            std::all_of(am.begin() + 16, am.end(), [](float v) { return v > 0; }),
        "attribute maps: zeros for tokens without attribute");
  check(float(d.tokens[1].max_attention) == *std::max_element(om.begin() + 16, om.end()), "object map max");
  check(d.tokens[0].coefficient == 1.0 && !d.tokens[0].has_jsd && d.tokens[0].value == d.tokens[0].tv,
        "token without attribute: coefficient reported, no JSD, value = TV");
  // A&E hinge: a token at probability 1 everywhere (no smoothing, huge temperature) gives m = 1 -> no gradient.
  Input hot;
  std::mt19937 rng(3);
  hot.add(1, 4, 9, rng, 1);
  for (size_t row = 0; row < 16; ++row)
    for (int t = 0; t < 9; ++t) hot.data[0][row * 9 + t] = t == 2 ? 0.9f : 0.0125f;
  LossOptions ho = small_options(LossMode::Max);
  ho.max_variant = MaxVariant::AttendExcite;
  ho.smoothing = false;
  ho.temperature = 1e4;
  ho.token_indices = {2};
  ho.attribute_resolutions = {};
  std::vector<float> hg(hot.data[0].size(), 5.0f);
  float* hgp = hg.data();
  const LossResult h = attention_loss(hot.layers, ho, &hgp);
  check(h.loss == 0 && std::all_of(hg.begin(), hg.end(), [](float v) { return v == 0; }),
        "A&E hinge: m = 1 gives loss 0 and zero gradient");
  // full-tensor max ties: a constant map splits d m evenly over all pixels (no smoothing).
  for (size_t row = 0; row < 16; ++row)
    for (int t = 0; t < 9; ++t) hot.data[0][row * 9 + t] = 1.0f / 9;
  ho.max_variant = MaxVariant::DivBind;
  ho.temperature = 10;
  attention_loss(hot.layers, ho, &hgp);
  // S = 1/7 everywhere; dL/dS_col = -1/16 per pixel; dS_col/dx_col = T_emp * S (1 - S)
  const double expect = -1.0 / 16 * 10 * (1.0 / 7) * (6.0 / 7);
  bool even = true;
  for (size_t row = 0; row < 16; ++row) even = even && close(hg[row * 9 + 2], expect, 1e-7, 1e-6);
  check(even, "max ties split the gradient evenly");
}

// Central differences at 24 entries with a non-zero gradient (sampled pixels of the four 16-multiple layers).
void check_sampled_fd(const Input& in, const LossOptions& o, const std::vector<std::vector<float>>& g1,
                      std::mt19937& rng) {
  // central differences at sampled entries with a non-zero gradient
  Input work = in;
  work.fix();
  std::uniform_int_distribution<int> pick_layer(0, 3), pick_head(0, 7), pick_token(1, 75);
  double max_fd = 0;
  std::vector<std::pair<std::pair<size_t, size_t>, double>> samples;
  while (samples.size() < 24) {
    const size_t li = size_t(pick_layer(rng));
    const int r = in.layers[li].resolution, step = r / 16;
    std::uniform_int_distribution<int> pick_cell(0, 15);
    const size_t e =
        ((size_t(pick_head(rng)) * r + size_t(pick_cell(rng) * step)) * r + size_t(pick_cell(rng) * step)) * 77 +
        size_t(pick_token(rng));
    const float x = in.data[li][e];
    const float xp = x + 1e-5f, xm = x - 1e-5f;  // small: flat 16x16 maps put |x| kinks close
    work.data[li][e] = xp;
    const double lp = attention_loss(work.layers, o, nullptr).loss;
    work.data[li][e] = xm;
    const double lm = attention_loss(work.layers, o, nullptr).loss;
    work.data[li][e] = x;
    const double fd = (lp - lm) / (double(xp) - double(xm));
    max_fd = std::max(max_fd, std::abs(fd));
    samples.push_back({{li, e}, fd});
  }
  int bad = 0;
  for (const auto& smp : samples) {
    const double g = g1[smp.first.first][smp.first.second];
    if (std::abs(g - smp.second) > 2e-4 * max_fd + 2e-3 * std::abs(smp.second)) {
      if (bad++ < 5)
        std::printf("    layer %zu elem %zu: analytic %.9g fd %.9g\n", smp.first.first, smp.first.second, g,
                    smp.second);
    }
  }
  check(bad == 0 && max_fd > 0, "large: sampled gradient entries match central differences");
  std::printf("  max|fd| %.4g over %zu samples\n", max_fd, samples.size());
}
// Large buffers (>= 8 MB: streaming stores, second thread): every float overwritten, zeros exactly where
// nothing is read, one thread == two threads bit for bit, and sampled entries vs central differences
// (h = 1e-5, tol 2e-4 * max|fd| + 2e-3 * |fd|).
void large_case() {
  std::printf("case large buffers (streaming stores, 1 vs 2 threads)\n");
  std::mt19937 rng(21);
  Input in;
  in.add(8, 16, 77, rng, 8);
  in.add(8, 64, 77, rng, 8);
  in.add(8, 16, 77, rng, 8);
  in.add(8, 32, 77, rng, 8);
  in.add(8, 8, 77, rng, 8);
  LossOptions o;
  o.mode = LossMode::TvBind;
  o.token_indices = {2, 5};
  o.attribute_indices = {4, 7};
  std::vector<std::vector<float>> g1, g2;
  std::vector<float*> p1, p2;
  for (const auto& d : in.data) {
    g1.emplace_back(d.size(), 5.0f);
    g2.emplace_back(d.size() + 3, -5.0f);
  }
  for (auto& v : g1) p1.push_back(v.data());
  // the second set starts 0..3 floats past a 16-byte boundary: the streaming stores' unaligned head and tail
  for (size_t i = 0; i < g2.size(); ++i) p2.push_back(g2[i].data() + i % 4);
  const int threads = core_threads();
  set_core_threads(1);
  const LossResult a = attention_loss(in.layers, o, p1.data());
  set_core_threads(2);
  const LossResult b = attention_loss(in.layers, o, p2.data());
  set_core_threads(threads);
  bool same = a.loss == b.loss;
  for (size_t i = 0; i < g1.size(); ++i) {
    same = same && std::equal(g1[i].begin(), g1[i].end(), p2[i]);
    for (size_t k = 0; k < i % 4; ++k) same = same && g2[i][k] == -5.0f;  // nothing written before the buffer
    for (size_t k = i % 4 + g1[i].size(); k < g2[i].size(); ++k) same = same && g2[i][k] == -5.0f;  // or after it
  }
  check(same, "large: one and two writer threads, aligned and unaligned buffers agree bit for bit");
  // zeros: SOT / last token everywhere, non-sampled pixels of the 64 and 32 layers, the whole 8x8 layer
  bool zeros = std::all_of(g1[4].begin(), g1[4].end(), [](float v) { return v == 0; });
  for (size_t li = 0; li < 4; ++li) {
    const int r = in.layers[li].resolution, step = r / 16;
    for (int h = 0; h < 8; ++h)
      for (int y = 0; y < r; ++y)
        for (int x = 0; x < r; ++x) {
          const float* row = g1[li].data() + ((size_t(h) * r + y) * r + x) * 77;
          const bool sampled = y % step == 0 && x % step == 0;
          zeros = zeros && row[0] == 0 && row[76] == 0;
          if (!sampled) zeros = zeros && std::all_of(row, row + 77, [](float v) { return v == 0; });
        }
  }
  check(zeros, "large: zeros wherever nothing is read, every pre-filled float overwritten");
  // Sparse writes at this size (two threads) into the unaligned buffers, for another selected token: equal to a
  // full write into fresh buffers by one thread, bit for bit.
  LossOptions swapped = o;
  swapped.token_indices = {5, 2};
  swapped.attribute_indices = {7, 4};
  std::vector<std::vector<float>> g3;
  std::vector<float*> p3;
  for (const auto& d : in.data) g3.emplace_back(d.size(), 9.0f);
  for (auto& v : g3) p3.push_back(v.data());
  set_core_threads(2);
  const LossResult c = attention_loss(in.layers, swapped, p2.data(), nullptr, nullptr, b.grad_states.data());
  set_core_threads(1);
  const LossResult d = attention_loss(in.layers, swapped, p3.data());
  set_core_threads(threads);
  bool sparse_same = c.loss == d.loss && c.grad_states == d.grad_states;
  for (size_t i = 0; i < g3.size(); ++i) sparse_same = sparse_same && std::equal(g3[i].begin(), g3[i].end(), p2[i]);
  check(sparse_same, "large: sparse writes by two threads equal a full write by one, bit for bit");
  std::printf("  loss %.9g\n", a.loss);
  check_sampled_fd(in, o, g1, rng);
}

// ---------------------------------------------------------------------------------------------
// GradState priors (the reuse contract of gradient_write.h).

using Buffers = std::vector<std::vector<float>>;

std::vector<float*> pointers(Buffers& b) {
  std::vector<float*> p;
  for (auto& v : b) p.push_back(v.data());
  return p;
}

bool same_bits(const Buffers& a, const Buffers& b) {
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].size() != b[i].size() || std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(float)) != 0)
      return false;
  return true;
}

// Two threads split the backward by halves of the output pixels only where no gradient row is shared by both
// halves (an odd r0 with attribute layers smaller than r0 shares some): with and without that split, one thread
// and two agree bit for bit.
void halves_case() {
  std::printf("case output-pixel halves (1 vs 2 threads, shared and independent rows)\n");
  struct Geometry {
    int r0;
    std::vector<int> attribute_resolutions;
    bool independent;  // every attribute resolution's rows split at r0*r0/2
  };
  const Geometry geometries[] = {{16, {8, 32}, true}, {15, {8, 32}, false}, {9, {4, 18}, false}, {24, {8, 48}, true}};
  const int threads = core_threads();
  for (const Geometry& geo : geometries) {
    std::mt19937 rng(uint32_t(geo.r0));
    Input in;
    in.add(8, geo.r0, 77, rng, 8);
    for (int r : geo.attribute_resolutions) in.add(8, r, 77, rng, 8);
    in.add(8, geo.r0, 77, rng, 8);
    LossOptions o;
    o.mode = LossMode::TvBind;
    o.attention_resolution = geo.r0;
    o.attribute_resolutions = geo.attribute_resolutions;
    o.token_indices = {2, 5};
    o.attribute_indices = {1, 4};
    bool independent = true;
    CompactGradient g;
    g.reset(77, geo.r0, 1, 75);
    for (int r : geo.attribute_resolutions)
      independent &= rows_split_at(begin_resolution(g, r).geometry, geo.r0 * geo.r0 / 2);
    Buffers one, two;
    for (const auto& d : in.data) {
      one.emplace_back(d.size());
      two.emplace_back(d.size());
    }
    set_core_threads(1);
    const LossResult a = attention_loss(in.layers, o, pointers(one).data());
    set_core_threads(2);
    const LossResult b = attention_loss(in.layers, o, pointers(two).data());
    set_core_threads(threads);
    const std::string name = "halves r0 " + std::to_string(geo.r0) + (independent ? " (split)" : " (shared rows)");
    check(independent == geo.independent, name + ": rows shared across the halves as expected");
    check(a.loss == b.loss && same_bits(one, two), name + ": one and two threads agree bit for bit");
  }
}

LossOptions random_reuse_options(std::mt19937& rng) {
  const LossMode modes[] = {LossMode::Max, LossMode::Tv, LossMode::TvBind, LossMode::TvBind, LossMode::TvMax};
  LossOptions o = small_options(modes[rng() % 5]);
  o.max_variant = rng() % 2 ? MaxVariant::DivBind : MaxVariant::AttendExcite;
  const std::vector<int> attributes[] = {{3, -1}, {-1, 6}, {3, 6}, {}};
  o.attribute_indices = attributes[rng() % 4];
  o.step_index = int(rng() % 25);
  if (rng() % 5 == 0) {  // object maps at 2x2 (layer 3): the sampled pixels of every layer change
    o.attention_resolution = 2;
    o.attribute_resolutions = {8, 4};
  }
  return o;
}

// A random sequence of calls into kept buffers (NaN at first) with the states the previous call reported (Unknown
// when r0 changed, as the caller must): every float equals a full write into fresh buffers, and the states agree.
void reuse_sequence() {
  std::mt19937 rng(31);
  Input shape = small_input(14, 3);
  Buffers kept;
  for (const auto& d : shape.data) kept.emplace_back(d.size(), NAN);
  std::vector<float*> kp = pointers(kept);
  std::vector<GradState> states(kept.size(), GradState::Unknown);
  int last_r0 = 0, mismatches = 0, sparse_calls = 0;
  for (int call = 0; call < 80; ++call) {
    const LossOptions o = random_reuse_options(rng);
    const Input now = small_input(100 + unsigned(call), 3);
    if (o.attention_resolution != last_r0) states.assign(kept.size(), GradState::Unknown);
    sparse_calls += states[0] != GradState::Unknown;
    Buffers fresh;
    for (const auto& d : now.data) fresh.emplace_back(d.size(), -3.0f);
    std::vector<float*> fp = pointers(fresh);
    const LossResult full = attention_loss(now.layers, o, fp.data());
    const LossResult reused = attention_loss(now.layers, o, kp.data(), nullptr, nullptr, states.data());
    if (!same_bits(kept, fresh) || full.grad_states != reused.grad_states || full.loss != reused.loss) {
      if (mismatches++ < 3) std::printf("    call %d: sparse write differs from the full write\n", call);
    }
    states = reused.grad_states;
    last_r0 = o.attention_resolution;
  }
  check(mismatches == 0 && sparse_calls > 40,
        "reuse: 80 calls, sparse writes equal full writes bit for bit (" + std::to_string(sparse_calls) + " sparse)");
}

// What the states say, and that a sparse write leaves alone what it may assume to be zero.
void reuse_states_and_skips() {
  Input in = small_input(15, 3);  // layers at 4 (2 heads), 4 (3 heads), 8, 2, 3
  LossOptions o = small_options(LossMode::Tv);
  Buffers g;
  for (const auto& d : in.data) g.emplace_back(d.size(), NAN);
  std::vector<float*> gp = pointers(g);
  const LossResult a = attention_loss(in.layers, o, gp.data());
  const std::vector<GradState> tv_states = {GradState::Sampled, GradState::Sampled, GradState::Zero, GradState::Zero,
                                            GradState::Zero};
  check(a.grad_states == tv_states, "reuse: in 'tv' only the object layers hold a gradient");
  g[2][5] = 7.0f;                    // layer at 8: no gradient in 'tv', state Zero
  g[0][(1 * 4 + 1) * 9 + 0] = 7.0f;  // object layer, pixel (1, 1), SOT position: inside a sampled row
  const LossResult b = attention_loss(in.layers, o, gp.data(), nullptr, nullptr, a.grad_states.data());
  check(g[2][5] == 7.0f, "reuse: a layer in state Zero without gradient is not written");
  check(g[0][(1 * 4 + 1) * 9 + 0] == 0.0f, "reuse: sampled rows are rewritten whole (SOT included)");
  // A&E hinge at m = 1 (no gradient at all): the object layers' rows are zeroed, the states become Zero.
  Input hot;
  std::mt19937 rng(3);
  hot.add(2, 4, 9, rng, 1);
  for (size_t row = 0; row < 32; ++row)
    for (int t = 0; t < 9; ++t) hot.data[0][row * 9 + t] = t == 2 ? 0.9f : 0.0125f;
  LossOptions ho = small_options(LossMode::Max);
  ho.smoothing = false;
  ho.temperature = 10;  // S < 1: a non-zero gradient
  ho.token_indices = {2};
  ho.attribute_resolutions = {};
  std::vector<float> hg(hot.data[0].size(), NAN);
  float* hgp = hg.data();
  const LossResult c = attention_loss(hot.layers, ho, &hgp);
  const bool had_gradient = std::any_of(hg.begin(), hg.end(), [](float v) { return v != 0; });
  ho.max_variant = MaxVariant::AttendExcite;
  ho.temperature = 1e4;  // S = 1 exactly: m = 1, no gradient
  const LossResult d = attention_loss(hot.layers, ho, &hgp, nullptr, nullptr, c.grad_states.data());
  check(had_gradient && c.grad_states[0] == GradState::Sampled && d.grad_states[0] == GradState::Zero &&
            std::all_of(hg.begin(), hg.end(), [](float v) { return v == 0; }),
        "reuse: a gradient that vanishes (A&E hinge) is zeroed");
  (void)b;
}

void reuse_cases() {
  std::printf("case reuse (GradState priors)\n");
  reuse_sequence();
  reuse_states_and_skips();
}

// ---------------------------------------------------------------------------------------------

void expect_error(const std::string& name, const std::function<void()>& f, const std::string& field,
                  const std::string& fragment, bool range) {
  try {
    f();
    check(false, "validation '" + name + "' did not throw");
  } catch (const InvalidArgument& e) {
    const std::string msg = e.what();
    const bool ok = e.field == field && msg.rfind(field + ": ", 0) == 0 && msg.find(fragment) != std::string::npos &&
                    e.range_error == range;
    check(ok, "validation '" + name + "': field '" + e.field + "', message '" + msg + "'");
  } catch (const std::exception& e) {
    check(false, "validation '" + name + "' threw a non-InvalidArgument: " + e.what());
  }
}

// A call on `in` with options `o`, for expect_error.
std::function<void()> call_with(const LossOptions& o, Input in) {
  return [o, in]() mutable {
    in.fix();
    attention_loss(in.layers, o, nullptr);
  };
}

// True when the call throws nothing.
bool runs(const LossOptions& o, Input in) {
  try {
    call_with(o, std::move(in))();
    return true;
  } catch (...) {
    return false;
  }
}

LossOptions validation_options() {
  LossOptions o = small_options(LossMode::TvBind);
  o.attribute_indices = {3, -1};
  return o;
}

void validation_tokens(const Input& base) {
  const LossOptions o = validation_options();
  LossOptions x = o;
  x.token_indices = {2, 8};
  expect_error("token outside slice", call_with(x, base), "tokenIndices[1]",
               "8 is outside the kept token range 1..7 (slice 1:-1 of T=9); token indices count from SOT = 0", true);
  x.token_indices = {0, 5};
  expect_error("SOT token", call_with(x, base), "tokenIndices[0]", "0 is outside the kept token range", true);
  x.token_indices = {5, 5};
  expect_error("duplicate token", call_with(x, base), "tokenIndices[1]", "repeats tokenIndices[0]", true);
  x.token_indices = {};
  expect_error("no tokens", call_with(x, base), "tokenIndices", "at least one", true);
  x = o;
  x.attribute_indices = {3};
  expect_error("attribute length", call_with(x, base), "attributeIndices", "has 1 entries but tokenIndices has 2",
               true);
  x.attribute_indices = {3, 8};
  expect_error("attribute outside slice", call_with(x, base), "attributeIndices[1]",
               "8 is outside the kept token range", true);
  x = o;
  x.token_slice = TokenSlice::UntilEot;
  x.eot_index = 5;
  x.token_indices = {2, 5};
  expect_error("until-eot range", call_with(x, base), "tokenIndices[1]", "range 1..4 (slice 1:eotIndex of T=9)", true);
  x.eot_index = -1;
  expect_error("until-eot missing eot", call_with(x, base), "eotIndex", "when tokenSlice is 'until-eot'", true);
}

void validation_layers(const Input& base) {
  const LossOptions o = validation_options();
  Input in = base;
  in.data[1].pop_back();
  expect_error("short buffer", call_with(o, in), "layers[1].data",
               "has 431 floats but heads*resolution^2*T = 3*4^2*9 = 432", true);
  in = base;
  in.data[2].resize(2 * 64 * 10);
  expect_error("T mismatch", call_with(o, in), "layers[2].data",
               "implies T=10, every layer must use the same text length", true);
  in = base;
  in.layers[0].heads = 0;
  expect_error("zero heads", call_with(o, in), "layers[0].heads", "must be an integer in 1..65536, got 0", true);
  in = base;
  in.layers[1].resolution = -4;
  expect_error("negative resolution", call_with(o, in), "layers[1].resolution", "got -4", true);
  expect_error("no layers", call_with(o, Input{}), "layers", "at least one", true);
}

// NaN/Inf is an error only where the loss reads it.
void validation_values(const Input& base) {
  const LossOptions o = validation_options();
  Input in = base;
  in.data[0][2 * 9 + 3] = NAN;  // head 0, pixel 2, token 3: read
  expect_error("NaN read", call_with(o, in), "layers[0].data", "holds nan at index 21 (head 0, pixel 2, token 3)",
               true);
  in = base;
  in.data[2][(3 * 8 + 2) * 9 + 4] = INFINITY;  // layer at 8: pixel (3, 2) is not sampled -> not read
  check(runs(o, in), "Inf at a pixel that is never read is ignored");
  in.data[2][(2 * 8 + 2) * 9 + 4] = -INFINITY;  // pixel (2, 2) is sampled
  expect_error("Inf read", call_with(o, in), "layers[2].data", "holds -inf", true);
  in = base;
  in.data[0][8] = NAN;  // the dropped last position is never read
  check(runs(o, in), "NaN at the dropped last token position is ignored");
}

void validation_resolutions(const Input& base) {
  const LossOptions o = validation_options();
  LossOptions x = o;
  x.attention_resolution = 16;
  expect_error("object resolution absent", call_with(x, base), "attentionResolution", "no layer has resolution 16",
               true);
  x = o;
  x.attribute_resolutions = {8, 32};
  expect_error("attribute resolution absent", call_with(x, base), "attributeResolutions[1]",
               "no layer has resolution 32", true);
  x.attribute_indices = {};  // no attribute requested: the missing resolution does not matter
  check(runs(x, base), "attribute resolutions are not needed without attributes");
  x = o;
  x.attribute_resolutions = {8, 8};
  expect_error("duplicate attribute resolution", call_with(x, base), "attributeResolutions[1]", "repeats", true);
}

// The ranges of loss_options.h, and the schedule.
void validation_scalars(const Input& base) {
  const LossOptions o = validation_options();
  LossOptions x = o;
  x.temperature = NAN;
  expect_error("NaN temperature", call_with(x, base), "temperature", "finite", true);
  x.temperature = -1;
  expect_error("negative temperature", call_with(x, base), "temperature", "must be > 0", true);
  x.temperature = 2e6;
  expect_error("huge temperature", call_with(x, base), "temperature", "must be <= 1e+06, got 2e+06", true);
  x = o;
  x.binding_epsilon = 0;
  expect_error("zero epsilon", call_with(x, base), "bindingEpsilon",
               "must be > 0 (it keeps the JSD logarithms finite), got 0", true);
  x = o;
  x.binding_rho_high_tv = 1.5;
  expect_error("rho above 1", call_with(x, base), "bindingRhoHighTv", "must be <= 1, got 1.5", true);
  x = o;
  x.tv_max_weight_max = INFINITY;
  expect_error("inf weight", call_with(x, base), "tvMaxWeights[1]", "finite", true);
  x = o;
  x.mode = static_cast<LossMode>(9);
  expect_error("bad enum", call_with(x, base), "mode", "'max', 'tv', 'tv_bind', 'tv_max'", true);
  x = o;
  x.step_index = -1;
  expect_error("negative step", call_with(x, base), "stepIndex", ">= 0", true);
  x = o;
  x.attention_resolution = 1;
  expect_error("object resolution 1", call_with(x, base), "attentionResolution",
               "must be >= 2 (reflect padding and TV need two rows), got 1", true);
  x = o;
  x.binding_coefficients = {{0, 1}, {0, 5}};
  expect_error("schedule order", call_with(x, base), "bindingCoefficients[1][0]", "sort the schedule ascending", true);
  x.binding_coefficients = {{2, 1}};
  expect_error("schedule start", call_with(x, base), "bindingCoefficients[0][0]", "must start at step 0", true);
  x.binding_coefficients = {{0, NAN}};
  expect_error("schedule coefficient", call_with(x, base), "bindingCoefficients[0][1]", "finite", true);
  x.binding_coefficients = {};
  expect_error("empty schedule", call_with(x, base), "bindingCoefficients", "at least one", true);
}

// exp_nonpositive (simd.h), which the token softmax uses instead of std::exp: within 1e-15 relative of std::exp on
// a fine grid over [-700, 0] and at its edges, exp(-700) below -700, NaN for NaN.
void exp_case() {
  std::printf("case exp_nonpositive vs std::exp\n");
  double worst = 0;
  for (int i = 0; i <= 1400000; ++i) {
    const double x = -700.0 + i * 0.0005 + 1e-7 * (i % 7);
    if (x > 0) break;
    worst = std::max(worst, std::abs(exp_nonpositive(x) - std::exp(x)) / std::exp(x));
  }
  for (double x : {0.0, -0.0, -1e-300, -1e-17, -0.5 * std::log(2.0), -std::log(2.0), -699.999999}) {
    worst = std::max(worst, std::abs(exp_nonpositive(x) - std::exp(x)) / std::exp(x));
  }
  std::printf("  max relative error %.3g\n", worst);
  check(worst <= 1e-15, "exp_nonpositive: within 1e-15 relative of std::exp on [-700, 0]");
  const double floor = exp_nonpositive(-700.0);
  check(floor > 0 && floor < 1e-303 && exp_nonpositive(-700.5) == floor && exp_nonpositive(-1e300) == floor &&
            exp_nonpositive(-std::numeric_limits<double>::infinity()) == floor,
        "exp_nonpositive: exp(-700) (1e-304) below -700");
  check(std::isnan(exp_nonpositive(std::numeric_limits<double>::quiet_NaN())), "exp_nonpositive: NaN stays NaN");
}

void validation_cases() {
  std::printf("case validation\n");
  const Input base = small_input(12, 3);
  validation_tokens(base);
  validation_layers(base);
  validation_values(base);
  validation_resolutions(base);
  validation_scalars(base);
}

}  // namespace

int main() {
  gradient_cases();
  structural_cases();
  large_case();
  halves_case();
  reuse_cases();
  exp_case();
  validation_cases();
  std::printf(failures == 0 ? "OK: all native core checks passed\n" : "FAILED: %d check(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
