// Portable fused norm and activation (see norm_act.h), and the dispatchers.
#include <cmath>

#include "gemm_w8a8.h"  // bf16 helpers
#include "norm_act.h"

namespace illada::cpu {

namespace {
inline float ld(const void* b, int64_t i, bool bf16) {
  return bf16 ? bf16_to_f32(static_cast<const uint16_t*>(b)[i]) : static_cast<const float*>(b)[i];
}
inline float rnd(float v, bool bf16) { return bf16 ? bf16_to_f32(f32_to_bf16(v)) : v; }
inline void st(void* b, int64_t i, float v, bool bf16) {
  if (bf16)
    static_cast<uint16_t*>(b)[i] = f32_to_bf16(v);
  else
    static_cast<float*>(b)[i] = v;
}

// RMSNorm of each row; with add, of sum = round(x + r), written to p.sum first.
void rms_norm_rows(const RowsParams& p, bool add) {
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t r = 0; r < p.rows; ++r) {
    const void* src = add ? p.sum : p.x;
    const int64_t lds = add ? p.lds : p.ldx;
    float ss = 0.f;
    for (int64_t d = 0; d < p.D; ++d) {
      float v = ld(p.x, r * p.ldx + d, p.bf16);
      if (add) {
        v = rnd(v + ld(p.r, r * p.ldr + d, p.bf16), p.bf16);
        st(p.sum, r * p.lds + d, v, p.bf16);
      }
      ss += v * v;
    }
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(p.D) + p.eps);
    for (int64_t d = 0; d < p.D; ++d)
      st(p.out, r * p.ldo + d, ld(p.y, d, p.bf16) * rnd(ld(src, r * lds + d, p.bf16) * inv, p.bf16), p.bf16);
  }
}
}  // namespace

void rms_norm_generic(const RowsParams& p) { rms_norm_rows(p, false); }
void add_rms_norm_generic(const RowsParams& p) { rms_norm_rows(p, true); }

void swiglu_generic(const RowsParams& p) {
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t r = 0; r < p.rows; ++r)
    for (int64_t d = 0; d < p.D; ++d) {
      const float g = ld(p.x, r * p.ldx + d, p.bf16);
      const float s = rnd(g / (1.0f + std::exp(-g)), p.bf16);
      st(p.out, r * p.ldo + d, s * ld(p.y, r * p.ldy + d, p.bf16), p.bf16);
    }
}

void rope_generic(const RopeParams& p) {
  const int64_t half = p.D / 2;
#pragma omp parallel for collapse(3) num_threads(p.n_threads) schedule(static)
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.H; ++h)
      for (int64_t t = 0; t < p.T; ++t) {
        const int64_t xo = b * p.x_sb + h * p.x_sh + t * p.x_st, oo = b * p.o_sb + h * p.o_sh + t * p.o_st;
        const float* c = p.cos + b * p.cs_sb + t * p.D;
        const float* s = p.sin + b * p.cs_sb + t * p.D;
        for (int64_t d = 0; d < half; ++d) {  // both halves of a pair read before either is written (in place)
          const float x1 = ld(p.x, xo + d, p.bf16), x2 = ld(p.x, xo + d + half, p.bf16);
          volatile float a = x1 * c[d];  // volatile: two roundings and a sum, never a fused multiply-add
          volatile float r = -x2 * s[d];
          volatile float a2 = x2 * c[d + half];
          volatile float r2 = x1 * s[d + half];
          st(p.out, oo + d, a + r, p.bf16);
          st(p.out, oo + d + half, a2 + r2, p.bf16);
        }
      }
}

void rope(const RopeParams& p, Isa isa) {
  if (p.B == 0 || p.H == 0 || p.T == 0 || p.D == 0) return;
#if defined(ILLADA_HAVE_AVX512)
  if (isa >= Isa::avx512) return rope_avx512(p);
#endif
#if defined(ILLADA_HAVE_AVX2)
  if (isa >= Isa::avx2) return rope_avx2(p);
#endif
  (void)isa;
  rope_generic(p);
}

void rms_norm(const RowsParams& p, Isa isa) {
  if (p.rows == 0 || p.D == 0) return;
#if defined(ILLADA_HAVE_AVX512)
  if (isa >= Isa::avx512) return rms_norm_avx512(p);
#endif
#if defined(ILLADA_HAVE_AVX2)
  if (isa >= Isa::avx2) return rms_norm_avx2(p);
#endif
  (void)isa;
  rms_norm_generic(p);
}

void add_rms_norm(const RowsParams& p, Isa isa) {
  if (p.rows == 0 || p.D == 0) return;
#if defined(ILLADA_HAVE_AVX512)
  if (isa >= Isa::avx512) return add_rms_norm_avx512(p);
#endif
#if defined(ILLADA_HAVE_AVX2)
  if (isa >= Isa::avx2) return add_rms_norm_avx2(p);
#endif
  (void)isa;
  add_rms_norm_generic(p);
}

void swiglu(const RowsParams& p, Isa isa) {
  if (p.rows == 0 || p.D == 0) return;
#if defined(ILLADA_HAVE_AVX512)
  if (isa >= Isa::avx512) return swiglu_avx512(p);
#endif
#if defined(ILLADA_HAVE_AVX2)
  if (isa >= Isa::avx2) return swiglu_avx2(p);
#endif
  (void)isa;
  swiglu_generic(p);
}

}  // namespace illada::cpu
