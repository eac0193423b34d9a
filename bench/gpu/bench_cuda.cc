// Native benchmark: CUDA loss vs the CPU core for SD 1.x at 512x512, tv_bind with 2 objects that have attributes
// (5 layers x 8 heads at 16^2, 5 at 32^2, 5 at 64^2, 1 mid at 8^2, T = 77), forward + backward.
//
// Reports (medians): device time of the device entry point's kernels (CUDA events, inputs rotated over several
// sets so repeated runs do not just hit L2), wall time of the whole device call, the host-pointer path, the CPU
// core, and the device-to-device cudaMemcpy bandwidth measured in the same run. The floor is the bytes the
// kernels must move (kept-token values of every row read + every gradient float written) over that copy
// bandwidth. Targets: kernels within 3x of the floor, >= 10x faster than the CPU core.
// Usage: divbind_cuda_bench [json_path] [iterations]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../../native/cuda/attention_loss_cuda.h"
#include "../../native/cuda/attention_loss_cuda_internal.h"

#define CHECK(call)                                                                              \
  do {                                                                                           \
    const cudaError_t e_ = (call);                                                               \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "FATAL %s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      return 2;                                                                                  \
    }                                                                                            \
  } while (0)

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IONBF, 0);
  const std::string json_path = argc > 1 ? argv[1] : "";
  const int iters = argc > 2 ? std::max(5, std::atoi(argv[2])) : 200;
  std::string why;
  if (divbind::cuda::device_count(&why) == 0) {
    std::printf("SKIPPED: no CUDA device (%s)\n", why.c_str());
    return 0;
  }
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0));

  // ---- inputs: SD 1.x layer list in UNet order
  const int T = 77;
  const int res[16] = {64, 64, 32, 32, 16, 16, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64};
  const int heads = 8;
  const int sets = 4;  // rotating input sets: 4 x 66 MB, larger than L2
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<std::vector<float>> host(16);
  std::vector<divbind::LayerView> views(16);
  size_t total_floats = 0;
  for (int i = 0; i < 16; ++i) {
    const size_t n = size_t(heads) * res[i] * res[i] * T;
    host[size_t(i)].resize(n);
    // rows of positive values normalised to sum 1 (probabilities), SOT-heavy as in SD
    for (size_t r = 0; r < n / T; ++r) {
      float* row = host[size_t(i)].data() + r * T;
      double z = 0;
      for (int t = 0; t < T; ++t) z += (row[t] = (t == 0 ? 40.0f : 0.0f) + u(rng));
      for (int t = 0; t < T; ++t) row[t] = float(row[t] / z);
    }
    views[size_t(i)] = {host[size_t(i)].data(), int64_t(n), heads, res[i], divbind::LayerPlace::Down};
    total_floats += n;
  }
  divbind::LossOptions o;
  o.mode = divbind::LossMode::TvBind;
  o.token_indices = {2, 5};
  o.attribute_indices = {1, 4};
  o.step_index = 12;

  std::vector<std::vector<float*>> d_in(sets, std::vector<float*>(16));
  std::vector<float*> d_grad(16);
  for (int i = 0; i < 16; ++i) {
    const size_t bytes = host[size_t(i)].size() * 4;
    for (int s = 0; s < sets; ++s) {
      CHECK(cudaMalloc(&d_in[size_t(s)][size_t(i)], bytes));
      CHECK(cudaMemcpy(d_in[size_t(s)][size_t(i)], host[size_t(i)].data(), bytes, cudaMemcpyHostToDevice));
    }
    CHECK(cudaMalloc(&d_grad[size_t(i)], bytes));
  }
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  auto device_views = [&](int s) {
    std::vector<divbind::LayerView> v = views;
    for (int i = 0; i < 16; ++i) v[size_t(i)].probs = d_in[size_t(s)][size_t(i)];
    return v;
  };

  // ---- device path: kernels (events) and whole call (host clock)
  std::vector<double> kernel_ms, call_ms, fwd_ms, st_upload, st_agg, st_tok, st_write;
  double loss_dev = 0;
  for (int it = 0; it < iters + 10; ++it) {
    const auto v = device_views(it % sets);
    divbind::cuda::detail::StageTimes st;
    const double t0 = now_ms();
    const divbind::LossResult r =
        divbind::cuda::detail::attention_loss_device_timed(v, o, d_grad.data(), nullptr, nullptr, stream, &st);
    const double t1 = now_ms();
    loss_dev = r.loss;
    if (it >= 10) {  // warm-up: module load, workspace allocation
      kernel_ms.push_back(st.total_ms);
      call_ms.push_back(t1 - t0);
      st_upload.push_back(st.upload_ms);
      st_agg.push_back(st.aggregate_ms);
      st_tok.push_back(st.tokens_ms);
      st_write.push_back(st.write_ms);
    }
  }
  // the same with the device kept busy while the call enqueues its work: device execution alone
  std::vector<double> queued_ms, q_agg, q_tok, q_write;
  for (int it = 0; it < iters / 2 + 5; ++it) {
    const auto v = device_views(it % sets);
    divbind::cuda::detail::StageTimes st;
    divbind::cuda::detail::enqueue_busy_wait(stream, 300);
    divbind::cuda::detail::attention_loss_device_timed(v, o, d_grad.data(), nullptr, nullptr, stream, &st);
    if (it >= 5) {
      queued_ms.push_back(st.total_ms);
      q_agg.push_back(st.aggregate_ms);
      q_tok.push_back(st.tokens_ms);
      q_write.push_back(st.write_ms);
    }
  }
  // plain device call (no stage events), host clock: what a caller sees
  std::vector<double> plain_ms;
  for (int it = 0; it < iters + 10; ++it) {
    const auto v = device_views(it % sets);
    const double t0 = now_ms();
    divbind::cuda::attention_loss_device(v, o, d_grad.data(), nullptr, nullptr, stream);
    if (it >= 10) plain_ms.push_back(now_ms() - t0);
  }
  for (int it = 0; it < iters / 2 + 5; ++it) {
    const auto v = device_views(it % sets);
    divbind::cuda::detail::StageTimes st;
    divbind::cuda::detail::attention_loss_device_timed(v, o, nullptr, nullptr, nullptr, stream, &st);
    if (it >= 5) fwd_ms.push_back(st.total_ms);
  }

  // ---- host-pointer path
  std::vector<std::vector<float>> hgrad(16);
  std::vector<float*> hgp(16);
  for (int i = 0; i < 16; ++i) {
    hgrad[size_t(i)].resize(host[size_t(i)].size());
    hgp[size_t(i)] = hgrad[size_t(i)].data();
  }
  std::vector<double> host_ms;
  double loss_host = 0;
  for (int it = 0; it < 23; ++it) {
    const double t0 = now_ms();
    loss_host = divbind::cuda::attention_loss_host(views, o, hgp.data(), nullptr, nullptr).loss;
    if (it >= 3) host_ms.push_back(now_ms() - t0);
  }

  // ---- CPU core
  std::vector<double> cpu_ms;
  double loss_cpu = 0;
  for (int it = 0; it < 12; ++it) {
    const double t0 = now_ms();
    loss_cpu = divbind::attention_loss(views, o, hgp.data()).loss;
    if (it >= 2) cpu_ms.push_back(now_ms() - t0);
  }

  // ---- copy bandwidth: device-to-device cudaMemcpy, bytes read + written
  const size_t copy_bytes = size_t(512) << 20;
  void *a = nullptr, *b = nullptr;
  CHECK(cudaMalloc(&a, copy_bytes));
  CHECK(cudaMalloc(&b, copy_bytes));
  CHECK(cudaMemset(a, 1, copy_bytes));
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  std::vector<double> copy_ms;
  for (int it = 0; it < 23; ++it) {
    CHECK(cudaEventRecord(e0, stream));
    CHECK(cudaMemcpyAsync(b, a, copy_bytes, cudaMemcpyDeviceToDevice, stream));
    CHECK(cudaEventRecord(e1, stream));
    CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (it >= 3) copy_ms.push_back(ms);
  }
  const double copy_bw = 2.0 * double(copy_bytes) / (median(copy_ms) * 1e-3);  // bytes/s
  // write-only bandwidth (cudaMemsetAsync): the gradient write is a write-only stream, so this is its own ceiling
  std::vector<double> set_ms;
  for (int it = 0; it < 23; ++it) {
    CHECK(cudaEventRecord(e0, stream));
    CHECK(cudaMemsetAsync(b, 0, copy_bytes, stream));
    CHECK(cudaEventRecord(e1, stream));
    CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (it >= 3) set_ms.push_back(ms);
  }
  const double memset_bw = double(copy_bytes) / (median(set_ms) * 1e-3);

  const auto traffic = divbind::cuda::detail::estimate_traffic(views, o, true);
  const double bytes = traffic.bytes_read + traffic.bytes_written;
  const double k_ms = median(kernel_ms), c_ms = median(call_ms), h_ms = median(host_ms), p_ms = median(cpu_ms);
  const double f_ms = median(fwd_ms);
  const double floor_ms = bytes / copy_bw * 1e3;
  const double achieved = bytes / (k_ms * 1e-3);
  const double ratio = k_ms / floor_ms;
  const double speedup = p_ms / k_ms;
  const double speedup_call = p_ms / median(plain_ms);
  const double loss_diff = std::fabs(loss_dev - loss_cpu) / std::max(1e-30, std::fabs(loss_cpu));

  std::printf("\nSD 1.x 512x512 tv_bind, 2 objects with attributes, forward + backward (%s, %d SMs)\n", prop.name,
              prop.multiProcessorCount);
  std::printf("  inputs %.1f MB, bytes moved by the kernels %.1f MB read + %.1f MB written\n",
              total_floats * 4 / 1e6, traffic.bytes_read / 1e6, traffic.bytes_written / 1e6);
  std::printf("  %-44s %10s\n", "measurement (median)", "ms");
  std::printf("  %-44s %10.4f\n", "device kernels, fwd+bwd (CUDA events)", k_ms);
  std::printf("  %-44s %10.4f\n", "device kernels, forward only", f_ms);
  std::printf("  %-44s %10.4f\n", "  stage: descriptor upload", median(st_upload));
  std::printf("  %-44s %10.4f\n", "  stage: aggregation + token softmax", median(st_agg));
  std::printf("  %-44s %10.4f\n", "  stage: per-token fwd + selection + bwd", median(st_tok));
  std::printf("  %-44s %10.4f\n", "  stage: gradient write", median(st_write));
  std::printf("  %-44s %10.4f\n", "device kernels, pre-queued (device only)", median(queued_ms));
  std::printf("  %-44s %10.4f\n", "  stage: aggregation + token softmax", median(q_agg));
  std::printf("  %-44s %10.4f\n", "  stage: per-token fwd + selection + bwd", median(q_tok));
  std::printf("  %-44s %10.4f\n", "  stage: gradient write", median(q_write));
  std::printf("  %-44s %10.4f\n", "device call with stage events, wall", c_ms);
  std::printf("  %-44s %10.4f\n", "device call, wall (incl. validation, sync)", median(plain_ms));
  std::printf("  %-44s %10.4f\n", "host-pointer call, wall", h_ms);
  std::printf("  %-44s %10.4f\n", "CPU core, wall", p_ms);
  std::printf("  %-44s %10.4f\n", "floor = bytes / copy bandwidth", floor_ms);
  std::printf("  copy bandwidth %.0f GB/s, achieved %.0f GB/s (%.0f%%), kernels/floor %.2fx (target <= 3: %s)\n",
              copy_bw / 1e9, achieved / 1e9, 100 * achieved / copy_bw, ratio, ratio <= 3 ? "MET" : "MISSED");
  std::printf("  write-only (cudaMemset) bandwidth %.0f GB/s: the %.1f MB gradient write alone takes >= %.4f ms\n",
              memset_bw / 1e9, traffic.bytes_written / 1e6, traffic.bytes_written / memset_bw * 1e3);
  std::printf("  pre-queued kernels/floor %.2fx (device execution without host launch gaps)\n",
              median(queued_ms) / floor_ms);
  std::printf("  speedup vs CPU core: kernels %.1fx, whole device call %.1fx (target >= 10: %s)\n", speedup,
              speedup_call, speedup >= 10 ? "MET" : "MISSED");
  std::printf("  loss device %.9f host %.9f cpu %.9f (relative difference %.2g)\n", loss_dev, loss_host, loss_cpu,
              loss_diff);

  char json[4096];
  std::snprintf(json, sizeof json,
                "{\"device\":\"%s\",\"sms\":%d,\"case\":\"sd15-512-tv_bind-2obj-attr\",\"iterations\":%d,"
                "\"kernel_ms\":%.6f,\"forward_kernel_ms\":%.6f,\"device_call_ms\":%.6f,\"host_call_ms\":%.6f,"
                "\"cpu_ms\":%.6f,\"copy_bandwidth_gbs\":%.3f,\"bytes_read\":%.0f,\"bytes_written\":%.0f,"
                "\"floor_ms\":%.6f,\"achieved_gbs\":%.3f,\"kernel_over_floor\":%.4f,\"speedup_kernels\":%.3f,"
                "\"speedup_call\":%.3f,\"loss_relative_difference\":%.3g,\"target_floor_met\":%s,"
                "\"target_speedup_met\":%s,\"stage_upload_ms\":%.6f,\"stage_aggregate_ms\":%.6f,"
                "\"stage_tokens_ms\":%.6f,\"stage_write_ms\":%.6f,"
                "\"device_call_plain_ms\":%.6f,\"queued_kernel_ms\":%.6f,\"queued_aggregate_ms\":%.6f,"
                "\"queued_tokens_ms\":%.6f,\"queued_write_ms\":%.6f,\"queued_over_floor\":%.4f,"
                "\"memset_bandwidth_gbs\":%.3f}",
                prop.name, prop.multiProcessorCount, iters, k_ms, f_ms, c_ms, h_ms, p_ms, copy_bw / 1e9,
                traffic.bytes_read, traffic.bytes_written, floor_ms, achieved / 1e9, ratio, speedup, speedup_call,
                loss_diff, ratio <= 3 ? "true" : "false", speedup >= 10 ? "true" : "false", median(st_upload),
                median(st_agg), median(st_tok), median(st_write), median(plain_ms), median(queued_ms), median(q_agg),
                median(q_tok), median(q_write), median(queued_ms) / floor_ms, memset_bw / 1e9);
  std::printf("JSON %s\n", json);
  if (!json_path.empty()) {
    if (FILE* f = std::fopen(json_path.c_str(), "w")) {
      std::fprintf(f, "%s\n", json);
      std::fclose(f);
    }
  }
  for (auto& s : d_in)
    for (float* p : s) cudaFree(p);
  for (float* p : d_grad) cudaFree(p);
  cudaFree(a);
  cudaFree(b);
  return loss_diff <= 1e-5 ? 0 : 1;
}
