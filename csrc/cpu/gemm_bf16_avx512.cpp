// AVX-512 BF16 GEMM for small M (see gemm_bf16.h). Register tile: 3 rows of x x 8 rows of w, 24 fp32 vectors of
// 16 lanes; per 32-element chunk of K, 3 + 8 loads feed 24 vdpbf16ps. A task is a panel of 8 weight rows over a block
// of up to 128 rows of x, in K blocks of 1024 (the panel's 16 KB of weights stay in L1 while every row tile of the
// block uses them; partial lanes are parked between K blocks). The lanes of a row's 8 outputs are summed by one
// fixed tree in registers and stored at once. Compiled with AVX-512 F/BW/BF16; called only when the CPU has them.
#include <immintrin.h>

#include <algorithm>

#include "avx512_util.h"
#include "gemm_bf16.h"
#include "gemm_w8a8.h"  // f32_to_bf16
#include "task_ranges.h"

namespace illada::cpu {

namespace {

constexpr int kMR = 3, kNR = 8;
constexpr int64_t kRowsPerTask = 128, kKBlock = 1024;  // kKBlock: a multiple of 32 (chunking is K-block free)
// Weights stream from DRAM at decoding's small M; a task prefetches the panel kAheadTasks + 1 tasks ahead along its
// thread's walk (from TaskRanges' guess of the next task). On Zen 5 at M = 32 with weights out of cache, prefetching
// beat none, and two panels ahead beat one by about 3% (in-process A/B); issued one line per k step inside the tile
// rather than in a burst before it: 3-5% faster there.
constexpr int64_t kAheadTasks = 1;

// 8 vectors -> their 8 lane sums, in order: within each 128-bit lane (e0 + e2) + (e1 + e3), then (s0 + s2) + (s1 + s3).
inline __m256 reduce8(const __m512* v) {
  __m512 t[4], u[2];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)
    u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 w = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 r = _mm512_add_ps(w, _mm512_shuffle_f32x4(w, w, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_castps512_ps256(_mm512_shuffle_f32x4(r, r, _MM_SHUFFLE(3, 1, 2, 0)));  // 128-bit lanes 0 and 2
}

// One 32-element chunk of K (masked: the columns beyond K read as 0) for the whole register tile.
template <int MR, int NR>
[[gnu::always_inline]] inline void step(__m512 (&acc)[MR][NR], const uint16_t* x, int64_t ldx, const uint16_t* w,
                                        int64_t ldw, int64_t k, __mmask32 mask) {
  __m512bh xv[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) xv[i] = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + i * ldx + k);
#pragma GCC unroll 8
  for (int j = 0; j < NR; ++j) {
    const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + j * ldw + k);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv[i], wv);
  }
}

template <int MR, int NR>
struct TileBf16 {
  // Rows m0 .. m0+MR of x against weight rows n0 .. n0+NR of segment g over K in [k0, k1); park: MR * NR vectors.
  static void run(const GemmBf16Params& p, const GemmBf16Segment& g, int64_t m0, int64_t n0, int64_t k0,
                  int64_t k1, __m512* park, const char* pf, int64_t pf_lines) {
    __m512 acc[MR][NR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) acc[i][j] = k0 == 0 ? _mm512_setzero_ps() : park[i * NR + j];
    const uint16_t* x = p.x + m0 * p.ldx;
    const uint16_t* w = g.w + n0 * g.ldw;
    int64_t k = k0;
    // this call's share of the weight prefetch, spread over its steps (a burst would fill the miss buffers)
    const int64_t steps = (k1 - k0 + 31) / 32;
    const int64_t pf_per_step = steps ? (pf_lines + steps - 1) / steps : 0;
    int64_t pf_done = 0;
    for (; k + 32 <= k1; k += 32) {
      for (int64_t i = 0; i < pf_per_step && pf_done < pf_lines; ++i, ++pf_done) _mm_prefetch(pf + pf_done * 64, _MM_HINT_T0);
      step(acc, x, p.ldx, w, g.ldw, k, ~__mmask32(0));
    }
    for (; pf_done < pf_lines; ++pf_done) _mm_prefetch(pf + pf_done * 64, _MM_HINT_T0);
    if (k < k1) step(acc, x, p.ldx, w, g.ldw, k, static_cast<__mmask32>((1u << (k1 - k)) - 1u));
    if (k1 < p.K) {
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j) park[i * NR + j] = acc[i][j];
      return;
    }
    // Each row's NR outputs are contiguous: one reduction tree, one (masked) store. Loops unrolled so that acc
    // stays in registers.
    constexpr __mmask8 mask = static_cast<__mmask8>((1u << NR) - 1u);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      __m512 v[8];
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) v[j] = j < NR ? acc[i][j < NR ? j : 0] : _mm512_setzero_ps();
      const __m256 sums = reduce8(v);
      const int64_t o = (m0 + i) * g.ldo + n0;
      if (p.out_is_bf16)
        _mm_mask_storeu_epi16(static_cast<uint16_t*>(g.out) + o, mask,
                              _mm256_castsi256_si128(avx512::to_bf16(_mm512_castps256_ps512(sums))));
      else
        _mm256_mask_storeu_ps(static_cast<float*>(g.out) + o, mask, sums);
    }
  }
};

using TileFn = decltype(&TileBf16<kMR, kNR>::run);

template <int MR, int... NRs>
TileFn pick_nr(int nr, std::integer_sequence<int, NRs...>) {
  TileFn fn = nullptr;
  ((nr == NRs + 1 ? (fn = &TileBf16<MR, NRs + 1>::run, 0) : 0), ...);
  return fn;
}

TileFn pick(int mr, int nr) {
  const auto nrs = std::make_integer_sequence<int, kNR>{};
  switch (mr) {
    case 1: return pick_nr<1>(nr, nrs);
    case 2: return pick_nr<2>(nr, nrs);
    default: return pick_nr<3>(nr, nrs);
  }
}

}  // namespace

void gemm_bf16_avx512(const GemmBf16Params& p) {
  // Tasks: (panel of kNR weight rows of one segment) x (block of kRowsPerTask rows), panel-major across the
  // segments, so one thread's consecutive tasks walk the weights once, in order; TaskRanges balances the threads.
  int64_t panel_start[kMaxBf16Segments + 1] = {0};
  for (int s = 0; s < p.n_seg; ++s) panel_start[s + 1] = panel_start[s] + (p.seg[s].N + kNR - 1) / kNR;
  const int64_t row_blocks = (p.M + kRowsPerTask - 1) / kRowsPerTask;
  struct Task {
    int s;
    int64_t panel, n0, m_begin, m_end;
    int nr;
  };
  auto decode = [&](int64_t task) {
    const int64_t panel = task / row_blocks, rb = task % row_blocks;
    int s = 0;
    while (panel >= panel_start[s + 1]) ++s;
    Task d{s, panel, (panel - panel_start[s]) * kNR, rb * kRowsPerTask, 0, 0};
    d.m_end = std::min(p.M, d.m_begin + kRowsPerTask);
    d.nr = static_cast<int>(std::min<int64_t>(kNR, p.seg[s].N - d.n0));
    return d;
  };
  const int64_t tasks = panel_start[p.n_seg] * row_blocks;
  TaskRanges ranges(tasks, p.n_threads);
#pragma omp parallel num_threads(p.n_threads)
  ranges.run([&](int64_t task, int64_t next) {
    const Task d = decode(task);
    const GemmBf16Segment& g = p.seg[d.s];
    alignas(64) __m512 park[kRowsPerTask * kNR];  // only used when K spans several K blocks
    // The weights of a panel this thread expects to run soon (in the next segment too) are prefetched while this one
    // computes, their cache lines spread evenly over this task's tile calls.
    int64_t n_next = 0, nn0 = 0;
    const GemmBf16Segment* gn = &g;
    // Two panels ahead along the thread's walk: one panel is only 16 KB (K = 1024), too little time to hide DRAM.
    const int64_t ahead = next >= 0 ? next + (next - task) * kAheadTasks : -1;
    if (next >= 0 && ahead >= 0 && ahead < tasks) {
      const Task n = decode(ahead);
      if (n.panel != d.panel) n_next = n.nr, nn0 = n.n0, gn = &p.seg[n.s];
    }
    const bool contiguous = gn->ldw == p.K;
    const int64_t row_lines = (p.K * 2 + 63) / 64;
    const int64_t lines = contiguous ? (n_next * p.K * 2 + 63) / 64 : n_next * row_lines;
    const char* pf_base = reinterpret_cast<const char*>(gn->w + nn0 * gn->ldw);
    const int64_t calls =
        std::max<int64_t>(1, (p.K + kKBlock - 1) / kKBlock) * ((d.m_end - d.m_begin + kMR - 1) / kMR);
    int64_t call = 0;
    for (int64_t k0 = 0; k0 < p.K || k0 == 0; k0 += kKBlock) {
      const int64_t k1 = std::min(p.K, k0 + kKBlock);
      for (int64_t m0 = d.m_begin; m0 < d.m_end; m0 += kMR, ++call) {
        const int64_t l0 = call * lines / calls, l1 = (call + 1) * lines / calls;
        // contiguous rows: one range, issued by the tile between its steps (a prefetch past the tensor's end never
        // faults); else lines l0 .. l1 of rows nn0.., row by row, here
        if (!contiguous && l1 > l0) {
          int64_t r = l0 / row_lines, off = l0 % row_lines;
          for (int64_t l = l0; l < l1; ++l) {
            _mm_prefetch(reinterpret_cast<const char*>(gn->w + (nn0 + r) * gn->ldw) + off * 64, _MM_HINT_T0);
            if (++off == row_lines) off = 0, ++r;
          }
        }
        const int mr = static_cast<int>(std::min<int64_t>(kMR, d.m_end - m0));
        pick(mr, d.nr)(p, g, m0, d.n0, k0, k1, park + (m0 - d.m_begin) * kNR, pf_base + l0 * 64,
                       contiguous ? l1 - l0 : 0);
      }
      if (p.K == 0) break;
    }
  });
}

}  // namespace illada::cpu
