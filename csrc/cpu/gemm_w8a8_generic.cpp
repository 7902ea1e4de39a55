// Portable C++ W8A8 GEMM over the packed layout: the fallback on any CPU and the floor the ISA variants are
// measured from. Plain loops; int32 accumulation; same epilogue arithmetic as every variant.
#include "gemm_w8a8.h"

namespace illada::cpu {

void gemm_s8_generic(const GemmS8Params& p) {
  const int64_t NB = round_up(p.N, 16) / 16;
#pragma omp parallel for collapse(2) num_threads(p.n_threads) schedule(static)
  for (int64_t nb = 0; nb < NB; ++nb) {
    for (int64_t m = 0; m < p.M; ++m) {
      int32_t acc[16] = {0};
      const int8_t* a = p.a + m * p.lda;
      const int8_t* b = p.w_packed + nb * p.K4 * 64;
      for (int64_t k4 = 0; k4 < p.K4; ++k4, b += 64) {
        const int8_t* ak = a + k4 * 4;
        for (int j = 0; j < 16; ++j)
          for (int t = 0; t < 4; ++t) acc[j] += static_cast<int32_t>(ak[t]) * static_cast<int32_t>(b[j * 4 + t]);
      }
      for (int j = 0; j < 16; ++j) {
        const int64_t n = nb * 16 + j;
        if (n >= p.N) break;
        const int64_t o = m * p.ldo + n;
        switch (p.out_kind) {
          case OutKind::i32: static_cast<int32_t*>(p.out)[o] = acc[j]; break;
          case OutKind::f32:
            static_cast<float*>(p.out)[o] = static_cast<float>(acc[j]) * p.a_scale[m] * p.w_scale[n];
            break;
          case OutKind::bf16:
            static_cast<uint16_t*>(p.out)[o] = f32_to_bf16(static_cast<float>(acc[j]) * p.a_scale[m] * p.w_scale[n]);
            break;
        }
      }
    }
  }
}

}  // namespace illada::cpu
