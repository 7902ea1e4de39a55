// FP8-weight GEMM on the CPU: out[M, N] = (x[M, K] . q[N, K]^T) * w_scale[n], x bfloat16, q float8 e4m3 with a
// scale per output channel. No CPU here computes in fp8: weights are widened to bf16 in registers (exactly:
// every e4m3 value is a bf16 value), one K block of a 64-channel panel at a time, and multiplied with vdpbf16ps
// (fp32 accumulation). Memory stays at one byte per weight.
//
// Packed layout (pack_f8): blocks of 16 output channels, K in pairs,
//   packed[((n / 16) * K2 + k / 2) * 32 + (n % 16) * 2 + k % 2] = q[n, k]   (zero beyond N and K)
#pragma once
#include <cstdint>

#include "../common/cpu_features.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace illada::cpu {

struct GemmF8Params {
  const uint16_t* x;        // [M, K2 * 2] bfloat16 bits, row stride ldx; columns beyond K are ignored (weights 0)
  int64_t ldx;
  const uint8_t* w_packed;  // from pack_f8
  const float* w_scale;     // [N]
  int64_t M, N, K, K2;      // K2 = ceil(K / 2)
  void* out;                // [M, N] float32 or bfloat16, row stride ldo
  bool out_is_bf16;
  int64_t ldo;
  int n_threads;
};

#if defined(__AVX512F__)  // in the files compiled with AVX-512 flags (the AVX-512 and AMX kernels)
// 32 e4m3 bytes -> 32 bf16 (as a __m512bh of 16 pairs), exact.
inline __m512i widen_e4m3(__m256i b) {
  const __m512i w = _mm512_cvtepu8_epi16(b);
  const __m512i h = _mm512_or_si512(_mm512_slli_epi16(_mm512_and_si512(w, _mm512_set1_epi16(0x80)), 8),
                                    _mm512_slli_epi16(_mm512_and_si512(w, _mm512_set1_epi16(0x7f)), 7));
  const __m512 scale = _mm512_set1_ps(256.0f);  // fp16 exponent bias 15 vs e4m3's 7
  const __m512 lo = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(h)), scale);
  const __m512 hi = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)), scale);
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

#endif

void pack_f8(const uint8_t* q, int64_t ldq, int64_t N, int64_t K, uint8_t* packed, int n_threads);
float e4m3_to_f32(uint8_t b);
void gemm_f8w_generic(const GemmF8Params& p);
void gemm_f8w_avx512(const GemmF8Params& p);
// AMX-BF16 (tdpbf16ps) on the same packed weights, widened into bf16 B tiles; `emulated` runs the tile emulation.
void gemm_f8w_amx(const GemmF8Params& p, bool emulated);
void gemm_f8w(const GemmF8Params& p, Isa isa);  // amx: the AMX kernel (emulated tiles when amx_emulation() is set)  // avx512 needs AVX512_BF16 (part of our avx512 level)

}  // namespace illada::cpu
