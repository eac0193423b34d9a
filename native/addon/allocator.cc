// The pipeline's onnxruntime sessions run without a memory arena (lib/pipeline/ort.ts: kept arenas would add up
// across the CFG, guided forward and backward sessions), so every run mallocs and frees its intermediate
// tensors. glibc hands large blocks back to the kernel (munmap, heap trimming above a threshold that follows the
// largest freed mapping) and the next run faults the same memory in again, a zeroed 4 KiB page at a time: on SD 1.5
// at 256² that was ~120k page faults and ~0.8 s of system time per guidance step.
//
// Told to serve every block up to 32 MiB (the largest threshold mallopt accepts) from its heap and to keep up to
// 2 GiB of free heap top, glibc reuses that memory run after run: one pool shared by all sessions. Larger blocks
// (SD's self-attention probabilities at 512²) keep their own mappings: serving them from the heap too
// (M_MMAP_MAX 0) was faster still but fragmented the heap, 9 GB of anonymous memory against 3.6 GB for plain
// SD 1.5 at 512² (README, "Allocator").
#include "allocator.h"

#include <climits>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace divbind::addon {

Napi::Value RetainFreedMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
#if defined(__GLIBC__)
  // A fixed M_MMAP_THRESHOLD also stops glibc from moving it (and the trim threshold with it) at run time.
  const bool applied = mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1;
  out.Set("applied", Napi::Boolean::New(env, applied));
  out.Set("allocator", Napi::String::New(env, "glibc"));
#else
  out.Set("applied", Napi::Boolean::New(env, false));
  out.Set("allocator", Napi::String::New(env, "not glibc"));
#endif
  return out;
}

}  // namespace divbind::addon
