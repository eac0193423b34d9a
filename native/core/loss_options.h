// The loss options on the C++ side of the boundary, in one place: their names (the JS keys of
// NormalizedLossOptions, lib/loss/native-types.ts), defaults (LossOptions' member initialisers) and ranges (the
// tables below). Everything else reads this file: plan.cc checks the ranges, the addon parses the options by
// these keys and exports the whole table as `lossOptionSchema`, and test/loss/options-schema.test.ts checks that
// the export equals lib/loss/options.ts, the TS side's one place. Spec: docs/divide-and-bind.md §9.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

namespace divbind {

// Enums: values are contiguous from 0, so kXxxNames[int(value)] is the JS spelling.
enum class LossMode : int { Max, Tv, TvBind, TvMax };
enum class LayerPlace : int { Down, Mid, Up };
enum class TokenSlice : int { AllButLast, UntilEot };
enum class TvVertical : int { Official, Neighbor };
enum class MaxVariant : int { DivBind, AttendExcite };

template <typename E>
struct EnumNames;
template <>
struct EnumNames<LossMode> {
  static constexpr const char* const names[] = {"max", "tv", "tv_bind", "tv_max"};
};
template <>
struct EnumNames<LayerPlace> {
  static constexpr const char* const names[] = {"down", "mid", "up"};
};
template <>
struct EnumNames<TokenSlice> {
  static constexpr const char* const names[] = {"all-but-last", "until-eot"};
};
template <>
struct EnumNames<TvVertical> {
  static constexpr const char* const names[] = {"official", "neighbor"};
};
template <>
struct EnumNames<MaxVariant> {
  static constexpr const char* const names[] = {"divbind", "attend-excite"};
};

// Number of values of E.
template <typename E>
constexpr int enum_count() {
  return int(sizeof(EnumNames<E>::names) / sizeof(EnumNames<E>::names[0]));
}

struct CoefficientStep {
  int from_step;
  double coefficient;
};

// Every option with its default (§9, the official D&B values). token_indices has none: it is required.
struct LossOptions {
  LossMode mode = LossMode::Tv;
  int text_length = 77;                // T (derived from the layers on the JS side)
  std::vector<int> token_indices;      // prompt coordinates, SOT = 0
  std::vector<int> attribute_indices;  // aligned with token_indices; <= 0 = none (may be empty = none)
  int step_index = 0;
  int attention_resolution = 16;
  std::vector<int> attribute_resolutions = {64, 32};
  double temperature = 100.0;
  TokenSlice token_slice = TokenSlice::AllButLast;
  int eot_index = -1;  // -1 = none (needed by UntilEot)
  bool smoothing = true;
  double smoothing_sigma = 0.5;
  TvVertical tv_vertical = TvVertical::Official;
  MaxVariant max_variant = MaxVariant::DivBind;
  double binding_rho_low_tv = 0.3;
  double binding_rho_high_tv = 0.2;
  double binding_tv_switch = 0.1;
  double binding_epsilon = 1e-5;
  std::vector<CoefficientStep> binding_coefficients = {{0, 1.0}, {10, 5.0}, {20, 10.0}};
  double tv_max_weight_tv = 1.0;   // tvMaxWeights[0]
  double tv_max_weight_max = 0.3;  // tvMaxWeights[1]
};

// ------------------------------------------------------------------------------------------------
// Names and ranges. Scalars are checked generically (plan.cc) from these tables; the structured options
// (token positions, lists, the schedule, the weight pair) have their own checks in plan.cc, under these keys.

inline constexpr int kMaxResolution = 4096;                           // resolutions, in both backends
inline constexpr int kMaxDim = 1 << 16;                               // heads and text length
inline constexpr int kMaxStep = std::numeric_limits<int32_t>::max();  // step indices travel as int32
inline constexpr double kInfinity = std::numeric_limits<double>::infinity();

struct IntOption {
  const char* key;
  int LossOptions::*member;
  int min, max;
  const char* why;  // appended to the "must be >= min" message, or nullptr
};

struct NumberOption {  // finite, in [min, max] ((min, max] when min_exclusive)
  const char* key;
  double LossOptions::*member;
  double min;
  bool min_exclusive;
  double max;
  const char* why;
};

struct BoolOption {
  const char* key;
  bool LossOptions::*member;
};

template <typename E>
struct EnumOption {
  using Enum = E;
  const char* key;
  E LossOptions::*member;
};

inline constexpr IntOption kIntOptions[] = {
    {"stepIndex", &LossOptions::step_index, 0, kMaxStep, nullptr},
    {"attentionResolution", &LossOptions::attention_resolution, 2, kMaxResolution,
     "reflect padding and TV need two rows"},
};

inline constexpr NumberOption kNumberOptions[] = {
    {"temperature", &LossOptions::temperature, 0.0, true, 1e6, nullptr},
    {"smoothingSigma", &LossOptions::smoothing_sigma, 0.0, true, kInfinity, nullptr},
    {"bindingRhoLowTv", &LossOptions::binding_rho_low_tv, 0.0, false, 1.0, nullptr},
    {"bindingRhoHighTv", &LossOptions::binding_rho_high_tv, 0.0, false, 1.0, nullptr},
    {"bindingTvSwitch", &LossOptions::binding_tv_switch, -kInfinity, false, kInfinity, nullptr},
    {"bindingEpsilon", &LossOptions::binding_epsilon, 0.0, true, kInfinity, "it keeps the JSD logarithms finite"},
};

inline constexpr BoolOption kBoolOptions[] = {{"smoothing", &LossOptions::smoothing}};

inline constexpr EnumOption<LossMode> kModeOption{"mode", &LossOptions::mode};
inline constexpr EnumOption<TokenSlice> kTokenSliceOption{"tokenSlice", &LossOptions::token_slice};
inline constexpr EnumOption<TvVertical> kTvVerticalOption{"tvVertical", &LossOptions::tv_vertical};
inline constexpr EnumOption<MaxVariant> kMaxVariantOption{"maxVariant", &LossOptions::max_variant};

// Calls f(option) for each enum option, in the order of lib/loss/options.ts.
template <typename F>
void for_each_enum_option(F&& f) {
  f(kModeOption);
  f(kTokenSliceOption);
  f(kTvVerticalOption);
  f(kMaxVariantOption);
}

// Keys of the structured options and of the normalized-only field textLength.
namespace keys {
inline constexpr const char* kTextLength = "textLength";
inline constexpr const char* kTokenIndices = "tokenIndices";
inline constexpr const char* kAttributeIndices = "attributeIndices";
inline constexpr const char* kEotIndex = "eotIndex";
inline constexpr const char* kAttributeResolutions = "attributeResolutions";
inline constexpr const char* kBindingCoefficients = "bindingCoefficients";
inline constexpr const char* kTvMaxWeights = "tvMaxWeights";
}  // namespace keys

}  // namespace divbind
