// Compact gradient and its writer (see gradient_write.h).
#include "gradient_write.h"

#include <algorithm>
#include <cstring>

#include "parallel.h"
#include "plan.h"
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#endif

// Gradient writes that touch at least this many bytes (all layers together) use non-temporal stores.
#ifndef DIVBIND_STREAM_THRESHOLD_BYTES
#define DIVBIND_STREAM_THRESHOLD_BYTES (8LL << 20)
#endif

// Writes of at least this many floats (1 MB) are shared with the helper thread (parallel.h).
constexpr int64_t kSplitWrittenFloats = int64_t(1) << 18;

namespace divbind {

// ------------------------------------------------------------------------------------------------
// Building

void CompactGradient::reset(int T, int object_resolution, int kept_begin, int kept_count) {
  text_length = T;
  r0 = object_resolution;
  k0 = kept_begin;
  tk = kept_count;
  count = 0;
}

const ResolutionGradient* CompactGradient::find(int resolution) const {
  for (size_t i = 0; i < count; ++i)
    if (slots[i].geometry.resolution == resolution) return &slots[i];
  return nullptr;
}

namespace {

void build_geometry(RowGeometry& geo, int resolution, const CompactGradient& g) {
  geo.resolution = resolution;
  geo.r0 = g.r0;
  geo.text_length = g.text_length;
  geo.k0 = g.k0;
  geo.tk = g.tk;
  const int p0 = g.r0 * g.r0;
  std::vector<int> row_of_pixel(size_t(resolution) * resolution, -1);
  geo.row_of_output.resize(size_t(p0));
  geo.rows_before.resize(size_t(p0) + 1);
  geo.n_rows = 0;
  for (int p = 0; p < p0; ++p) {
    geo.rows_before[size_t(p)] = geo.n_rows;
    int& row = row_of_pixel[size_t(sampled_pixel(p, resolution, g.r0))];
    if (row < 0) row = geo.n_rows++;
    geo.row_of_output[size_t(p)] = row;
  }
  geo.rows_before[size_t(p0)] = geo.n_rows;
  geo.runs.clear();
  for (size_t pixel = 0; pixel < row_of_pixel.size(); ++pixel) {
    const int row = row_of_pixel[pixel];
    if (row < 0) continue;
    PixelRun* last = geo.runs.empty() ? nullptr : &geo.runs.back();
    if (last && last->pixel + last->count == int64_t(pixel) && last->row + last->count == row)
      ++last->count;
    else
      geo.runs.push_back({int64_t(pixel), row, 1});
  }
}

bool same_geometry(const RowGeometry& geo, int resolution, const CompactGradient& g) {
  return geo.resolution == resolution && geo.r0 == g.r0 && geo.text_length == g.text_length && geo.k0 == g.k0 &&
         geo.tk == g.tk;
}

}  // namespace

bool rows_split_at(const RowGeometry& geo, int split) {
  // rows are numbered by first use: a row used at or after split is shared iff it was first used before split
  for (size_t p = size_t(split); p < geo.row_of_output.size(); ++p)
    if (geo.row_of_output[p] < geo.rows_before[size_t(split)]) return false;
  return true;
}

ResolutionGradient& begin_resolution(CompactGradient& g, int resolution) {
  if (g.count == g.slots.size()) g.slots.emplace_back();
  ResolutionGradient& rg = g.slots[g.count++];
  if (!same_geometry(rg.geometry, resolution, g)) {
    build_geometry(rg.geometry, resolution, g);
    rg.rows.assign(size_t(rg.geometry.n_rows) * size_t(g.text_length), 0.0f);  // columns outside [k0, k0+tk) stay 0
  }
  rg.sums.resize(size_t(rg.geometry.n_rows) * size_t(g.tk));  // cleared by the first source (accumulate_rows)
  return rg;
}

void finish_rows(ResolutionGradient& rg, int p_begin, int p_end) {
  const RowGeometry& geo = rg.geometry;
  for (int i = geo.rows_before[size_t(p_begin)]; i < geo.rows_before[size_t(p_end)]; ++i) {
    const double* src = rg.sums.data() + size_t(i) * geo.tk;
    float* dst = rg.rows.data() + size_t(i) * geo.text_length + geo.k0;
    for (int j = 0; j < geo.tk; ++j) dst[j] = static_cast<float>(src[j]);
  }
}

void finish_resolution(ResolutionGradient& rg) { finish_rows(rg, 0, rg.geometry.r0 * rg.geometry.r0); }

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

// Writes n floats (src, or zeros when src == nullptr) to dst. With `stream`, non-temporal stores for the whole
// cache lines: at SD size the gradient writes (9-66 MB) dwarf the caches, and plain stores would first read
// every line they write (read-for-ownership), doubling the memory traffic that bounds this call. The partial
// lines at either end take plain stores (a partial non-temporal line is written back piecemeal). The caller
// issues the fence.
void store_floats(float* dst, const float* src, size_t n, bool stream) {
#if defined(__SSE2__) || defined(_M_X64)
  if (stream && n >= 32) {
    size_t i = 0;
    for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 63) != 0; ++i) dst[i] = src ? src[i] : 0.0f;
    const size_t body = i + (n - i) / 16 * 16;
    if (src) {
      for (; i < body; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
    } else {
      const __m128 zero = _mm_setzero_ps();
      for (; i < body; i += 4) _mm_stream_ps(dst + i, zero);
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

// Full write of heads [h0, h1) of one layer, each float once, in address order: zeros up to each run of touched
// pixels, then the run's rows (rg == nullptr: all zeros).
void write_full(float* grad, const LayerShape& l, const ResolutionGradient* rg, int T, int h0, int h1, bool stream) {
  const size_t head_floats = size_t(l.resolution) * l.resolution * T;
  if (!rg) {
    store_floats(grad + size_t(h0) * head_floats, nullptr, size_t(h1 - h0) * head_floats, stream);
    return;
  }
  for (int h = h0; h < h1; ++h) {
    float* head = grad + size_t(h) * head_floats;
    size_t at = 0;
    for (const PixelRun& run : rg->geometry.runs) {
      const size_t start = size_t(run.pixel) * T;
      store_floats(head + at, nullptr, start - at, stream);
      store_floats(head + start, rg->rows.data() + size_t(run.row) * T, size_t(run.count) * T, stream);
      at = start + size_t(run.count) * T;
    }
    store_floats(head + at, nullptr, head_floats - at, stream);
  }
}

// Sparse write of heads [h0, h1) for a buffer that holds zeros outside the sampled pixel rows of (r, r0):
// the new rows there, or zeros when the layer gets no gradient this time but may hold one from the last.
void write_sparse(float* grad, const LayerShape& l, const ResolutionGradient* rg, GradState prior, int T, int r0,
                  int h0, int h1, bool stream) {
  const int r = l.resolution;
  const size_t head_floats = size_t(r) * r * T;
  if (!rg && prior == GradState::Zero) return;
  for (int h = h0; h < h1; ++h) {
    float* head = grad + size_t(h) * head_floats;
    if (rg) {
      for (const PixelRun& run : rg->geometry.runs)
        store_floats(head + size_t(run.pixel) * T, rg->rows.data() + size_t(run.row) * T, size_t(run.count) * T,
                     stream);
    } else {
      for (int p = 0; p < r0 * r0; ++p) std::memset(head + sampled_pixel(p, r, r0) * T, 0, size_t(T) * sizeof(float));
    }
  }
}

}  // namespace

void store_fence() {
#if defined(__SSE2__) || defined(_M_X64)
  _mm_sfence();  // non-temporal stores are weakly ordered: publish them before another thread reads
#endif
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
      write_sparse(grads[i], l, rg, state, T, g.r0, int(b), int(e), stream);
  }
}

int64_t written_floats(const std::vector<LayerShape>& shapes, const CompactGradient& g, const GradState* prior) {
  int64_t floats = 0;
  for (size_t i = 0; i < shapes.size(); ++i)
    floats += shapes[i].heads * block_floats(shapes[i], g, prior ? prior[i] : GradState::Unknown);
  return floats;
}

namespace {
bool streams(int64_t floats_written) {
  return floats_written * int64_t(sizeof(float)) >= int64_t(DIVBIND_STREAM_THRESHOLD_BYTES);
}
}  // namespace

bool use_streaming_stores(const std::vector<LayerShape>& shapes, const CompactGradient& g, const GradState* prior) {
  return streams(written_floats(shapes, g, prior));
}

std::vector<GradState> write_gradients(float* const* grads, const std::vector<LayerShape>& shapes,
                                       const CompactGradient& g, const GradState* prior) {
  const int64_t total = written_floats(shapes, g, prior);
  const bool stream = streams(total);
  // split point: the first block at which the floats written reach half the total
  int64_t acc = 0, split = 0;
  for (size_t i = 0; i < shapes.size() && acc * 2 < total; ++i) {
    const int64_t per = block_floats(shapes[i], g, prior ? prior[i] : GradState::Unknown);
    for (int h = 0; h < shapes[i].heads && acc * 2 < total; ++h, ++split) acc += per;
  }
  run_split(split, gradient_blocks(shapes), total >= kSplitWrittenFloats, [&](int64_t from, int64_t to) {
    write_gradient_blocks(grads, shapes, g, prior, from, to, stream);
    if (stream) store_fence();
  });
  return states_after(shapes, g);
}

}  // namespace divbind
