// Peak loops for AVX-512 (compiled with the AVX-512 flags; called only when the CPU has them).
#include <immintrin.h>

#include "peak.h"

namespace illada::cpu {

double peak_ops_avx512(const std::string& kind, long iters) {
  constexpr int kChains = 16;  // independent accumulators: enough to cover any latency x ports product
  volatile float sink = 0;
  if (kind == "int8_dot") {
    // Written in assembly: from the intrinsic loop GCC emitted a register copy beside every vpdpbusd, which halved
    // its rate on Zen 5 (measured 1 per cycle, while the GEMM kernel's own loop issues 2). 12 accumulators in
    // zmm20-31 cover the instruction's latency at 2 per cycle.
    const __m512i a = _mm512_set1_epi32(0x01010101), b = _mm512_set1_epi32(0x02020202);
    for (long i = 0; i < iters; ++i)
      __asm__ volatile(
          "vpdpbusd %1, %0, %%zmm20\n\tvpdpbusd %1, %0, %%zmm21\n\tvpdpbusd %1, %0, %%zmm22\n\t"
          "vpdpbusd %1, %0, %%zmm23\n\tvpdpbusd %1, %0, %%zmm24\n\tvpdpbusd %1, %0, %%zmm25\n\t"
          "vpdpbusd %1, %0, %%zmm26\n\tvpdpbusd %1, %0, %%zmm27\n\tvpdpbusd %1, %0, %%zmm28\n\t"
          "vpdpbusd %1, %0, %%zmm29\n\tvpdpbusd %1, %0, %%zmm30\n\tvpdpbusd %1, %0, %%zmm31"
          :
          : "v"(a), "v"(b)
          : "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30",
            "xmm31");
    return double(iters) * 12 * 64 * 2;
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
