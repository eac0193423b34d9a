// JS <-> C++ marshalling for the addon: NormalizedLossOptions / NativeLayer[] / Float32Array views in,
// NativeLossResult out, C++ exceptions -> TypeError / RangeError / Error. Only this, loss_call and addon.cc see
// napi.h.
#pragma once

#include <napi.h>

#include <string>
#include <vector>

#include "attention_loss.h"

namespace divbind::addon {

// One call's inputs as plain C++ views into the caller's Float32Arrays (no copies), and the output arrays
// themselves, which an async call re-reads (detached? resized?) each time it writes.
struct Call {
  std::vector<LayerView> layers;
  LossOptions options;
  std::vector<float*> grads;  // empty = no gradient
  float* object_maps = nullptr;
  float* attribute_maps = nullptr;
  std::vector<GradState> grad_prior;  // empty = write every gradient buffer in full
  std::vector<Napi::Float32Array> grad_arrays;
  Napi::Float32Array object_maps_array, attribute_maps_array;  // empty handles when not given
};

// An error raised while computing, kept as plain data so it can cross from a worker thread.
struct PendingError {
  enum class Kind { None, Type, Range, Generic } kind = Kind::None;
  std::string message;
};

// [sync] Reads (layers, options, grads|null, objectMaps|null, attributeMaps|null, gradState|null); throws
// Napi::TypeError / Napi::RangeError naming the field. `fn` prefixes generic messages (e.g. "attentionLoss").
Call ParseCall(const Napi::CallbackInfo& info, const char* fn);

// Runs `body` and converts whatever it throws into a PendingError (never lets an exception escape).
template <typename F>
PendingError Capture(F&& body) noexcept;

// NativeLossResult as a JS object.
Napi::Object ResultToJs(Napi::Env env, const LossResult& result);

// PendingError -> the JS error object (TypeError / RangeError / Error).
Napi::Error ToJsError(Napi::Env env, const PendingError& error);

// The option table of loss_options.h (keys, defaults, ranges, enum values) and the GradState values, in the
// shape of lib/loss/options.ts LOSS_OPTIONS, for test/loss/options-schema.test.ts.
Napi::Object OptionSchemaToJs(Napi::Env env);

// ------------------------------------------------------------------------------------------------

template <typename F>
PendingError Capture(F&& body) noexcept {
  PendingError err;
  try {
    body();
  } catch (const InvalidArgument& e) {
    err.kind = e.range_error ? PendingError::Kind::Range : PendingError::Kind::Type;
    err.message = e.what();
  } catch (const std::bad_alloc&) {
    err.kind = PendingError::Kind::Generic;
    err.message = "divbind-native: out of memory while computing the attention loss";
  } catch (const std::exception& e) {
    err.kind = PendingError::Kind::Generic;
    err.message = std::string("divbind-native: ") + e.what();
  } catch (...) {
    err.kind = PendingError::Kind::Generic;
    err.message = "divbind-native: unknown native error";
  }
  return err;
}

}  // namespace divbind::addon
