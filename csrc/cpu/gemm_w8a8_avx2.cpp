// AVX2 W8A8 GEMM (no VNNI): bytes are sign-extended to int16 and multiplied with vpmaddwd, which sums
// adjacent pairs into int32 exactly (|q| <= 127, |w| <= 128). Register tile: MR rows x 16 output channels,
// four accumulators per row holding (k0+k1, k2+k3) pairs of 4 channels each, summed in the epilogue.
// Compiled with -mavx2 -mfma -mf16c; called only when the CPU has them.
#include <immintrin.h>

#include <cstring>

#include "gemm_w8a8.h"

namespace illada::cpu {

namespace {

constexpr int kMR = 3;
constexpr int64_t kRowsPerTask = 96;

template <int MR>
void tile(const GemmS8Params& p, int64_t m0, int64_t nb) {
  __m256i acc[MR][4];
  #pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 16
    for (int c = 0; c < 4; ++c) acc[i][c] = _mm256_setzero_si256();
  const int8_t* b = p.w_packed + nb * p.K4 * 64;
  const int8_t* a = p.a + m0 * p.lda;
  for (int64_t k4 = 0; k4 < p.K4; ++k4, b += 64) {
    __m256i av[MR];
    #pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      int32_t a4;
      std::memcpy(&a4, a + i * p.lda + k4 * 4, 4);
      av[i] = _mm256_cvtepi8_epi16(_mm_set1_epi32(a4));
    }
    #pragma GCC unroll 16
    for (int c = 0; c < 4; ++c) {
      const __m256i bv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + c * 16)));
      #pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) acc[i][c] = _mm256_add_epi32(acc[i][c], _mm256_madd_epi16(av[i], bv));
    }
  }
  const int64_t n0 = nb * 16;
  const int64_t valid = p.N - n0 < 16 ? p.N - n0 : 16;
  #pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    // (col0|col1|col4|col5 , col2|col3|col6|col7) -> col0..col7, per pair of accumulators
    const __m256i lo = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[i][0], acc[i][1]), 0xd8);
    const __m256i hi = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[i][2], acc[i][3]), 0xd8);
    const int64_t m = m0 + i, o = m * p.ldo + n0;
    if (p.out_kind == OutKind::i32 && valid == 16) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<int32_t*>(p.out) + o), lo);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<int32_t*>(p.out) + o + 8), hi);
      continue;
    }
    if (p.out_kind == OutKind::f32 && valid == 16) {
      const __m256 s = _mm256_set1_ps(p.a_scale[m]);
      _mm256_storeu_ps(static_cast<float*>(p.out) + o,
                       _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(lo), s), _mm256_loadu_ps(p.w_scale + n0)));
      _mm256_storeu_ps(static_cast<float*>(p.out) + o + 8,
                       _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(hi), s), _mm256_loadu_ps(p.w_scale + n0 + 8)));
      continue;
    }
    alignas(32) int32_t t[16];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t), lo);
    _mm256_store_si256(reinterpret_cast<__m256i*>(t + 8), hi);
    for (int64_t j = 0; j < valid; ++j) {
      if (p.out_kind == OutKind::i32) {
        static_cast<int32_t*>(p.out)[o + j] = t[j];
      } else {
        const float f = static_cast<float>(t[j]) * p.a_scale[m] * p.w_scale[n0 + j];
        if (p.out_kind == OutKind::f32)
          static_cast<float*>(p.out)[o + j] = f;
        else
          static_cast<uint16_t*>(p.out)[o + j] = f32_to_bf16(f);
      }
    }
  }
}

}  // namespace

void gemm_s8_avx2(const GemmS8Params& p) {
  const int64_t NB = round_up(p.N, 16) / 16;
  const int64_t row_tasks = (p.M + kRowsPerTask - 1) / kRowsPerTask;
#pragma omp parallel for collapse(2) num_threads(p.n_threads) schedule(static)
  for (int64_t mt = 0; mt < row_tasks; ++mt) {
    for (int64_t nb = 0; nb < NB; ++nb) {
      const int64_t m_end = (mt + 1) * kRowsPerTask < p.M ? (mt + 1) * kRowsPerTask : p.M;
      for (int64_t m0 = mt * kRowsPerTask; m0 < m_end; m0 += kMR) {
        const int64_t mr = m_end - m0;
        if (mr >= 3)
          tile<3>(p, m0, nb);
        else if (mr == 2)
          tile<2>(p, m0, nb);
        else
          tile<1>(p, m0, nb);
      }
    }
  }
}

}  // namespace illada::cpu
