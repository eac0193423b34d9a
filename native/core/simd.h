// Wider vectors for the core's two hot loops without giving up the portable baseline build.
//
// DIVBIND_CPU_CLONES compiles a function once per instruction set (AVX-512, AVX2, the x86-64 baseline) and
// picks one when the library loads (GCC/Clang target_clones, Linux x86-64 only; elsewhere the baseline). The
// core is built with -ffp-contract=off, so every clone rounds alike and results do not depend on the CPU.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__linux__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define DIVBIND_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define DIVBIND_HAS_CPU_CLONES 1
#endif
#endif
#ifndef DIVBIND_CPU_CLONES
#define DIVBIND_CPU_CLONES
#endif

namespace divbind {

// exp(x) for x <= 0 in double, within 1e-15 relative of std::exp on [-700, 0] (tested), written without calls
// or branches so that a loop over it can vectorize (std::exp cannot). GCC turns the clamp into a select of
// exp(-700) for the lanes below -700, which it vectorizes in every clone only when FP ops may run on lanes whose
// result is dropped: the core is built with -fno-trapping-math (per 19,200 exps, SSE2 / AVX2 / AVX-512: 6.3 / 6.7 /
// 0.94 ns each with trapping math, 3.7 / 1.7 / 0.85 ns without). exp(x) = 2^k * exp(r), k = round(x / ln 2),
// |r| <= ln(2) / 2, exp(r) by its Taylor series to r^12 (remainder < 2e-16). Below -700 it returns exp(-700)
// (1e-304), which a softmax whose largest term is exp(0) = 1 cannot tell from exp(x). NaN stays NaN.
inline double exp_nonpositive(double x) {
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2Hi = 6.93147180369123816490e-01;  // ln 2 split in two: k * kLn2Hi is exact
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  constexpr double kShifter = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  const double clamped = std::max(x, -700.0);      // max(NaN, -700) is NaN
  const double shifted = clamped * kLog2e + kShifter;
  const double k = shifted - kShifter;
  const double r = (clamped - k * kLn2Hi) - k * kLn2Lo;
  double p = 1.0 / 479001600.0;  // 1/12!
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  // 2^k from k's bits: the shifter's low mantissa bits hold k (two's complement), moved into the exponent field
  uint64_t shifted_bits, shifter_bits;
  std::memcpy(&shifted_bits, &shifted, sizeof shifted);
  std::memcpy(&shifter_bits, &kShifter, sizeof kShifter);
  const uint64_t scale_bits = (shifted_bits - shifter_bits + 1023) << 52;
  double scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return p * scale;
}

}  // namespace divbind
