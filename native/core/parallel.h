// Two-way fork-join for the core's memory-bound stages (reading the layers, the token softmax, the backward's
// rows, writing the gradients): the calling thread runs the first part, one persistent helper thread the second.
//
// Why a persistent helper: a call at SD size takes well under a millisecond, and starting a std::thread per
// stage would cost a noticeable share of it. The helper spins briefly after each part (the stages of one call
// follow each other within microseconds), then sleeps. Why two fixed parts: each thread then streams through
// one contiguous half of the memory, and stages that split alike (the halves of the output pixels) find the rows
// the previous stage left in the same core's cache; handing out smaller chunks as threads became free measured
// slower (SD 512² call 0.87-1.0 ms against 0.76 ms). One helper serves the whole process: a call that finds it busy
// (calls running at once on several threads) runs both parts itself, so results never depend on it.
#pragma once

#include <cstdint>
#include <functional>

namespace divbind {

// Calls fn(0, split) on this thread and fn(split, n) on the helper, or fn(0, n) here when core_threads() is 1,
// the helper is busy or cannot start, or `worth_it` is false. fn must give the same result whichever thread runs
// which part (each part writes only its own outputs). When a part throws, run_split rethrows on the calling
// thread once both parts have ended (the caller's exception first).
void run_split(int64_t split, int64_t n, bool worth_it, const std::function<void(int64_t, int64_t)>& fn);

// Threads the core uses: 1 or 2. Default: DIVBIND_THREADS when set (clamped to 1..2), else 2 when the machine
// has at least two hardware threads. Process-wide.
int core_threads();
void set_core_threads(int threads);  // clamped to 1..2; for tests and benchmarks

}  // namespace divbind
