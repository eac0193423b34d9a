// Process allocator tuning for onnxruntime's arena-less sessions (allocator.cc says why).
#pragma once

#include <napi.h>

namespace divbind::addon {

// [sync] retainFreedMemory() -> { applied: boolean, allocator: string }. Never throws.
Napi::Value RetainFreedMemory(const Napi::CallbackInfo& info);

// [sync] execSelf(environment: string[]) -> string. Replaces this process (same pid, argv from /proc/self/cmdline)
// with a fresh start of its own executable under `environment`; returns only on failure, with the reason.
Napi::Value ExecSelf(const Napi::CallbackInfo& info);

}  // namespace divbind::addon
