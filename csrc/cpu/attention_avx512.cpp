// AVX-512 attention for head dims 64 and 128 (see attention.h). Keys are first packed per (batch, kv head) as
// fp32 K^T [D][Tk16] and V [Tk16][D] (Tk16 = Tk rounded up to 16; shared by every query head of a GQA group),
// with an additive mask row (0 or -inf) per batch. Then each task takes 24 query rows of one head, 3 at a time:
// per key block of up to 128 keys, scores S = (q * scale) K^T in 3 x 8 registers (one broadcast q element times
// 8 K^T vectors), an online softmax (running max and sum, rescaling the output), and O += P V with the
// output rows in 3 x D/16 registers.
#include <immintrin.h>

#include <cmath>
#include <limits>
#include <vector>

#include "attention.h"
#include "avx512_util.h"
#include "gemm_w8a8.h"

namespace illada::cpu {

namespace {

constexpr int kRows = 3;               // query rows per register tile
constexpr int64_t kRowsPerTask = 24;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline __m512 load16(const void* base, int64_t i, bool bf16) {
  if (bf16)
    return _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(
            static_cast<const uint16_t*>(base) + i))), 16));
  return _mm512_loadu_ps(static_cast<const float*>(base) + i);
}

template <int R, int ND, int NV>
__attribute__((always_inline)) inline void key_block(const float* qf, const float* kt, int64_t tkp, const float* vv,
                                                     const float* madd, int64_t kb, float* m, float* l,
                                                     __m512 (&o)[R][ND]) {
  constexpr int D = ND * 16;
  __m512 s[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) s[r][v] = _mm512_setzero_ps();
  for (int d = 0; d < D; ++d) {
    const float* kr = kt + d * tkp + kb;
    __m512 kv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) kv[v] = _mm512_loadu_ps(kr + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 bq = _mm512_set1_ps(qf[r * D + d]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) s[r][v] = _mm512_fmadd_ps(bq, kv[v], s[r][v]);
    }
  }
  alignas(64) float pb[R][NV * 16];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    __m512 mx = _mm512_set1_ps(kNegInf);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      s[r][v] = _mm512_add_ps(s[r][v], _mm512_loadu_ps(madd + kb + 16 * v));
      mx = _mm512_max_ps(mx, s[r][v]);
    }
    const float mnew = std::fmax(m[r], _mm512_reduce_max_ps(mx));
    if (mnew == kNegInf) {  // every key so far masked: nothing to add
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) _mm512_store_ps(pb[r] + 16 * v, _mm512_setzero_ps());
      continue;
    }
    const float alpha = m[r] == kNegInf ? 0.f : std::exp(m[r] - mnew);
    const __m512 vm = _mm512_set1_ps(mnew);
    __m512 sum = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const __m512 e = avx512::exp_nonpositive(_mm512_sub_ps(s[r][v], vm));
      _mm512_store_ps(pb[r] + 16 * v, e);
      sum = _mm512_add_ps(sum, e);
    }
    l[r] = l[r] * alpha + _mm512_reduce_add_ps(sum);
    m[r] = mnew;
    const __m512 va = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
    for (int n = 0; n < ND; ++n) o[r][n] = _mm512_mul_ps(o[r][n], va);
  }
  for (int j = 0; j < NV * 16; ++j) {
    const float* vr = vv + (kb + j) * D;
    __m512 vrow[ND];
#pragma GCC unroll 8
    for (int n = 0; n < ND; ++n) vrow[n] = _mm512_loadu_ps(vr + 16 * n);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 bp = _mm512_set1_ps(pb[r][j]);
#pragma GCC unroll 8
      for (int n = 0; n < ND; ++n) o[r][n] = _mm512_fmadd_ps(bp, vrow[n], o[r][n]);
    }
  }
}

template <int R, int ND>
void query_rows(const AttentionParams& p, const float* kt, const float* vv, const float* madd, int64_t tkp,
                int64_t b, int64_t h, int64_t i0) {
  constexpr int D = ND * 16;
  alignas(64) float qf[R * D];
  for (int r = 0; r < R; ++r) {
    const int64_t qo = b * p.q_sb + h * p.q_sh + (i0 + r) * p.q_st;
    for (int n = 0; n < ND; ++n)
      _mm512_store_ps(qf + r * D + 16 * n, _mm512_mul_ps(load16(p.q, qo + 16 * n, p.bf16), _mm512_set1_ps(p.scale)));
  }
  float m[R], l[R];
  __m512 o[R][ND];
  for (int r = 0; r < R; ++r) {
    m[r] = kNegInf;
    l[r] = 0.f;
    for (int n = 0; n < ND; ++n) o[r][n] = _mm512_setzero_ps();
  }
  int64_t kb = 0;
  for (; kb + 128 <= tkp; kb += 128) key_block<R, ND, 8>(qf, kt, tkp, vv, madd, kb, m, l, o);
  switch ((tkp - kb) / 16) {
    case 1: key_block<R, ND, 1>(qf, kt, tkp, vv, madd, kb, m, l, o); break;
    case 2: key_block<R, ND, 2>(qf, kt, tkp, vv, madd, kb, m, l, o); break;
    case 3: key_block<R, ND, 3>(qf, kt, tkp, vv, madd, kb, m, l, o); break;
    case 4: key_block<R, ND, 4>(qf, kt, tkp, vv, madd, kb, m, l, o); break;
    case 5: key_block<R, ND, 5>(qf, kt, tkp, vv, madd, kb, m, l, o); break;
    case 6: key_block<R, ND, 6>(qf, kt, tkp, vv, madd, kb, m, l, o); break;
    case 7: key_block<R, ND, 7>(qf, kt, tkp, vv, madd, kb, m, l, o); break;
    default: break;
  }
  for (int r = 0; r < R; ++r) {
    const __m512 inv = _mm512_set1_ps(l[r] > 0.f ? 1.f / l[r] : 0.f);
    const int64_t oo = b * p.o_sb + h * p.o_sh + (i0 + r) * p.o_st;
    for (int n = 0; n < ND; ++n) {
      const __m512 y = _mm512_mul_ps(o[r][n], inv);
      if (p.bf16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p.out) + oo + 16 * n),
                            avx512::to_bf16(y));
      else
        _mm512_storeu_ps(static_cast<float*>(p.out) + oo + 16 * n, y);
    }
  }
}

template <int ND>
void run(const AttentionParams& p) {
  constexpr int D = ND * 16;
  const int64_t tkp = round_up(p.Tk, 16), group = p.Hq / p.Hkv;
  std::vector<float> kt(static_cast<size_t>(p.B * p.Hkv * D * tkp), 0.f);
  std::vector<float> vv(static_cast<size_t>(p.B * p.Hkv * tkp * D), 0.f);
  std::vector<float> madd(static_cast<size_t>(p.B * tkp), kNegInf);
  auto at = [&](const void* base, int64_t i) {
    return p.bf16 ? bf16_to_f32(static_cast<const uint16_t*>(base)[i]) : static_cast<const float*>(base)[i];
  };
#pragma omp parallel for collapse(2) num_threads(p.n_threads) schedule(static)
  for (int64_t b = 0; b < p.B; ++b) {
    for (int64_t hk = 0; hk < p.Hkv; ++hk) {
      float* ktp = kt.data() + (b * p.Hkv + hk) * D * tkp;
      float* vvp = vv.data() + (b * p.Hkv + hk) * tkp * D;
      for (int64_t j = 0; j < p.Tk; ++j) {
        const int64_t ko = b * p.k_sb + hk * p.k_sh + j * p.k_st, vo = b * p.v_sb + hk * p.v_sh + j * p.v_st;
        for (int d = 0; d < D; ++d) {
          ktp[d * tkp + j] = at(p.k, ko + d);
          vvp[j * D + d] = at(p.v, vo + d);
        }
      }
      if (hk == 0)
        for (int64_t j = 0; j < p.Tk; ++j)
          madd[b * tkp + j] = (p.key_mask == nullptr || p.key_mask[b * p.km_sb + j]) ? 0.f : kNegInf;
    }
  }
  const int64_t tiles = (p.Tq + kRowsPerTask - 1) / kRowsPerTask;
#pragma omp parallel for collapse(3) num_threads(p.n_threads) schedule(static)
  for (int64_t b = 0; b < p.B; ++b) {
    for (int64_t h = 0; h < p.Hq; ++h) {
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t hk = h / group;
        const float* ktp = kt.data() + (b * p.Hkv + hk) * D * tkp;
        const float* vvp = vv.data() + (b * p.Hkv + hk) * tkp * D;
        const float* mp = madd.data() + b * tkp;
        const int64_t end = (t + 1) * kRowsPerTask < p.Tq ? (t + 1) * kRowsPerTask : p.Tq;
        for (int64_t i0 = t * kRowsPerTask; i0 < end; i0 += kRows) {
          const int64_t rows = end - i0;
          if (rows >= 3)
            query_rows<3, ND>(p, ktp, vvp, mp, tkp, b, h, i0);
          else if (rows == 2)
            query_rows<2, ND>(p, ktp, vvp, mp, tkp, b, h, i0);
          else
            query_rows<1, ND>(p, ktp, vvp, mp, tkp, b, h, i0);
        }
      }
    }
  }
}

}  // namespace

void attention_avx512(const AttentionParams& p) {
  if (p.D == 128)
    run<8>(p);
  else
    run<4>(p);
}

}  // namespace illada::cpu
