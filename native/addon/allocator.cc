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
#include <string>
#include <vector>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#if defined(__linux__)
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
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

#if defined(__linux__)
namespace {

// argv of this process as the kernel started it (NUL-separated in /proc/self/cmdline).
std::vector<std::string> OwnCommandLine() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  for (size_t start = 0; start < raw.size();) {
    const size_t end = raw.find('\0', start);
    args.push_back(raw.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return args;
}

std::vector<char*> CPointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace
#endif

Napi::Value ExecSelf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArray()) {
    Napi::TypeError::New(env, "execSelf: environment must be an array of \"NAME=value\" strings")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array list = info[0].As<Napi::Array>();
  std::vector<std::string> environment;
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value v = list.Get(i);
    if (!v.IsString()) {
      Napi::TypeError::New(env, "execSelf: environment[" + std::to_string(i) + "] is not a string")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    environment.push_back(v.As<Napi::String>().Utf8Value());
  }
#if defined(__linux__)
  std::vector<std::string> args = OwnCommandLine();
  if (args.empty()) return Napi::String::New(env, "cannot read /proc/self/cmdline");
  std::vector<char*> argv = CPointers(args);
  std::vector<char*> envp = CPointers(environment);
  // Node marks the inherited stdio close-on-exec (uv_disable_stdio_inheritance): the new image needs them open.
  int stdioFlags[3];
  for (int fd = 0; fd < 3; fd++) {
    stdioFlags[fd] = fcntl(fd, F_GETFD);
    if (stdioFlags[fd] >= 0) fcntl(fd, F_SETFD, stdioFlags[fd] & ~FD_CLOEXEC);
  }
  // Signals blocked now would stay blocked in the new image.
  sigset_t none;
  sigemptyset(&none);
  sigset_t previous;
  pthread_sigmask(SIG_SETMASK, &none, &previous);
  execve("/proc/self/exe", argv.data(), envp.data());
  const int err = errno;
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  for (int fd = 0; fd < 3; fd++) {
    if (stdioFlags[fd] >= 0) fcntl(fd, F_SETFD, stdioFlags[fd]);
  }
  return Napi::String::New(env, std::string("execve: ") + std::strerror(err));
#else
  return Napi::String::New(env, "not Linux");
#endif
}

}  // namespace divbind::addon
