// The addon's two ways to run one loss call (CPU core or CUDA host entry point).
//
//   RunSync   [sync]  everything on the JS thread.
//   RunAsync  [async] reads the inputs on the JS thread, computes on a libuv pool thread, and writes the outputs
//                     on the JS thread, in slices of about 4 MB one event-loop turn apart.
//
// Why the caller's buffers are only touched on the JS thread: JavaScript can detach an ArrayBuffer (transfer it
// with structuredClone or postMessage, ArrayBuffer.prototype.transfer) or shrink a resizable one at any time,
// and that frees or unmaps the memory at once; N-API offers no way to pin it. A pool thread reading or writing
// such memory crashes the process (issue 10, fault 3). On the JS thread nothing else runs meanwhile, so the async
// call reads the layers up front (the loss reads them only through two small aggregates), keeps the rest of the
// work in memory it owns, and checks before each write slice that every output is still attached and of the
// same length: misuse rejects the promise with a TypeError naming the buffer.
//
// libuv pool note: the pool has 4 threads unless UV_THREADPOOL_SIZE says otherwise, shared with fs, dns, zlib and
// crypto. The compute step of one SD-sized call is well under a millisecond; each write slice is one short hop.
#pragma once

#include <napi.h>

namespace divbind::addon {

enum class Engine { Cpu, CudaHost };

// [sync] Validates, computes, returns NativeLossResult; throws TypeError / RangeError / Error.
Napi::Value RunSync(const Napi::CallbackInfo& info, Engine engine, const char* fn);

// [async] Same result as a Promise; argument errors and misuse reject it (nothing is thrown synchronously).
Napi::Value RunAsync(const Napi::CallbackInfo& info, Engine engine, const char* fn);

}  // namespace divbind::addon
