// Argument checks and planning of one loss call (see plan.h). The ranges come from loss_options.h; the
// messages name the JS key and say how to fix the value.
#include "plan.h"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace divbind {

void fail(const std::string& field, const std::string& text, bool range) {
  throw InvalidArgument(field, field + ": " + text, range);
}

std::string num(double v) {
  std::ostringstream m;
  m << v;
  return m.str();
}

std::string indexed(const std::string& name, size_t i) { return name + "[" + std::to_string(i) + "]"; }

namespace {

// ------------------------------------------------------------------------------------------------
// Scalars, from the tables of loss_options.h

void check_int(const IntOption& opt, int v) {
  const std::string why = opt.why ? std::string(" (") + opt.why + ")" : "";
  if (v < opt.min) fail(opt.key, "must be >= " + std::to_string(opt.min) + why + ", got " + std::to_string(v), true);
  if (v > opt.max) fail(opt.key, "must be <= " + std::to_string(opt.max) + ", got " + std::to_string(v), true);
}

void check_number(const char* key, double v, double min, bool min_exclusive, double max, const char* why) {
  if (!std::isfinite(v)) fail(key, "must be a finite number, got " + num(v), true);
  const std::string reason = why ? std::string(" (") + why + ")" : "";
  if (min_exclusive ? !(v > min) : !(v >= min))
    fail(key, std::string("must be ") + (min_exclusive ? "> " : ">= ") + num(min) + reason + ", got " + num(v), true);
  if (!(v <= max)) fail(key, "must be <= " + num(max) + ", got " + num(v), true);
}

template <typename E>
void check_enum(const EnumOption<E>& opt, const LossOptions& o) {
  const int v = static_cast<int>(o.*opt.member);
  if (v >= 0 && v < enum_count<E>()) return;
  std::string list;
  for (int i = 0; i < enum_count<E>(); ++i) list += std::string(i ? ", '" : "'") + EnumNames<E>::names[i] + "'";
  fail(opt.key, "must be one of " + list, true);
}

void check_scalars(const LossOptions& o) {
  if (o.text_length < 3 || o.text_length > kMaxDim)
    fail(keys::kTextLength,
         "must be in 3.." + std::to_string(kMaxDim) + " (SOT, at least one kept token, one dropped position), got " +
             std::to_string(o.text_length),
         true);
  for (const IntOption& opt : kIntOptions) check_int(opt, o.*opt.member);
  for (const NumberOption& opt : kNumberOptions)
    check_number(opt.key, o.*opt.member, opt.min, opt.min_exclusive, opt.max, opt.why);
  check_number("tvMaxWeights[0]", o.tv_max_weight_tv, -kInfinity, false, kInfinity, nullptr);
  check_number("tvMaxWeights[1]", o.tv_max_weight_max, -kInfinity, false, kInfinity, nullptr);
  for_each_enum_option([&o](const auto& opt) { check_enum(opt, o); });
}

// ------------------------------------------------------------------------------------------------
// Token positions

// Sets the kept range [k0, k1]; returns its description for messages, e.g. "1..75 (slice 1:-1 of T=77)".
std::string plan_token_slice(Plan& plan, const LossOptions& o) {
  plan.text_length = o.text_length;
  plan.k0 = 1;
  if (o.token_slice == TokenSlice::AllButLast) {
    plan.k1 = o.text_length - 2;
  } else {
    if (o.eot_index < 2 || o.eot_index > o.text_length - 1)
      fail(keys::kEotIndex,
           "must be an integer in 2.." + std::to_string(o.text_length - 1) + " when tokenSlice is 'until-eot' (T=" +
               std::to_string(o.text_length) + "), got " + std::to_string(o.eot_index),
           true);
    plan.k1 = o.eot_index - 1;
  }
  plan.tk = plan.k1 - plan.k0 + 1;
  const char* slice = o.token_slice == TokenSlice::AllButLast ? "1:-1" : "1:eotIndex";
  return std::to_string(plan.k0) + ".." + std::to_string(plan.k1) + " (slice " + slice +
         " of T=" + std::to_string(o.text_length) + ")";
}

void plan_tokens(Plan& plan, const LossOptions& o, const std::string& kept) {
  if (o.token_indices.empty()) fail(keys::kTokenIndices, "must list at least one object token", true);
  plan.tokens = static_cast<int>(o.token_indices.size());
  for (size_t i = 0; i < o.token_indices.size(); ++i) {
    const int k = o.token_indices[i];
    if (k < plan.k0 || k > plan.k1)
      fail(indexed(keys::kTokenIndices, i),
           std::to_string(k) + " is outside the kept token range " + kept + "; token indices count from SOT = 0", true);
    for (size_t j = 0; j < i; ++j)
      if (o.token_indices[j] == k)
        fail(indexed(keys::kTokenIndices, i),
             std::to_string(k) + " repeats tokenIndices[" + std::to_string(j) + "]; list each object token once", true);
    plan.token_columns.push_back(k - plan.k0);
  }
}

void plan_attributes(Plan& plan, const LossOptions& o, const std::string& kept) {
  const auto& a = o.attribute_indices;
  if (!a.empty() && a.size() != o.token_indices.size())
    fail(keys::kAttributeIndices,
         "has " + std::to_string(a.size()) + " entries but tokenIndices has " + std::to_string(o.token_indices.size()) +
             "; give one entry per object token (-1 or null = no attribute)",
         true);
  bool any_attribute = false;
  plan.attribute_columns.assign(o.token_indices.size(), -1);
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] <= 0) continue;
    if (a[i] < plan.k0 || a[i] > plan.k1)
      fail(indexed(keys::kAttributeIndices, i),
           std::to_string(a[i]) + " is outside the kept token range " + kept +
               "; use -1 (or null) for no attribute; indices count from SOT = 0",
           true);
    plan.attribute_columns[i] = a[i] - plan.k0;
    any_attribute = true;
  }
  plan.attributes_active = o.mode == LossMode::TvBind && any_attribute;
}

// ------------------------------------------------------------------------------------------------
// Lists: the binding schedule and the attribute resolutions

void plan_coefficient(Plan& plan, const LossOptions& o) {
  const auto& steps = o.binding_coefficients;
  if (steps.empty()) fail(keys::kBindingCoefficients, "must list at least one [fromStepIndex, coefficient] pair", true);
  for (size_t i = 0; i < steps.size(); ++i) {
    const std::string f = indexed(keys::kBindingCoefficients, i);
    if (i == 0 && steps[i].from_step != 0)
      fail(f + "[0]",
           "the schedule must start at step 0 (it says which coefficient applies from the first step), got " +
               std::to_string(steps[i].from_step),
           true);
    if (i > 0 && steps[i].from_step <= steps[i - 1].from_step)
      fail(f + "[0]",
           "fromStepIndex " + std::to_string(steps[i].from_step) + " must be greater than the previous entry's " +
               std::to_string(steps[i - 1].from_step) + "; sort the schedule ascending",
           true);
    if (!std::isfinite(steps[i].coefficient)) fail(f + "[1]", "coefficient must be a finite number", true);
    if (steps[i].from_step <= o.step_index) plan.coefficient = steps[i].coefficient;  // the last entry in force
  }
}

void check_attribute_resolutions(const Plan& plan, const LossOptions& o) {
  const auto& res = o.attribute_resolutions;
  for (size_t i = 0; i < res.size(); ++i) {
    if (res[i] < 1 || res[i] > kMaxResolution)
      fail(indexed(keys::kAttributeResolutions, i),
           "must be an integer in 1.." + std::to_string(kMaxResolution) + ", got " + std::to_string(res[i]), true);
    for (size_t j = 0; j < i; ++j)
      if (res[j] == res[i])
        fail(indexed(keys::kAttributeResolutions, i),
             std::to_string(res[i]) + " repeats attributeResolutions[" + std::to_string(j) +
                 "]; list each resolution once",
             true);
  }
  if (plan.attributes_active && res.empty())
    fail(keys::kAttributeResolutions, "must list at least one resolution when mode 'tv_bind' has attribute tokens",
         true);
}

// ------------------------------------------------------------------------------------------------
// Layers

void check_layer(const LayerView& l, size_t i, int text_length) {
  const std::string f = indexed("layers", i);
  if (l.heads < 1 || l.heads > kMaxDim)
    fail(f + ".heads", "must be an integer in 1.." + std::to_string(kMaxDim) + ", got " + std::to_string(l.heads),
         true);
  if (l.resolution < 1 || l.resolution > kMaxResolution)
    fail(f + ".resolution",
         "must be an integer in 1.." + std::to_string(kMaxResolution) + ", got " + std::to_string(l.resolution), true);
  if (static_cast<int>(l.place) < 0 || static_cast<int>(l.place) >= enum_count<LayerPlace>())
    fail(f + ".place", "must be 'down', 'mid' or 'up'", true);
  const int64_t per_token = int64_t(l.resolution) * l.resolution * l.heads;  // <= 2^40: no overflow below
  const int64_t expected = per_token * text_length;
  if (l.length != expected) {
    std::ostringstream m;
    m << "has " << l.length << " floats but heads*resolution^2*T = " << l.heads << "*" << l.resolution << "^2*"
      << text_length << " = " << expected;
    if (l.length > 0 && l.length % per_token == 0)
      m << "; its length implies T=" << l.length / per_token << ", every layer must use the same text length T";
    else
      m << "; pass the layer's full (heads, resolution^2, T) probability tensor";
    fail(f + ".data", m.str(), true);
  }
  if (l.probs == nullptr) fail(f + ".data", "is a null buffer", false);
}

void plan_layers(Plan& plan, const std::vector<LayerView>& layers, const LossOptions& o) {
  if (layers.empty()) fail("layers", "must contain at least one attention layer", true);
  plan.is_object.assign(layers.size(), 0);
  plan.is_attribute.assign(layers.size(), 0);
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerView& l = layers[i];
    check_layer(l, i, o.text_length);
    if (l.resolution == o.attention_resolution) {
      plan.object_layers.push_back(static_cast<int>(i));
      plan.object_maps += l.heads;
      plan.is_object[i] = 1;
    }
    if (plan.attributes_active && is_attribute_resolution(o, l.resolution)) {
      plan.attribute_layers.push_back(static_cast<int>(i));
      plan.attribute_maps += l.heads;
      plan.is_attribute[i] = 1;
    }
  }
  if (plan.object_layers.empty())
    fail("attentionResolution",
         "no layer has resolution " + std::to_string(o.attention_resolution) +
             "; pass the cross-attention layers of that resolution (16 for SD at 512x512)",
         true);
  if (!plan.attributes_active) return;
  const auto& res = o.attribute_resolutions;
  for (size_t i = 0; i < res.size(); ++i) {
    const int r = res[i];
    if (std::none_of(layers.begin(), layers.end(), [r](const LayerView& l) { return l.resolution == r; }))
      fail(indexed(keys::kAttributeResolutions, i),
           "no layer has resolution " + std::to_string(r) +
               " but mode 'tv_bind' with attribute tokens needs it; pass those layers or drop the resolution",
           true);
  }
}

}  // namespace

Plan make_plan(const std::vector<LayerView>& layers, const LossOptions& o) {
  Plan plan;
  check_scalars(o);
  const std::string kept = plan_token_slice(plan, o);
  plan_tokens(plan, o, kept);
  plan_attributes(plan, o, kept);
  plan_coefficient(plan, o);
  check_attribute_resolutions(plan, o);
  plan_layers(plan, layers, o);
  plan.r0 = o.attention_resolution;
  plan.p0 = plan.r0 * plan.r0;
  return plan;
}

std::vector<int> gradient_resolutions(const Plan& plan, const LossOptions& options, bool attribute_gradient) {
  std::vector<int> resolutions = {plan.r0};
  if (attribute_gradient)
    resolutions.insert(resolutions.end(), options.attribute_resolutions.begin(), options.attribute_resolutions.end());
  std::sort(resolutions.begin(), resolutions.end());
  resolutions.erase(std::unique(resolutions.begin(), resolutions.end()), resolutions.end());
  return resolutions;
}

bool is_attribute_resolution(const LossOptions& options, int r) {
  const std::vector<int>& rs = options.attribute_resolutions;
  return std::find(rs.begin(), rs.end(), r) != rs.end();
}

}  // namespace divbind
