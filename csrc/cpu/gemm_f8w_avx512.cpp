// AVX-512 BF16 FP8-weight GEMM (see gemm_f8w.h). Per task (96 rows x a 64-channel panel) and K block (256),
// the panel's fp8 weights are widened once into a bf16 scratch that stays in L1 (e4m3 -> fp16 bit pattern ->
// fp32 x 2^8 -> bf16, all exact), then a 6 x 4 register tile of vdpbf16ps runs over every row tile.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "gemm_f8w.h"
#include "avx512_util.h"
#include "gemm_w8a8.h"
#include "scratch.h"
#include "task_ranges.h"

namespace illada::cpu {

namespace {

constexpr int kMR = 6, kNV = 4;
constexpr int64_t kRowsPerTask = 96, kK2Block = 128;

// scratch: kNV * kK2Block pairs x 16 channels of bf16 (4 x 128 x 64 bytes = 32 KB); c: fp32 partial sums
template <int MR, int NV>
struct TileF8 {
  static void run(const GemmF8Params& p, const uint16_t* xs, int64_t ldxs, int64_t m0, int64_t nb0, int64_t k0,
          int64_t k1, const __m512i* scratch, float* c) {
    constexpr int64_t ldc = kNV * 16;
    __m512 acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
      for (int j = 0; j < NV; ++j) acc[i][j] = k0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(c + i * ldc + j * 16);
    for (int64_t k2 = k0; k2 < k1; ++k2) {
      __m512i bv[NV];
#pragma GCC unroll 16
      for (int j = 0; j < NV; ++j) bv[j] = scratch[j * kK2Block + (k2 - k0)];
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        int32_t pair;
        std::memcpy(&pair, xs + (m0 + i) * ldxs + 2 * k2, 4);
        const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 16
        for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av, (__m512bh)bv[j]);
      }
    }
    if (k1 < p.K2) {
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
        for (int j = 0; j < NV; ++j) _mm512_storeu_ps(c + i * ldc + j * 16, acc[i][j]);
      return;
    }
    for (int j = 0; j < NV; ++j) {
      const int64_t n0 = (nb0 + j) * 16;
      const int64_t valid = p.N - n0 < 16 ? p.N - n0 : 16;
      const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
      const __m512 ws = _mm512_maskz_loadu_ps(mask, p.w_scale + n0);
      for (int i = 0; i < MR; ++i) {
        const __m512 f = _mm512_mul_ps(acc[i][j], ws);
        const int64_t o = (m0 + i) * p.ldo + n0;
        if (p.out_is_bf16)
          _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p.out) + o, mask, avx512::to_bf16(f));
        else
          _mm512_mask_storeu_ps(static_cast<float*>(p.out) + o, mask, f);
      }
    }
  }
};

}  // namespace

void gemm_f8w_avx512(const GemmF8Params& p) {
  // Odd K: the last pair's second activation must be 0 (weights there are 0, but 0 * NaN/inf is not), so
  // activations are copied into an even-width, zero-padded buffer in that case only.
  const uint16_t* xs = p.x;
  int64_t ldxs = p.ldx;
  if (p.K % 2) {
    ldxs = p.K2 * 2;
    uint16_t* const padded = scratch_as<uint16_t>(ScratchSlot::gemm_operand, static_cast<size_t>(p.M * ldxs));
    for (int64_t m = 0; m < p.M; ++m) {
      std::memcpy(padded + m * ldxs, p.x + m * p.ldx, p.K * 2);
      padded[m * ldxs + p.K] = 0;
    }
    xs = padded;
  }
  // Tasks (panel of kNV blocks) x (block of kRowsPerTask rows), panel-major, balanced by TaskRanges; a task whose
  // thread expects another panel next prefetches that panel's weights while it widens its own (at decoding's small
  // M the weights stream from DRAM), a share of the lines per widened K block.
  const int64_t NB = (p.N + 15) / 16, panels = (NB + kNV - 1) / kNV;
  const int64_t row_tasks = (p.M + kRowsPerTask - 1) / kRowsPerTask;
  TaskRanges ranges(panels * row_tasks, p.n_threads);
#pragma omp parallel num_threads(p.n_threads)
  ranges.run([&](int64_t task, int64_t next) {
    const int64_t nb0 = task / row_tasks * kNV, m_begin = task % row_tasks * kRowsPerTask;
    const int64_t m_end = std::min(p.M, m_begin + kRowsPerTask);
    const int nv = static_cast<int>(std::min<int64_t>(kNV, NB - nb0));
    int64_t lines = 0;  // 64 B each: a block's K2 pairs x 16 channels are K2 * 32 bytes
    const char* pf = nullptr;
    if (next >= 0 && next / row_tasks != task / row_tasks) {
      const int64_t nnb0 = next / row_tasks * kNV;
      lines = (std::min<int64_t>(kNV, NB - nnb0) * p.K2 * 32 + 63) / 64;
      pf = reinterpret_cast<const char*>(p.w_packed + nnb0 * p.K2 * 32);
    }
    const int64_t kblocks = std::max<int64_t>(1, (p.K2 + kK2Block - 1) / kK2Block);
    int64_t kb = 0;
    alignas(64) __m512i scratch[kNV * kK2Block];
    alignas(64) float partial[kRowsPerTask * kNV * 16];
    for (int64_t k0 = 0; k0 < p.K2 || k0 == 0; k0 += kK2Block, ++kb) {
      const int64_t k1 = k0 + kK2Block < p.K2 ? k0 + kK2Block : p.K2;
      for (int64_t l = kb * lines / kblocks; l < (kb + 1) * lines / kblocks; ++l)
        _mm_prefetch(pf + l * 64, _MM_HINT_T0);
      for (int j = 0; j < nv; ++j)
        for (int64_t k2 = k0; k2 < k1; ++k2)
          scratch[j * kK2Block + (k2 - k0)] = widen_e4m3(_mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(p.w_packed + ((nb0 + j) * p.K2 + k2) * 32)));
      avx512::for_each_row_tile(m_begin, m_end, kMR, [&](int64_t m0, int mr) {
        avx512::pick_tile<TileF8>(mr, nv)(p, xs, ldxs, m0, nb0, k0, k1, scratch, partial + (m0 - m_begin) * kNV * 16);
      });
      if (p.K2 == 0) break;
    }
  });
}

}  // namespace illada::cpu
