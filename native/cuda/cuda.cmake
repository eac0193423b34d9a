# CUDA twin of the loss core. Included by the top-level CMakeLists.txt after the targets divbind_core (static
# library of native/core) and, when building the addon, divbind_native exist. Also used by bench/gpu/CMakeLists.txt
# (no Node needed).
#
#   -DDIVBIND_CUDA=AUTO  (default) build the kernels when nvcc is found
#   -DDIVBIND_CUDA=ON    require nvcc (configure fails without it)
#   -DDIVBIND_CUDA=OFF   CPU only
#
# The CUDA runtime is linked statically, so the addon still loads on machines without a driver; there
# divbind::cuda::device_count() reports 0 and why.
set(DIVBIND_CUDA "AUTO" CACHE STRING "Build the CUDA kernels: AUTO, ON or OFF")
set_property(CACHE DIVBIND_CUDA PROPERTY STRINGS AUTO ON OFF)
string(TOUPPER "${DIVBIND_CUDA}" _divbind_cuda_mode)
if(NOT _divbind_cuda_mode MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "DIVBIND_CUDA must be AUTO, ON or OFF (got '${DIVBIND_CUDA}')")
endif()

set(DIVBIND_HAVE_CUDA OFF)
if(NOT _divbind_cuda_mode STREQUAL "OFF")
  # nvcc is often not on PATH (e.g. /usr/local/cuda/bin): point CMake at it before probing.
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
    find_program(_divbind_nvcc nvcc HINTS /usr/local/cuda/bin /opt/cuda/bin)
    if(_divbind_nvcc)
      set(CMAKE_CUDA_COMPILER "${_divbind_nvcc}" CACHE FILEPATH "CUDA compiler")
    endif()
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(DIVBIND_HAVE_CUDA ON)
  elseif(_divbind_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "✗ DIVBIND_CUDA=ON but nvcc was not found (set CUDACXX or add the CUDA bin folder to PATH)")
  endif()
endif()

if(NOT DIVBIND_HAVE_CUDA)
  if(_divbind_cuda_mode STREQUAL "OFF")
    message(STATUS "✗ CUDA disabled (DIVBIND_CUDA=OFF), CPU only")
  else()
    message(STATUS "✗ nvcc not found, CPU only")
  endif()
  return()
endif()

# Hopper machine code plus PTX of the same level, which newer cards JIT at load time.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "" OR
   CMAKE_CUDA_ARCHITECTURES STREQUAL "52")
  set(CMAKE_CUDA_ARCHITECTURES "90-real;90-virtual")
endif()
set(CMAKE_CUDA_RUNTIME_LIBRARY Static)
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
message(STATUS "✓ CUDA ${CUDAToolkit_VERSION_MAJOR}.${CUDAToolkit_VERSION_MINOR} found, building kernels "
               "(${CMAKE_CUDA_COMPILER}, architectures ${CMAKE_CUDA_ARCHITECTURES})")

set(_divbind_cuda_dir "${CMAKE_CURRENT_LIST_DIR}")
add_library(divbind_cuda STATIC "${_divbind_cuda_dir}/attention_loss_cuda.cu")
set_target_properties(divbind_cuda PROPERTIES
  CUDA_STANDARD 17
  CUDA_STANDARD_REQUIRED ON
  POSITION_INDEPENDENT_CODE ON
  CUDA_SEPARABLE_COMPILATION OFF
  CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}"
  CUDA_RUNTIME_LIBRARY Static)
target_compile_options(divbind_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3 -lineinfo>)
target_include_directories(divbind_cuda PUBLIC "${_divbind_cuda_dir}")
target_link_libraries(divbind_cuda PUBLIC divbind_core CUDA::cudart_static)

if(TARGET divbind_native)
  target_link_libraries(divbind_native PRIVATE divbind_cuda)
  target_compile_definitions(divbind_native PRIVATE DIVBIND_WITH_CUDA)
endif()

# Parity test (CUDA vs the CPU core); prints "SKIPPED: no CUDA device (...)" and passes where there is none.
if(DIVBIND_BUILD_TESTS)
  add_executable(divbind_cuda_parity "${_divbind_cuda_dir}/test/parity.cc")
  target_link_libraries(divbind_cuda_parity PRIVATE divbind_cuda divbind_core CUDA::cudart_static)
  set_target_properties(divbind_cuda_parity PROPERTIES CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON)
  add_test(NAME divbind_cuda_parity COMMAND divbind_cuda_parity)
  set_tests_properties(divbind_cuda_parity PROPERTIES TIMEOUT 600)
endif()

# Native benchmark (bench/gpu): CUDA vs CPU core at SD 1.x sizes.
option(DIVBIND_BUILD_BENCH "Build the native CUDA benchmark (bench/gpu)" OFF)
if(DIVBIND_BUILD_BENCH)
  add_executable(divbind_cuda_bench "${_divbind_cuda_dir}/../../bench/gpu/bench_cuda.cc")
  target_link_libraries(divbind_cuda_bench PRIVATE divbind_cuda divbind_core CUDA::cudart_static)
  set_target_properties(divbind_cuda_bench PROPERTIES CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON)
endif()
