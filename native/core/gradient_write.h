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

// One resolution's gradient rows; every (layer, head) at this resolution receives the same rows.
struct ResolutionGradient {
  int resolution = 0;
  std::vector<int> row_of_pixel;  // (r*r) index into rows, or -1: the pixel's gradient is zero
  std::vector<float> rows;        // (rows, T) one pixel's gradient over the whole text axis
  std::vector<PixelRun> runs;     // the touched pixels, ascending (all 256 of a 16² layer at r0 16 are one run)
  std::vector<double> sums;       // (rows, tk) double accumulators while building
};

struct CompactGradient {
  int text_length = 0;  // T
  int r0 = 0;           // object resolution of the call (defines the sampled pixels)
  // Resolutions that receive a non-zero gradient: slots[0, count). Slots are kept between calls so that a
  // reused CompactGradient does not allocate.
  std::vector<ResolutionGradient> slots;
  size_t count = 0;

  void reset(int T, int object_resolution);
  const ResolutionGradient* find(int resolution) const;
  GradState state_after(int resolution) const { return find(resolution) ? GradState::Sampled : GradState::Zero; }
};

// Building, one resolution at a time: begin, accumulate per output pixel, finish.
ResolutionGradient& begin_resolution(CompactGradient& g, int resolution);
// The tk double accumulators of the input pixel that output pixel p (of the r0 grid) samples, zero on first use.
double* row_accumulator(ResolutionGradient& rg, int p, int r0, int tk);
// Rounds the accumulators into T-wide float rows (zeros outside the kept tokens [k0, k0 + tk)) and finds the runs
// of touched pixels the writes copy.
void finish_resolution(ResolutionGradient& rg, int k0, int tk, int T);

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
