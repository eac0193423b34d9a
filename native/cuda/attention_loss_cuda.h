// CUDA twin of the attention-loss core (native/core/attention_loss.h): same semantics, same validation,
// same gradient conventions; the CPU core is its oracle (native/cuda/test/parity.cc).
//
// Two entry points:
//  - attention_loss_host: host pointers in and out (layers, grads, maps). Only the rows the loss reads are
//    uploaded (all pixels of the object layers, the nearest-sampled pixels of the attribute layers); the device
//    returns the per-resolution gradient rows and the host expands them into the full-size gradient buffers with
//    the CPU core's writer (native/core/gradient_write.h), so it honours the same GradState contract. HostCall is
//    the same entry point in stages, for the addon's async path (see native/core/loss_stages.h for why).
//  - attention_loss_device: LayerView.probs, grads and maps are device pointers on the current device; the work
//    is enqueued on cuda_stream (nullptr = the legacy default stream), which is synchronised before returning
//    (LossResult is a host value). Gradient buffers are written exactly once, zeros included.
// Errors: divbind::InvalidArgument for bad arguments (NaN/Inf in the values read is found on the device and
// reported with the CPU core's field and message); std::runtime_error naming the CUDA call and error string for
// CUDA failures. Neither function exits or aborts. Calls may come from several threads: each device's cached
// workspace is locked for the duration of a call.
#pragma once

#include <string>
#include <vector>

#include "../core/attention_loss.h"
#include "../core/gradient_write.h"
#include "../core/plan.h"

namespace divbind::cuda {

// Number of usable CUDA devices; 0 and the reason in *error (when error != nullptr) when there is no driver or
// no device. Never throws, never aborts.
int device_count(std::string* error);

// Same contract as divbind::attention_loss (grad_prior included), computed on the current CUDA device from host
// buffers.
LossResult attention_loss_host(const std::vector<LayerView>& layers, const LossOptions& options, float* const* grads,
                               float* object_maps, float* attribute_maps, const GradState* grad_prior = nullptr);

// attention_loss_host in stages. The constructor checks and plans the call and copies the rows the loss reads
// (the only access to the layers' memory); compute() runs the device work on that copy and keeps the result's
// gradient (compact) and maps, which the caller writes out with write_maps and write_gradients.
class HostCall {
 public:
  HostCall(const std::vector<LayerView>& layers, const LossOptions& options);
  LossResult compute(bool with_grad);
  const CompactGradient& gradient() const { return gradient_; }
  void write_maps(float* object_maps, float* attribute_maps) const;  // K*r0*r0 floats each, either may be null

 private:
  struct PackedMap {  // one (layer, head) map of the packed rows
    int source;       // 0 object, 1 attribute
    int layer, head, resolution;
  };
  [[noreturn]] void throw_nonfinite(unsigned long long key) const;

  LossOptions options_;
  Plan plan_;
  std::vector<LayerShape> shapes_;
  std::vector<float> packed_;  // (maps, r0*r0, T): the rows the loss reads, already nearest-sampled
  std::vector<PackedMap> maps_;
  std::vector<float> maps_out_;  // (2, K, r0*r0): object then attribute maps
  CompactGradient gradient_;
};

// Same contract with device buffers; grads_device may be nullptr (no backward), and so may the map outputs.
LossResult attention_loss_device(const std::vector<LayerView>& layers, const LossOptions& options,
                                 float* const* grads_device, float* object_maps_device, float* attribute_maps_device,
                                 void* cuda_stream);

}  // namespace divbind::cuda
