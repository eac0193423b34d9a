// JS -> C++ (options, layers, buffers) and C++ -> JS (results, errors). See convert.h.
// lib/loss/validate.ts checks everything first; this layer re-checks types (a wrong type here would read
// garbage) and leaves value ranges to the core's validate(), which names the same fields.
#include "convert.h"

#include <cmath>
#include <limits>
#include <sstream>

namespace divbind::addon {
namespace {

[[noreturn]] void type_error(Napi::Env env, const std::string& field, const std::string& text) {
  throw Napi::TypeError::New(env, field + ": " + text);
}
[[noreturn]] void range_error(Napi::Env env, const std::string& field, const std::string& text) {
  throw Napi::RangeError::New(env, field + ": " + text);
}

std::string num(double v) {
  std::ostringstream m;
  m << v;
  return m.str();
}

std::string at(const std::string& base, uint32_t i) { return base + "[" + std::to_string(i) + "]"; }

std::string describe(const Napi::Value& v) {
  switch (v.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return "a boolean";
    case napi_number: return "the number " + num(v.As<Napi::Number>().DoubleValue());
    case napi_string: return "a string";
    case napi_object:
      if (v.IsArray()) return "an array";
      if (v.IsTypedArray()) return "a typed array of another element type";
      return "an object";
    default: return "a value of another type";
  }
}

double get_number(Napi::Env env, const Napi::Value& v, const std::string& field) {
  if (!v.IsNumber()) type_error(env, field, "expected a number but received " + describe(v));
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) range_error(env, field, "must be a finite number, got " + num(d));
  return d;
}

int get_int(Napi::Env env, const Napi::Value& v, const std::string& field) {
  const double d = get_number(env, v, field);
  if (d != std::trunc(d) || d < std::numeric_limits<int>::min() || d > std::numeric_limits<int>::max())
    range_error(env, field, "must be an integer, got " + num(d));
  return static_cast<int>(d);
}

bool get_bool(Napi::Env env, const Napi::Value& v, const std::string& field) {
  if (!v.IsBoolean()) type_error(env, field, "expected a boolean but received " + describe(v));
  return v.As<Napi::Boolean>().Value();
}

std::string get_string(Napi::Env env, const Napi::Value& v, const std::string& field) {
  if (!v.IsString()) type_error(env, field, "expected a string but received " + describe(v));
  return v.As<Napi::String>().Utf8Value();
}

Napi::Array get_array(Napi::Env env, const Napi::Value& v, const std::string& field) {
  if (!v.IsArray()) type_error(env, field, "expected an array but received " + describe(v));
  return v.As<Napi::Array>();
}

Napi::Float32Array get_f32(Napi::Env env, const Napi::Value& v, const std::string& field) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    type_error(env, field, "expected a Float32Array but received " + describe(v));
  return v.As<Napi::Float32Array>();
}

// Picks one of `names` (enum spelled as in lib/loss/types.ts).
template <typename E, size_t N>
E get_enum(Napi::Env env, const Napi::Value& v, const std::string& field, const char* const (&names)[N],
           const E (&values)[N]) {
  const std::string s = get_string(env, v, field);
  std::string list;
  for (size_t i = 0; i < N; ++i) {
    if (s == names[i]) return values[i];
    list += std::string(i ? ", '" : "'") + names[i] + "'";
  }
  range_error(env, field, "must be one of " + list + ", got '" + s + "'");
}

Napi::Value need(Napi::Env env, const Napi::Object& o, const char* key) {
  if (!o.Has(key)) type_error(env, key, "is missing from the normalized options (lib/loss/validate.ts fills it)");
  return o.Get(key);
}

LossOptions parse_options(Napi::Env env, const Napi::Value& value) {
  if (!value.IsObject() || value.IsArray()) type_error(env, "options", "expected an object but received " + describe(value));
  const Napi::Object o = value.As<Napi::Object>();
  LossOptions r;
  static const char* const modes[] = {"max", "tv", "tv_bind", "tv_max"};
  static const LossMode mode_values[] = {LossMode::Max, LossMode::Tv, LossMode::TvBind, LossMode::TvMax};
  r.mode = get_enum(env, need(env, o, "mode"), "mode", modes, mode_values);
  r.text_length = get_int(env, need(env, o, "textLength"), "textLength");
  const Napi::Array tokens = get_array(env, need(env, o, "tokenIndices"), "tokenIndices");
  for (uint32_t i = 0; i < tokens.Length(); ++i) r.token_indices.push_back(get_int(env, tokens.Get(i), at("tokenIndices", i)));
  const Napi::Array attrs = get_array(env, need(env, o, "attributeIndices"), "attributeIndices");
  for (uint32_t i = 0; i < attrs.Length(); ++i) {
    const Napi::Value a = attrs.Get(i);
    r.attribute_indices.push_back(a.IsNull() ? -1 : get_int(env, a, at("attributeIndices", i)));
  }
  r.step_index = get_int(env, need(env, o, "stepIndex"), "stepIndex");
  r.attention_resolution = get_int(env, need(env, o, "attentionResolution"), "attentionResolution");
  const Napi::Array ares = get_array(env, need(env, o, "attributeResolutions"), "attributeResolutions");
  r.attribute_resolutions.clear();
  for (uint32_t i = 0; i < ares.Length(); ++i)
    r.attribute_resolutions.push_back(get_int(env, ares.Get(i), at("attributeResolutions", i)));
  r.temperature = get_number(env, need(env, o, "temperature"), "temperature");
  static const char* const slices[] = {"all-but-last", "until-eot"};
  static const TokenSlice slice_values[] = {TokenSlice::AllButLast, TokenSlice::UntilEot};
  r.token_slice = get_enum(env, need(env, o, "tokenSlice"), "tokenSlice", slices, slice_values);
  r.eot_index = get_int(env, need(env, o, "eotIndex"), "eotIndex");
  r.smoothing = get_bool(env, need(env, o, "smoothing"), "smoothing");
  r.smoothing_sigma = get_number(env, need(env, o, "smoothingSigma"), "smoothingSigma");
  static const char* const verticals[] = {"official", "neighbor"};
  static const TvVertical vertical_values[] = {TvVertical::Official, TvVertical::Neighbor};
  r.tv_vertical = get_enum(env, need(env, o, "tvVertical"), "tvVertical", verticals, vertical_values);
  static const char* const variants[] = {"divbind", "attend-excite"};
  static const MaxVariant variant_values[] = {MaxVariant::DivBind, MaxVariant::AttendExcite};
  r.max_variant = get_enum(env, need(env, o, "maxVariant"), "maxVariant", variants, variant_values);
  r.binding_rho_low_tv = get_number(env, need(env, o, "bindingRhoLowTv"), "bindingRhoLowTv");
  r.binding_rho_high_tv = get_number(env, need(env, o, "bindingRhoHighTv"), "bindingRhoHighTv");
  r.binding_tv_switch = get_number(env, need(env, o, "bindingTvSwitch"), "bindingTvSwitch");
  r.binding_epsilon = get_number(env, need(env, o, "bindingEpsilon"), "bindingEpsilon");
  const Napi::Array coefs = get_array(env, need(env, o, "bindingCoefficients"), "bindingCoefficients");
  r.binding_coefficients.clear();
  for (uint32_t i = 0; i < coefs.Length(); ++i) {
    const std::string f = at("bindingCoefficients", i);
    const Napi::Array pair = get_array(env, coefs.Get(i), f);
    if (pair.Length() != 2) range_error(env, f, "expected a [fromStepIndex, coefficient] pair");
    r.binding_coefficients.push_back({get_int(env, pair.Get(0u), f + "[0]"), get_number(env, pair.Get(1u), f + "[1]")});
  }
  const Napi::Array w = get_array(env, need(env, o, "tvMaxWeights"), "tvMaxWeights");
  if (w.Length() != 2) range_error(env, "tvMaxWeights", "expected a [wTv, wMax] pair");
  r.tv_max_weight_tv = get_number(env, w.Get(0u), "tvMaxWeights[0]");
  r.tv_max_weight_max = get_number(env, w.Get(1u), "tvMaxWeights[1]");
  return r;
}

struct Range {
  const char* begin;
  const char* end;
  std::string field;
};

}  // namespace

Call ParseCall(const Napi::CallbackInfo& info, const char* fn) {
  Napi::Env env = info.Env();
  if (info.Length() < 2)
    throw Napi::TypeError::New(env, std::string(fn) + ": expected (layers, options, grads|null, objectMaps|null, "
                                                      "attributeMaps|null)");
  Call call;
  // layers
  const Napi::Array layers = get_array(env, info[0], "layers");
  std::vector<Range> inputs, outputs;
  for (uint32_t i = 0; i < layers.Length(); ++i) {
    const std::string f = at("layers", i);
    const Napi::Value lv = layers.Get(i);
    if (!lv.IsObject() || lv.IsArray()) type_error(env, f, "expected {data, heads, resolution, place} but received " + describe(lv));
    const Napi::Object l = lv.As<Napi::Object>();
    const Napi::Float32Array data = get_f32(env, l.Get("data"), f + ".data");
    LayerView view;
    view.probs = data.Data();
    view.length = static_cast<int64_t>(data.ElementLength());
    view.heads = get_int(env, l.Get("heads"), f + ".heads");
    view.resolution = get_int(env, l.Get("resolution"), f + ".resolution");
    static const char* const places[] = {"down", "mid", "up"};
    static const LayerPlace place_values[] = {LayerPlace::Down, LayerPlace::Mid, LayerPlace::Up};
    view.place = get_enum(env, l.Get("place"), f + ".place", places, place_values);
    call.layers.push_back(view);
    call.arrays.push_back(data);
    const char* b = reinterpret_cast<const char*>(view.probs);
    inputs.push_back({b, b + view.length * sizeof(float), f + ".data"});
  }
  call.options = parse_options(env, info[1]);
  // grads
  const Napi::Value gv = info.Length() > 2 ? info[2] : env.Null();
  if (!gv.IsNull() && !gv.IsUndefined()) {
    const Napi::Array grads = get_array(env, gv, "grads");
    if (grads.Length() != layers.Length())
      range_error(env, "grads", "has " + std::to_string(grads.Length()) + " buffers but layers has " +
                                    std::to_string(layers.Length()) + "; pass one Float32Array per layer, or null");
    for (uint32_t i = 0; i < grads.Length(); ++i) {
      const std::string f = at("grads", i);
      Napi::Float32Array g = get_f32(env, grads.Get(i), f);
      if (static_cast<int64_t>(g.ElementLength()) != call.layers[i].length)
        range_error(env, f, "has " + std::to_string(g.ElementLength()) + " floats but layers[" + std::to_string(i) +
                                "].data has " + std::to_string(call.layers[i].length) + "; allocate the same length");
      call.grads.push_back(g.Data());
      call.arrays.push_back(g);
      const char* b = reinterpret_cast<const char*>(g.Data());
      outputs.push_back({b, b + g.ElementLength() * sizeof(float), f});
    }
  }
  // maps
  const size_t map_len = call.options.token_indices.size() * size_t(std::max(call.options.attention_resolution, 0)) *
                         size_t(std::max(call.options.attention_resolution, 0));
  const char* map_names[2] = {"objectMaps", "attributeMaps"};
  float** map_ptrs[2] = {&call.object_maps, &call.attribute_maps};
  for (int m = 0; m < 2; ++m) {
    const Napi::Value v = info.Length() > size_t(3 + m) ? info[3 + m] : env.Null();
    if (v.IsNull() || v.IsUndefined()) continue;
    Napi::Float32Array a = get_f32(env, v, map_names[m]);
    if (a.ElementLength() != map_len)
      range_error(env, map_names[m], "has " + std::to_string(a.ElementLength()) +
                                         " floats but tokenIndices.length * attentionResolution^2 = " +
                                         std::to_string(map_len) + "; allocate that length or pass null");
    *map_ptrs[m] = a.Data();
    call.arrays.push_back(a);
    const char* b = reinterpret_cast<const char*>(a.Data());
    outputs.push_back({b, b + a.ElementLength() * sizeof(float), map_names[m]});
  }
  // Outputs are written while inputs are read: any overlap would corrupt the result.
  for (size_t i = 0; i < outputs.size(); ++i) {
    for (const Range& in : inputs)
      if (outputs[i].begin < in.end && in.begin < outputs[i].end)
        range_error(env, outputs[i].field, "shares memory with " + in.field + "; pass a separate output buffer");
    for (size_t j = 0; j < i; ++j)
      if (outputs[i].begin < outputs[j].end && outputs[j].begin < outputs[i].end)
        range_error(env, outputs[i].field, "shares memory with " + outputs[j].field + "; pass separate output buffers");
  }
  return call;
}

Napi::Object ResultToJs(Napi::Env env, const LossResult& result) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("loss", Napi::Number::New(env, result.loss));
  out.Set("indicator", Napi::Number::New(env, result.indicator));
  Napi::Array tokens = Napi::Array::New(env, result.tokens.size());
  for (size_t i = 0; i < result.tokens.size(); ++i) {
    const TokenDiagnostics& d = result.tokens[i];
    Napi::Object t = Napi::Object::New(env);
    t.Set("tokenIndex", Napi::Number::New(env, d.token_index));
    t.Set("attributeIndex", Napi::Number::New(env, d.attribute_index));
    t.Set("maxAttention", Napi::Number::New(env, d.max_attention));
    t.Set("tv", Napi::Number::New(env, d.tv));
    t.Set("jsd", Napi::Number::New(env, d.has_jsd ? d.jsd : std::numeric_limits<double>::quiet_NaN()));
    t.Set("coefficient", Napi::Number::New(env, d.coefficient));
    t.Set("value", Napi::Number::New(env, d.value));
    tokens.Set(static_cast<uint32_t>(i), t);
  }
  out.Set("tokens", tokens);
  return out;
}

Napi::Error ToJsError(Napi::Env env, const PendingError& error) {
  switch (error.kind) {
    case PendingError::Kind::Type: return Napi::TypeError::New(env, error.message);
    case PendingError::Kind::Range: return Napi::RangeError::New(env, error.message);
    default: return Napi::Error::New(env, error.message);
  }
}

}  // namespace divbind::addon
