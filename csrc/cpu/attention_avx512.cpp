// AVX-512 attention for head dims 64 and 128 (see attention.h). Keys are first packed per (batch, kv head) as
// K^T (transposed 16 x 16 words at a time in registers: fp32 [D][Tk16], or for bf16 inputs [D/2][Tk16] bf16 pairs;
// Tk16 = Tk rounded up to 16; shared by every query head of a GQA group), bf16 values as pairs of keys per head
// dim, with an additive mask row (0 or -inf) per batch; fp32 values are read in place. Where the (batch, kv head)
// units share out evenly over the threads, each thread packs one unit into its own buffer and then runs that
// unit's query rows from it (see run). Each task takes 24 query rows of one head; per key block of up to 64 keys,
// for each 6 of its rows: scores S = q K^T * scale in 6 x 4 registers (a broadcast q element, or bf16 pair with
// vdpbf16ps, times 4 K^T vectors), an online softmax (running max and sum, rescaling the output), and O += P V in
// fp32, 4 head-dim vectors of the 6 rows at a time.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "attention.h"
#include "avx512_util.h"
#include "gemm_w8a8.h"
#include "scratch.h"
#include "task_ranges.h"

namespace illada::cpu {

namespace {

constexpr int kRows = 6;               // query rows per register tile
constexpr int64_t kKeys = 64;          // keys per block
constexpr int64_t kRowsPerTask = 24;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline __m512 load16(const void* base, int64_t i, bool bf16) {
  if (bf16)
    return _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(
            static_cast<const uint16_t*>(base) + i))), 16));
  return _mm512_loadu_ps(static_cast<const float*>(base) + i);
}

// One key block (NV * 16 keys from kb, NV <= 4) for R <= 6 query rows whose running output rows live in memory
// (om, R x D, fp32). BF: bf16 inputs, scores by vdpbf16ps over pairs of head dims (exact products, fp32 sums): qf
// holds the query rows as bf16 pairs (uint32, unscaled) and kt the keys as [D/2][tkp] pairs; scores are scaled
// afterwards. Otherwise fp32: qf holds q * scale and kt is [D][tkp] fp32.
// Scores S (R x NV registers), the online softmax (running max m and sum l per row; P and the factor alpha that
// rescales the output rows), then O = alpha O + P V in chunks of DC head-dim vectors (R * DC <= 24 registers,
// loaded from om and stored back): 6 rows share each K^T / V load, and a 64-key block of K^T and V (16 + 16 KB in
// bf16 at D = 128) stays in L1 for every tile of the task.
template <bool BF, int R, int ND, int NV>
void key_block(const void* qf, const void* kt, int64_t tkp, const void* vsrc, int64_t v_st, int64_t tk,
               const float* madd, int64_t kb, float* m, float* l, float* om, float scale) {
  constexpr int D = ND * 16;
  constexpr int DC = R >= 4 ? 4 : ND;  // head-dim vectors per PV chunk
  static_assert(ND % DC == 0 && R * DC <= 32, "PV chunking");
  __m512 s[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) s[r][v] = _mm512_setzero_ps();
  if (BF) {
    const uint32_t* qp = static_cast<const uint32_t*>(qf);
    for (int dp = 0; dp < D / 2; ++dp) {
      const uint32_t* kr = static_cast<const uint32_t*>(kt) + dp * tkp + kb;
      __m512i kv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) kv[v] = _mm512_loadu_si512(kr + 16 * v);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512bh bq = (__m512bh)_mm512_set1_epi32(static_cast<int>(qp[r * (D / 2) + dp]));
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) s[r][v] = _mm512_dpbf16_ps(s[r][v], bq, (__m512bh)kv[v]);
      }
    }
    const __m512 vs = _mm512_set1_ps(scale);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) s[r][v] = _mm512_mul_ps(s[r][v], vs);
  } else {
    const float* q32 = static_cast<const float*>(qf);
    for (int d = 0; d < D; ++d) {
      const float* kr = static_cast<const float*>(kt) + d * tkp + kb;
      __m512 kv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) kv[v] = _mm512_loadu_ps(kr + 16 * v);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512 bq = _mm512_set1_ps(q32[r * D + d]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) s[r][v] = _mm512_fmadd_ps(bq, kv[v], s[r][v]);
      }
    }
  }
  alignas(64) float pb[R][NV * 16];
  float alpha[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    __m512 mx = _mm512_set1_ps(kNegInf);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      s[r][v] = _mm512_add_ps(s[r][v], _mm512_loadu_ps(madd + kb + 16 * v));
      mx = _mm512_max_ps(mx, s[r][v]);
    }
    const float mnew = std::fmax(m[r], _mm512_reduce_max_ps(mx));
    if (mnew == kNegInf) {  // every key so far masked: nothing to add, the output rows stay zero
      alpha[r] = 1.f;
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) _mm512_store_ps(pb[r] + 16 * v, _mm512_setzero_ps());
      continue;
    }
    alpha[r] = m[r] == kNegInf ? 0.f : m[r] == mnew ? 1.f : std::exp(m[r] - mnew);
    const __m512 vm = _mm512_set1_ps(mnew);
    __m512 sum = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const __m512 e = avx512::exp_nonpositive(_mm512_sub_ps(s[r][v], vm));
      _mm512_store_ps(pb[r] + 16 * v, e);
      sum = _mm512_add_ps(sum, e);
    }
    l[r] = l[r] * alpha[r] + _mm512_reduce_add_ps(sum);
    m[r] = mnew;
  }
  const int64_t jn = tk - kb < NV * 16 ? tk - kb : NV * 16;  // keys past Tk have p = 0 and no row to read
  // BF: P rounded to bf16 pairs of keys (as flash attention does), V packed as [Tk16/2][D] pairs of keys per head
  // dim (zero past Tk), fp32 accumulation with vdpbf16ps
  alignas(64) uint16_t pp[R][NV * 16];
  if (BF) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v)
        _mm256_store_si256(reinterpret_cast<__m256i*>(pp[r] + 16 * v), avx512::to_bf16(_mm512_load_ps(pb[r] + 16 * v)));
  }
  for (int c0 = 0; c0 < ND; c0 += DC) {
    __m512 o[R][DC];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 va = _mm512_set1_ps(alpha[r]);
#pragma GCC unroll 8
      for (int n = 0; n < DC; ++n) o[r][n] = _mm512_mul_ps(_mm512_load_ps(om + r * D + 16 * (c0 + n)), va);
    }
    if (BF) {
      const uint32_t* vp = static_cast<const uint32_t*>(vsrc) + 16 * c0;
      for (int64_t jp = 0; jp < (jn + 1) / 2; ++jp) {
        __m512i vrow[DC];
#pragma GCC unroll 8
        for (int n = 0; n < DC; ++n) vrow[n] = _mm512_loadu_si512(vp + (kb / 2 + jp) * D + 16 * n);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          uint32_t pair;
          std::memcpy(&pair, pp[r] + 2 * jp, 4);
          const __m512bh bp = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
#pragma GCC unroll 8
          for (int n = 0; n < DC; ++n) o[r][n] = _mm512_dpbf16_ps(o[r][n], bp, (__m512bh)vrow[n]);
        }
      }
    } else {
      for (int64_t j = 0; j < jn; ++j) {
        __m512 vrow[DC];
#pragma GCC unroll 8
        for (int n = 0; n < DC; ++n) vrow[n] = load16(vsrc, (kb + j) * v_st + 16 * (c0 + n), false);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const __m512 bp = _mm512_set1_ps(pb[r][j]);
#pragma GCC unroll 8
          for (int n = 0; n < DC; ++n) o[r][n] = _mm512_fmadd_ps(bp, vrow[n], o[r][n]);
        }
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int n = 0; n < DC; ++n) _mm512_store_ps(om + r * D + 16 * (c0 + n), o[r][n]);
  }
}

template <bool BF, int R, int ND>
void key_block_nv(int nv, const void* qf, const void* kt, int64_t tkp, const void* vsrc, int64_t v_st, int64_t tk,
                  const float* madd, int64_t kb, float* m, float* l, float* om, float scale) {
  switch (nv) {
    case 1: key_block<BF, R, ND, 1>(qf, kt, tkp, vsrc, v_st, tk, madd, kb, m, l, om, scale); break;
    case 2: key_block<BF, R, ND, 2>(qf, kt, tkp, vsrc, v_st, tk, madd, kb, m, l, om, scale); break;
    case 3: key_block<BF, R, ND, 3>(qf, kt, tkp, vsrc, v_st, tk, madd, kb, m, l, om, scale); break;
    default: key_block<BF, R, ND, 4>(qf, kt, tkp, vsrc, v_st, tk, madd, kb, m, l, om, scale); break;
  }
}

// The query rows [i_begin, i_end) (at most kRowsPerTask) of head h: 64-key blocks in the outer loop and tiles of
// up to kRows rows in the inner one, so each block of K^T and V is read from L2 into L1 once per task and every
// tile of the task reuses it there.
template <bool BF, int ND>
void query_task(const AttentionParams& p, const void* kt, const void* vsrc, const float* madd, int64_t tkp,
                int64_t b, int64_t h, int64_t i_begin, int64_t i_end) {
  constexpr int D = ND * 16;
  alignas(64) float qf[kRowsPerTask * D];  // fp32: q * scale; bf16: the raw rows (first half of the buffer)
  alignas(64) float om[kRowsPerTask * D];  // running output rows
  float m[kRowsPerTask], l[kRowsPerTask];
  const int n = static_cast<int>(i_end - i_begin);
  for (int r = 0; r < n; ++r) {
    const int64_t qo = b * p.q_sb + h * p.q_sh + (i_begin + r) * p.q_st;
    if (BF)
      std::memcpy(reinterpret_cast<uint16_t*>(qf) + r * D, static_cast<const uint16_t*>(p.q) + qo, D * 2);
    else
      for (int c = 0; c < ND; ++c)
        _mm512_store_ps(qf + r * D + 16 * c, _mm512_mul_ps(load16(p.q, qo + 16 * c, false), _mm512_set1_ps(p.scale)));
    for (int c = 0; c < ND; ++c) _mm512_store_ps(om + r * D + 16 * c, _mm512_setzero_ps());
    m[r] = kNegInf;
    l[r] = 0.f;
  }
  using Block = void (*)(int, const void*, const void*, int64_t, const void*, int64_t, int64_t, const float*,
                         int64_t, float*, float*, float*, float);
  static constexpr Block by_rows[kRows + 1] = {nullptr,
                                               key_block_nv<BF, 1, ND>, key_block_nv<BF, 2, ND>,
                                               key_block_nv<BF, 3, ND>, key_block_nv<BF, 4, ND>,
                                               key_block_nv<BF, 5, ND>, key_block_nv<BF, 6, ND>};
  for (int64_t kb = 0; kb < tkp; kb += kKeys) {
    const int nv = static_cast<int>(std::min<int64_t>(tkp - kb, kKeys) / 16);
    for (int i = 0; i < n; i += kRows) {
      const void* qi = BF ? static_cast<const void*>(reinterpret_cast<const uint16_t*>(qf) + i * D)
                          : static_cast<const void*>(qf + i * D);
      by_rows[std::min(n - i, kRows)](nv, qi, kt, tkp, vsrc, p.v_st, p.Tk, madd, kb, m + i, l + i, om + i * D,
                                      p.scale);
    }
  }
  for (int r = 0; r < n; ++r) {
    const __m512 inv = _mm512_set1_ps(l[r] > 0.f ? 1.f / l[r] : 0.f);
    const int64_t oo = b * p.o_sb + h * p.o_sh + (i_begin + r) * p.o_st;
    for (int c = 0; c < ND; ++c) {
      const __m512 y = _mm512_mul_ps(_mm512_load_ps(om + r * D + 16 * c), inv);
      if (p.bf16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p.out) + oo + 16 * c),
                            avx512::to_bf16(y));
      else
        _mm512_storeu_ps(static_cast<float*>(p.out) + oo + 16 * c, y);
    }
  }
}

// 16 x 16 transpose of 32-bit words: r[i][k] -> r[k][i].
inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int h = 0; h < 16; h += 8)
    for (int k = 0; k < 4; ++k) {
      t[h + k] = _mm512_shuffle_i32x4(r[h + k], r[h + 4 + k], 0x88);
      t[h + 4 + k] = _mm512_shuffle_i32x4(r[h + k], r[h + 4 + k], 0xdd);
    }
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm512_shuffle_i32x4(t[k], t[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_i32x4(t[k], t[8 + k], 0xdd);
  }
}

// Packs kv head hk of batch b: K^T into ktp ([D/2][tkp] bf16 pairs or [D][tkp] fp32), for bf16 the values as
// pairs of keys per head dim into vpp ([tkp/2][D] words), and the batch's additive mask row into madd (tkp
// floats). Every word is written (keys past Tk as zeros, their mask -inf), so the buffers need no clearing.
template <bool BF, int ND>
void pack_head(const AttentionParams& p, int64_t b, int64_t hk, int64_t tkp, uint32_t* ktp, uint32_t* vpp,
               float* madd) {
  constexpr int D = ND * 16;
  const int64_t k0 = b * p.k_sb + hk * p.k_sh;
  // K^T, 16 keys x 16 words at a time through an in-register transpose (a word is a bf16 pair or one fp32)
  const int64_t words = BF ? D / 2 : D;
  const size_t esize = BF ? 2 : 4;
  const char* kbase = static_cast<const char*>(p.k) + k0 * esize;
  for (int64_t j0 = 0; j0 < p.Tk; j0 += 16) {
    const int64_t n = p.Tk - j0 < 16 ? p.Tk - j0 : 16;
    for (int64_t w0 = 0; w0 < words; w0 += 16) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = i < n ? _mm512_loadu_si512(kbase + ((j0 + i) * p.k_st) * esize + w0 * 4) : _mm512_setzero_si512();
      transpose16(r);
      for (int w = 0; w < 16; ++w) _mm512_storeu_si512(ktp + (w0 + w) * tkp + j0, r[w]);
    }
  }
  if (BF) {  // values as pairs of keys per head dim: word (jp, d) = (v[2jp][d], v[2jp+1][d])
    const uint16_t* vb = static_cast<const uint16_t*>(p.v) + b * p.v_sb + hk * p.v_sh;
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int64_t jp = 0; jp < tkp / 2; ++jp)
      for (int d0 = 0; d0 < D; d0 += 16) {
        const int64_t ja = 2 * jp, jb = 2 * jp + 1;
        const __m256i a = ja < p.Tk ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(vb + ja * p.v_st + d0))
                                    : _mm256_setzero_si256();
        const __m256i c = jb < p.Tk ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(vb + jb * p.v_st + d0))
                                    : _mm256_setzero_si256();
        const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(a), c, 1);
        _mm512_storeu_si512(vpp + jp * D + d0, _mm512_permutexvar_epi16(interleave, both));
      }
  }
  if (madd != nullptr)
    for (int64_t j = 0; j < tkp; ++j)  // keys past Tk (up to the 16-key multiple) are masked out
      madd[j] = j < p.Tk && (p.key_mask == nullptr || p.key_mask[b * p.km_sb + j]) ? 0.f : kNegInf;
}

template <bool BF, int ND>
void run(const AttentionParams& p) {
  constexpr int D = ND * 16;
  const int64_t tkp = round_up(p.Tk, 16), group = p.Hq / p.Hkv;
  // keys: bf16 -> [D/2][tkp] pairs (uint32), fp32 -> [D][tkp]; bf16 values: [tkp/2][D] pairs; additive mask rows
  const int64_t kt_words = BF ? D / 2 * tkp : D * tkp, v_words = BF ? tkp / 2 * D : 0;
  const int64_t tiles = (p.Tq + kRowsPerTask - 1) / kRowsPerTask, units = p.B * p.Hkv;
  // Scratch (scratch.h) kept across calls, left uninitialized: pack_head writes every word it is read back from;
  // zero-filling first cost as much as packing at a cache step's shapes (Tq = 32 against a canvas of keys).
  if (units % p.n_threads == 0 || units >= 4 * p.n_threads) {
    // Enough (batch, kv head) units to share out evenly: each thread packs one unit at a time into its own buffer
    // and runs every query row of the unit's query heads from it, in one region. The buffer (96 KB for 192 keys
    // at D = 128) is reused unit after unit, so it stays in L2: packing every head into one buffer first and then
    // reading it back cost a cache step 35 us per call more from DRAM than from cache once the weights streamed
    // through since its last call had evicted it (AMD EPYC Zen 5, 32 x 192 keys, 8 heads).
    const int64_t per_thread = kt_words + v_words + tkp;
    uint32_t* const buf = scratch_as<uint32_t>(ScratchSlot::attention_keys, static_cast<size_t>(p.n_threads * per_thread));
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t b = u / p.Hkv, hk = u % p.Hkv;
      uint32_t* ktp = buf + TaskRanges::thread_index() * per_thread;
      uint32_t* vpp = ktp + kt_words;
      float* mp = reinterpret_cast<float*>(vpp + v_words);
      pack_head<BF, ND>(p, b, hk, tkp, ktp, vpp, mp);
      const void* vvp = BF ? static_cast<const void*>(vpp)  // fp32: values read in place
                           : static_cast<const void*>(static_cast<const float*>(p.v) + b * p.v_sb + hk * p.v_sh);
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h)
        for (int64_t t = 0; t < tiles; ++t)
          query_task<BF, ND>(p, ktp, vvp, mp, tkp, b, h, t * kRowsPerTask, std::min(p.Tq, (t + 1) * kRowsPerTask));
    }
    return;
  }
  // Few units (one kv head, small batch): every unit packed first, then the query tasks of all heads shared out.
  uint32_t* const kt = scratch_as<uint32_t>(ScratchSlot::attention_keys, static_cast<size_t>(units * kt_words));
  float* const madd = scratch_as<float>(ScratchSlot::attention_mask, static_cast<size_t>(p.B * tkp));
  uint32_t* const vpk =
      BF ? scratch_as<uint32_t>(ScratchSlot::attention_values, static_cast<size_t>(units * v_words)) : nullptr;
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t u = 0; u < units; ++u)
    pack_head<BF, ND>(p, u / p.Hkv, u % p.Hkv, tkp, kt + u * kt_words, BF ? vpk + u * v_words : nullptr,
                      u % p.Hkv == 0 ? madd + (u / p.Hkv) * tkp : nullptr);
#pragma omp parallel for collapse(3) num_threads(p.n_threads) schedule(static)
  for (int64_t b = 0; b < p.B; ++b) {
    for (int64_t h = 0; h < p.Hq; ++h) {
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t u = b * p.Hkv + h / group;
        // bf16: the packed value pairs; fp32: values read in place
        const void* vvp = BF ? static_cast<const void*>(vpk + u * v_words)
                             : static_cast<const void*>(static_cast<const float*>(p.v) + b * p.v_sb + (h / group) * p.v_sh);
        query_task<BF, ND>(p, kt + u * kt_words, vvp, madd + b * tkp, tkp, b, h, t * kRowsPerTask,
                           std::min(p.Tq, (t + 1) * kRowsPerTask));
      }
    }
  }
}

}  // namespace

void attention_avx512(const AttentionParams& p) {
  if (p.D == 128)
    p.bf16 ? run<true, 8>(p) : run<false, 8>(p);
  else
    p.bf16 ? run<true, 4>(p) : run<false, 4>(p);
}

}  // namespace illada::cpu
