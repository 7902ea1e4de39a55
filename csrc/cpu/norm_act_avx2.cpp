// AVX2/FMA fused norm and activation (see norm_act.h) for CPUs without AVX-512, where these ops otherwise ran
// PyTorch's bf16 elementwise code (on 2 cores of an AMD EPYC Zen 3: 9% of a dual-cache decode of the 176M bench
// model, bench/profile_decode.py). 8 lanes; a row's tail goes through a small buffer. AVX2 has no bf16 conversion
// instruction, so every rounding is the integer round-to-nearest-even that torch uses (denormals kept, NaN quieted):
// one pass, no redo, and outputs may overlap their inputs element for element (each vector is read before the
// same elements are written). The roundings sit where the AVX-512 kernels put them; the exp of SwiGLU is the same
// degree-6 polynomial. Compiled with -mavx2 -mfma; called only when the CPU has them.
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <type_traits>

#include "norm_act.h"

namespace illada::cpu {

namespace {

// fp32 to bf16 bits (round to nearest even; a NaN keeps its sign and top payload bits, made quiet), in the low 16
// bits of each 32-bit lane.
inline __m256i to_bf16_lanes(__m256 f) {
  const __m256i u = _mm256_castps_si256(f);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  return _mm256_blendv_epi8(r, q, _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q)));
}

inline __m256 widen(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }

// Loads and stores of n <= 8 elements (n < 8: through a buffer, never touching memory past the row).
template <bool BF16>
struct Io {
  using T = std::conditional_t<BF16, uint16_t, float>;
  static __m256 load(const T* p, int n) {
    if (n == 8) {
      if constexpr (BF16)
        return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      else
        return _mm256_loadu_ps(p);
    }
    alignas(32) T buf[8] = {};
    std::memcpy(buf, p, static_cast<size_t>(n) * sizeof(T));
    return load(buf, 8);
  }
  // Stores v rounded to the dtype; returns the rounded value.
  static __m256 store(T* p, __m256 v, int n) {
    alignas(32) T buf[8];
    T* dst = n == 8 ? p : buf;
    __m256 rounded = v;
    if constexpr (BF16) {
      const __m256i l = to_bf16_lanes(v);
      const __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(l), _mm256_extracti128_si256(l, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), h);
      rounded = widen(h);
    } else {
      _mm256_storeu_ps(dst, v);
    }
    if (n < 8) std::memcpy(p, buf, static_cast<size_t>(n) * sizeof(T));
    return rounded;
  }
  static __m256 round(__m256 v) {
    if constexpr (BF16) {
      const __m256i l = to_bf16_lanes(v);
      return _mm256_castsi256_ps(_mm256_slli_epi32(l, 16));
    } else {
      return v;
    }
  }
};

inline int lanes(int64_t left) { return left >= 8 ? 8 : static_cast<int>(left); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// RMSNorm of each row; with ADD, of sum = round(x + r), written to p.sum first.
template <bool BF16, bool ADD>
void rms_norm_impl(const RowsParams& p) {
  using T = std::conditional_t<BF16, uint16_t, float>;
  using IO = Io<BF16>;
  const T* x = static_cast<const T*>(p.x);
  const T* res = static_cast<const T*>(p.r);
  const T* w = static_cast<const T*>(p.y);
  T* out = static_cast<T*>(p.out);
  T* sum = static_cast<T*>(p.sum);
  const int64_t D = p.D;
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t r = 0; r < p.rows; ++r) {
    const T* xr = x + r * p.ldx;
    T* srow = ADD ? sum + r * p.lds : nullptr;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
      const int n = lanes(D - d);
      __m256 v = IO::load(xr + d, n);
      if constexpr (ADD) v = IO::store(srow + d, _mm256_add_ps(v, IO::load(res + r * p.ldr + d, n)), n);
      acc = _mm256_fmadd_ps(v, v, acc);
    }
    const float inv = 1.0f / std::sqrt(hsum(acc) / static_cast<float>(D) + p.eps);
    const __m256 vi = _mm256_set1_ps(inv);
    const T* src = ADD ? srow : xr;
    T* orow = out + r * p.ldo;
    for (int64_t d = 0; d < D; d += 8) {
      const int n = lanes(D - d);
      const __m256 y = IO::round(_mm256_mul_ps(IO::load(src + d, n), vi));
      IO::store(orow + d, _mm256_mul_ps(IO::load(w + d, n), y), n);
    }
  }
}

template <bool BF16>
void rope_impl(const RopeParams& p) {
  using T = std::conditional_t<BF16, uint16_t, float>;
  using IO = Io<BF16>;
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  const int64_t half = p.D / 2, D = p.D;
  // heads innermost, as in rope_avx512: a position's cos/sin rows are read once for all its heads
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t bth = 0; bth < p.B * p.T * p.H; ++bth) {
    const int64_t b = bth / (p.T * p.H), t = bth / p.H % p.T, h = bth % p.H;
    const T* xr = x + b * p.x_sb + h * p.x_sh + t * p.x_st;
    T* orow = out + b * p.o_sb + h * p.o_sh + t * p.o_st;
    const float* c = p.cos + b * p.cs_sb + t * D;
    const float* s = p.sin + b * p.cs_sb + t * D;
    for (int64_t d = 0; d < half; d += 8) {
      const int n = lanes(half - d);
      const __m256 x1 = IO::load(xr + d, n), x2 = IO::load(xr + half + d, n);
      // separate multiplies and an add (intrinsics are never contracted into FMAs)
      const __m256 lo = _mm256_sub_ps(_mm256_mul_ps(x1, Io<false>::load(c + d, n)),
                                      _mm256_mul_ps(x2, Io<false>::load(s + d, n)));
      const __m256 hi = _mm256_add_ps(_mm256_mul_ps(x2, Io<false>::load(c + half + d, n)),
                                      _mm256_mul_ps(x1, Io<false>::load(s + half + d, n)));
      IO::store(orow + d, lo, n);
      IO::store(orow + half + d, hi, n);
    }
  }
}

// 2^n for integer-valued n in [-150, 0] (exp's reduction below), as two normal factors: 2^(n - n/2) * 2^(n/2).
inline __m256 times_pow2(__m256 y, __m256 n) {
  const __m256 a = _mm256_round_ps(_mm256_mul_ps(n, _mm256_set1_ps(0.5f)), _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  auto pow2 = [](__m256 e) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(e), _mm256_set1_epi32(127)), 23));
  };
  return _mm256_mul_ps(_mm256_mul_ps(y, pow2(_mm256_sub_ps(n, a))), pow2(a));
}

// exp(x) for x <= 0: the polynomial of avx512_util.h's exp_nonpositive (2^n applied as two factors).
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-104.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.0f / 720);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 120));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 24));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 6));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.5f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f));
  return times_pow2(y, n);
}

template <bool BF16>
void swiglu_impl(const RowsParams& p) {
  using T = std::conditional_t<BF16, uint16_t, float>;
  using IO = Io<BF16>;
  const T* gate = static_cast<const T*>(p.x);
  const T* up = static_cast<const T*>(p.y);
  T* out = static_cast<T*>(p.out);
  const int64_t D = p.D;
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t r = 0; r < p.rows; ++r) {
    const T* gr = gate + r * p.ldx;
    const T* ur = up + r * p.ldy;
    T* orow = out + r * p.ldo;
    for (int64_t d = 0; d < D; d += 8) {
      const int n = lanes(D - d);
      const __m256 g = IO::load(gr + d, n);
      // silu(g) = g / (1 + e^-g) = g * t / (1 + t) for g < 0, with t = e^-|g| <= 1 (no overflow)
      const __m256 t = exp_nonpositive(_mm256_sub_ps(zero, _mm256_and_ps(g, abs_mask)));
      const __m256 neg = _mm256_cmp_ps(g, zero, _CMP_LT_OQ);
      // below -88.7228 PyTorch's exp(-g) overflows to inf and its silu is -0
      const __m256 overflow = _mm256_cmp_ps(g, _mm256_set1_ps(-88.72283935546875f), _CMP_LT_OQ);
      const __m256 num = _mm256_blendv_ps(_mm256_blendv_ps(g, _mm256_mul_ps(g, t), neg), _mm256_set1_ps(-0.0f), overflow);
      const __m256 s = IO::round(_mm256_div_ps(num, _mm256_add_ps(one, t)));
      IO::store(orow + d, _mm256_mul_ps(s, IO::load(ur + d, n)), n);
    }
  }
}

}  // namespace

void rms_norm_avx2(const RowsParams& p) { p.bf16 ? rms_norm_impl<true, false>(p) : rms_norm_impl<false, false>(p); }
void add_rms_norm_avx2(const RowsParams& p) { p.bf16 ? rms_norm_impl<true, true>(p) : rms_norm_impl<false, true>(p); }
void rope_avx2(const RopeParams& p) { p.bf16 ? rope_impl<true>(p) : rope_impl<false>(p); }
void swiglu_avx2(const RowsParams& p) { p.bf16 ? swiglu_impl<true>(p) : swiglu_impl<false>(p); }

}  // namespace illada::cpu
