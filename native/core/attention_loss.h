// Divide & Bind / Attend-and-Excite attention losses: pure C++ core (no Node headers).
// Spec: docs/divide-and-bind.md §1 (extraction), §2 (losses), §9 (parameters).
// Forward and analytic backward live side by side in attention_loss.cc (llm.c style).
//
// Shapes: a layer is probs (heads, HW, T) row-major, HW = r*r. Object maps are (K, r0, r0) with
// r0 = attention_resolution and K = number of object tokens.
//
// Gradient conventions (PyTorch's, which the reference implementation uses):
//  - full-tensor max (map max m_s, max(C), max(O), max(p)): the gradient is split evenly among tied maxima;
//  - the aggregate L = max_s(-v_s) is Python's builtin max over a list: the FIRST maximal token gets it all;
//  - relu'(0) = 0, |x|'(0) = 0; A&E hinge max(0, 1-m): no gradient when 1-m <= 0.
//  - the TV-dependent switch of rho (binding) is a step: no gradient flows through it.
// Arithmetic: every intermediate is double (the TS twin uses doubles too); only gradients and maps are rounded
// to float. Gradients are exactly zero outside the kept token range, at pixels that are never read (nearest
// subsampling) and for layers whose resolution feeds no map used by the mode.
//
// Semantics the TS twin must share (decided here, not spelled out in types.ts):
//  - TokenDiagnostics::value: the per-token value v_s (m, TV, TV - coef*JSD, w_tv*TV + w_max*m); for the A&E
//    hinge it is max(0, 1 - m_s), so L = max_s value_s there and L = max_s(-value_s) otherwise.
//  - coefficient: in tv_bind mode the schedule's value at step_index for every token (it only acts where the
//    token has a JSD term), 0 in other modes. The entry in force is the last one with from_step <= step_index;
//    the schedule must start at from_step 0.
//  - Attribute maps are built only in tv_bind mode when some token has an attribute; the attribute_maps output
//    is all zeros otherwise, and zeros for tokens without attribute. Attribute indices are range-checked in
//    every mode (<= 0 means none).
//  - Validation beyond the obvious: attention_resolution >= 2 (reflect padding and TV need two rows);
//    temperature, smoothing_sigma and binding_epsilon > 0; attribute_resolutions have no duplicates and, when
//    tv_bind has an attribute, EACH listed resolution must have at least one layer; binding_coefficients is
//    non-empty, starts at from_step 0 and ascends strictly; text_length >= 3; eot_index in 2..T-1 for UntilEot.
//    Probabilities are checked for NaN/Inf only where they are read (kept tokens of the sampled pixels).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace divbind {

enum class LossMode { Max, Tv, TvBind, TvMax };
enum class LayerPlace { Down, Mid, Up };
enum class TokenSlice { AllButLast, UntilEot };
enum class TvVertical { Official, Neighbor };
enum class MaxVariant { DivBind, AttendExcite };

// Non-owning view of one layer's probabilities (heads, r*r, text_length), row-major.
struct LayerView {
  const float* probs = nullptr;
  int64_t length = 0;  // number of floats behind probs (checked against heads*r*r*T)
  int heads = 0;
  int resolution = 0;
  LayerPlace place = LayerPlace::Down;
};

inline constexpr int kDefaultGradientThreads = 1;

struct CoefficientStep {
  int from_step;
  double coefficient;
};

struct LossOptions {
  LossMode mode = LossMode::Tv;
  int text_length = 77;
  std::vector<int> token_indices;      // prompt coordinates, SOT = 0
  std::vector<int> attribute_indices;  // aligned with token_indices; <= 0 = none (may be empty = none)
  int step_index = 0;
  int attention_resolution = 16;
  std::vector<int> attribute_resolutions = {64, 32};
  double temperature = 100.0;
  TokenSlice token_slice = TokenSlice::AllButLast;
  int eot_index = -1;
  bool smoothing = true;
  double smoothing_sigma = 0.5;
  TvVertical tv_vertical = TvVertical::Official;
  MaxVariant max_variant = MaxVariant::DivBind;
  double binding_rho_low_tv = 0.3;
  double binding_rho_high_tv = 0.2;
  double binding_tv_switch = 0.1;
  double binding_epsilon = 1e-5;
  std::vector<CoefficientStep> binding_coefficients = {{0, 1.0}, {10, 5.0}, {20, 10.0}};
  double tv_max_weight_tv = 1.0;
  double tv_max_weight_max = 0.3;
};

struct TokenDiagnostics {
  int token_index = 0;
  int attribute_index = -1;  // -1 = none
  double max_attention = 0;
  double tv = 0;
  double jsd = 0;  // valid when has_jsd
  bool has_jsd = false;
  double coefficient = 0;
  double value = 0;
};

struct LossResult {
  double loss = 0;
  double indicator = 0;
  std::vector<TokenDiagnostics> tokens;
};

// Thrown for invalid arguments; `field` names the offending option (e.g. "tokenIndices[2]").
struct InvalidArgument : std::invalid_argument {
  std::string field;
  bool range_error;  // true -> RangeError in JS, false -> TypeError
  InvalidArgument(std::string field_, const std::string& message, bool is_range)
      : std::invalid_argument(message), field(std::move(field_)), range_error(is_range) {}
};

// Validates layers + options (not the probability values); throws InvalidArgument. attention_loss calls it.
void validate(const std::vector<LayerView>& layers, const LossOptions& options);

// Forward + (optionally) analytic backward in one call. Large buffers live in a thread_local workspace
// (reused across calls); safe to call from several threads at once.
// grads: nullptr, or one float* per layer with that layer's length; overwritten (not accumulated).
// object_maps_out / attribute_maps_out: optional (K*r0*r0 floats each) smoothed maps for visualisation.
LossResult attention_loss(const std::vector<LayerView>& layers, const LossOptions& options,
                          float* const* grads, float* object_maps_out = nullptr,
                          float* attribute_maps_out = nullptr);

// Threads that write large gradient buffers (>= 8 MB in total): 1 or 2 (clamped). Default: the environment
// variable DIVBIND_THREADS when set, else kDefaultGradientThreads. Process-wide; for benchmarks and tuning.
void set_gradient_threads(int threads);

}  // namespace divbind
