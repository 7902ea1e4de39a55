// Packing, the portable FP8-weight GEMM and the dispatcher (see gemm_f8w.h).
#include <cmath>
#include <cstring>

#include "gemm_f8w.h"
#include "gemm_w8a8.h"  // round_up, bf16 helpers

namespace illada::cpu {

float e4m3_to_f32(uint8_t b) {
  const int sign = b >> 7, exp = (b >> 3) & 0xf, mant = b & 7;
  float v;
  if (exp == 0xf && mant == 7) return std::nanf("");
  if (exp == 0)
    v = std::ldexp(static_cast<float>(mant), -9);  // subnormal: mant * 2^-6 / 8
  else
    v = std::ldexp(1.0f + mant / 8.0f, exp - 7);
  return sign ? -v : v;
}

void pack_f8(const uint8_t* q, int64_t ldq, int64_t N, int64_t K, uint8_t* packed, int n_threads) {
  const int64_t K2 = round_up(K, 2) / 2, NB = round_up(N, 16) / 16;
#pragma omp parallel for num_threads(n_threads) schedule(static)
  for (int64_t nb = 0; nb < NB; ++nb) {
    uint8_t* dst = packed + nb * K2 * 32;
    std::memset(dst, 0, static_cast<size_t>(K2 * 32));
    for (int64_t j = 0; j < 16; ++j) {
      const int64_t n = nb * 16 + j;
      if (n >= N) break;
      for (int64_t k = 0; k < K; ++k) dst[(k / 2) * 32 + j * 2 + (k % 2)] = q[n * ldq + k];
    }
  }
}

void gemm_f8w_generic(const GemmF8Params& p) {
  float lut[256];
  for (int i = 0; i < 256; ++i) lut[i] = e4m3_to_f32(static_cast<uint8_t>(i));
  const int64_t NB = round_up(p.N, 16) / 16;
#pragma omp parallel for collapse(2) num_threads(p.n_threads) schedule(static)
  for (int64_t nb = 0; nb < NB; ++nb) {
    for (int64_t m = 0; m < p.M; ++m) {
      float acc[16] = {0};
      const uint16_t* x = p.x + m * p.ldx;
      const uint8_t* b = p.w_packed + nb * p.K2 * 32;
      for (int64_t k2 = 0; k2 < p.K2; ++k2, b += 32) {
        const float x0 = bf16_to_f32(x[2 * k2]), x1 = 2 * k2 + 1 < p.K ? bf16_to_f32(x[2 * k2 + 1]) : 0.f;
        for (int j = 0; j < 16; ++j) acc[j] += x0 * lut[b[2 * j]] + x1 * lut[b[2 * j + 1]];
      }
      for (int j = 0; j < 16; ++j) {
        const int64_t n = nb * 16 + j;
        if (n >= p.N) break;
        const float v = acc[j] * p.w_scale[n];
        if (p.out_is_bf16)
          static_cast<uint16_t*>(p.out)[m * p.ldo + n] = f32_to_bf16(v);
        else
          static_cast<float*>(p.out)[m * p.ldo + n] = v;
      }
    }
  }
}

void gemm_f8w(const GemmF8Params& p, Isa isa) {
  if (p.M == 0 || p.N == 0) return;
#if defined(ILLADA_HAVE_AVX512)
  if (isa == Isa::amx) return gemm_f8w_amx(p, amx_emulation());
  if (isa >= Isa::avx512) return gemm_f8w_avx512(p);
#endif
  (void)isa;
  gemm_f8w_generic(p);
}

}  // namespace illada::cpu
