// Internal hooks of the CUDA loss for the native benchmark (bench/gpu) and the parity test; not a public API.
#pragma once

#include "attention_loss_cuda.h"

namespace divbind::cuda::detail {

// Device time of each stage of one device-path call (CUDA events on the call's stream), in ms.
struct StageTimes {
  float total_ms = 0;      // first upload to the last kernel
  float upload_ms = 0;     // descriptors, when too many for kernel parameters (one small copy)
  float aggregate_ms = 0;  // aggregation and token softmax
  float tokens_ms = 0;     // per-token maps, TV, JSD, values; selection + backward of the small stages
  float write_ms = 0;      // full-size gradient write
};

// attention_loss_device with the stage times filled in (times may be null).
LossResult attention_loss_device_timed(const std::vector<LayerView>& layers, const LossOptions& options,
                                       float* const* grads_device, float* object_maps_device,
                                       float* attribute_maps_device, void* cuda_stream, StageTimes* times);

// Enqueues a one-thread kernel that spins for about `microseconds` on stream: work enqueued after it is launched
// while the device is busy, so its events time device execution alone, without host launch gaps.
void enqueue_busy_wait(void* cuda_stream, unsigned microseconds);

// Bytes the device path moves through device memory for these arguments: every kept-token value of every row
// the aggregation reads, plus every gradient float written (the floor a perfect implementation could reach).
struct TrafficEstimate {
  double bytes_read = 0;
  double bytes_written = 0;
};
TrafficEstimate estimate_traffic(const std::vector<LayerView>& layers, const LossOptions& options, bool with_grads);

}  // namespace divbind::cuda::detail
