// AVX-512 greedy sampling (see sample_tokens.h). Pass 1: per-lane running max (strictly greater keeps the
// first index per lane), index and, when asked, runner-up; lanes are merged to the lowest index of the
// maximum. Pass 2: sum of exp(l - max) with a vector exp (range reduction to 2^n * e^r, degree-6 polynomial,
// ~1 ulp) accumulated in fp32 per lane and in double across lanes.
#include <immintrin.h>

#include <cmath>
#include <limits>

#include "avx512_util.h"
#include "sample_tokens.h"

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

template <bool BF16>
inline __m512 load(const void* base, int64_t v, __mmask16 mask, float fill) {
  if (BF16) {
    const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + v);
    const __m512 f = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_mask_blend_ps(mask, _mm512_set1_ps(fill), f);
  }
  return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), mask, static_cast<const float*>(base) + v);
}

template <bool BF16, bool TOP2, bool ENTROPY, bool F64>
void row(const SampleGreedyParams& p, int64_t r) {
  const size_t esize = BF16 ? 2 : 4;
  const void* base = static_cast<const char*>(p.logits) + r * p.ld * esize;
  const float ninf = -std::numeric_limits<float>::infinity();
  float m = ninf, m2 = ninf;
  int64_t arg = -1;
  if (!TOP2) {
    // max alone (one op per vector), then the first position holding it (usually well before the end)
    __m512 vmax[4];
    for (int u = 0; u < 4; ++u) vmax[u] = _mm512_set1_ps(ninf);
    const int64_t full = p.vocab / 64 * 64;
    for (int64_t v = 0; v < full; v += 64) {
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) vmax[u] = _mm512_max_ps(vmax[u], load<BF16>(base, v + 16 * u, 0xffff, ninf));
    }
    for (int64_t v = full; v < p.vocab; v += 16) {
      const __mmask16 mask = p.vocab - v >= 16 ? 0xffff : static_cast<__mmask16>((1u << (p.vocab - v)) - 1u);
      vmax[0] = _mm512_max_ps(vmax[0], load<BF16>(base, v, mask, ninf));
    }
    m = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(vmax[0], vmax[1]), _mm512_max_ps(vmax[2], vmax[3])));
    const __m512 vm = _mm512_set1_ps(m);
    for (int64_t v = 0; v < p.vocab && m > ninf; v += 16) {
      const __mmask16 mask = p.vocab - v >= 16 ? 0xffff : static_cast<__mmask16>((1u << (p.vocab - v)) - 1u);
      const __mmask16 eq = _mm512_mask_cmp_ps_mask(mask, load<BF16>(base, v, mask, ninf), vm, _CMP_EQ_OQ);
      if (eq) {
        arg = v + __builtin_ctz(eq);
        break;
      }
    }
  } else {
    // per lane: max, its first index (strictly greater keeps the first) and the runner-up
    __m512 vmax = _mm512_set1_ps(ninf), vmax2 = vmax;
    __m512i vidx = _mm512_setzero_si512();
    __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step = _mm512_set1_epi32(16);
    for (int64_t v = 0; v < p.vocab; v += 16) {
      const __mmask16 mask = p.vocab - v >= 16 ? 0xffff : static_cast<__mmask16>((1u << (p.vocab - v)) - 1u);
      const __m512 x = load<BF16>(base, v, mask, ninf);
      vmax2 = _mm512_max_ps(vmax2, _mm512_min_ps(x, vmax));
      const __mmask16 gt = _mm512_cmp_ps_mask(x, vmax, _CMP_GT_OQ);
      vmax = _mm512_mask_mov_ps(vmax, gt, x);
      vidx = _mm512_mask_mov_epi32(vidx, gt, idx);
      idx = _mm512_add_epi32(idx, step);
    }
    alignas(64) float mx[16], mx2[16];
    alignas(64) int32_t ix[16];
    _mm512_store_ps(mx, vmax);
    _mm512_store_ps(mx2, vmax2);
    _mm512_store_epi32(ix, vidx);
    for (int j = 0; j < 16; ++j)
      if (mx[j] > m || (mx[j] == m && ix[j] < arg)) m = mx[j], arg = ix[j];
    int at_max = 0;
    for (int j = 0; j < 16; ++j) at_max += mx[j] == m;
    if (at_max > 1) {
      m2 = m;
    } else {
      for (int j = 0; j < 16; ++j) m2 = std::fmax(m2, mx[j] == m ? mx2[j] : mx[j]);
    }
  }
  if (arg < 0) arg = 0;  // every logit -inf (or NaN): token 0, as the generic path
  const __m512 vm = _mm512_set1_ps(m);
  double s = 0.0, t = 0.0;
  if (F64) {
    // double precision throughout: 8 lanes per exp, four accumulators
    const __m512d vmd = _mm512_set1_pd(m), lo = _mm512_set1_pd(-746.0);
    __m512d as[4], at[4];
    for (int u = 0; u < 4; ++u) as[u] = at[u] = _mm512_setzero_pd();
    for (int64_t v = 0; v < p.vocab; v += 16) {
      const __mmask16 mask = p.vocab - v >= 16 ? 0xffff : static_cast<__mmask16>((1u << (p.vocab - v)) - 1u);
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
    s = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(as[0], as[1]), _mm512_add_pd(as[2], as[3])));
    t = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(at[0], at[1]), _mm512_add_pd(at[2], at[3])));
  } else {
    // four independent fp32 accumulators over full vectors keep the exp chains overlapping; every 1024
    // elements they are flushed into double accumulators, so no fp32 sum spans more than 16 terms per lane
    __m512 vs[4], vt[4];
    __m512d ds = _mm512_setzero_pd(), dt = _mm512_setzero_pd();
    auto flush = [&]() {
      const __m512 s4 = _mm512_add_ps(_mm512_add_ps(vs[0], vs[1]), _mm512_add_ps(vs[2], vs[3]));
      ds = _mm512_add_pd(ds, _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(s4)),
                                           _mm512_cvtps_pd(_mm512_extractf32x8_ps(s4, 1))));
      if (ENTROPY) {
        const __m512 t4 = _mm512_add_ps(_mm512_add_ps(vt[0], vt[1]), _mm512_add_ps(vt[2], vt[3]));
        dt = _mm512_add_pd(dt, _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(t4)),
                                             _mm512_cvtps_pd(_mm512_extractf32x8_ps(t4, 1))));
      }
      for (int u = 0; u < 4; ++u) vs[u] = vt[u] = _mm512_setzero_ps();
    };
    for (int u = 0; u < 4; ++u) vs[u] = vt[u] = _mm512_setzero_ps();
    const int64_t full = p.vocab / 64 * 64;
    for (int64_t v = 0; v < full; v += 64) {
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        const __m512 d = _mm512_sub_ps(load<BF16>(base, v + 16 * u, 0xffff, 0.f), vm);
        const __m512 e = avx512::exp_nonpositive(d);
        vs[u] = _mm512_add_ps(vs[u], e);
        // -inf logits: e is 0 and the entropy term uses d clamped as exp clamps it (no -inf * 0)
        if (ENTROPY) vt[u] = _mm512_fmadd_ps(_mm512_max_ps(d, _mm512_set1_ps(-104.0f)), e, vt[u]);
      }
      if ((v / 64) % 16 == 15) flush();
    }
    for (int64_t v = full; v < p.vocab; v += 16) {
      const __mmask16 mask = p.vocab - v >= 16 ? 0xffff : static_cast<__mmask16>((1u << (p.vocab - v)) - 1u);
      const __m512 d = _mm512_sub_ps(load<BF16>(base, v, mask, 0.f), vm);
      const __m512 e = avx512::exp_nonpositive(d);
      vs[0] = _mm512_mask_add_ps(vs[0], mask, vs[0], e);
      if (ENTROPY) vt[0] = _mm512_mask3_fmadd_ps(_mm512_max_ps(d, _mm512_set1_ps(-104.0f)), e, vt[0], mask);
    }
    flush();
    s = _mm512_reduce_add_pd(ds);
    t = _mm512_reduce_add_pd(dt);
  }
  p.token[r] = arg;
  if (F64)
    static_cast<double*>(p.confidence)[r] = 1.0 / s;
  else
    static_cast<float*>(p.confidence)[r] = static_cast<float>(1.0 / s);
  if (TOP2) p.margin[r] = static_cast<float>((1.0 - std::exp(static_cast<double>(m2) - m)) / s);
  if (ENTROPY) p.entropy[r] = static_cast<float>(std::log(s) - t / s);
}

template <bool BF16, bool F64>
void rows(const SampleGreedyParams& p) {
  const bool top2 = p.margin != nullptr, ent = p.entropy != nullptr;
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t r = 0; r < p.rows; ++r) {
    if (top2 && ent) row<BF16, true, true, F64>(p, r);
    else if (top2) row<BF16, true, false, F64>(p, r);
    else if (ent) row<BF16, false, true, F64>(p, r);
    else row<BF16, false, false, F64>(p, r);
  }
}

}  // namespace

void sample_greedy_avx512(const SampleGreedyParams& p) {
  if (p.logits_is_bf16)
    p.confidence_f64 ? rows<true, true>(p) : rows<true, false>(p);
  else
    p.confidence_f64 ? rows<false, true>(p) : rows<false, false>(p);
}

}  // namespace illada::cpu
