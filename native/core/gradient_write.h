// The gradient of one call in compact form, and the writer that expands it into the caller's full-size buffers.
// Shared by the CPU core and the CUDA host entry point (native/cuda), so both honour the same write contract.
//
// Why compact: the loss reads each layer only at the pixels nearest-sampled onto the r0 x r0 grid, so every
// (layer, head) of one resolution receives the same gradient rows there and zeros elsewhere. A call therefore
// computes one row (T floats) per sampled pixel and resolution; the writer copies them into every head.
//
// Write contract (GradState, attention_loss.h): with no prior state every buffer is written in full, zeros
// included. A buffer whose prior state is Zero or Sampled (for the same r0) is written only at the sampled pixel
// rows, where this or the previous gradient can be non-zero; everything else already holds zeros.
#pragma once

#include <cstdint>
#include <vector>

#include "attention_loss.h"

namespace divbind {

// Pixels [pixel, pixel + count) of a layer take rows [row, row + count): contiguous in both, so one copy each.
struct PixelRun {
  int64_t pixel = 0;
  int row = 0;
  int count = 0;
};

// Which rows one resolution's gradient has: fixed by (resolution, r0) and the token range, so a slot keeps it
// from one call to the next and only rebuilds it when one of them changes.
// Rows are numbered in the order output pixels first use them, so the rows first used by output pixels [a, b) are
// rows [rows_before[a], rows_before[b]), and p is its row's first user when row_of_output[p] == rows_before[p].
struct RowGeometry {
  int resolution = 0, r0 = 0, text_length = 0, k0 = 0, tk = 0;
  int n_rows = 0;
  std::vector<int> row_of_output;  // (r0*r0) the row that output pixel p's gradient lands in
  std::vector<int> rows_before;    // (r0*r0 + 1) rows first used by output pixels < p
  std::vector<PixelRun> runs;      // the touched pixels, ascending (all 256 of a 16² layer at r0 16 are one run)
};

// Whether output pixels [0, split) and [split, r0*r0) use disjoint rows, so that the two ranges can be accumulated
// and finished on different threads (an odd r0 with a resolution below r0 can share rows across a split).
bool rows_split_at(const RowGeometry& geo, int split);

// One resolution's gradient rows; every (layer, head) at this resolution receives the same rows.
struct ResolutionGradient {
  RowGeometry geometry;      // geometry.resolution: the resolution these rows are for
  std::vector<float> rows;   // (n_rows, T) one pixel's gradient over the whole text axis; zero outside [k0, k0+tk)
  std::vector<double> sums;  // (n_rows, tk) double accumulators while building
};

struct CompactGradient {
  int text_length = 0;  // T
  int r0 = 0;           // object resolution of the call (defines the sampled pixels)
  int k0 = 0, tk = 0;   // the kept tokens [k0, k0 + tk): the only columns a gradient row can have
  // Resolutions that receive a non-zero gradient: slots[0, count). Slots are kept between calls so that a
  // reused CompactGradient does not allocate.
  std::vector<ResolutionGradient> slots;
  size_t count = 0;

  void reset(int T, int object_resolution, int kept_begin, int kept_count);
  const ResolutionGradient* find(int resolution) const;
  GradState state_after(int resolution) const { return find(resolution) ? GradState::Sampled : GradState::Zero; }
};

// Building, per resolution: begin, accumulate one or more sources, finish. Sources and finishing may run for
// ranges of output pixels on different threads when the geometry has independent halves.
ResolutionGradient& begin_resolution(CompactGradient& g, int resolution);

// Adds one source's gradient for output pixels [p_begin, p_end) to the rows they sample:
// row(p)[j] += value(p, j) for j < tk (output pixels share a row when r < r0). The accumulators are not cleared
// between calls: the first source of a call (first_source) stores 0.0 + value where p is its row's first user,
// which rounds exactly like adding to a zeroed row.
template <class Value>
void accumulate_rows(ResolutionGradient& rg, bool first_source, int p_begin, int p_end, const Value& value) {
  const RowGeometry& geo = rg.geometry;
  for (int p = p_begin; p < p_end; ++p) {
    const int row = geo.row_of_output[size_t(p)];
    double* dst = rg.sums.data() + size_t(row) * size_t(geo.tk);
    if (first_source && row == geo.rows_before[size_t(p)])
      for (int j = 0; j < geo.tk; ++j) dst[j] = 0.0 + value(p, j);
    else
      for (int j = 0; j < geo.tk; ++j) dst[j] += value(p, j);
  }
}

// Rounds the accumulators of the rows first used by output pixels [p_begin, p_end) into the kept tokens of their
// T-wide float rows; finish_resolution: all of them.
void finish_rows(ResolutionGradient& rg, int p_begin, int p_end);
void finish_resolution(ResolutionGradient& rg);

// Geometry of one gradient buffer: (heads, resolution^2, T) floats.
struct LayerShape {
  int heads = 0;
  int resolution = 0;
  int64_t length = 0;
};
std::vector<LayerShape> layer_shapes(const std::vector<LayerView>& layers);

// Blocks are the (layer, head) pairs in layer order.
int64_t gradient_blocks(const std::vector<LayerShape>& shapes);

// Floats a write of g touches in all buffers (prior: nullptr for full writes, or one state per layer).
int64_t written_floats(const std::vector<LayerShape>& shapes, const CompactGradient& g, const GradState* prior);

// Whether a write uses non-temporal stores: only when it touches far more memory than the caches hold (a small
// call's caller reads the buffers straight back).
bool use_streaming_stores(const std::vector<LayerShape>& shapes, const CompactGradient& g, const GradState* prior);

// Writes blocks [from, to). prior: nullptr (full writes) or one state per layer. stream: non-temporal stores for
// whole cache lines (the caller issues store_fence() before another thread reads the buffers).
void write_gradient_blocks(float* const* grads, const std::vector<LayerShape>& shapes, const CompactGradient& g,
                           const GradState* prior, int64_t from, int64_t to, bool stream);
void store_fence();

// Floats a write of one block of this layer touches (full writes: the whole block; sparse: the sampled rows).
int64_t block_floats(const LayerShape& shape, const CompactGradient& g, GradState prior);

// Writes every buffer: streaming stores and a second thread (parallel.h) when the write is large.
// Returns the state each buffer is left in.
std::vector<GradState> write_gradients(float* const* grads, const std::vector<LayerShape>& shapes,
                                       const CompactGradient& g, const GradState* prior);

// The state each buffer is left in by writing g (whatever the prior state).
std::vector<GradState> states_after(const std::vector<LayerShape>& shapes, const CompactGradient& g);

}  // namespace divbind
