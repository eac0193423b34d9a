// Parity test: the CUDA loss (host and device entry points) against the CPU core, which is the oracle.
// Fresh random inputs for every case; every output (grads, maps) is poisoned with NaN before each run, so an
// element the CUDA path fails to write shows up as a mismatch.
//
// Tolerances (fp32 outputs of double internals on both sides):
//  - scalars (loss, indicator, per-token max/tv/jsd/coefficient/value): |cuda - cpu| <= 1e-9 + 1e-5 |cpu|
//  - each gradient / map tensor: ||cuda - cpu||_2 <= 1e-5 ||cpu||_2 + 1e-13 sqrt(n), and every element
//    |cuda - cpu| <= 1e-5 |cpu| + 1e-6 max|cpu| + 1e-13. The absolute 1e-13 floor: where the token softmax
//    saturates (S_col -> 1 at temperature 100) the exact gradient there, ~S_col (1 - S_col) c, is below double
//    resolution of its O(1e-3..1) terms, so both backends return rounding noise of ~1e-15 (seen: 1.4e-15 vs
//    2.3e-15 in a whole 'max'-mode gradient of that size); real gradient entries are many orders above it.
// Build: cmake -S . -B build-ctest -DDIVBIND_BUILD_TESTS=ON && cmake --build build-ctest && ctest --test-dir
// build-ctest Where no CUDA device exists it prints "SKIPPED: no CUDA device (<reason>)" after checking that the CUDA
// entry points fail cleanly (InvalidArgument for bad arguments, std::runtime_error otherwise), and exits 0.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../attention_loss_cuda.h"

using divbind::InvalidArgument;
using divbind::LayerPlace;
using divbind::LayerView;
using divbind::LossMode;
using divbind::LossOptions;
using divbind::LossResult;

namespace {

int g_failures = 0;
int g_checks = 0;
double g_worst_scalar = 0, g_worst_tensor = 0;

#define CHECK_CUDA(call)                                                                               \
  do {                                                                                                 \
    const cudaError_t e_ = (call);                                                                     \
    if (e_ != cudaSuccess) {                                                                           \
      std::fprintf(stderr, "FATAL %s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      return 2;                                                                                        \
    }                                                                                                  \
  } while (0)

void fail(const std::string& where, const std::string& what) {
  ++g_failures;
  if (g_failures <= 40) std::printf("  NOT OK %s: %s\n", where.c_str(), what.c_str());
}

void check_scalar(const std::string& where, double got, double ref) {
  ++g_checks;
  const double err = std::fabs(got - ref);
  const double tol = 1e-9 + 1e-5 * std::fabs(ref);
  if (std::isfinite(ref) && ref != 0) g_worst_scalar = std::max(g_worst_scalar, err / std::fabs(ref));
  if (!(err <= tol) || std::isnan(got) != std::isnan(ref)) {
    char b[256];
    std::snprintf(b, sizeof b, "got %.12g want %.12g (err %.3g > tol %.3g)", got, ref, err, tol);
    fail(where, b);
  }
}

void check_tensor(const std::string& where, const float* got, const float* ref, size_t n) {
  ++g_checks;
  double num = 0, den = 0, amax = 0;
  for (size_t i = 0; i < n; ++i) amax = std::max(amax, double(std::fabs(ref[i])));
  size_t bad = 0, first = n;
  for (size_t i = 0; i < n; ++i) {
    const double d = double(got[i]) - double(ref[i]);
    num += d * d;
    den += double(ref[i]) * ref[i];
    const double tol = 1e-5 * std::fabs(ref[i]) + 1e-6 * amax + 1e-13;
    if (!(std::fabs(d) <= tol)) {  // NaN (an unwritten, poisoned element) fails here
      if (first == n) first = i;
      ++bad;
    }
  }
  const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  if (std::isfinite(rel) && std::sqrt(den) > 1e-13 * std::sqrt(double(n)) * 1e3)
    g_worst_tensor = std::max(g_worst_tensor, rel);  // worst over tensors well above the noise floor
  if (bad || !(std::sqrt(num) <= 1e-5 * std::sqrt(den) + 1e-13 * std::sqrt(double(n)))) {
    char b[320];
    std::snprintf(b, sizeof b, "%zu/%zu elements off, norm-relative error %.3g; first at %zu: got %.9g want %.9g", bad,
                  n, rel, first == n ? size_t(0) : first, first == n ? 0.0 : double(got[first]),
                  first == n ? 0.0 : double(ref[first]));
    fail(where, b);
  }
}

// ---- random inputs

struct LayerSpec {
  int heads, res;
};

struct Inputs {
  std::vector<std::vector<float>> data;
  std::vector<LayerView> views;
};

// Each (head, pixel) row is a softmax over T of random logits, with spatial bumps on a few "object" tokens so
// the maps have real peaks (maxima, TV and the JSD threshold all get exercised).
Inputs make_inputs(const std::vector<LayerSpec>& specs, int T, const std::vector<int>& hot, std::mt19937_64& rng) {
  Inputs in;
  std::normal_distribution<double> n01(0.0, 1.0);
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  std::vector<double> cx(hot.size()), cy(hot.size()), amp(hot.size());
  for (size_t k = 0; k < hot.size(); ++k) {
    cx[k] = u01(rng);
    cy[k] = u01(rng);
    amp[k] = 2.0 + 6.0 * u01(rng);
  }
  std::vector<double> logits(static_cast<size_t>(T), 0.0);
  for (const LayerSpec& s : specs) {
    std::vector<float> d(size_t(s.heads) * s.res * s.res * T);
    for (int h = 0; h < s.heads; ++h)
      for (int p = 0; p < s.res * s.res; ++p) {
        const double y = (p / s.res + 0.5) / s.res, x = (p % s.res + 0.5) / s.res;
        double mx = -1e300;
        for (int t = 0; t < T; ++t) logits[size_t(t)] = 1.5 * n01(rng);
        logits[0] += 4.0;  // SOT soaks up most of the mass, as in SD
        for (size_t k = 0; k < hot.size(); ++k) {
          const double r2 = (x - cx[k]) * (x - cx[k]) + (y - cy[k]) * (y - cy[k]);
          logits[size_t(hot[k])] += amp[k] * std::exp(-r2 / 0.02);
        }
        for (double v : logits) mx = std::max(mx, v);
        double z = 0;
        for (double& v : logits) z += (v = std::exp(v - mx));
        float* row = d.data() + (size_t(h) * s.res * s.res + p) * T;
        for (int t = 0; t < T; ++t) row[t] = float(logits[size_t(t)] / z);
      }
    in.data.push_back(std::move(d));
  }
  const LayerPlace places[3] = {LayerPlace::Down, LayerPlace::Mid, LayerPlace::Up};
  for (size_t i = 0; i < specs.size(); ++i) {
    LayerView v;
    v.probs = in.data[i].data();
    v.length = int64_t(in.data[i].size());
    v.heads = specs[i].heads;
    v.resolution = specs[i].res;
    v.place = places[i % 3];
    in.views.push_back(v);
  }
  return in;
}

const float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Outputs {
  LossResult result;
  std::vector<std::vector<float>> grads;
  std::vector<float> obj, attr;
};

std::vector<float*> pointers(std::vector<std::vector<float>>& v) {
  std::vector<float*> p;
  for (auto& x : v) p.push_back(x.data());
  return p;
}

void poison(Outputs& out, const Inputs& in, size_t map_floats) {
  out.grads.assign(in.views.size(), {});
  for (size_t i = 0; i < in.views.size(); ++i) out.grads[i].assign(size_t(in.views[i].length), kNaN);
  out.obj.assign(map_floats, kNaN);
  out.attr.assign(map_floats, kNaN);
}

// Runs the device entry point: uploads inputs, poisons device outputs (0xFF bytes = NaN), downloads.
bool run_device(const Inputs& in, const LossOptions& o, Outputs& out, size_t map_floats, cudaStream_t stream,
                std::string* error) {
  std::vector<float*> d_in, d_grad;
  float *d_obj = nullptr, *d_attr = nullptr;
  bool ok = true;
  auto cleanup = [&] {
    for (float* p : d_in) cudaFree(p);
    for (float* p : d_grad) cudaFree(p);
    cudaFree(d_obj);
    cudaFree(d_attr);
  };
  try {
    for (const LayerView& v : in.views) {
      float* p = nullptr;
      if (cudaMalloc(&p, size_t(v.length) * 4) != cudaSuccess) throw std::runtime_error("cudaMalloc");
      d_in.push_back(p);
      cudaMemcpy(p, v.probs, size_t(v.length) * 4, cudaMemcpyHostToDevice);
      if (cudaMalloc(&p, size_t(v.length) * 4) != cudaSuccess) throw std::runtime_error("cudaMalloc");
      d_grad.push_back(p);
      cudaMemset(p, 0xff, size_t(v.length) * 4);
    }
    cudaMalloc(&d_obj, map_floats * 4);
    cudaMalloc(&d_attr, map_floats * 4);
    cudaMemset(d_obj, 0xff, map_floats * 4);
    cudaMemset(d_attr, 0xff, map_floats * 4);
    std::vector<LayerView> views = in.views;
    for (size_t i = 0; i < views.size(); ++i) views[i].probs = d_in[i];
    out.result = divbind::cuda::attention_loss_device(views, o, d_grad.data(), d_obj, d_attr, stream);
    for (size_t i = 0; i < views.size(); ++i)
      cudaMemcpy(out.grads[i].data(), d_grad[i], out.grads[i].size() * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(out.obj.data(), d_obj, map_floats * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(out.attr.data(), d_attr, map_floats * 4, cudaMemcpyDeviceToHost);
    const cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) throw std::runtime_error(cudaGetErrorString(e));
  } catch (const std::exception& ex) {
    *error = ex.what();
    ok = false;
  }
  cleanup();
  return ok;
}

void compare(const std::string& name, const Outputs& got, const Outputs& ref, size_t map_floats) {
  check_scalar(name + " loss", got.result.loss, ref.result.loss);
  check_scalar(name + " indicator", got.result.indicator, ref.result.indicator);
  if (got.result.tokens.size() != ref.result.tokens.size()) {
    fail(name, "token count differs");
    return;
  }
  for (size_t s = 0; s < ref.result.tokens.size(); ++s) {
    const auto &a = got.result.tokens[s], &b = ref.result.tokens[s];
    const std::string t = name + " token[" + std::to_string(s) + "]";
    if (a.token_index != b.token_index || a.attribute_index != b.attribute_index || a.has_jsd != b.has_jsd)
      fail(t, "index/attribute/has_jsd differ");
    check_scalar(t + ".max_attention", a.max_attention, b.max_attention);
    check_scalar(t + ".tv", a.tv, b.tv);
    check_scalar(t + ".jsd", a.jsd, b.jsd);
    check_scalar(t + ".coefficient", a.coefficient, b.coefficient);
    check_scalar(t + ".value", a.value, b.value);
  }
  for (size_t i = 0; i < ref.grads.size(); ++i)
    check_tensor(name + " grads[" + std::to_string(i) + "]", got.grads[i].data(), ref.grads[i].data(),
                 ref.grads[i].size());
  check_tensor(name + " objectMaps", got.obj.data(), ref.obj.data(), map_floats);
  check_tensor(name + " attributeMaps", got.attr.data(), ref.attr.data(), map_floats);
}

struct Case {
  std::string name;
  std::vector<LayerSpec> layers;
  LossOptions options;
};

void run_case(const Case& c, std::mt19937_64& rng, cudaStream_t stream) {
  std::vector<int> hot = c.options.token_indices;
  for (int a : c.options.attribute_indices)
    if (a > 0) hot.push_back(a);
  const Inputs in = make_inputs(c.layers, c.options.text_length, hot, rng);
  const size_t map_floats =
      c.options.token_indices.size() * size_t(c.options.attention_resolution) * size_t(c.options.attention_resolution);
  const int before = g_failures;
  Outputs ref, host, dev;
  poison(ref, in, map_floats);
  poison(host, in, map_floats);
  poison(dev, in, map_floats);
  const auto t0 = std::chrono::steady_clock::now();
  auto gr = pointers(ref.grads);
  ref.result = divbind::attention_loss(in.views, c.options, gr.data(), ref.obj.data(), ref.attr.data());
  const auto t1 = std::chrono::steady_clock::now();
  std::string where = c.name + " [host]";
  try {
    auto gh = pointers(host.grads);
    host.result = divbind::cuda::attention_loss_host(in.views, c.options, gh.data(), host.obj.data(), host.attr.data());
    compare(where, host, ref, map_floats);
    ++g_checks;
    if (host.result.grad_states != ref.result.grad_states) fail(where, "grad_states differ from the CPU core's");
  } catch (const std::exception& ex) {
    fail(where, std::string("threw: ") + ex.what());
  }
  const auto t2 = std::chrono::steady_clock::now();
  std::string err;
  where = c.name + " [device]";
  if (run_device(in, c.options, dev, map_floats, stream, &err))
    compare(where, dev, ref, map_floats);
  else
    fail(where, "threw: " + err);
  std::printf("%-4s %-58s loss %+.6f  cpu %.1f ms  cuda-host %.1f ms\n", g_failures == before ? "ok" : "",
              c.name.c_str(), ref.result.loss, std::chrono::duration<double, std::milli>(t1 - t0).count(),
              std::chrono::duration<double, std::milli>(t2 - t1).count());
}

// ---- validation parity: both backends must throw the same InvalidArgument (field and message)

std::string capture(const std::function<void()>& f, std::string* field) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    *field = e.field;
    return std::string("InvalidArgument:") + e.what();
  } catch (const std::exception& e) {
    *field = "";
    return std::string("other:") + e.what();
  }
  *field = "";
  return "no error";
}

void expect_same_error(const std::string& name, const Inputs& in, const LossOptions& o, bool expect_error,
                       cudaStream_t stream, bool device_too) {
  std::vector<std::vector<float>> g1, g2;
  for (const auto& v : in.views) {
    g1.emplace_back(size_t(v.length));
    g2.emplace_back(size_t(v.length));
  }
  auto p1 = pointers(g1), p2 = pointers(g2);
  std::string f_cpu, f_host, f_dev;
  const std::string cpu = capture([&] { divbind::attention_loss(in.views, o, p1.data()); }, &f_cpu);
  const std::string host =
      capture([&] { divbind::cuda::attention_loss_host(in.views, o, p2.data(), nullptr, nullptr); }, &f_host);
  ++g_checks;
  if (expect_error != (cpu != "no error")) fail(name, "CPU core: unexpected outcome: " + cpu);
  if (cpu != host) fail(name + " [host]", "CPU said '" + cpu + "' but CUDA said '" + host + "'");
  if (!device_too) return;
  Outputs dev;
  poison(dev, in, o.token_indices.size() * size_t(o.attention_resolution * o.attention_resolution));
  std::string err;
  const bool ok = run_device(in, o, dev, dev.obj.size(), stream, &err);
  ++g_checks;
  const std::string devs = ok ? "no error" : err;
  const std::string cpu_msg = cpu.rfind("InvalidArgument:", 0) == 0 ? cpu.substr(16) : cpu;
  if (devs != cpu_msg) fail(name + " [device]", "CPU said '" + cpu_msg + "' but CUDA said '" + devs + "'");
  std::printf("ok   %-58s %s\n", name.c_str(), cpu.substr(0, 90).c_str());
}

LossOptions base_options(LossMode mode, int T, std::vector<int> tokens, std::vector<int> attrs = {}) {
  LossOptions o;
  o.mode = mode;
  o.text_length = T;
  o.token_indices = std::move(tokens);
  o.attribute_indices = std::move(attrs);
  return o;
}

// No device: the CUDA entry points must still fail cleanly, bad arguments first. Returns the exit status.
int check_without_device(const std::vector<LayerSpec>& small, std::mt19937_64& rng, const std::string& why) {
  Inputs in = make_inputs(small, 12, {2, 3}, rng);
  LossOptions o = base_options(LossMode::Tv, 12, {2, 3});
  std::string outcome;
  try {
    divbind::cuda::attention_loss_host(in.views, o, nullptr, nullptr, nullptr);
    outcome = "returned";
  } catch (const std::runtime_error& e) {
    outcome = std::string("runtime_error: ") + e.what();
  }
  o.token_indices = {2, 99};
  std::string bad;
  try {
    divbind::cuda::attention_loss_host(in.views, o, nullptr, nullptr, nullptr);
  } catch (const InvalidArgument& e) {
    bad = e.field;
  } catch (const std::exception&) {}
  std::printf("without a device: attention_loss_host -> %s\n", outcome.c_str());
  std::printf("without a device: bad tokenIndices -> InvalidArgument(%s)\n", bad.c_str());
  if (outcome.rfind("runtime_error", 0) != 0 || bad != "tokenIndices[1]") {
    std::printf("FAILED: the CUDA entry points did not fail cleanly without a device\n");
    return 1;
  }
  std::printf("SKIPPED: no CUDA device (%s)\n", why.c_str());
  return 0;
}

// Every mode and option on small random layers (r0 = 16, attribute layers at 64 and 32, a mid layer at 8).
std::vector<Case> mode_cases(const std::vector<LayerSpec>& small, int T) {
  std::vector<Case> cases;
  cases.push_back({"max divbind", small, base_options(LossMode::Max, T, {3, 7, 5})});
  {
    Case c{"max attend-excite", small, base_options(LossMode::Max, T, {3, 7})};
    c.options.max_variant = divbind::MaxVariant::AttendExcite;
    cases.push_back(c);
  }
  cases.push_back({"tv official", small, base_options(LossMode::Tv, T, {4, 9})});
  {
    Case c{"tv neighbor", small, base_options(LossMode::Tv, T, {4, 9, 2})};
    c.options.tv_vertical = divbind::TvVertical::Neighbor;
    cases.push_back(c);
  }
  {
    Case c{"tv_max weights (1, 0.3)", small, base_options(LossMode::TvMax, T, {6, 2})};
    cases.push_back(c);
    c.name = "tv_max weights (0.7, 2.5) neighbor";
    c.options.tv_max_weight_tv = 0.7;
    c.options.tv_max_weight_max = 2.5;
    c.options.tv_vertical = divbind::TvVertical::Neighbor;
    cases.push_back(c);
  }
  for (int step : {0, 12, 31}) {
    Case c{"tv_bind 2 attrs step " + std::to_string(step), small, base_options(LossMode::TvBind, T, {3, 8}, {2, 7})};
    c.options.step_index = step;
    cases.push_back(c);
  }
  {
    Case c{"tv_bind mixed attrs (one none), rho switch high", small,
           base_options(LossMode::TvBind, T, {3, 8, 11}, {2, -1, 0})};
    c.options.binding_tv_switch = 10.0;  // every TV below the switch: rho = low
    c.options.binding_rho_low_tv = 0.05;
    cases.push_back(c);
  }
  {
    Case c{"tv_bind attrs, coefficient 40, eps 1e-3", small, base_options(LossMode::TvBind, T, {5, 9}, {4, 10})};
    c.options.binding_coefficients = {{0, 40.0}};
    c.options.binding_epsilon = 1e-3;
    cases.push_back(c);
  }
  cases.push_back({"tv_bind without attributes (== tv)", small, base_options(LossMode::TvBind, T, {3, 8})});
  {
    Case c{"tv_bind no smoothing, temperature 30", small, base_options(LossMode::TvBind, T, {3, 8}, {2, 7})};
    c.options.smoothing = false;
    c.options.temperature = 30.0;
    cases.push_back(c);
  }
  {
    Case c{"tv sigma 1.3, until-eot slice (eot 12)", small, base_options(LossMode::Tv, T, {3, 9})};
    c.options.smoothing_sigma = 1.3;
    c.options.token_slice = divbind::TokenSlice::UntilEot;
    c.options.eot_index = 12;
    cases.push_back(c);
  }
  {
    Case c{"tv_bind until-eot, attrs", small, base_options(LossMode::TvBind, T, {3, 9}, {4, 10})};
    c.options.token_slice = divbind::TokenSlice::UntilEot;
    c.options.eot_index = 14;
    cases.push_back(c);
  }
  return cases;
}

// Shapes: other object resolutions, up- and downsampled attribute layers, inline-capacity overflows, SD 1.x.
std::vector<Case> shape_cases(int T) {
  std::vector<Case> cases;
  {
    // r0 = 8 with attribute layers at 16 (downsampling) and 4 (upsampling: several outputs share a pixel)
    Case c{"tv_bind r0 8, attribute res 16 and 4 (upsampled)",
           {{2, 8}, {2, 16}, {3, 4}, {1, 32}},
           base_options(LossMode::TvBind, T, {3, 8}, {2, 7})};
    c.options.attention_resolution = 8;
    c.options.attribute_resolutions = {16, 4};
    cases.push_back(c);
  }
  {
    // r0 in the attribute resolutions (a layer feeds both means) and a non-integer ratio (24 -> 16)
    Case c{"tv_bind attribute res {16, 24} (shared r0 layer)",
           {{2, 16}, {2, 24}, {1, 16}},
           base_options(LossMode::TvBind, T, {3, 8}, {2, 7})};
    c.options.attribute_resolutions = {16, 24};
    cases.push_back(c);
  }
  {
    Case c{"tv r0 2 (smallest map)", {{3, 2}, {1, 4}}, base_options(LossMode::Tv, 6, {1, 3})};
    c.options.attention_resolution = 2;
    cases.push_back(c);
    c.name = "tv_bind r0 3, attribute res 6";
    c.layers = {{2, 3}, {2, 6}};
    c.options = base_options(LossMode::TvBind, 7, {1, 3}, {2, 4});
    c.options.attention_resolution = 3;
    c.options.attribute_resolutions = {6};
    cases.push_back(c);
  }
  {
    Case c{"tv_max r0 32 (maps larger than a block)", {{2, 32}, {1, 64}}, base_options(LossMode::TvMax, T, {3, 8})};
    c.options.attention_resolution = 32;
    cases.push_back(c);
    c.name = "tv_bind r0 32, attribute res 64";
    c.options = base_options(LossMode::TvBind, T, {3, 8}, {5, 6});
    c.options.attention_resolution = 32;
    c.options.attribute_resolutions = {64};
    cases.push_back(c);
  }
  {
    Case c{"max single token, T 100", {{4, 16}, {2, 32}}, base_options(LossMode::Max, 100, {42})};
    cases.push_back(c);
  }
  {
    // beyond the inline kernel-parameter capacity: descriptors and token columns are uploaded instead
    std::vector<int> many;
    for (int k = 1; k <= 33; ++k) many.push_back(k);
    Case c{
        "tv 200 heads, 33 tokens (descriptors uploaded)", {{200, 16}, {3, 32}}, base_options(LossMode::Tv, 40, many)};
    cases.push_back(c);
    std::vector<LayerSpec> seventy(70, LayerSpec{1, 16});
    seventy[3] = {2, 64};
    seventy[9] = {1, 32};
    Case d{"tv_bind 70 layers (layer list uploaded)", seventy, base_options(LossMode::TvBind, T, {3, 8}, {2, 7})};
    cases.push_back(d);
  }
  // SD 1.x at 512x512: 5 layers x 8 heads at 16^2, 5 at 64^2, 5 at 32^2, 1 mid at 8^2, T = 77
  const std::vector<LayerSpec> sd = {{8, 64}, {8, 64}, {8, 32}, {8, 32}, {8, 16}, {8, 16}, {8, 8},  {8, 16},
                                     {8, 16}, {8, 16}, {8, 32}, {8, 32}, {8, 32}, {8, 64}, {8, 64}, {8, 64}};
  cases.push_back(
      {"SD 1.x 512: tv_bind, 2 objects with attributes", sd, base_options(LossMode::TvBind, 77, {2, 5}, {1, 4})});
  {
    Case c{"SD 1.x 512: tv_bind step 24, 3 objects", sd, base_options(LossMode::TvBind, 77, {2, 5, 9}, {1, 4, -1})};
    c.options.step_index = 24;
    cases.push_back(c);
  }
  cases.push_back({"SD 1.x 512: max (A&E layers only at 16)", sd, base_options(LossMode::Max, 77, {2, 5})});
  cases.push_back({"SD 1.x 512: tv", sd, base_options(LossMode::Tv, 77, {2, 5})});

  return cases;
}

// Validation and error parity: both backends throw the same InvalidArgument, NaN/Inf only where read.
void validation_parity(const std::vector<LayerSpec>& small, int T, std::mt19937_64& rng, cudaStream_t stream) {
  Inputs in = make_inputs(small, T, {3, 8}, rng);
  LossOptions o = base_options(LossMode::TvBind, T, {3, 8}, {2, 7});
  expect_same_error("valid inputs", in, o, false, stream, true);
  // NaN in a kept token of an object layer
  in.data[2][(size_t(1) * 256 + 37) * T + 5] = kNaN;
  expect_same_error("NaN in an object layer", in, o, true, stream, true);
  in.data[2][(size_t(1) * 256 + 37) * T + 5] = 0.01f;
  // Inf in the SOT column: never read, so no error
  in.data[0][(size_t(0) * 256 + 3) * T + 0] = std::numeric_limits<float>::infinity();
  expect_same_error("Inf in the SOT column (not read)", in, o, false, stream, true);
  // NaN at an unsampled pixel of a 64^2 attribute layer (pixel (1, 1)): not read
  in.data[1][(size_t(2) * 4096 + 65) * T + 4] = kNaN;
  expect_same_error("NaN at an unsampled 64^2 pixel (not read)", in, o, false, stream, true);
  // NaN at a sampled pixel (4, 8) of the 64^2 attribute layer, head 2
  in.data[1][(size_t(2) * 4096 + 4 * 64 + 8) * T + 6] = -std::numeric_limits<float>::infinity();
  expect_same_error("-Inf at a sampled 64^2 pixel", in, o, true, stream, true);
  // the same layer is not read at all in 'tv' mode
  LossOptions tv = base_options(LossMode::Tv, T, {3, 8});
  expect_same_error("-Inf in an attribute layer, mode tv (not read)", in, tv, false, stream, true);
  LossOptions bad = base_options(LossMode::Tv, T, {3, 30});
  expect_same_error("token outside the kept range", in, bad, true, stream, true);
  bad = base_options(LossMode::Tv, T, {3, 3});
  expect_same_error("duplicate token", in, bad, true, stream, true);
  bad = base_options(LossMode::TvBind, T, {3, 8}, {2});
  expect_same_error("attribute list length", in, bad, true, stream, true);
  bad = base_options(LossMode::Tv, T, {3});
  bad.attention_resolution = 48;
  expect_same_error("no layer at the object resolution", in, bad, true, stream, true);
  Inputs wrong = in;
  wrong.views[3].length -= 1;
  expect_same_error("buffer length", wrong, tv, true, stream, false);
  // device entry point given host memory: a clear InvalidArgument, not a fault
  std::string field;
  const std::string msg =
      capture([&] { divbind::cuda::attention_loss_device(in.views, tv, nullptr, nullptr, nullptr, stream); }, &field);
  ++g_checks;
  if (field != "layers[0].data")
    fail("device entry point with host pointers", msg);
  else
    std::printf("ok   %-58s %s\n", "device entry point with host pointers", msg.substr(0, 90).c_str());
  // grads == nullptr: forward only, same result
  const LossResult a = divbind::attention_loss(in.views, tv, nullptr);
  const LossResult b = divbind::cuda::attention_loss_host(in.views, tv, nullptr, nullptr, nullptr);
  check_scalar("forward only loss", b.loss, a.loss);
  check_scalar("forward only indicator", b.indicator, a.indicator);
}

// The host entry point with GradState priors (the reuse contract of native/core/gradient_write.h): a random
// sequence of calls into kept buffers, each compared with the CPU core's full write; the states must agree.
void reuse_parity(const std::vector<LayerSpec>& small, int T, std::mt19937_64& rng) {
  const LossMode modes[] = {LossMode::Max, LossMode::Tv, LossMode::TvBind, LossMode::TvMax};
  const std::vector<int> attributes[] = {{2, 7}, {-1, 7}, {}};
  Inputs shape = make_inputs(small, T, {3, 8}, rng);
  std::vector<std::vector<float>> kept;
  for (const auto& v : shape.views) kept.emplace_back(size_t(v.length), kNaN);
  auto kp = pointers(kept);
  std::vector<divbind::GradState> states(kept.size(), divbind::GradState::Unknown);
  const int before = g_failures;
  for (int call = 0; call < 24; ++call) {
    LossOptions o = base_options(modes[rng() % 4], T, {3, 8}, attributes[rng() % 3]);
    const Inputs in = make_inputs(small, T, {3, 8, 2, 7}, rng);
    Outputs ref;
    poison(ref, in, 0);
    auto gr = pointers(ref.grads);
    ref.result = divbind::attention_loss(in.views, o, gr.data());
    const LossResult got = divbind::cuda::attention_loss_host(in.views, o, kp.data(), nullptr, nullptr, states.data());
    const std::string where = "reuse call " + std::to_string(call);
    for (size_t i = 0; i < kept.size(); ++i)
      check_tensor(where + " grads[" + std::to_string(i) + "]", kept[i].data(), ref.grads[i].data(), kept[i].size());
    ++g_checks;
    if (got.grad_states != ref.result.grad_states) fail(where, "grad_states differ from the CPU core's");
    states = got.grad_states;
  }
  std::printf("%-4s %-58s\n", g_failures == before ? "ok" : "", "host entry point, GradState priors, 24 calls");
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IONBF, 0);  // a hang or crash still shows the last finished case
  std::string why;
  const int devices = divbind::cuda::device_count(&why);
  std::mt19937_64 rng(std::random_device{}());
  const std::vector<LayerSpec> small = {{2, 16}, {3, 64}, {2, 16}, {2, 32}, {1, 8}};
  if (devices == 0) return check_without_device(small, rng, why);
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device 0: %s (sm_%d%d, %d SMs), %d device(s)\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount, devices);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  const int T = 20;
  std::vector<Case> cases = mode_cases(small, T);
  for (Case& c : shape_cases(T)) cases.push_back(std::move(c));
  // DIVBIND_PARITY_QUICK=1 (used under compute-sanitizer) leaves out the SD-size cases.
  const char* quick_env = std::getenv("DIVBIND_PARITY_QUICK");
  const bool quick = quick_env && std::string(quick_env) == "1";
  for (const Case& c : cases)
    if (!quick || c.name.rfind("SD ", 0) != 0) run_case(c, rng, stream);
  // Same case twice on fresh inputs: a moving error would be a race.
  for (int rep = 0; rep < 2; ++rep) run_case(cases[6], rng, stream);

  validation_parity(small, T, rng, stream);
  reuse_parity(small, T, rng);
  std::printf("%d checks, %d failures; worst relative error: scalars %.3g, tensors (norm) %.3g\n", g_checks, g_failures,
              g_worst_scalar, g_worst_tensor);
  cudaStreamDestroy(stream);
  if (g_failures) {
    std::printf("FAILED\n");
    return 1;
  }
  std::printf("PASSED\n");
  return 0;
}
