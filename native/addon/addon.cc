// divbind-native addon: registers the exports typed in lib/loss/native-types.ts.
//   attentionLoss(layers, options, grads|null, objectMaps|null, attributeMaps|null, gradState|null)  [sync]
//   attentionLossAsync(...same) -> Promise<NativeLossResult>                                          [async]
//   features: { cuda, version, build }
//   retainFreedMemory() -> { applied, allocator }: glibc keeps freed memory for the next run (allocator.cc)
//   execSelf(environment) -> reason: restarts the process in place under another environment (allocator.cc)
//   lossOptionSchema: the option table of native/core/loss_options.h (keys, defaults, ranges) + GradState values
//   with DIVBIND_WITH_CUDA: attentionLossCuda, attentionLossCudaAsync, cudaDevices()
// Errors: TypeError / RangeError whose message starts with the field name; anything else is an Error. No
// exception ever leaves a callback (every entry point funnels through Capture / a catch-all). The sync and async
// runners and their threading rules: loss_call.{h,cc}.
#include <napi.h>

#include <string>

#include "allocator.h"
#include "convert.h"
#include "loss_call.h"
#include "simd.h"
#ifdef DIVBIND_WITH_CUDA
#include "../cuda/attention_loss_cuda.h"
#endif

#ifndef DIVBIND_VERSION
#define DIVBIND_VERSION "0.0.0"
#endif
#ifndef DIVBIND_BUILD_SYSTEM
#define DIVBIND_BUILD_SYSTEM "unknown build"
#endif

namespace divbind::addon {
namespace {

std::string BuildInfo() {
  std::string s;
#if defined(__clang__)
  s += "clang " __clang_version__;
#elif defined(__GNUC__)
  s += "g++ " __VERSION__;
#elif defined(_MSC_VER)
  s += "MSVC " + std::to_string(_MSC_VER);
#else
  s += "unknown compiler";
#endif
  s += ", C++" + std::to_string(__cplusplus / 100 % 100);
#if defined(__x86_64__) || defined(_M_X64)
  s += ", x86_64";
#elif defined(__aarch64__) || defined(_M_ARM64)
  s += ", arm64";
#endif
#if defined(__AVX512F__)
  s += " avx512f";
#elif defined(__AVX2__)
  s += " avx2";
#elif defined(__SSE2__) || defined(_M_X64)
  s += " sse2";
#endif
#if defined(__ARM_NEON)
  s += " neon";
#endif
#if defined(DIVBIND_HAS_CPU_CLONES)
  s += " (hot loops also as avx2/avx512f clones)";
#endif
#ifdef NDEBUG
  s += ", release";
#else
  s += ", debug";
#endif
  s += ", " DIVBIND_BUILD_SYSTEM ", N-API " + std::to_string(NAPI_VERSION);
#ifdef DIVBIND_WITH_CUDA
  s += ", CUDA";
#else
  s += ", CPU only";
#endif
  return s;
}

#ifdef DIVBIND_WITH_CUDA
// [sync] { count, error }: 0 and the reason when no driver / device. Never throws.
Napi::Value CudaDevices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string why;
  int count = 0;
  const PendingError err = Capture([&] { count = cuda::device_count(&why); });
  if (err.kind != PendingError::Kind::None) {
    count = 0;
    why = err.message;
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("count", Napi::Number::New(env, count > 0 ? count : 0));
  out.Set("error", count > 0 && why.empty()
                       ? env.Null()
                       : Napi::Value(Napi::String::New(env, why.empty() ? "no CUDA device" : why)));
  return out;
}
#endif

// The exports, one named function each ([sync] / [async]).
Napi::Value AttentionLoss(const Napi::CallbackInfo& info) { return RunSync(info, Engine::Cpu, "attentionLoss"); }
Napi::Value AttentionLossAsync(const Napi::CallbackInfo& info) {
  return RunAsync(info, Engine::Cpu, "attentionLossAsync");
}
#ifdef DIVBIND_WITH_CUDA
Napi::Value AttentionLossCuda(const Napi::CallbackInfo& info) {
  return RunSync(info, Engine::CudaHost, "attentionLossCuda");
}
Napi::Value AttentionLossCudaAsync(const Napi::CallbackInfo& info) {
  return RunAsync(info, Engine::CudaHost, "attentionLossCudaAsync");
}
#endif

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("attentionLoss", Napi::Function::New(env, AttentionLoss, "attentionLoss"));
  exports.Set("attentionLossAsync", Napi::Function::New(env, AttentionLossAsync, "attentionLossAsync"));
  exports.Set("retainFreedMemory", Napi::Function::New(env, RetainFreedMemory, "retainFreedMemory"));
  exports.Set("execSelf", Napi::Function::New(env, ExecSelf, "execSelf"));
#ifdef DIVBIND_WITH_CUDA
  exports.Set("attentionLossCuda", Napi::Function::New(env, AttentionLossCuda, "attentionLossCuda"));
  exports.Set("attentionLossCudaAsync", Napi::Function::New(env, AttentionLossCudaAsync, "attentionLossCudaAsync"));
  exports.Set("cudaDevices", Napi::Function::New(env, CudaDevices, "cudaDevices"));
  const bool cuda = true;
#else
  const bool cuda = false;
#endif
  Napi::Object features = Napi::Object::New(env);
  features.Set("cuda", Napi::Boolean::New(env, cuda));
  features.Set("version", Napi::String::New(env, DIVBIND_VERSION));
  features.Set("build", Napi::String::New(env, BuildInfo()));
  features.Freeze();
  exports.Set("features", features);
  Napi::Object schema = OptionSchemaToJs(env);
  schema.Freeze();
  exports.Set("lossOptionSchema", schema);
  return exports;
}

}  // namespace
}  // namespace divbind::addon

static Napi::Object InitDivbind(Napi::Env env, Napi::Object exports) { return divbind::addon::Init(env, exports); }

NODE_API_MODULE(divbind_native, InitDivbind)
