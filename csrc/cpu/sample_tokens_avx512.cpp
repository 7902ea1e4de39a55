// AVX-512 greedy sampling (see sample_tokens.h). float32 confidences: one streaming pass by L1-sized chunks (chunk
// max, then its exp terms against the running max, with a table-driven 2^x: 16-entry table of 2^(j/16) by vpermps
// and a degree-3 polynomial, ~2e-7 relative), then the first index of the max inside the chunk that first reached
// it. float64 confidences: the max, then the sum in double precision throughout. The runner-up (margin) takes one
// more pass when asked for.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "avx512_util.h"
#include "sample_tokens.h"
#include "sample_tokens_rows.h"

namespace illada::cpu {

namespace {

inline __m512d exp_nonpositive_pd(__m512d x) {  // x <= 0, double precision (degree-12 Taylor on |r| <= ln2/2)
  x = _mm512_max_pd(x, _mm512_set1_pd(-746.0));   // exp(-746) rounds to 0 in double
  const __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(0.6931471803691238), x);
  r = _mm512_fnmadd_pd(n, _mm512_set1_pd(1.9082149292705877e-10), r);
  static constexpr double inv_fact[13] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040,
                                          1.0 / 40320, 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800,
                                          1.0 / 479001600};
  __m512d y = _mm512_set1_pd(inv_fact[12]);
  for (int i = 11; i >= 0; --i) y = _mm512_fmadd_pd(y, r, _mm512_set1_pd(inv_fact[i]));
  return _mm512_scalef_pd(y, n);
}

// 2^t for t <= 0 (t >= -160; 0 below -149): t = n + j/16 + f with |f| <= 1/32 by the 1.5 * 2^19 rounding trick
// (the low 4 mantissa bits of t + magic are j), 2^(j/16) from a register table, 2^f by a degree-3 polynomial
// (relative error < 1e-8 before the final roundings), scaled by 2^n with vscalefps (floor of n + j/16 is n).
// 2^0 is exactly 1. Cheaper than avx512::exp_nonpositive (8 arithmetic ops, 4 of them off the FMA pipes).
inline __m512 exp2_table(__m512 t) {
  const __m512 magic = _mm512_set1_ps(786432.0f);  // 1.5 * 2^19: its ulp is 1/16
  const __m512 table = _mm512_setr_ps(1.0f, 1.04427378f, 1.09050773f, 1.13878863f, 1.18920712f, 1.24185781f,
                                      1.29683955f, 1.35425555f, 1.41421356f, 1.47682615f, 1.54221083f, 1.61049033f,
                                      1.68179283f, 1.75625216f, 1.83400809f, 1.91520656f);
  t = _mm512_max_ps(t, _mm512_set1_ps(-160.0f));
  const __m512 y = _mm512_add_ps(t, magic);
  const __m512 rs = _mm512_sub_ps(y, magic);  // t rounded to a multiple of 1/16
  const __m512 f = _mm512_sub_ps(t, rs);
  const __m512 tj = _mm512_permutexvar_ps(_mm512_castps_si512(y), table);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.0555041086648216f), f, _mm512_set1_ps(0.240226506959101f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.693147180559945f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(_mm512_mul_ps(tj, p), rs);
}

inline __m512 exp_table(__m512 d) { return exp2_table(_mm512_mul_ps(d, _mm512_set1_ps(1.44269504088896341f))); }

template <bool BF16>
inline __m512 load(const void* base, int64_t v, __mmask16 mask, float fill) {
  if (BF16) {
    const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + v);
    const __m512 f = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_mask_blend_ps(mask, _mm512_set1_ps(fill), f);
  }
  return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), mask, static_cast<const float*>(base) + v);
}

inline __mmask16 tail_mask(int64_t vocab, int64_t v) {
  return vocab - v >= 16 ? 0xffff : static_cast<__mmask16>((1u << (vocab - v)) - 1u);
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// max of logits [c0, c1) (full: vocab rounded down to 64), four independent max chains.
template <bool BF16>
float range_max(const char* base, int64_t c0, int64_t c1, int64_t full, int64_t vocab) {
  __m512 vmax[4];
  for (int u = 0; u < 4; ++u) vmax[u] = _mm512_set1_ps(kNegInf);
  const int64_t c1_full = std::min(c1, full);
  for (int64_t v = c0; v < c1_full; v += 64) {
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) vmax[u] = _mm512_max_ps(vmax[u], load<BF16>(base, v + 16 * u, 0xffff, kNegInf));
  }
  for (int64_t v = std::max(c0, full); v < c1; v += 16)
    vmax[0] = _mm512_max_ps(vmax[0], load<BF16>(base, v, tail_mask(vocab, v), kNegInf));
  return _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(vmax[0], vmax[1]), _mm512_max_ps(vmax[2], vmax[3])));
}

// The first index at or after `from` holding m (0 when m is -inf: every logit -inf or NaN, as the generic path).
template <bool BF16>
int64_t first_index(const char* base, int64_t from, int64_t vocab, float m) {
  const __m512 vm = _mm512_set1_ps(m);
  for (int64_t v = from; v < vocab && m > kNegInf; v += 16) {
    const __mmask16 mask = tail_mask(vocab, v);
    const __mmask16 eq = _mm512_mask_cmp_ps_mask(mask, load<BF16>(base, v, mask, kNegInf), vm, _CMP_EQ_OQ);
    if (eq) return v + __builtin_ctz(eq);
  }
  return 0;
}

// The runner-up logit (equal to the max when the max repeats): per-lane max and second, merged.
template <bool BF16>
float runner_up(const char* base, int64_t vocab, float m) {
  __m512 vmax = _mm512_set1_ps(kNegInf), vmax2 = vmax;
  for (int64_t v = 0; v < vocab; v += 16) {
    const __m512 x = load<BF16>(base, v, tail_mask(vocab, v), kNegInf);
    vmax2 = _mm512_max_ps(vmax2, _mm512_min_ps(x, vmax));
    vmax = _mm512_max_ps(vmax, x);
  }
  alignas(64) float mx[16], mx2[16];
  _mm512_store_ps(mx, vmax);
  _mm512_store_ps(mx2, vmax2);
  int at_max = 0;
  for (int j = 0; j < 16; ++j) at_max += mx[j] == m;
  if (at_max > 1) return m;
  float m2 = kNegInf;
  for (int j = 0; j < 16; ++j) m2 = std::fmax(m2, mx[j] == m ? mx2[j] : mx[j]);
  return m2;
}

// float32 confidences in one streaming pass: by chunks of 2048 logits (L1-sized), the chunk's max, then its exp
// terms relative to the running max while the next chunk is prefetched, so the memory stream and the arithmetic
// overlap; the sums are rebased the few times the max grows. At most 32 fp32 terms per lane go into each chunk
// total, which is added in double.
template <bool BF16, bool ENTROPY>
void row_f32(const SampleGreedyParams& p, int64_t r) {
  constexpr int64_t kChunk = 2048;
  const size_t esize = BF16 ? 2 : 4;
  const char* base = static_cast<const char*>(p.logits) + r * p.ld * esize;
  const int64_t full = p.vocab / 64 * 64;
  float m = kNegInf;
  int64_t first_chunk = 0;
  double s = 0.0, t = 0.0;
  for (int64_t c0 = 0; c0 < p.vocab; c0 += kChunk) {
    const int64_t c1 = std::min(c0 + kChunk, p.vocab), c1_full = std::min(c1, full);
    // prefetch the next chunk (prefetching farther ahead measured slower)
    const int64_t pf1 = std::min(c1 + kChunk, p.vocab);
    for (int64_t off = c1 * esize; off < pf1 * static_cast<int64_t>(esize); off += 64)
      _mm_prefetch(base + off, _MM_HINT_T0);
    const float cm = range_max<BF16>(base, c0, c1, full, p.vocab);
    if (cm > m) {
      if (m > kNegInf) rebase_sums(s, t, m, cm);
      m = cm;
      first_chunk = c0;
    }
    if (m == kNegInf) continue;  // nothing but -inf so far
    const __m512 vm = _mm512_set1_ps(m), lo = _mm512_set1_ps(-104.0f);
    __m512 vs[4], vt[4];
    for (int u = 0; u < 4; ++u) vs[u] = vt[u] = _mm512_setzero_ps();
    for (int64_t v = c0; v < c1_full; v += 64) {
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        const __m512 d = _mm512_sub_ps(load<BF16>(base, v + 16 * u, 0xffff, 0.f), vm);
        const __m512 e = exp_table(d);
        vs[u] = _mm512_add_ps(vs[u], e);
        // -inf logits: e is 0 and the entropy term uses d clamped (no -inf * 0)
        if (ENTROPY) vt[u] = _mm512_fmadd_ps(_mm512_max_ps(d, lo), e, vt[u]);
      }
    }
    for (int64_t v = std::max(c0, full); v < c1; v += 16) {
      const __mmask16 mask = tail_mask(p.vocab, v);
      const __m512 d = _mm512_sub_ps(load<BF16>(base, v, mask, 0.f), vm);
      const __m512 e = exp_table(d);
      vs[0] = _mm512_mask_add_ps(vs[0], mask, vs[0], e);
      if (ENTROPY) vt[0] = _mm512_mask3_fmadd_ps(_mm512_max_ps(d, lo), e, vt[0], mask);
    }
    auto total = [](const __m512* a) {
      const __m512 a4 = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
      return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(a4)),
                                                _mm512_cvtps_pd(_mm512_extractf32x8_ps(a4, 1))));
    };
    s += total(vs);
    if (ENTROPY) t += total(vt);
  }
  double e2 = 0.0;
  if (p.margin) {
    const float m2 = runner_up<BF16>(base, p.vocab, m);
    e2 = _mm512_cvtss_f32(exp_table(_mm512_set1_ps(m2 - m)));
  }
  write_outputs<ENTROPY>(p, r, first_index<BF16>(base, first_chunk, p.vocab, m), s, t, e2);
}

// float64 confidences: the max first (by chunks, then its first index), then the sum in double precision
// throughout (8 lanes per exp, four accumulators), matching a float64 softmax (Fast-dLLM's) to ~1e-15.
template <bool BF16, bool ENTROPY>
void row_f64(const SampleGreedyParams& p, int64_t r) {
  constexpr int64_t kChunk = 1024;
  const size_t esize = BF16 ? 2 : 4;
  const char* base = static_cast<const char*>(p.logits) + r * p.ld * esize;
  const int64_t full = p.vocab / 64 * 64;
  float m = kNegInf;
  int64_t first_chunk = 0;
  for (int64_t c0 = 0; c0 < p.vocab; c0 += kChunk) {
    const float cm = range_max<BF16>(base, c0, std::min(c0 + kChunk, p.vocab), full, p.vocab);
    if (cm > m) m = cm, first_chunk = c0;
  }
  const __m512d vmd = _mm512_set1_pd(m), lo = _mm512_set1_pd(-746.0);
  __m512d as[4], at[4];
  for (int u = 0; u < 4; ++u) as[u] = at[u] = _mm512_setzero_pd();
  for (int64_t v = 0; v < p.vocab; v += 16) {
    const __mmask16 mask = tail_mask(p.vocab, v);
    const __m512 x = load<BF16>(base, v, mask, 0.f);
    for (int h = 0; h < 2; ++h) {
      const __mmask8 mh = static_cast<__mmask8>(mask >> (8 * h));
      const __m512d d = _mm512_sub_pd(_mm512_cvtps_pd(h ? _mm512_extractf32x8_ps(x, 1) : _mm512_castps512_ps256(x)),
                                      vmd);
      const __m512d e = exp_nonpositive_pd(d);
      const int u = static_cast<int>((v / 16) & 1) * 2 + h;
      as[u] = _mm512_mask_add_pd(as[u], mh, as[u], e);
      if (ENTROPY) at[u] = _mm512_mask3_fmadd_pd(_mm512_max_pd(d, lo), e, at[u], mh);
    }
  }
  const double s = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(as[0], as[1]), _mm512_add_pd(as[2], as[3])));
  const double t = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(at[0], at[1]), _mm512_add_pd(at[2], at[3])));
  const double e2 = p.margin ? std::exp(static_cast<double>(runner_up<BF16>(base, p.vocab, m)) - m) : 0.0;
  write_outputs<ENTROPY>(p, r, first_index<BF16>(base, first_chunk, p.vocab, m), s, t, e2);
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

void sample_greedy_avx512(const SampleGreedyParams& p) {
  p.logits_is_bf16 ? rows<true>(p) : rows<false>(p);
}

}  // namespace illada::cpu
