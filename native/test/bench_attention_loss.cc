// Timing of the C++ core at SD 1.x 512x512 size, against the machine's memory bandwidth.
// Build: cmake -S . -B build-ctest -DDIVBIND_BUILD_BENCH=ON && cmake --build build-ctest --target bench_attention_loss
// Run:   ./build-ctest/bench_attention_loss [repeats=40]      (DIVBIND_THREADS=1: one thread)
// Layers as in SD 1.5 (spec §1): 5 x 8 heads at 64², 5 at 32², 5 at 16², 1 at 8², T = 77; tv_bind with two
// objects that both have an attribute. The bandwidth floor counts the bytes the call must touch: the kept
// tokens of the pixels it reads (all 16² pixels, the nearest-sampled 64²/32² pixels) plus every gradient
// float it must write (all layers, full size), divided by the measured memcpy traffic rate (read + write).
// The reuse floor counts only the gradient rows that can be non-zero (what a call with GradState priors
// writes); the reuse call is also timed stage by stage (loss_stages.h: read, compute, write).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <vector>

#include "attention_loss.h"
#include "loss_stages.h"
#include "parallel.h"

using namespace divbind;
using Clock = std::chrono::steady_clock;

static double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Process CPU time (all threads): robust to a loaded machine where wall time includes preemption.
static double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// memcpy / memset bandwidth on a buffer larger than the caches (best of 5).
struct Bandwidth {
  double copy_traffic;  // bytes read + written per second by memcpy
  double set_rate;      // bytes per second by memset
};

static Bandwidth measure_bandwidth() {
  const size_t n = size_t(256) << 20;
  std::vector<char> a(n, 1), b(n, 2);
  std::vector<double> tc, ts;
  for (int i = 0; i < 5; ++i) {
    auto t = Clock::now();
    std::memcpy(b.data(), a.data(), n);
    tc.push_back(seconds_since(t));
    t = Clock::now();
    std::memset(b.data(), i, n);
    ts.push_back(seconds_since(t));
  }
  return {2.0 * n / *std::min_element(tc.begin(), tc.end()), double(n) / *std::min_element(ts.begin(), ts.end())};
}

// Reuse: kept buffers and the states the previous call left, stage by stage (seconds per call).
struct ReuseTimes {
  std::vector<double> read, compute, write, total;
  Workspace ws;
  std::vector<GradState> states;
};

static ReuseTimes time_reuse(const std::vector<LayerView>& layers, const LossOptions& o, std::vector<float*>& gp,
                             int repeats, double& sink) {
  ReuseTimes r;
  const std::vector<LayerShape> shapes = layer_shapes(layers);
  r.states = attention_loss(layers, o, gp.data()).grad_states;
  for (int i = 0; i < repeats + 3; ++i) {
    auto t = Clock::now();
    read_layers(r.ws, layers, o);
    const double a = seconds_since(t);
    t = Clock::now();
    sink += compute_loss(r.ws, o, true).loss;
    const double b = seconds_since(t);
    t = Clock::now();
    r.states = write_gradients(gp.data(), shapes, r.ws.gradient, r.states.data());
    const double c = seconds_since(t);
    if (i >= 3) {  // warm-up: workspace allocation
      r.read.push_back(a);
      r.compute.push_back(b);
      r.write.push_back(c);
      r.total.push_back(a + b + c);
    }
  }
  return r;
}

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 40;
  const int T = 77, H = 8;
  const int res[16] = {64, 64, 32, 32, 16, 16, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64};
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> u(0.0f, 2.0f / T);
  std::vector<std::vector<float>> data, grads;
  std::vector<LayerView> layers;
  double grad_bytes = 0, read_bytes = 0;
  for (int r : res) {
    data.emplace_back(size_t(H) * r * r * T);
    for (float& x : data.back()) x = u(rng);
    grads.emplace_back(data.back().size());
    layers.push_back(LayerView{data.back().data(), int64_t(data.back().size()), H, r, LayerPlace::Down});
    grad_bytes += 4.0 * data.back().size();
    if (r >= 16) read_bytes += 4.0 * H * 256 * 75;  // 256 sampled pixels x 75 kept tokens per head
  }
  std::vector<float*> gp;
  for (auto& g : grads) gp.push_back(g.data());
  LossOptions o;
  o.mode = LossMode::TvBind;
  o.token_indices = {2, 5};
  o.attribute_indices = {1, 4};

  const Bandwidth bw = measure_bandwidth();
  const double copy_traffic = bw.copy_traffic, set_rate = bw.set_rate;

  std::vector<double> t_fwd, t_all, c_all;
  double sink = 0;
  for (int i = 0; i < repeats + 3; ++i) {
    auto t = Clock::now();
    sink += attention_loss(layers, o, nullptr).loss;
    const double f = seconds_since(t);
    t = Clock::now();
    const double c0 = cpu_seconds();
    sink += attention_loss(layers, o, gp.data()).loss;
    const double fb = seconds_since(t), cb = cpu_seconds() - c0;
    if (i >= 3) {  // warm-up: workspace allocation, page faults of the gradient buffers
      t_fwd.push_back(f);
      t_all.push_back(fb);
      c_all.push_back(cb);
    }
  }
  const ReuseTimes reuse = time_reuse(layers, o, gp, repeats, sink);
  const std::vector<LayerShape> shapes = layer_shapes(layers);
  const double reuse_written = 4.0 * double(written_floats(shapes, reuse.ws.gradient, reuse.states.data()));
  const double reuse_floor_s = (read_bytes + reuse_written) / copy_traffic;
  const double floor_s = (read_bytes + grad_bytes) / copy_traffic;
  std::printf("memcpy traffic %.2f GB/s (read+write), memset %.2f GB/s\n", copy_traffic / 1e9, set_rate / 1e9);
  std::printf("input %.1f MB, must read %.2f MB, must write %.1f MB (gradients)\n", grad_bytes / 1e6, read_bytes / 1e6,
              grad_bytes / 1e6);
  std::printf("forward only:        median %.3f ms\n", median(t_fwd) * 1e3);
  std::printf("forward + backward:  median %.3f ms (min %.3f)\n", median(t_all) * 1e3,
              *std::min_element(t_all.begin(), t_all.end()) * 1e3);
  std::printf("forward + backward:  median CPU time %.3f ms (all threads)\n", median(c_all) * 1e3);
  std::printf("bandwidth floor:     %.3f ms -> ratio %.2fx\n", floor_s * 1e3, median(t_all) / floor_s);
  std::printf("reuse (%d threads):   median %.3f ms = read %.3f + compute %.3f + write %.3f (%.2f MB written)\n",
              core_threads(), median(reuse.total) * 1e3, median(reuse.read) * 1e3, median(reuse.compute) * 1e3,
              median(reuse.write) * 1e3, reuse_written / 1e6);
  std::printf("reuse floor:         %.3f ms -> ratio %.2fx\n", reuse_floor_s * 1e3,
              median(reuse.total) / reuse_floor_s);
  std::printf("(checksum %.6g)\n", sink);
  return 0;
}
