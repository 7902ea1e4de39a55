// Peak loops for AVX-512 (compiled with the AVX-512 flags; called only when the CPU has them).
#include <immintrin.h>

#include "peak.h"

namespace illada::cpu {

double peak_ops_avx512(const std::string& kind, long iters) {
  constexpr int kChains = 16;  // independent accumulators: enough to cover any latency x ports product
  volatile float sink = 0;
  if (kind == "int8_dot") {
    const __m512i a = _mm512_set1_epi32(0x01010101), b = _mm512_set1_epi32(0x02020202);
    return run_peak_loop<kChains>(
        iters, _mm512_setzero_si512(), [&](__m512i v) { return _mm512_dpbusd_epi32(v, a, b); },
        [&](__m512i v) { sink = sink + float(_mm512_reduce_add_epi32(v)); }, 64 * 2);
  }
  if (kind == "bf16_dot") {
    const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80);
    return run_peak_loop<kChains>(
        iters, _mm512_setzero_ps(), [&](__m512 v) { return _mm512_dpbf16_ps(v, a, a); },
        [&](__m512 v) { sink = sink + _mm512_reduce_add_ps(v); }, 32 * 2);
  }
  if (kind == "fp32_fma") {
    const __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(1e-9f);
    return run_peak_loop<kChains>(
        iters, _mm512_setzero_ps(), [&](__m512 v) { return _mm512_fmadd_ps(a, b, v); },
        [&](__m512 v) { sink = sink + _mm512_reduce_add_ps(v); }, 16 * 2);
  }
  return 0.0;
}

}  // namespace illada::cpu
