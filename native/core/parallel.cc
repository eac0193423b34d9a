// Two-way fork-join with one persistent helper thread (see parallel.h).
#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace divbind {
namespace {

// How long the helper keeps polling for the next part before it sleeps on the condition variable.
constexpr auto kSpin = std::chrono::microseconds(200);

inline void cpu_relax() {
#if defined(__SSE2__) || defined(_M_X64)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

class Helper {
 public:
  // Never destroyed (see helper()): the thread may still wait on these members while the process exits.
  Helper() {
    std::thread([this] { Loop(); }).detach();
  }  // started once every member exists

  // Runs fn(from, to) on the helper while the caller works on its own part; Wait() blocks until it has ended.
  void Post(const std::function<void(int64_t, int64_t)>* fn, int64_t from, int64_t to) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = fn;
      from_ = from;
      to_ = to;
      posted_.store(true, std::memory_order_release);
    }
    wake_.notify_one();
  }

  // Returns what the helper's part threw, if anything.
  std::exception_ptr Wait() {
    while (!done_.load(std::memory_order_acquire)) cpu_relax();
    done_.store(false, std::memory_order_relaxed);
    return std::exchange(error_, nullptr);
  }

  std::mutex& Busy() { return busy_; }

 private:
  void Loop() {
    for (;;) {
      const auto until = std::chrono::steady_clock::now() + kSpin;
      while (!posted_.load(std::memory_order_acquire) && std::chrono::steady_clock::now() < until)
        for (int i = 0; i < 64; ++i) cpu_relax();  // read the clock now and then, not on every turn
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return posted_.load(std::memory_order_acquire); });
        posted_.store(false, std::memory_order_relaxed);
      }
      try {
        (*fn_)(from_, to_);
      } catch (...) {  // e.g. std::bad_alloc: handed to the caller, which rethrows it on its own thread
        error_ = std::current_exception();
      }
      done_.store(true, std::memory_order_release);
    }
  }

  std::mutex busy_;  // held by the call that uses the helper
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<bool> posted_{false}, done_{false};
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t from_ = 0, to_ = 0;
  std::exception_ptr error_;
};

std::atomic<Helper*> g_helper{nullptr};
std::mutex g_helper_start;
std::atomic<bool> g_helper_failed{false};
std::atomic<int> g_threads{0};  // 0 = not decided yet

#if defined(__unix__) || defined(__APPLE__)
// A forked child has no helper thread: forget the parent's (leaked, like every helper).
void forget_helper_after_fork() { g_helper.store(nullptr, std::memory_order_relaxed); }
#endif

// The helper, started on first use; nullptr when no thread can be started.
Helper* helper() {
  Helper* h = g_helper.load(std::memory_order_acquire);
  if (h || g_helper_failed.load(std::memory_order_relaxed)) return h;
  std::lock_guard<std::mutex> lock(g_helper_start);
  h = g_helper.load(std::memory_order_relaxed);
  if (h) return h;
  try {
    h = new Helper();  // leaked on purpose: a detached thread must not outlive the object it uses
  } catch (const std::system_error&) {
    g_helper_failed.store(true, std::memory_order_relaxed);
    return nullptr;
  }
#if defined(__unix__) || defined(__APPLE__)
  static const int registered = pthread_atfork(nullptr, nullptr, forget_helper_after_fork);
  (void)registered;
#endif
  g_helper.store(h, std::memory_order_release);
  return h;
}

}  // namespace

int core_threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  if (n > 0) return n;
  n = std::thread::hardware_concurrency() >= 2 ? 2 : 1;
  if (const char* env = std::getenv("DIVBIND_THREADS")) {
    const int v = std::atoi(env);
    if (v >= 1) n = std::min(v, 2);
  }
  g_threads.store(n, std::memory_order_relaxed);
  return n;
}

void set_core_threads(int threads) { g_threads.store(std::clamp(threads, 1, 2), std::memory_order_relaxed); }

void run_split(int64_t split, int64_t n, bool worth_it, const std::function<void(int64_t, int64_t)>& fn) {
  split = std::clamp<int64_t>(split, 0, n);
  Helper* h = worth_it && split > 0 && split < n && core_threads() >= 2 ? helper() : nullptr;
  std::unique_lock<std::mutex> busy;
  if (h) busy = std::unique_lock<std::mutex>(h->Busy(), std::try_to_lock);
  if (!h || !busy.owns_lock()) {
    fn(0, n);
    return;
  }
  h->Post(&fn, split, n);
  std::exception_ptr mine;
  try {
    fn(0, split);
  } catch (...) {
    mine = std::current_exception();
  }
  const std::exception_ptr theirs = h->Wait();  // fn and what it uses live in the caller's frame: wait first
  if (mine) std::rethrow_exception(mine);
  if (theirs) std::rethrow_exception(theirs);
}

}  // namespace divbind
