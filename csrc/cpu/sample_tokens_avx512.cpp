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

// max of logits [c0, c1) (full: vocab rounded down to 64), four independent max chains; `nan` is set when a logit of
// the range is NaN (max_ps drops NaNs, so they are looked for separately).
template <bool BF16>
float range_max(const char* base, int64_t c0, int64_t c1, int64_t full, int64_t vocab, bool& nan) {
  __m512 vmax[4];
  __mmask16 unordered = 0;
  for (int u = 0; u < 4; ++u) vmax[u] = _mm512_set1_ps(kNegInf);
  const int64_t c1_full = std::min(c1, full);
  for (int64_t v = c0; v < c1_full; v += 64) {
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      const __m512 x = load<BF16>(base, v + 16 * u, 0xffff, kNegInf);
      unordered |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
      vmax[u] = _mm512_max_ps(vmax[u], x);
    }
  }
  for (int64_t v = std::max(c0, full); v < c1; v += 16) {
    const __m512 x = load<BF16>(base, v, tail_mask(vocab, v), kNegInf);
    unordered |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    vmax[0] = _mm512_max_ps(vmax[0], x);
  }
  nan |= unordered != 0;
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

// ---- Gumbel-max (temperature > 0): Philox4x32-10 on 16 counters at once, as common/philox.h draws it -------------

// (hi, lo) 32-bit halves of m * a for each 32-bit lane (vpmuludq on even and odd lanes).
inline void mulhilo16(__m512i a, uint32_t m, __m512i& hi, __m512i& lo) {
  const __m512i vm = _mm512_set1_epi64(m);
  const __m512i even = _mm512_mul_epu32(a, vm), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), vm);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

// The noise words of vocabulary indices v0 .. v0 + 63 (v0 a multiple of 64), in index order: w[q] holds v0 + 16 q ..
// v0 + 16 q + 15.
inline void noise_words64(uint64_t seed, uint64_t offset, uint64_t rid, int64_t v0, __m512i (&w)[4]) {
  __m512i x0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(v0 / 4)),
                                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  __m512i x1 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(rid)));
  __m512i x2 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
  __m512i x3 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32) ^ static_cast<uint32_t>(rid >> 32)));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    __m512i hi0, lo0, hi1, lo1;
    mulhilo16(x0, 0xD2511F53u, hi0, lo0);
    mulhilo16(x2, 0xCD9E8D57u, hi1, lo1);
    const __m512i y0 = _mm512_xor_si512(_mm512_xor_si512(hi1, x1), _mm512_set1_epi32(static_cast<int>(k0)));
    const __m512i y2 = _mm512_xor_si512(_mm512_xor_si512(hi0, x3), _mm512_set1_epi32(static_cast<int>(k1)));
    x0 = y0, x1 = lo1, x2 = y2, x3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  // lane i of x_j is word j of counter i (index 4 i + j): transpose to index order
  const __m512i t0 = _mm512_unpacklo_epi32(x0, x1), t1 = _mm512_unpackhi_epi32(x0, x1);
  const __m512i t2 = _mm512_unpacklo_epi32(x2, x3), t3 = _mm512_unpackhi_epi32(x2, x3);
  const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
  const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
  const __m512i p0 = _mm512_shuffle_i32x4(u0, u1, 0x44), p1 = _mm512_shuffle_i32x4(u2, u3, 0x44);
  const __m512i p2 = _mm512_shuffle_i32x4(u0, u1, 0xEE), p3 = _mm512_shuffle_i32x4(u2, u3, 0xEE);
  w[0] = _mm512_shuffle_i32x4(p0, p1, 0x88);
  w[1] = _mm512_shuffle_i32x4(p0, p1, 0xDD);
  w[2] = _mm512_shuffle_i32x4(p2, p3, 0x88);
  w[3] = _mm512_shuffle_i32x4(p2, p3, 0xDD);
}

// log(x) for finite x > 0 (normal): x = m 2^e with m in [0.75, 1.5), log m = 2 atanh((m - 1) / (m + 1)) by its
// series to r^9 (|r| <= 0.2: ~1e-8 relative).
inline __m512 log_ps(__m512 x) {
  const __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_p75_1p5, _MM_MANT_SIGN_zero);
  __m512 e = _mm512_getexp_ps(x);
  e = _mm512_mask_add_ps(e, _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.0f), _CMP_LT_OQ), e, _mm512_set1_ps(1.0f));
  const __m512 r = _mm512_div_ps(_mm512_sub_ps(m, _mm512_set1_ps(1.0f)), _mm512_add_ps(m, _mm512_set1_ps(1.0f)));
  const __m512 r2 = _mm512_mul_ps(r, r);
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(2.0f / 9), r2, _mm512_set1_ps(2.0f / 7));
  q = _mm512_fmadd_ps(q, r2, _mm512_set1_ps(2.0f / 5));
  q = _mm512_fmadd_ps(q, r2, _mm512_set1_ps(2.0f / 3));
  q = _mm512_fmadd_ps(q, r2, _mm512_set1_ps(2.0f));
  return _mm512_fmadd_ps(e, _mm512_set1_ps(0.693147180559945f), _mm512_mul_ps(q, r));
}

inline __m512 gumbel16(__m512i w) {  // -log(-log u), u = ((w >> 9) + 0.5) / 2^23 (exact: philox.h uniform_open01)
  const __m512 u = _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(w, 9)), _mm512_set1_ps(0.5f)),
                                 _mm512_set1_ps(1.0f / 8388608.0f));
  const __m512 nl = _mm512_sub_ps(_mm512_setzero_ps(), log_ps(u));
  return _mm512_sub_ps(_mm512_setzero_ps(), log_ps(nl));
}

// Gumbel-max over a row: the first index of the largest logit + temperature * g (-1 if every score is NaN).
template <bool BF16>
int64_t noisy_argmax(const SampleGreedyParams& p, int64_t r, const char* base) {
  const uint64_t rid = row_id(p, r);
  const __m512 vt = _mm512_set1_ps(p.temperature);
  __m512 best = _mm512_set1_ps(kNegInf);
  __m512i best_i = _mm512_set1_epi32(-1);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const int64_t full = p.vocab / 64 * 64;
  for (int64_t v0 = 0; v0 < full; v0 += 64) {
    __m512i w[4];
    noise_words64(p.seed, p.offset, rid, v0, w);
    for (int q = 0; q < 4; ++q) {
      const __m512 score = _mm512_add_ps(load<BF16>(base, v0 + 16 * q, 0xffff, kNegInf),
                                         _mm512_mul_ps(vt, gumbel16(w[q])));
      // strictly greater keeps each lane's first index; a lane's first finite score always enters
      const __mmask16 take = _mm512_cmp_ps_mask(score, best, _CMP_GT_OQ) |
                             (_mm512_cmp_epi32_mask(best_i, _mm512_set1_epi32(-1), _MM_CMPINT_EQ) &
                              _mm512_cmp_ps_mask(score, score, _CMP_ORD_Q));
      best = _mm512_mask_mov_ps(best, take, score);
      best_i = _mm512_mask_mov_epi32(best_i, take,
                                     _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int>(v0 + 16 * q))));
    }
  }
  alignas(64) float bv[16];
  alignas(64) int32_t bi[16];
  _mm512_store_ps(bv, best);
  _mm512_store_epi32(bi, best_i);
  float top = kNegInf;
  int64_t arg = -1;
  for (int j = 0; j < 16; ++j)
    if (bi[j] >= 0 && (arg < 0 || bv[j] > top || (bv[j] == top && bi[j] < arg))) top = bv[j], arg = bi[j];
  float tail_best = kNegInf;
  int64_t tail_arg = -1;
  noisy_argmax_scalar(p, rid, [&](int64_t v) { return _mm512_cvtss_f32(load<BF16>(base, v, 0x1, 0.f)); }, full,
                      tail_best, tail_arg);
  if (tail_arg >= 0 && (arg < 0 || tail_best > top)) arg = tail_arg;
  return arg;
}

// The chosen token's exp term when temperature > 0 (else the argmax's, exactly 1).
template <bool BF16>
inline void apply_noise(const SampleGreedyParams& p, int64_t r, const char* base, float m, int64_t& arg,
                        double& e_tok) {
  if (!(p.temperature > 0)) return;
  const int64_t noisy = noisy_argmax<BF16>(p, r, base);
  if (noisy < 0) return;
  arg = noisy;
  e_tok = std::exp(static_cast<double>(_mm512_cvtss_f32(load<BF16>(base, noisy, 0x1, 0.f))) - m);
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
  bool nan = false;
  int64_t first_chunk = 0;
  double s = 0.0, t = 0.0;
  for (int64_t c0 = 0; c0 < p.vocab; c0 += kChunk) {
    const int64_t c1 = std::min(c0 + kChunk, p.vocab), c1_full = std::min(c1, full);
    // prefetch the next chunk (prefetching farther ahead measured slower)
    const int64_t pf1 = std::min(c1 + kChunk, p.vocab);
    for (int64_t off = c1 * esize; off < pf1 * static_cast<int64_t>(esize); off += 64)
      _mm_prefetch(base + off, _MM_HINT_T0);
    const float cm = range_max<BF16>(base, c0, c1, full, p.vocab, nan);
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
  int64_t arg = first_index<BF16>(base, first_chunk, p.vocab, m);
  double e_tok = 1.0;
  apply_noise<BF16>(p, r, base, m, arg, e_tok);
  write_outputs<ENTROPY>(p, r, arg, s, t, e2, e_tok, undefined_softmax(nan, m));
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
  bool nan = false;
  int64_t first_chunk = 0;
  for (int64_t c0 = 0; c0 < p.vocab; c0 += kChunk) {
    const float cm = range_max<BF16>(base, c0, std::min(c0 + kChunk, p.vocab), full, p.vocab, nan);
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
  int64_t arg = first_index<BF16>(base, first_chunk, p.vocab, m);
  double e_tok = 1.0;
  apply_noise<BF16>(p, r, base, m, arg, e_tok);
  write_outputs<ENTROPY>(p, r, arg, s, t, e2, e_tok, undefined_softmax(nan, m));
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
