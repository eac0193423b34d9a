// attention_loss in three stages, for callers that must run them on different threads. The addon's async path
// runs read_layers and the writes on the JS thread (the only thread on which the caller's buffers cannot be
// detached or resized while they are used) and compute_loss, which touches only the workspace, on a pool thread.
// attention_loss itself is exactly these stages in a row (attention_loss.cc), so both paths agree bit for bit.
#pragma once

#include <vector>

#include "attention_loss.h"
#include "gradient_write.h"
#include "plan.h"

namespace divbind {

// Everything a call computes besides its outputs; reused across calls so that steady-state calls do not allocate.
struct Workspace {
  Plan plan;
  std::vector<double> object_mean, attribute_mean;      // (P0, Tk) aggregates of the layers
  std::vector<double> object_soft, attribute_soft;      // (P0, Tk) token softmax
  std::vector<double> object_maps, attribute_maps;      // (K, P0) smoothed maps
  std::vector<double> d_object_map, d_attribute_map;    // (P0) gradient wrt the selected token's maps
  std::vector<double> d_object_col, d_attribute_col;    // (P0) gradient wrt the softmax column
  std::vector<double> d_object_mean, d_attribute_mean;  // (P0, Tk)
  std::vector<double> scratch;                          // JSD intermediates
  CompactGradient gradient;                             // the backward's result (when asked)
};

// 1. Checks and plans the call (ws.plan) and aggregates the layers: the only stage that reads them.
//    Throws InvalidArgument (bad arguments, or NaN/Inf among the values read).
void read_layers(Workspace& ws, const std::vector<LayerView>& layers, const LossOptions& options);

// 2. Maps, per-token values, the loss and, with with_grad, the backward down to ws.gradient. Reads only ws.
LossResult compute_loss(Workspace& ws, const LossOptions& options, bool with_grad);

// 3a. The smoothed maps, K*r0*r0 floats each (either pointer may be null).
void write_maps(const Workspace& ws, float* object_maps, float* attribute_maps);
// 3b. The gradients: write_gradients / write_gradient_blocks (gradient_write.h) with ws.gradient.

}  // namespace divbind
