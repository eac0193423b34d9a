// Sync and async loss calls (see loss_call.h for the threading rules).
#include "loss_call.h"

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "convert.h"
#include "gradient_write.h"
#include "loss_stages.h"
#ifdef DIVBIND_WITH_CUDA
#include "../cuda/attention_loss_cuda.h"
#endif

namespace divbind::addon {
namespace {

// Floats written per JS-thread slice of an async call (about 4 MB, well under a millisecond).
constexpr int64_t kSliceFloats = int64_t(1) << 20;

#ifdef DIVBIND_WITH_CUDA
void RequireCuda() {
  std::string why;
  if (cuda::device_count(&why) <= 0)
    throw std::runtime_error("no usable CUDA device (" + (why.empty() ? std::string("none found") : why) +
                             "); use backend 'native' (CPU) or 'js'");
}
#endif

// [sync] One whole call through the engine's public entry point.
LossResult ComputeSync(Engine engine, const Call& c) {
  float* const* grads = c.grads.empty() ? nullptr : c.grads.data();
  const GradState* prior = c.grad_prior.empty() ? nullptr : c.grad_prior.data();
#ifdef DIVBIND_WITH_CUDA
  if (engine == Engine::CudaHost) {
    RequireCuda();
    return cuda::attention_loss_host(c.layers, c.options, grads, c.object_maps, c.attribute_maps, prior);
  }
#else
  (void)engine;
#endif
  return attention_loss(c.layers, c.options, grads, c.object_maps, c.attribute_maps, prior);
}

// ------------------------------------------------------------------------------------------------
// Async: a job owns everything it computes with once its constructor (JS thread) has read the layers.

class Job {
 public:
  virtual ~Job() = default;
  virtual LossResult Compute(bool with_grad) = 0;  // owned data only: runs on a pool thread
  virtual const CompactGradient& Gradient() const = 0;
  virtual void WriteMaps(float* object_maps, float* attribute_maps) const = 0;
};

class CpuJob : public Job {
 public:
  explicit CpuJob(const Call& c) : options_(c.options) { read_layers(ws_, c.layers, options_); }
  LossResult Compute(bool with_grad) override { return compute_loss(ws_, options_, with_grad); }
  const CompactGradient& Gradient() const override { return ws_.gradient; }
  void WriteMaps(float* object_maps, float* attribute_maps) const override {
    write_maps(ws_, object_maps, attribute_maps);
  }

 private:
  LossOptions options_;
  Workspace ws_;  // this call's own: the thread_local one belongs to the sync path
};

#ifdef DIVBIND_WITH_CUDA
class CudaHostJob : public Job {
 public:
  explicit CudaHostJob(const Call& c) : call_(c.layers, c.options) {}
  LossResult Compute(bool with_grad) override { return call_.compute(with_grad); }
  const CompactGradient& Gradient() const override { return call_.gradient(); }
  void WriteMaps(float* object_maps, float* attribute_maps) const override {
    call_.write_maps(object_maps, attribute_maps);
  }

 private:
  cuda::HostCall call_;
};
#endif

std::unique_ptr<Job> MakeJob(Engine engine, const Call& c) {
#ifdef DIVBIND_WITH_CUDA
  if (engine == Engine::CudaHost) {
    RequireCuda();
    return std::make_unique<CudaHostJob>(c);
  }
#else
  (void)engine;
#endif
  return std::make_unique<CpuJob>(c);
}

// An output buffer written on the JS thread after the call started: looked up again before every write, since
// JavaScript may have detached or resized it meanwhile.
class OutputRef {
 public:
  OutputRef(const Napi::Float32Array& array, std::string field)
      : ref_(Napi::Persistent(array)), length_(array.ElementLength()), field_(std::move(field)) {}

  float* Acquire() const {
    Napi::Float32Array a = ref_.Value();
    if (a.ArrayBuffer().IsDetached() || a.ElementLength() != length_)
      throw InvalidArgument(field_,
                            field_ +
                                ": was detached or resized while the async call was running; keep output "
                                "buffers attached and at their length (do not transfer, postMessage or resize "
                                "them) until the promise settles",
                            false);
    return a.Data();
  }

 private:
  Napi::Reference<Napi::Float32Array> ref_;
  size_t length_;
  std::string field_;
};

// The state of one async call, handed from worker to worker.
class AsyncLoss {
 public:
  // JS thread: reads the layers (through the job) and takes references to the outputs. Throws.
  AsyncLoss(Napi::Env env, const Call& c, Engine engine)
      : deferred_(Napi::Promise::Deferred::New(env)),
        job_(MakeJob(engine, c)),
        with_grad_(!c.grads.empty()),
        shapes_(layer_shapes(c.layers)),
        prior_(c.grad_prior) {
    for (size_t i = 0; i < c.grad_arrays.size(); ++i) grads_.emplace_back(c.grad_arrays[i], indexed("grads", i));
    if (!c.object_maps_array.IsEmpty()) object_maps_ = std::make_unique<OutputRef>(c.object_maps_array, "objectMaps");
    if (!c.attribute_maps_array.IsEmpty())
      attribute_maps_ = std::make_unique<OutputRef>(c.attribute_maps_array, "attributeMaps");
  }

  Napi::Promise Promise() const { return deferred_.Promise(); }

  // Pool thread: owned data only.
  void Compute() {
    error_ = Capture([&] { result_ = job_->Compute(with_grad_); });
  }

  // JS thread: the maps, then gradient blocks up to the slice budget. Returns true when everything is written.
  bool WriteSlice() {
    if (!maps_written_) {
      job_->WriteMaps(object_maps_ ? object_maps_->Acquire() : nullptr,
                      attribute_maps_ ? attribute_maps_->Acquire() : nullptr);
      maps_written_ = true;
    }
    if (!with_grad_) return true;
    std::vector<float*> grads;
    for (const OutputRef& g : grads_) grads.push_back(g.Acquire());
    const GradState* prior = prior_.empty() ? nullptr : prior_.data();
    const bool stream = use_streaming_stores(shapes_, job_->Gradient(), prior);
    const int64_t end = SliceEnd(next_block_, prior);
    write_gradient_blocks(grads.data(), shapes_, job_->Gradient(), prior, next_block_, end, stream);
    if (stream) store_fence();
    next_block_ = end;
    return next_block_ >= gradient_blocks(shapes_);
  }

  void Settle(Napi::Env env, const PendingError& error) {
    if (error.kind != PendingError::Kind::None) {
      deferred_.Reject(ToJsError(env, error).Value());
      return;
    }
    if (with_grad_) result_.grad_states = states_after(shapes_, job_->Gradient());
    const PendingError conv = Capture([&] { deferred_.Resolve(ResultToJs(env, result_)); });
    if (conv.kind != PendingError::Kind::None) deferred_.Reject(ToJsError(env, conv).Value());
  }

  const PendingError& ComputeError() const { return error_; }

 private:
  // The block after `from` at which the slice budget is spent (at least one block later), or the end.
  int64_t SliceEnd(int64_t from, const GradState* prior) const {
    int64_t first = 0, floats = 0;
    for (size_t i = 0; i < shapes_.size(); first += shapes_[i].heads, ++i) {
      const int64_t per = block_floats(shapes_[i], job_->Gradient(), prior ? prior[i] : GradState::Unknown);
      for (int64_t b = std::max(from, first); b < first + shapes_[i].heads; ++b)
        if ((floats += per) >= kSliceFloats) return b + 1;
    }
    return first;
  }

  Napi::Promise::Deferred deferred_;
  std::unique_ptr<Job> job_;
  bool with_grad_;
  std::vector<LayerShape> shapes_;
  std::vector<GradState> prior_;
  std::vector<OutputRef> grads_;
  std::unique_ptr<OutputRef> object_maps_, attribute_maps_;
  bool maps_written_ = false;
  int64_t next_block_ = 0;
  LossResult result_;
  PendingError error_;
};

// Runs AsyncLoss::Compute on the pool (compute == true), or nothing (a write slice's hop through the event loop),
// then one write slice on the JS thread; queues the next hop until the writes are done.
class LossWorker : public Napi::AsyncWorker {
 public:
  LossWorker(Napi::Env env, std::unique_ptr<AsyncLoss> state, bool compute)
      : Napi::AsyncWorker(env, "divbind:attentionLoss"), state_(std::move(state)), compute_(compute) {}

  void Execute() override {  // pure C++: never touches N-API
    if (compute_) state_->Compute();
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (state_->ComputeError().kind != PendingError::Kind::None) {
      state_->Settle(env, state_->ComputeError());
      return;
    }
    bool done = false;
    const PendingError err = Capture([&] { done = state_->WriteSlice(); });
    if (err.kind != PendingError::Kind::None || done) {
      state_->Settle(env, err);
      return;
    }
    (new LossWorker(env, std::move(state_), false))->Queue();  // deletes itself after OnOK / OnError
  }

  // Only reached if the worker itself failed (Execute never calls SetError).
  void OnError(const Napi::Error& e) override {
    PendingError err;
    err.kind = PendingError::Kind::Generic;
    err.message = e.Message();
    state_->Settle(Env(), err);
  }

 private:
  std::unique_ptr<AsyncLoss> state_;
  bool compute_;
};

Napi::Value Rejected(Napi::Env env, const Napi::Value& error) {
  Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
  d.Reject(error);
  return d.Promise();
}

}  // namespace

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
  const PendingError err = Capture([&] { result = ComputeSync(engine, *call); });
  if (err.kind != PendingError::Kind::None) throw ToJsError(env, err);
  return ResultToJs(env, result);
}

Napi::Value RunAsync(const Napi::CallbackInfo& info, Engine engine, const char* fn) {
  Napi::Env env = info.Env();
  std::unique_ptr<Call> call;
  try {
    call = std::make_unique<Call>(ParseCall(info, fn));
  } catch (const Napi::Error& e) {
    return Rejected(env, e.Value());
  } catch (const std::exception& e) {
    return Rejected(env, Napi::Error::New(env, std::string(fn) + ": " + e.what()).Value());
  }
  std::unique_ptr<AsyncLoss> state;
  const PendingError err = Capture([&] { state = std::make_unique<AsyncLoss>(env, *call, engine); });
  if (err.kind != PendingError::Kind::None) return Rejected(env, ToJsError(env, err).Value());
  const Napi::Promise promise = state->Promise();
  (new LossWorker(env, std::move(state), true))->Queue();  // deletes itself after OnOK / OnError
  return promise;
}

}  // namespace divbind::addon
