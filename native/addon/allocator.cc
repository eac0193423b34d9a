// The pipeline's onnxruntime sessions run without a memory arena (lib/pipeline/ort.ts: kept arenas would add up
// across the CFG, guided forward and backward sessions), so every run mallocs and frees its intermediate
// tensors. glibc hands large blocks back to the kernel (munmap, heap trimming) and the next run faults the same
// memory in again, a zeroed 4 KiB page at a time: on SD 1.5 at 256² that was ~110k page faults and 0.3-1.9 s of
// system time per guidance step. Told to serve every block from its heap and never trim it, glibc keeps the
// freed memory for the next run: one pool shared by all sessions, as large as the largest run needed.
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
  // M_MMAP_MAX 0: no block gets its own mapping (a huge one still does when the heap cannot grow);
  // M_TRIM_THRESHOLD: mallopt takes an int, so up to 2 GiB of free heap top is kept.
  const bool applied = mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1;
  out.Set("applied", Napi::Boolean::New(env, applied));
  out.Set("allocator", Napi::String::New(env, "glibc"));
#else
  out.Set("applied", Napi::Boolean::New(env, false));
  out.Set("allocator", Napi::String::New(env, "not glibc"));
#endif
  return out;
}

}  // namespace divbind::addon
