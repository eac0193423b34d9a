// The per-call plan of the loss, shared by the CPU core and its CUDA twin (native/cuda): every check of the
// arguments (ranges from loss_options.h, token positions, the schedule, layer shapes) and everything derived
// from (layers, options) once: the kept token range, which layers feed which map, the binding coefficient.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attention_loss.h"

namespace divbind {

struct Plan {
  int text_length = 0;             // T
  int k0 = 1, k1 = 0, tk = 0;      // kept tokens [k0, k1], tk of them
  int r0 = 0, p0 = 0;              // object resolution, P0 = r0 * r0
  int tokens = 0;                  // K
  std::vector<int> object_layers;  // indices into layers with r == r0
  std::vector<int> attribute_layers;
  int64_t object_maps = 0;             // sum of heads over object_layers (the mean's denominator)
  int64_t attribute_maps = 0;          // same for attribute_layers
  std::vector<char> is_object;         // per layer: in object_layers
  std::vector<char> is_attribute;      // per layer: in attribute_layers
  bool attributes_active = false;      // tv_bind and some token has an attribute
  std::vector<int> token_columns;      // (K) column in the kept range
  std::vector<int> attribute_columns;  // (K) column, -1 = none
  double coefficient = 0;              // binding coefficient at step_index (tv_bind)
};

// Checks layers + options (not the probability values) and plans the call; throws InvalidArgument naming the
// field (its JS key) and the fix.
Plan make_plan(const std::vector<LayerView>& layers, const LossOptions& options);

// The resolutions whose layers receive gradient rows, ascending: r0 (the object maps) and, when the attribute map has
// a gradient, every attribute resolution. Shared by the CPU core and the CUDA host path.
std::vector<int> gradient_resolutions(const Plan& plan, const LossOptions& options, bool attribute_gradient);
// Whether layers of resolution r feed the attribute map (and so take its gradient).
bool is_attribute_resolution(const LossOptions& options, int r);

// Nearest resize index (torch mode='nearest'): output o of an n_out grid reads input floor(o*n_in/n_out).
inline int nearest(int o, int n_in, int n_out) { return static_cast<int>((int64_t(o) * n_in) / n_out); }

// Input pixel (of an r x r layer) read by output pixel p of the r0 x r0 grid.
inline int64_t sampled_pixel(int p, int r, int r0) {
  const int y = p / r0, x = p % r0;
  return int64_t(nearest(y, r, r0)) * r + nearest(x, r, r0);
}

// Message helpers shared by the core's checks.
[[noreturn]] void fail(const std::string& field, const std::string& text, bool range);
std::string num(double v);                               // shortest readable form: 1.5, 1e-05, nan
std::string indexed(const std::string& name, size_t i);  // "name[i]"

}  // namespace divbind
