// Divide & Bind / Attend-and-Excite attention losses: pure C++ core (no Node headers).
// Spec: docs/divide-and-bind.md §1 (extraction), §2 (losses), §9 (parameters).
// Forward and analytic backward live side by side in attention_loss.cc (llm.c style); the options (names,
// defaults, ranges) in loss_options.h; the checks and the per-call plan in plan.{h,cc}; the gradient writer in
// gradient_write.{h,cc}.
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
//  - Validation beyond the ranges of loss_options.h: attribute_resolutions have no duplicates and, when tv_bind
//    has an attribute, EACH listed resolution must have at least one layer; binding_coefficients is non-empty,
//    starts at from_step 0 and ascends strictly; text_length >= 3; eot_index in 2..T-1 for UntilEot.
//    Probabilities are checked for NaN/Inf only where they are read (kept tokens of the sampled pixels).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "loss_options.h"

namespace divbind {

// Non-owning view of one layer's probabilities (heads, r*r, text_length), row-major.
struct LayerView {
  const float* probs = nullptr;
  int64_t length = 0;  // number of floats behind probs (checked against heads*r*r*T)
  int heads = 0;
  int resolution = 0;
  LayerPlace place = LayerPlace::Down;
};

// What a gradient buffer holds between calls (the "reuse" contract, see attention_loss). The values travel to
// JS unchanged (NativeLossResult.gradStates, lib/loss/native-types.ts GRAD_STATE).
enum class GradState : uint8_t {
  Unknown = 0,  // anything: the next write covers the whole buffer
  Zero = 1,     // all zeros
  Sampled = 2,  // zeros except, possibly, the pixel rows the loss samples at (r, r0) for the r0 of that call
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
  std::vector<GradState> grad_states;  // when grads were written: the state each buffer is left in
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
// grads: nullptr, or one float* per layer with that layer's length; the gradient is overwritten (not
// accumulated). grad_prior: nullptr (every buffer written in full), or one GradState per layer saying what the
// buffer holds now; a buffer in state Zero or Sampled (with the same r0) is written only where this or the
// previous gradient can be non-zero, which is what makes reused buffers cheap. The caller vouches for the
// states; LossResult::grad_states reports the states the buffers are left in.
// object_maps_out / attribute_maps_out: optional (K*r0*r0 floats each) smoothed maps for visualisation.
LossResult attention_loss(const std::vector<LayerView>& layers, const LossOptions& options, float* const* grads,
                          float* object_maps_out = nullptr, float* attribute_maps_out = nullptr,
                          const GradState* grad_prior = nullptr);

// Large calls read the layers, take the token softmax and write the gradients on two threads: set_core_threads
// and DIVBIND_THREADS (parallel.h) choose 1 or 2; results are the same bit for bit either way.

}  // namespace divbind
