// Compact gradient and its writer (see gradient_write.h).
#include "gradient_write.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <system_error>
#include <thread>

#include "plan.h"
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#endif

// Gradient buffers at least this large (all layers together) are written with non-temporal stores.
#ifndef DIVBIND_STREAM_THRESHOLD_BYTES
#define DIVBIND_STREAM_THRESHOLD_BYTES (8LL << 20)
#endif

namespace divbind {

// ------------------------------------------------------------------------------------------------
// Building

void CompactGradient::reset(int T, int object_resolution) {
  text_length = T;
  r0 = object_resolution;
  count = 0;
}

const ResolutionGradient* CompactGradient::find(int resolution) const {
  for (size_t i = 0; i < count; ++i)
    if (slots[i].resolution == resolution) return &slots[i];
  return nullptr;
}

ResolutionGradient& begin_resolution(CompactGradient& g, int resolution) {
  if (g.count == g.slots.size()) g.slots.emplace_back();
  ResolutionGradient& rg = g.slots[g.count++];
  rg.resolution = resolution;
  rg.row_of_pixel.assign(size_t(resolution) * resolution, -1);
  rg.sums.clear();
  return rg;
}

double* row_accumulator(ResolutionGradient& rg, int p, int r0, int tk) {
  int& row = rg.row_of_pixel[size_t(sampled_pixel(p, rg.resolution, r0))];
  if (row < 0) {
    row = static_cast<int>(rg.sums.size() / size_t(tk));
    rg.sums.resize(rg.sums.size() + size_t(tk), 0.0);
  }
  return rg.sums.data() + size_t(row) * tk;
}

void finish_resolution(ResolutionGradient& rg, int k0, int tk, int T) {
  const int r = rg.resolution;
  const size_t n_rows = rg.sums.size() / size_t(tk);
  rg.rows.assign(n_rows * size_t(T), 0.0f);  // zeros outside the kept tokens
  for (size_t i = 0; i < n_rows; ++i)
    for (int j = 0; j < tk; ++j) rg.rows[i * T + k0 + j] = static_cast<float>(rg.sums[i * tk + j]);
  // image lines: every image row (r pixels x T floats) that holds a touched pixel, zeros at the others
  const size_t line = size_t(r) * T;
  rg.line_of_row.assign(size_t(r), -1);
  rg.lines.clear();
  for (int y = 0; y < r; ++y) {
    const int* pixels = rg.row_of_pixel.data() + size_t(y) * r;
    if (std::all_of(pixels, pixels + r, [](int row) { return row < 0; })) continue;
    rg.line_of_row[size_t(y)] = static_cast<int>(rg.lines.size() / line);
    rg.lines.resize(rg.lines.size() + line, 0.0f);
    float* dst = rg.lines.data() + rg.lines.size() - line;
    for (int x = 0; x < r; ++x)
      if (pixels[x] >= 0) std::memcpy(dst + size_t(x) * T, rg.rows.data() + size_t(pixels[x]) * T, size_t(T) * 4);
  }
}

std::vector<LayerShape> layer_shapes(const std::vector<LayerView>& layers) {
  std::vector<LayerShape> shapes;
  shapes.reserve(layers.size());
  for (const LayerView& l : layers) shapes.push_back({l.heads, l.resolution, l.length});
  return shapes;
}

std::vector<GradState> states_after(const std::vector<LayerShape>& shapes, const CompactGradient& g) {
  std::vector<GradState> states;
  states.reserve(shapes.size());
  for (const LayerShape& s : shapes) states.push_back(g.state_after(s.resolution));
  return states;
}

// ------------------------------------------------------------------------------------------------
// Stores

namespace {

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
  if (src)
    std::memcpy(dst, src, n * sizeof(float));
  else
    std::memset(dst, 0, n * sizeof(float));
}

// Full write of heads [h0, h1) of one layer, image row by image row, each float once (rg == nullptr: zeros).
void write_full(float* grad, const LayerShape& l, const ResolutionGradient* rg, int T, int h0, int h1, bool stream) {
  const int r = l.resolution;
  const size_t line = size_t(r) * T;
  if (!rg) {
    store_floats(grad + size_t(h0) * r * line, nullptr, size_t(h1 - h0) * r * line, stream);
    return;
  }
  for (int h = h0; h < h1; ++h)
    for (int y = 0; y < r; ++y) {
      const int k = rg->line_of_row[size_t(y)];
      store_floats(grad + (size_t(h) * r + y) * line, k < 0 ? nullptr : rg->lines.data() + size_t(k) * line, line,
                   stream);
    }
}

// Sparse write of heads [h0, h1) for a buffer that holds zeros outside the sampled pixel rows of (r, r0):
// the new rows there, or zeros when the layer gets no gradient this time but may hold one from the last.
void write_sparse(float* grad, const LayerShape& l, const ResolutionGradient* rg, GradState prior, int T, int r0,
                  int h0, int h1) {
  const int r = l.resolution;
  const size_t hw = size_t(r) * r;
  if (!rg && prior == GradState::Zero) return;
  for (int h = h0; h < h1; ++h) {
    float* head = grad + size_t(h) * hw * T;
    if (rg) {
      for (size_t pix = 0; pix < hw; ++pix) {
        const int row = rg->row_of_pixel[pix];
        if (row >= 0) std::memcpy(head + pix * T, rg->rows.data() + size_t(row) * T, size_t(T) * sizeof(float));
      }
    } else {
      for (int p = 0; p < r0 * r0; ++p) std::memset(head + sampled_pixel(p, r, r0) * T, 0, size_t(T) * sizeof(float));
    }
  }
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

void store_fence() {
#if defined(__SSE2__) || defined(_M_X64)
  _mm_sfence();  // non-temporal stores are weakly ordered: publish them before another thread reads
#endif
}

void set_gradient_threads(int threads) {
  g_gradient_threads.store(std::clamp(threads, 1, 2), std::memory_order_relaxed);
}

// ------------------------------------------------------------------------------------------------
// Writing

int64_t gradient_blocks(const std::vector<LayerShape>& shapes) {
  int64_t blocks = 0;
  for (const LayerShape& l : shapes) blocks += l.heads;
  return blocks;
}

int64_t block_floats(const LayerShape& shape, const CompactGradient& g, GradState prior) {
  if (prior == GradState::Unknown) return shape.length / shape.heads;
  const ResolutionGradient* rg = g.find(shape.resolution);
  if (rg) return int64_t(rg->rows.size());
  return prior == GradState::Sampled ? int64_t(g.r0) * g.r0 * g.text_length : 0;
}

void write_gradient_blocks(float* const* grads, const std::vector<LayerShape>& shapes, const CompactGradient& g,
                           const GradState* prior, int64_t from, int64_t to, bool stream) {
  const int T = g.text_length;
  int64_t at = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const LayerShape& l = shapes[i];
    const int64_t b = std::max<int64_t>(from - at, 0), e = std::min<int64_t>(to - at, l.heads);
    at += l.heads;
    if (b >= e) continue;
    const ResolutionGradient* rg = g.find(l.resolution);
    const GradState state = prior ? prior[i] : GradState::Unknown;
    if (state == GradState::Unknown)
      write_full(grads[i], l, rg, T, int(b), int(e), stream);
    else
      write_sparse(grads[i], l, rg, state, T, g.r0, int(b), int(e));
  }
}

bool use_streaming_stores(const std::vector<LayerShape>& shapes) {
  int64_t total = 0;
  for (const LayerShape& l : shapes) total += l.length;
  return total * int64_t(sizeof(float)) >= int64_t(DIVBIND_STREAM_THRESHOLD_BYTES);
}

std::vector<GradState> write_gradients(float* const* grads, const std::vector<LayerShape>& shapes,
                                       const CompactGradient& g, const GradState* prior) {
  // A second thread only helps where one core cannot saturate memory: with the streaming stores of large calls.
  const bool stream = use_streaming_stores(shapes);
  int64_t total = 0;
  for (const LayerShape& l : shapes) total += l.length;
  const int64_t blocks = gradient_blocks(shapes);
  auto run = [&](int64_t from, int64_t to) {
    write_gradient_blocks(grads, shapes, g, prior, from, to, stream);
    if (stream) store_fence();
  };
  const int threads = stream ? gradient_threads() : 1;
  if (threads < 2 || blocks < 2) {
    run(0, blocks);
    return states_after(shapes, g);
  }
  // split point: first block at which the cumulative size reaches half the total
  int64_t acc = 0, split = 0;
  for (size_t i = 0; i < shapes.size() && acc * 2 < total; ++i)
    for (int h = 0; h < shapes[i].heads && acc * 2 < total; ++h, ++split) acc += shapes[i].length / shapes[i].heads;
  std::thread helper;
  try {
    helper = std::thread(run, split, blocks);
  } catch (const std::system_error&) {  // no thread available: do it all here
    run(0, blocks);
    return states_after(shapes, g);
  }
  run(0, split);
  helper.join();
  return states_after(shapes, g);
}

}  // namespace divbind
