// AVX2/FMA greedy sampling (see sample_tokens.h), for x86-64 CPUs without AVX-512 (most client CPUs): the same
// algorithm as the AVX-512 variant on 8 lanes. float32 confidences: one streaming pass by L1-sized chunks (chunk
// max, then its exp terms against the running max with a table-driven 2^x: 8-entry table of 2^(j/8) by vpermps,
// degree-4 polynomial, ~2e-7 relative; 2^n built in the exponent bits), then the first index of the max inside the
// chunk that first reached it. float64 confidences: the max, then the sum in double precision throughout. The
// last (vocab % 8) logits of a row go through scalar code.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "sample_tokens.h"
#include "sample_tokens_rows.h"

namespace illada::cpu {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <bool BF16>
inline __m256 load8(const char* base, int64_t v) {
  if (BF16) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + 2 * v));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  return _mm256_loadu_ps(reinterpret_cast<const float*>(base) + v);
}

template <bool BF16>
inline float load1(const char* base, int64_t v) {
  if (BF16) {
    uint16_t h;
    std::memcpy(&h, base + 2 * v, 2);
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  return reinterpret_cast<const float*>(base)[v];
}

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

inline double hsum_pd(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
  return _mm_cvtsd_f64(s);
}

inline double hsum_ps_as_pd(__m256 v) {  // the 8 lanes added in double
  return hsum_pd(_mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
}

// exp(d) for d <= 0 in fp32: t = d * log2(e) = n + j/8 + f, |f| <= 1/16 (rounded by adding 1.5 * 2^20, whose
// ulp is 1/8); 2^(j/8) from a register table, 2^f by a degree-4 polynomial, 2^n put in the exponent bits. Below
// 2^-125 the result is 0. exp(0) is exactly 1.
inline __m256 exp_table8(__m256 d) {
  const __m256 magic = _mm256_set1_ps(1572864.0f);  // 1.5 * 2^20
  const __m256 table = _mm256_setr_ps(1.0f, 1.09050773f, 1.18920712f, 1.29683955f, 1.41421356f, 1.54221083f,
                                      1.68179283f, 1.83400809f);
  const __m256 t = _mm256_max_ps(_mm256_mul_ps(d, _mm256_set1_ps(1.44269504088896341f)), _mm256_set1_ps(-125.0f));
  const __m256 y = _mm256_add_ps(t, magic);
  const __m256 f = _mm256_sub_ps(t, _mm256_sub_ps(y, magic));
  const __m256i k = _mm256_sub_epi32(_mm256_castps_si256(y), _mm256_castps_si256(magic));  // round(8 t)
  const __m256 tj = _mm256_permutevar8x32_ps(table, k);                                      // low 3 bits: j
  const __m256 pow2n = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_srai_epi32(k, 3), _mm256_set1_epi32(127)), 23));
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(0.00961812910762848f), f, _mm256_set1_ps(0.0555041086648216f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.240226506959101f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.693147180559945f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256 r = _mm256_mul_ps(_mm256_mul_ps(tj, p), pow2n);
  return _mm256_and_ps(r, _mm256_cmp_ps(d, _mm256_set1_ps(-86.0f), _CMP_GE_OQ));  // -inf and deep underflow: 0
}

// exp(x) for x <= 0 in double: n = round(x / ln2), r = x - n ln2 (two-part ln2), degree-12 Taylor on |r| <= ln2/2,
// 2^n put in the exponent bits (n as the low word of n + 1.5 * 2^52). 0 below exp(-708).
inline __m256d exp_nonpositive_pd4(__m256d x) {
  const __m256d ok = _mm256_cmp_pd(x, _mm256_set1_pd(-708.0), _CMP_GE_OQ);
  x = _mm256_max_pd(x, _mm256_set1_pd(-708.0));
  const __m256d n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(0.6931471803691238), x);
  r = _mm256_fnmadd_pd(n, _mm256_set1_pd(1.9082149292705877e-10), r);
  static constexpr double inv_fact[13] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040,
                                          1.0 / 40320, 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800,
                                          1.0 / 479001600};
  __m256d y = _mm256_set1_pd(inv_fact[12]);
  for (int i = 11; i >= 0; --i) y = _mm256_fmadd_pd(y, r, _mm256_set1_pd(inv_fact[i]));
  const __m256d magic = _mm256_set1_pd(6755399441055744.0);  // 1.5 * 2^52
  const __m256i bits = _mm256_castpd_si256(_mm256_add_pd(n, magic));
  const __m256d pow2n =
      _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(bits, _mm256_set1_epi64x(1023)), 52));
  return _mm256_and_pd(_mm256_mul_pd(y, pow2n), ok);
}

// max of logits [c0, c1), vectors up to `full` (vocab rounded down to 8), scalars after.
template <bool BF16>
float range_max(const char* base, int64_t c0, int64_t c1, int64_t full, bool& nan) {
  __m256 vmax[4], unordered = _mm256_setzero_ps();
  for (int u = 0; u < 4; ++u) vmax[u] = _mm256_set1_ps(kNegInf);
  const int64_t c1_full = std::min(c1, full);
  int64_t v = c0;
  for (; v + 32 <= c1_full; v += 32)
    for (int u = 0; u < 4; ++u) {
      const __m256 x = load8<BF16>(base, v + 8 * u);
      unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));  // max_ps drops NaNs
      vmax[u] = _mm256_max_ps(vmax[u], x);
    }
  for (; v < c1_full; v += 8) {
    const __m256 x = load8<BF16>(base, v);
    unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    vmax[0] = _mm256_max_ps(vmax[0], x);
  }
  float m = hmax(_mm256_max_ps(_mm256_max_ps(vmax[0], vmax[1]), _mm256_max_ps(vmax[2], vmax[3])));
  for (; v < c1; ++v) {
    const float x = load1<BF16>(base, v);
    nan |= x != x;
    m = std::max(m, x);  // NaN never becomes the max
  }
  nan |= _mm256_movemask_ps(unordered) != 0;
  return m;
}

template <bool BF16>
int64_t first_index(const char* base, int64_t from, int64_t vocab, float m) {
  if (!(m > kNegInf)) return 0;  // every logit -inf or NaN: token 0, as the generic path
  const __m256 vm = _mm256_set1_ps(m);
  int64_t v = from;
  for (; v + 8 <= vocab; v += 8) {
    const int eq = _mm256_movemask_ps(_mm256_cmp_ps(load8<BF16>(base, v), vm, _CMP_EQ_OQ));
    if (eq) return v + __builtin_ctz(static_cast<unsigned>(eq));
  }
  for (; v < vocab; ++v)
    if (load1<BF16>(base, v) == m) return v;
  return 0;
}

template <bool BF16>
float runner_up(const char* base, int64_t vocab, float m) {
  float m1 = kNegInf, m2 = kNegInf;  // scalar merge of per-lane (max, second), then the tail
  __m256 vmax = _mm256_set1_ps(kNegInf), vmax2 = vmax;
  int64_t v = 0;
  for (; v + 8 <= vocab; v += 8) {
    const __m256 x = load8<BF16>(base, v);
    vmax2 = _mm256_max_ps(vmax2, _mm256_min_ps(x, vmax));
    vmax = _mm256_max_ps(vmax, x);
  }
  alignas(32) float mx[8], mx2[8];
  _mm256_store_ps(mx, vmax);
  _mm256_store_ps(mx2, vmax2);
  auto add = [&](float x) {
    if (x > m1) m2 = m1, m1 = x;
    else if (x > m2) m2 = x;
  };
  for (int j = 0; j < 8; ++j) add(mx[j]), add(mx2[j]);
  for (; v < vocab; ++v) add(load1<BF16>(base, v));
  (void)m;
  return m2;
}

template <bool BF16, bool ENTROPY>
void row_f32(const SampleGreedyParams& p, int64_t r) {
  constexpr int64_t kChunk = 2048;
  const size_t esize = BF16 ? 2 : 4;
  const char* base = static_cast<const char*>(p.logits) + r * p.ld * esize;
  const int64_t full = p.vocab / 8 * 8;
  float m = kNegInf;
  bool nan = false;
  int64_t first_chunk = 0;
  double s = 0.0, t = 0.0;
  for (int64_t c0 = 0; c0 < p.vocab; c0 += kChunk) {
    const int64_t c1 = std::min(c0 + kChunk, p.vocab), c1_full = std::min(c1, full);
    const int64_t pf1 = std::min(c1 + kChunk, p.vocab);  // prefetch the next chunk
    for (int64_t off = c1 * esize; off < pf1 * static_cast<int64_t>(esize); off += 64)
      _mm_prefetch(base + off, _MM_HINT_T0);
    const float cm = range_max<BF16>(base, c0, c1, full, nan);
    if (cm > m) {
      if (m > kNegInf) rebase_sums(s, t, m, cm);
      m = cm;
      first_chunk = c0;
    }
    if (m == kNegInf) continue;
    const __m256 vm = _mm256_set1_ps(m), lo = _mm256_set1_ps(-104.0f);
    __m256 vs[4], vt[4];
    for (int u = 0; u < 4; ++u) vs[u] = vt[u] = _mm256_setzero_ps();
    int64_t v = c0;
    for (; v + 32 <= c1_full; v += 32)
      for (int u = 0; u < 4; ++u) {
        const __m256 d = _mm256_sub_ps(load8<BF16>(base, v + 8 * u), vm);
        const __m256 e = exp_table8(d);
        vs[u] = _mm256_add_ps(vs[u], e);
        if (ENTROPY) vt[u] = _mm256_fmadd_ps(_mm256_max_ps(d, lo), e, vt[u]);
      }
    for (; v < c1_full; v += 8) {
      const __m256 d = _mm256_sub_ps(load8<BF16>(base, v), vm);
      const __m256 e = exp_table8(d);
      vs[0] = _mm256_add_ps(vs[0], e);
      if (ENTROPY) vt[0] = _mm256_fmadd_ps(_mm256_max_ps(d, lo), e, vt[0]);
    }
    s += hsum_ps_as_pd(_mm256_add_ps(_mm256_add_ps(vs[0], vs[1]), _mm256_add_ps(vs[2], vs[3])));
    if (ENTROPY) t += hsum_ps_as_pd(_mm256_add_ps(_mm256_add_ps(vt[0], vt[1]), _mm256_add_ps(vt[2], vt[3])));
    for (; v < c1; ++v) {  // the row's last vocab % 8 logits
      const double d = static_cast<double>(load1<BF16>(base, v)) - m;
      const double e = std::exp(d);
      s += e;
      if (ENTROPY && e > 0) t += e * d;
    }
  }
  double e2 = 0.0;
  if (p.margin) e2 = std::exp(static_cast<double>(runner_up<BF16>(base, p.vocab, m)) - m);
  write_outputs<ENTROPY>(p, r, first_index<BF16>(base, first_chunk, p.vocab, m), s, t, e2, 1.0,
                         undefined_softmax(nan, m));
}

template <bool BF16, bool ENTROPY>
void row_f64(const SampleGreedyParams& p, int64_t r) {
  constexpr int64_t kChunk = 1024;
  const size_t esize = BF16 ? 2 : 4;
  const char* base = static_cast<const char*>(p.logits) + r * p.ld * esize;
  const int64_t full = p.vocab / 8 * 8;
  float m = kNegInf;
  bool nan = false;
  int64_t first_chunk = 0;
  for (int64_t c0 = 0; c0 < p.vocab; c0 += kChunk) {
    const float cm = range_max<BF16>(base, c0, std::min(c0 + kChunk, p.vocab), full, nan);
    if (cm > m) m = cm, first_chunk = c0;
  }
  double s = 0.0, t = 0.0;
  if (m > kNegInf) {
    const __m256d vmd = _mm256_set1_pd(m), lo = _mm256_set1_pd(-708.0);
    __m256d as[2], at[2];
    for (int u = 0; u < 2; ++u) as[u] = at[u] = _mm256_setzero_pd();
    int64_t v = 0;
    for (; v < full; v += 8) {
      const __m256 x = load8<BF16>(base, v);
      for (int h = 0; h < 2; ++h) {
        const __m256d d =
            _mm256_sub_pd(_mm256_cvtps_pd(h ? _mm256_extractf128_ps(x, 1) : _mm256_castps256_ps128(x)), vmd);
        const __m256d e = exp_nonpositive_pd4(d);
        as[h] = _mm256_add_pd(as[h], e);
        if (ENTROPY) at[h] = _mm256_fmadd_pd(_mm256_max_pd(d, lo), e, at[h]);
      }
    }
    s = hsum_pd(_mm256_add_pd(as[0], as[1]));
    t = hsum_pd(_mm256_add_pd(at[0], at[1]));
    for (; v < p.vocab; ++v) {
      const double d = static_cast<double>(load1<BF16>(base, v)) - m;
      const double e = std::exp(d);
      s += e;
      if (ENTROPY && e > 0) t += e * d;
    }
  }
  const double e2 = p.margin ? std::exp(static_cast<double>(runner_up<BF16>(base, p.vocab, m)) - m) : 0.0;
  write_outputs<ENTROPY>(p, r, first_index<BF16>(base, first_chunk, p.vocab, m), s, t, e2, 1.0,
                         undefined_softmax(nan, m));
}

template <bool BF16>
void rows(const SampleGreedyParams& p) {
  const bool ent = p.entropy != nullptr, f64 = p.confidence_f64;
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t r = 0; r < p.rows; ++r) {
    if (f64) ent ? row_f64<BF16, true>(p, r) : row_f64<BF16, false>(p, r);
    else ent ? row_f32<BF16, true>(p, r) : row_f32<BF16, false>(p, r);
  }
}

}  // namespace

void sample_greedy_avx2(const SampleGreedyParams& p) { p.logits_is_bf16 ? rows<true>(p) : rows<false>(p); }

}  // namespace illada::cpu
