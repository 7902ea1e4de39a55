// AVX-512 VNNI W8A8 GEMM. Register tile: MR rows x NV vectors of 16 output channels (6 x 4: 24 int32
// accumulators). vpdpbusd multiplies unsigned by signed bytes, so activations are first copied as q + 128
// (one pass over A; flipping on every broadcast instead costs half the throughput, as the xor competes with
// vpdpbusd for the same ports) and 128 * colsum[n] is subtracted in the epilogue: the int32 result is exact.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni; called only when the CPU has them.
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "avx512_util.h"
#include "gemm_w8a8.h"

namespace illada::cpu {

namespace {

constexpr int kMR = 6, kNV = 4;
constexpr int64_t kRowsPerTask = 96;
// K block: 64 groups of 4 (256 bytes of K): a panel's weights for one K block are kNV * 4 KB and stay in L1
// while every row tile of the task uses them.
constexpr int64_t kK4Block = 64;
// How far ahead (in panels of kNV blocks) a task prefetches weights. With the prefetches spread one per k step
// (rather than issued in a burst at each tile call), M = 32 against weights streaming from DRAM ran 7-10% faster,
// and one panel ahead beat two and four (AMD EPYC Zen 5, 2 threads, the 176M model's shapes).
constexpr int64_t kPrefetchPanels = 1;

// One register tile over k4 in [k_begin, k_end). First K block starts from zero, later ones resume from the
// int32 scratch `c` (ldc = kNV * 16); the last K block runs the epilogue, the others park the sums in `c`.
template <int MR, int NV>
struct TileS8 {
  static void run(const GemmS8Params& p, int64_t m0, int64_t nb0, int64_t k_begin, int64_t k_end, int32_t* c,
                  const char* pf, int64_t pf_lines) {
    constexpr int64_t ldc = kNV * 16;
    __m512i acc[MR][NV];
    #pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
      #pragma GCC unroll 16
      for (int j = 0; j < NV; ++j)
        acc[i][j] = k_begin == 0 ? _mm512_setzero_si512() : _mm512_loadu_si512(c + i * ldc + j * 16);
    const int64_t bstride = p.K4 * 64;
    const int8_t* b = p.w_packed + nb0 * bstride;
    const int8_t* a = p.a + m0 * p.lda;
    // this call's share of the weight prefetch, spread over its steps (a burst would fill the miss buffers)
    const int64_t pf_per_step = k_end > k_begin ? (pf_lines + (k_end - k_begin) - 1) / (k_end - k_begin) : 0;
    int64_t pf_done = 0;
    for (int64_t k4 = k_begin; k4 < k_end; ++k4) {
      for (int64_t i = 0; i < pf_per_step && pf_done < pf_lines; ++i, ++pf_done) _mm_prefetch(pf + pf_done * 64, _MM_HINT_T0);
      __m512i bv[NV];
      #pragma GCC unroll 16
      for (int j = 0; j < NV; ++j) bv[j] = _mm512_loadu_si512(b + j * bstride + k4 * 64);
      #pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        int32_t a4;
        std::memcpy(&a4, a + i * p.lda + k4 * 4, 4);
        const __m512i av = _mm512_set1_epi32(a4);  // a holds q + 128 (see gemm_s8_avx512)
        #pragma GCC unroll 16
        for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], av, bv[j]);
      }
    }
    if (k_end < p.K4) {
      #pragma GCC unroll 16
      for (int i = 0; i < MR; ++i)
        #pragma GCC unroll 16
        for (int j = 0; j < NV; ++j) _mm512_storeu_si512(c + i * ldc + j * 16, acc[i][j]);
      return;
    }
    #pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) {
      const int64_t n0 = (nb0 + j) * 16;
      const int64_t valid = p.N - n0 < 16 ? p.N - n0 : 16;
      const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
      const __m512i comp = _mm512_slli_epi32(_mm512_loadu_si512(p.colsum + n0), 7);
      __m512 ws = _mm512_setzero_ps();
      if (p.out_kind != OutKind::i32) ws = _mm512_maskz_loadu_ps(mask, p.w_scale + n0);
      #pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) store_s8_row(p, _mm512_sub_epi32(acc[i][j], comp), m0 + i, n0, mask, ws);
    }
  }
};

}  // namespace

void quantize_rows_s8_avx512(const void* x, bool x_is_bf16, int64_t ldx, int64_t M, int64_t K, int8_t* q,
                             float* scale, bool shifted, int n_threads) {
  const int64_t Kp = round_up(K, 4);
  const __m512 lim = _mm512_set1_ps(127.f), nlim = _mm512_set1_ps(-127.f);
  const __m128i flip = _mm_set1_epi8(static_cast<char>(shifted ? 0x80 : 0));
#pragma omp parallel for num_threads(n_threads) schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    auto load = [&](int64_t k, __mmask16 mask) {
      if (x_is_bf16) {
        const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(x) + m * ldx + k);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      }
      return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(x) + m * ldx + k);
    };
    __m512 amax = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 mask = K - k >= 16 ? 0xffff : static_cast<__mmask16>((1u << (K - k)) - 1u);
      amax = _mm512_max_ps(amax, _mm512_abs_ps(load(k, mask)));
    }
    const float a = _mm512_reduce_max_ps(amax);
    const float s = a > 0.f ? a / 127.f : 1.f;
    scale[m] = s;
    const __m512 sv = _mm512_set1_ps(s);
    int8_t* out = q + m * Kp;
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 mask = K - k >= 16 ? 0xffff : static_cast<__mmask16>((1u << (K - k)) - 1u);
      __m512 v = _mm512_roundscale_ps(_mm512_div_ps(load(k, mask), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v = _mm512_min_ps(_mm512_max_ps(v, nlim), lim);
      const __m128i b = _mm_xor_si128(_mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)), flip);
      _mm_mask_storeu_epi8(out + k, mask, b);
    }
    for (int64_t k = K; k < Kp; ++k) out[k] = static_cast<int8_t>(shifted ? 0x80 : 0);
  }
}

void gemm_s8_avx512(const GemmS8Params& in) {
  const int64_t Kp = in.K4 * 4;
  std::vector<int8_t> shifted;
  if (!in.a_shifted) {  // the signed layout of the public gemm_s8: one pass to q + 128
    shifted.resize(static_cast<size_t>(in.M * Kp));
#pragma omp parallel for num_threads(in.n_threads) schedule(static)
    for (int64_t m = 0; m < in.M; ++m) {
      const uint8_t* src = reinterpret_cast<const uint8_t*>(in.a + m * in.lda);
      uint8_t* dst = reinterpret_cast<uint8_t*>(shifted.data() + m * Kp);
      for (int64_t k = 0; k < Kp; ++k) dst[k] = static_cast<uint8_t>(src[k] ^ 0x80u);
    }
  }
  GemmS8Params p = in;
  if (!in.a_shifted) {
    p.a = shifted.data();
    p.lda = Kp;
  }
  avx512::for_each_gemm_task(p.M, p.N, kRowsPerTask, kNV, p.n_threads,
                             [&](int64_t m_begin, int64_t m_end, int64_t nb0, int nv) {
    alignas(64) int32_t scratch[kRowsPerTask * kNV * 16];
    // The last row task of a panel prefetches the panel kPrefetchPanels ahead (contiguous in the packed layout),
    // its cache lines shared out over this task's tile calls, which issue them between their k steps: at
    // decoding's small M the weights stream from DRAM.
    const int64_t nb_pf = nb0 + kPrefetchPanels * kNV, NB = round_up(p.N, 16) / 16;
    const int64_t lines = m_end == p.M && nb_pf < NB ? std::min<int64_t>(kNV, NB - nb_pf) * p.K4 : 0;  // 64 B each
    const char* pf = reinterpret_cast<const char*>(p.w_packed + nb_pf * p.K4 * 64);
    const int64_t calls = std::max<int64_t>(1, (p.K4 + kK4Block - 1) / kK4Block) * ((m_end - m_begin + kMR - 1) / kMR);
    int64_t call = 0;
    for (int64_t k0 = 0; k0 < p.K4 || k0 == 0; k0 += kK4Block) {
      const int64_t k1 = k0 + kK4Block < p.K4 ? k0 + kK4Block : p.K4;
      avx512::for_each_row_tile(m_begin, m_end, kMR, [&](int64_t m0, int mr) {
        const int64_t l0 = call * lines / calls, l1 = (call + 1) * lines / calls;
        ++call;
        avx512::pick_tile<TileS8>(mr, nv)(p, m0, nb0, k0, k1, scratch + (m0 - m_begin) * kNV * 16, pf + l0 * 64,
                                          l1 - l0);
      });
    }
  });
}

}  // namespace illada::cpu
