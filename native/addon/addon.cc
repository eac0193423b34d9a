// divbind-native addon: registers the exports typed in lib/loss/native-types.ts.
//   attentionLoss(layers, options, grads|null, objectMaps|null, attributeMaps|null)        [sync]
//   attentionLossAsync(...same) -> Promise<NativeLossResult>                                 [async]
//   features: { cuda, version, build }
//   with DIVBIND_WITH_CUDA: attentionLossCuda, attentionLossCudaAsync, cudaDevices()
// Errors: TypeError / RangeError whose message starts with the field name; anything else is an Error. No
// exception ever leaves a callback (every entry point funnels through Capture / a catch-all).
#include <napi.h>

#include <memory>
#include <string>
#include <utility>

#include "attention_loss.h"
#include "convert.h"
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

enum class Engine { Cpu, CudaHost };

// Computes one call. Pure C++: runs on the JS thread (sync) or a libuv pool thread (async).
LossResult Compute(Engine engine, const Call& c) {
  float* const* grads = c.grads.empty() ? nullptr : c.grads.data();
#ifdef DIVBIND_WITH_CUDA
  if (engine == Engine::CudaHost) {
    std::string why;
    if (cuda::device_count(&why) <= 0)
      throw std::runtime_error("no usable CUDA device (" + (why.empty() ? std::string("none found") : why) +
                               "); use backend 'native' (CPU) or 'js'");
    return cuda::attention_loss_host(c.layers, c.options, grads, c.object_maps, c.attribute_maps);
  }
#else
  (void)engine;
#endif
  return attention_loss(c.layers, c.options, grads, c.object_maps, c.attribute_maps);
}

// [sync] Validates, computes, returns NativeLossResult; throws TypeError / RangeError / Error.
Napi::Value RunSync(const Napi::CallbackInfo& info, Engine engine, const char* fn) {
  Napi::Env env = info.Env();
  std::unique_ptr<Call> call;
  try {
    call = std::make_unique<Call>(ParseCall(info, fn));
  } catch (const Napi::Error&) {
    throw;  // already a JS TypeError / RangeError
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, std::string(fn) + ": " + e.what());
  }
  LossResult result;
  const PendingError err = Capture([&] { result = Compute(engine, *call); });
  if (err.kind != PendingError::Kind::None) throw ToJsError(env, err);
  return ResultToJs(env, result);
}

// Baton + worker for the Promise API. The baton owns persistent references to every typed array it reads
// or writes, so the GC cannot free them while Execute() runs on the pool thread. Callers must not mutate
// or transfer (detach) those buffers until the promise settles.
//
// libuv pool note: AsyncWorker runs on the libuv threadpool (4 threads unless UV_THREADPOOL_SIZE says
// otherwise), shared with fs, dns, zlib and crypto. One SD-sized call takes a few milliseconds, so it does not
// starve them; heavier callers can raise UV_THREADPOOL_SIZE.
class LossWorker : public Napi::AsyncWorker {
 public:
  LossWorker(Napi::Env env, std::unique_ptr<Call> call, Engine engine)
      : Napi::AsyncWorker(env, "divbind:attentionLoss"), deferred_(Napi::Promise::Deferred::New(env)),
        call_(std::move(call)), engine_(engine) {
    for (const Napi::TypedArray& a : call_->arrays) keep_.push_back(Napi::Persistent(a));
    call_->arrays.clear();  // the handles die with the call's scope; the references keep the buffers alive
  }
  Napi::Promise Promise() const { return deferred_.Promise(); }

  // Pure C++: never touches N-API; errors go to err_.
  void Execute() override { err_ = Capture([&] { result_ = Compute(engine_, *call_); }); }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (err_.kind != PendingError::Kind::None) {
      deferred_.Reject(ToJsError(env, err_).Value());
      return;
    }
    const PendingError conv = Capture([&] { deferred_.Resolve(ResultToJs(env, result_)); });
    if (conv.kind != PendingError::Kind::None) deferred_.Reject(ToJsError(env, conv).Value());
  }

  // Only reached if the worker itself failed (SetError is never called by Execute).
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::unique_ptr<Call> call_;
  Engine engine_;
  std::vector<Napi::Reference<Napi::TypedArray>> keep_;
  LossResult result_;
  PendingError err_;
};

// [async] Validation errors reject the promise (they do not throw synchronously).
Napi::Value RunAsync(const Napi::CallbackInfo& info, Engine engine, const char* fn) {
  Napi::Env env = info.Env();
  std::unique_ptr<Call> call;
  try {
    call = std::make_unique<Call>(ParseCall(info, fn));
  } catch (const Napi::Error& e) {
    Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
    d.Reject(e.Value());
    return d.Promise();
  } catch (const std::exception& e) {
    Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
    d.Reject(Napi::Error::New(env, std::string(fn) + ": " + e.what()).Value());
    return d.Promise();
  }
  auto* worker = new LossWorker(env, std::move(call), engine);  // deletes itself after OnOK / OnError
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

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
  out.Set("error", count > 0 && why.empty() ? env.Null() : Napi::Value(Napi::String::New(env, why.empty() ? "no CUDA device" : why)));
  return out;
}
#endif

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("attentionLoss", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                return RunSync(info, Engine::Cpu, "attentionLoss");
              }, "attentionLoss"));
  exports.Set("attentionLossAsync", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                return RunAsync(info, Engine::Cpu, "attentionLossAsync");
              }, "attentionLossAsync"));
#ifdef DIVBIND_WITH_CUDA
  exports.Set("attentionLossCuda", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                return RunSync(info, Engine::CudaHost, "attentionLossCuda");
              }, "attentionLossCuda"));
  exports.Set("attentionLossCudaAsync", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                return RunAsync(info, Engine::CudaHost, "attentionLossCudaAsync");
              }, "attentionLossCudaAsync"));
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
  return exports;
}

}  // namespace
}  // namespace divbind::addon

static Napi::Object InitDivbind(Napi::Env env, Napi::Object exports) { return divbind::addon::Init(env, exports); }

NODE_API_MODULE(divbind_native, InitDivbind)
