# node-gyp recipe for the CPU addon: the same sources as CMakeLists.txt's divbind_native target, without CUDA.
# Used by `npx prebuildify --napi --strip` (prebuilds/<platform>-<arch>/) and as the install script's fallback
# when cmake-js is unavailable. CUDA builds go through cmake-js (CMakeLists.txt, native/cuda/cuda.cmake).
{
  "targets": [
    {
      "target_name": "divbind_native",
      "sources": [
        "native/core/attention_loss.cc",
        "native/core/plan.cc",
        "native/core/gradient_write.cc",
        "native/core/parallel.cc",
        "native/addon/allocator.cc",
        "native/addon/convert.cc",
        "native/addon/loss_call.cc",
        "native/addon/addon.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native/core"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_CPP_EXCEPTIONS_ALL",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "NDEBUG",
        "DIVBIND_VERSION=\"<!(node -p \"require('./package.json').version\")\"",
        "DIVBIND_BUILD_SYSTEM=\"node-gyp\""
      ],
      "cflags!": ["-fno-exceptions", "-O2"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++14", "-O2"],
      "cflags_cc": ["-std=c++17", "-O3", "-fvisibility=hidden", "-ffp-contract=off", "-fno-trapping-math"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "GCC_ENABLE_CPP_RTTI": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "GCC_OPTIMIZATION_LEVEL": "3",
        "GCC_SYMBOLS_PRIVATE_EXTERN": "YES",
        "MACOSX_DEPLOYMENT_TARGET": "10.15",
        "OTHER_CPLUSPLUSFLAGS": ["-ffp-contract=off", "-fno-trapping-math"]
      },
      "msvs_settings": {
        "VCCLCompilerTool": { "ExceptionHandling": 1, "AdditionalOptions": ["/std:c++17"] }
      }
    }
  ]
}
