// Peak loops for AVX2/FMA (compiled with the AVX2 flags; called only when the CPU has them).
#include <immintrin.h>

#include "peak.h"

namespace illada::cpu {

double peak_ops_avx2(const std::string& kind, long iters) {
  constexpr int kChains = 12;
  volatile int sink = 0;
  // bf16_dot: without AVX-512 BF16 the bf16 GEMM widens its operands and runs fp32 FMAs (gemm_bf16_avx2.cpp)
  if (kind == "fp32_fma" || kind == "bf16_dot") {
    const __m256 a = _mm256_set1_ps(1.0f), b = _mm256_set1_ps(1e-9f);
    return run_peak_loop<kChains>(
        iters, _mm256_setzero_ps(), [&](__m256 v) { return _mm256_fmadd_ps(a, b, v); },
        [&](__m256 v) { sink = sink + _mm256_movemask_ps(v); }, 8 * 2);
  }
  if (kind == "int8_dot") {  // what the AVX2 GEMM runs: sign-extended int16 pairs through vpmaddwd + vpaddd
    const __m256i a = _mm256_set1_epi16(3), b = _mm256_set1_epi16(5);
    return run_peak_loop<kChains>(
        iters, _mm256_setzero_si256(), [&](__m256i v) { return _mm256_add_epi32(v, _mm256_madd_epi16(a, b)); },
        [&](__m256i v) { sink = sink + _mm256_movemask_epi8(v); }, 16 * 2);
  }
  return 0.0;
}

}  // namespace illada::cpu
