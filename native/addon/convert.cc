// JS -> C++ (options, layers, buffers) and C++ -> JS (results, errors, the option schema). See convert.h.
// lib/loss/validate.ts checks everything first; this layer re-checks types (a wrong type here would read
// garbage) and leaves value ranges to the core's checks (plan.cc), which name the same fields. Option keys and
// enum spellings come from native/core/loss_options.h.
#include "convert.h"

#include <cmath>
#include <limits>
#include <sstream>
#include <type_traits>

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

Napi::Array get_array(Napi::Env env, const Napi::Value& v, const std::string& field) {
  if (!v.IsArray()) type_error(env, field, "expected an array but received " + describe(v));
  return v.As<Napi::Array>();
}

Napi::Float32Array get_f32(Napi::Env env, const Napi::Value& v, const std::string& field) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    type_error(env, field, "expected a Float32Array but received " + describe(v));
  return v.As<Napi::Float32Array>();
}

// One of the spellings of EnumNames<E> (loss_options.h).
template <typename E>
E get_enum(Napi::Env env, const Napi::Value& v, const std::string& field) {
  if (!v.IsString()) type_error(env, field, "expected a string but received " + describe(v));
  const std::string s = v.As<Napi::String>().Utf8Value();
  std::string list;
  for (int i = 0; i < enum_count<E>(); ++i) {
    if (s == EnumNames<E>::names[i]) return static_cast<E>(i);
    list += std::string(i ? ", '" : "'") + EnumNames<E>::names[i] + "'";
  }
  range_error(env, field, "must be one of " + list + ", got '" + s + "'");
}

Napi::Value need(Napi::Env env, const Napi::Object& o, const char* key) {
  if (!o.Has(key)) type_error(env, key, "is missing from the normalized options (lib/loss/validate.ts fills it)");
  return o.Get(key);
}

// null_is_none: null entries read as -1 ("no attribute" in attributeIndices).
std::vector<int> get_ints(Napi::Env env, const Napi::Object& o, const char* key, bool null_is_none = false) {
  const Napi::Array a = get_array(env, need(env, o, key), key);
  std::vector<int> out;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    const Napi::Value v = a.Get(i);
    out.push_back(null_is_none && v.IsNull() ? -1 : get_int(env, v, at(key, i)));
  }
  return out;
}

// The structured options: token positions, lists, the schedule, the weight pair.
void parse_structured(Napi::Env env, const Napi::Object& o, LossOptions& r) {
  r.text_length = get_int(env, need(env, o, keys::kTextLength), keys::kTextLength);
  r.token_indices = get_ints(env, o, keys::kTokenIndices);
  r.attribute_indices = get_ints(env, o, keys::kAttributeIndices, true);
  r.attribute_resolutions = get_ints(env, o, keys::kAttributeResolutions);
  r.eot_index = get_int(env, need(env, o, keys::kEotIndex), keys::kEotIndex);
  const Napi::Array coefs = get_array(env, need(env, o, keys::kBindingCoefficients), keys::kBindingCoefficients);
  r.binding_coefficients.clear();
  for (uint32_t i = 0; i < coefs.Length(); ++i) {
    const std::string f = at(keys::kBindingCoefficients, i);
    const Napi::Array pair = get_array(env, coefs.Get(i), f);
    if (pair.Length() != 2) range_error(env, f, "expected a [fromStepIndex, coefficient] pair");
    r.binding_coefficients.push_back({get_int(env, pair.Get(0u), f + "[0]"), get_number(env, pair.Get(1u), f + "[1]")});
  }
  const Napi::Array w = get_array(env, need(env, o, keys::kTvMaxWeights), keys::kTvMaxWeights);
  if (w.Length() != 2) range_error(env, keys::kTvMaxWeights, "expected a [wTv, wMax] pair");
  r.tv_max_weight_tv = get_number(env, w.Get(0u), "tvMaxWeights[0]");
  r.tv_max_weight_max = get_number(env, w.Get(1u), "tvMaxWeights[1]");
}

LossOptions parse_options(Napi::Env env, const Napi::Value& value) {
  if (!value.IsObject() || value.IsArray())
    type_error(env, "options", "expected an object but received " + describe(value));
  const Napi::Object o = value.As<Napi::Object>();
  LossOptions r;
  for_each_enum_option([&](const auto& opt) {
    using E = typename std::decay_t<decltype(opt)>::Enum;
    r.*opt.member = get_enum<E>(env, need(env, o, opt.key), opt.key);
  });
  for (const IntOption& opt : kIntOptions) r.*opt.member = get_int(env, need(env, o, opt.key), opt.key);
  for (const NumberOption& opt : kNumberOptions) r.*opt.member = get_number(env, need(env, o, opt.key), opt.key);
  for (const BoolOption& opt : kBoolOptions) r.*opt.member = get_bool(env, need(env, o, opt.key), opt.key);
  parse_structured(env, o, r);
  return r;
}

// ------------------------------------------------------------------------------------------------
// Buffers

struct Range {
  const char* begin;
  const char* end;
  std::string field;
};

Range range_of(const Napi::Float32Array& a, const std::string& field) {
  const char* b = reinterpret_cast<const char*>(a.Data());
  return {b, b + a.ElementLength() * sizeof(float), field};
}

void parse_layers(Napi::Env env, const Napi::Value& value, Call& call, std::vector<Range>& inputs) {
  const Napi::Array layers = get_array(env, value, "layers");
  for (uint32_t i = 0; i < layers.Length(); ++i) {
    const std::string f = at("layers", i);
    const Napi::Value lv = layers.Get(i);
    if (!lv.IsObject() || lv.IsArray())
      type_error(env, f, "expected {data, heads, resolution, place} but received " + describe(lv));
    const Napi::Object l = lv.As<Napi::Object>();
    const Napi::Float32Array data = get_f32(env, l.Get("data"), f + ".data");
    LayerView view;
    view.probs = data.Data();
    view.length = static_cast<int64_t>(data.ElementLength());
    view.heads = get_int(env, l.Get("heads"), f + ".heads");
    view.resolution = get_int(env, l.Get("resolution"), f + ".resolution");
    view.place = get_enum<LayerPlace>(env, l.Get("place"), f + ".place");
    call.layers.push_back(view);
    inputs.push_back(range_of(data, f + ".data"));
  }
}

void parse_grads(Napi::Env env, const Napi::Value& value, Call& call, std::vector<Range>& outputs) {
  if (value.IsNull() || value.IsUndefined()) return;
  const Napi::Array grads = get_array(env, value, "grads");
  if (grads.Length() != call.layers.size())
    range_error(env, "grads",
                "has " + std::to_string(grads.Length()) + " buffers but layers has " +
                    std::to_string(call.layers.size()) + "; pass one Float32Array per layer, or null");
  for (uint32_t i = 0; i < grads.Length(); ++i) {
    const std::string f = at("grads", i);
    Napi::Float32Array g = get_f32(env, grads.Get(i), f);
    if (static_cast<int64_t>(g.ElementLength()) != call.layers[i].length)
      range_error(env, f,
                  "has " + std::to_string(g.ElementLength()) + " floats but layers[" + std::to_string(i) +
                      "].data has " + std::to_string(call.layers[i].length) + "; allocate the same length");
    call.grads.push_back(g.Data());
    call.grad_arrays.push_back(g);
    outputs.push_back(range_of(g, f));
  }
}

void parse_maps(Napi::Env env, const Napi::CallbackInfo& info, Call& call, std::vector<Range>& outputs) {
  const int r0 = std::max(call.options.attention_resolution, 0);
  const size_t map_len = call.options.token_indices.size() * size_t(r0) * size_t(r0);
  const char* names[2] = {"objectMaps", "attributeMaps"};
  float** ptrs[2] = {&call.object_maps, &call.attribute_maps};
  Napi::Float32Array* arrays[2] = {&call.object_maps_array, &call.attribute_maps_array};
  for (int m = 0; m < 2; ++m) {
    const Napi::Value v = info.Length() > size_t(3 + m) ? info[3 + m] : info.Env().Null();
    if (v.IsNull() || v.IsUndefined()) continue;
    Napi::Float32Array a = get_f32(env, v, names[m]);
    if (a.ElementLength() != map_len)
      range_error(env, names[m],
                  "has " + std::to_string(a.ElementLength()) +
                      " floats but tokenIndices.length * attentionResolution^2 = " + std::to_string(map_len) +
                      "; allocate that length or pass null");
    *ptrs[m] = a.Data();
    *arrays[m] = a;
    outputs.push_back(range_of(a, names[m]));
  }
}

// gradState: null, or a Uint8Array with one GradState per layer (what each grads buffer holds now).
void parse_grad_prior(Napi::Env env, const Napi::Value& value, Call& call) {
  if (value.IsNull() || value.IsUndefined()) return;
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    type_error(env, "gradState", "expected a Uint8Array or null but received " + describe(value));
  if (call.grads.empty()) type_error(env, "gradState", "was given without grads; pass both or neither");
  const Napi::Uint8Array s = value.As<Napi::Uint8Array>();
  if (s.ElementLength() != call.layers.size())
    range_error(
        env, "gradState",
        "has " + std::to_string(s.ElementLength()) + " entries but layers has " + std::to_string(call.layers.size()));
  for (size_t i = 0; i < s.ElementLength(); ++i) {
    if (s[i] > uint8_t(GradState::Sampled))
      range_error(env, at("gradState", uint32_t(i)),
                  "must be 0 (unknown), 1 (zero) or 2 (sampled), got " + std::to_string(s[i]));
    call.grad_prior.push_back(static_cast<GradState>(s[i]));
  }
}

// Outputs are written while inputs are read: any overlap would corrupt the result.
void check_overlaps(Napi::Env env, const std::vector<Range>& inputs, const std::vector<Range>& outputs) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    for (const Range& in : inputs)
      if (outputs[i].begin < in.end && in.begin < outputs[i].end)
        range_error(env, outputs[i].field, "shares memory with " + in.field + "; pass a separate output buffer");
    for (size_t j = 0; j < i; ++j)
      if (outputs[i].begin < outputs[j].end && outputs[j].begin < outputs[i].end)
        range_error(env, outputs[i].field, "shares memory with " + outputs[j].field + "; pass separate output buffers");
  }
}

}  // namespace

Call ParseCall(const Napi::CallbackInfo& info, const char* fn) {
  Napi::Env env = info.Env();
  if (info.Length() < 2)
    throw Napi::TypeError::New(env, std::string(fn) +
                                        ": expected (layers, options, grads|null, objectMaps|null, "
                                        "attributeMaps|null, gradState|null)");
  Call call;
  std::vector<Range> inputs, outputs;
  parse_layers(env, info[0], call, inputs);
  call.options = parse_options(env, info[1]);
  parse_grads(env, info.Length() > 2 ? info[2] : env.Null(), call, outputs);
  parse_maps(env, info, call, outputs);
  parse_grad_prior(env, info.Length() > 5 ? info[5] : env.Null(), call);
  check_overlaps(env, inputs, outputs);
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
  if (!result.grad_states.empty()) {
    Napi::Array states = Napi::Array::New(env, result.grad_states.size());
    for (size_t i = 0; i < result.grad_states.size(); ++i)
      states.Set(static_cast<uint32_t>(i), Napi::Number::New(env, int(result.grad_states[i])));
    out.Set("gradStates", states);
  }
  return out;
}

Napi::Error ToJsError(Napi::Env env, const PendingError& error) {
  switch (error.kind) {
    case PendingError::Kind::Type: return Napi::TypeError::New(env, error.message);
    case PendingError::Kind::Range: return Napi::RangeError::New(env, error.message);
    default: return Napi::Error::New(env, error.message);
  }
}

// ------------------------------------------------------------------------------------------------
// The option schema

namespace {

Napi::Array ints_to_js(Napi::Env env, const std::vector<int>& v) {
  Napi::Array a = Napi::Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); ++i) a.Set(uint32_t(i), Napi::Number::New(env, v[i]));
  return a;
}

Napi::Object entry(Napi::Env env, const char* type) {
  Napi::Object e = Napi::Object::New(env);
  e.Set("type", type);
  return e;
}

void set_range(Napi::Object& e, double min, double max, bool min_exclusive) {
  e.Set("min", min);
  e.Set("max", max);
  if (min_exclusive) e.Set("minExclusive", true);
}

void structured_schema(Napi::Env env, Napi::Object& options, const LossOptions& d) {
  Napi::Object tokens = entry(env, "tokens");
  tokens.Set("required", true);
  options.Set(keys::kTokenIndices, tokens);
  options.Set(keys::kAttributeIndices, entry(env, "attributes"));
  options.Set(keys::kEotIndex, entry(env, "index"));
  Napi::Object res = entry(env, "integers");
  set_range(res, 1, kMaxResolution, false);
  res.Set("default", ints_to_js(env, d.attribute_resolutions));
  options.Set(keys::kAttributeResolutions, res);
  Napi::Object schedule = entry(env, "schedule");
  Napi::Array steps = Napi::Array::New(env, d.binding_coefficients.size());
  for (size_t i = 0; i < d.binding_coefficients.size(); ++i) {
    Napi::Array pair = Napi::Array::New(env, 2);
    pair.Set(0u, d.binding_coefficients[i].from_step);
    pair.Set(1u, d.binding_coefficients[i].coefficient);
    steps.Set(uint32_t(i), pair);
  }
  schedule.Set("default", steps);
  options.Set(keys::kBindingCoefficients, schedule);
  Napi::Object weights = entry(env, "pair");
  Napi::Array w = Napi::Array::New(env, 2);
  w.Set(0u, d.tv_max_weight_tv);
  w.Set(1u, d.tv_max_weight_max);
  weights.Set("default", w);
  options.Set(keys::kTvMaxWeights, weights);
}

}  // namespace

Napi::Object OptionSchemaToJs(Napi::Env env) {
  const LossOptions d;  // the defaults
  Napi::Object options = Napi::Object::New(env);
  for_each_enum_option([&](const auto& opt) {
    using E = typename std::decay_t<decltype(opt)>::Enum;
    Napi::Object e = entry(env, "enum");
    Napi::Array values = Napi::Array::New(env, enum_count<E>());
    for (int i = 0; i < enum_count<E>(); ++i) values.Set(uint32_t(i), EnumNames<E>::names[i]);
    e.Set("values", values);
    e.Set("default", EnumNames<E>::names[int(d.*opt.member)]);
    options.Set(opt.key, e);
  });
  for (const IntOption& opt : kIntOptions) {
    Napi::Object e = entry(env, "integer");
    set_range(e, opt.min, opt.max, false);
    e.Set("default", d.*opt.member);
    options.Set(opt.key, e);
  }
  for (const NumberOption& opt : kNumberOptions) {
    Napi::Object e = entry(env, "number");
    set_range(e, opt.min, opt.max, opt.min_exclusive);
    e.Set("default", d.*opt.member);
    options.Set(opt.key, e);
  }
  for (const BoolOption& opt : kBoolOptions) {
    Napi::Object e = entry(env, "boolean");
    e.Set("default", d.*opt.member);
    options.Set(opt.key, e);
  }
  structured_schema(env, options, d);
  Napi::Object states = Napi::Object::New(env);
  states.Set("unknown", int(GradState::Unknown));
  states.Set("zero", int(GradState::Zero));
  states.Set("sampled", int(GradState::Sampled));
  Napi::Object schema = Napi::Object::New(env);
  schema.Set("options", options);
  schema.Set("gradStates", states);
  schema.Set("limits", [&] {
    Napi::Object l = Napi::Object::New(env);
    l.Set("maxResolution", kMaxResolution);
    l.Set("maxDim", kMaxDim);
    l.Set("maxStep", kMaxStep);
    return l;
  }());
  return schema;
}

}  // namespace divbind::addon
