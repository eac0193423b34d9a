// Process allocator tuning for onnxruntime's arena-less sessions (allocator.cc says why).
#pragma once

#include <napi.h>

namespace divbind::addon {

// [sync] retainFreedMemory() -> { applied: boolean, allocator: string }. Never throws.
Napi::Value RetainFreedMemory(const Napi::CallbackInfo& info);

}  // namespace divbind::addon
