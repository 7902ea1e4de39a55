// AVX-512 fused norm and activation (see norm_act.h): 16 lanes, masked tails, bf16 widened on load and rounded
// to nearest even where the reference rounds.
#include <immintrin.h>

#include <cmath>

#include "avx512_util.h"
#include "norm_act.h"

namespace illada::cpu {

namespace {

inline __mmask16 tail(int64_t n) { return n >= 16 ? 0xffff : static_cast<__mmask16>((1u << n) - 1u); }

inline __m512 ld(const void* b, int64_t i, __mmask16 m, bool bf16) {
  if (bf16)
    return _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(b) + i)), 16));
  return _mm512_maskz_loadu_ps(m, static_cast<const float*>(b) + i);
}

inline __m512 rnd(__m512 v, bool bf16) {  // round to the storage dtype and back
  if (!bf16) return v;
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(avx512::to_bf16(v)), 16));
}

inline void st(void* b, int64_t i, __m512 v, __mmask16 m, bool bf16) {
  if (bf16)
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(b) + i, m, avx512::to_bf16(v));
  else
    _mm512_mask_storeu_ps(static_cast<float*>(b) + i, m, v);
}

}  // namespace

void rms_norm_avx512(const RowsParams& p) {
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t r = 0; r < p.rows; ++r) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t d = 0; d < p.D; d += 16) {
      const __m512 v = ld(p.x, r * p.ldx + d, tail(p.D - d), p.bf16);
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    const float inv = 1.0f / std::sqrt(_mm512_reduce_add_ps(acc) / static_cast<float>(p.D) + p.eps);
    const __m512 vi = _mm512_set1_ps(inv);
    for (int64_t d = 0; d < p.D; d += 16) {
      const __mmask16 m = tail(p.D - d);
      const __m512 y = rnd(_mm512_mul_ps(ld(p.x, r * p.ldx + d, m, p.bf16), vi), p.bf16);
      st(p.out, r * p.ldo + d, _mm512_mul_ps(ld(p.y, d, m, p.bf16), y), m, p.bf16);
    }
  }
}

void rope_avx512(const RopeParams& p) {
  const int64_t half = p.D / 2;
#pragma omp parallel for collapse(3) num_threads(p.n_threads) schedule(static)
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.H; ++h)
      for (int64_t t = 0; t < p.T; ++t) {
        const int64_t xo = b * p.x_sb + h * p.x_sh + t * p.x_st, oo = b * p.o_sb + h * p.o_sh + t * p.o_st;
        const float* c = p.cos + b * p.cs_sb + t * p.D;
        const float* s = p.sin + b * p.cs_sb + t * p.D;
        for (int64_t d = 0; d < half; d += 16) {
          const __mmask16 m = tail(half - d);
          const __m512 x1 = ld(p.x, xo + d, m, p.bf16), x2 = ld(p.x, xo + half + d, m, p.bf16);
          // separate multiplies and an add (intrinsics are never contracted into FMAs)
          const __m512 lo = _mm512_sub_ps(_mm512_mul_ps(x1, _mm512_maskz_loadu_ps(m, c + d)),
                                          _mm512_mul_ps(x2, _mm512_maskz_loadu_ps(m, s + d)));
          const __m512 hi = _mm512_add_ps(_mm512_mul_ps(x2, _mm512_maskz_loadu_ps(m, c + half + d)),
                                          _mm512_mul_ps(x1, _mm512_maskz_loadu_ps(m, s + half + d)));
          st(p.out, oo + d, lo, m, p.bf16);
          st(p.out, oo + half + d, hi, m, p.bf16);
        }
      }
}

void swiglu_avx512(const RowsParams& p) {
  const __m512 one = _mm512_set1_ps(1.0f);
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t r = 0; r < p.rows; ++r) {
    for (int64_t d = 0; d < p.D; d += 16) {
      const __mmask16 m = tail(p.D - d);
      const __m512 g = ld(p.x, r * p.ldx + d, m, p.bf16);
      // silu(g) = g / (1 + e^-g) = g * t / (1 + t) for g < 0, with t = e^-|g| <= 1 (no overflow)
      const __m512 t = avx512::exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(g)));
      const __mmask16 neg = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
      const __m512 num = _mm512_mask_mul_ps(g, neg, g, t);
      const __m512 s = rnd(_mm512_div_ps(num, _mm512_add_ps(one, t)), p.bf16);
      st(p.out, r * p.ldo + d, _mm512_mul_ps(s, ld(p.y, r * p.ldy + d, m, p.bf16)), m, p.bf16);
    }
  }
}

}  // namespace illada::cpu
