// AVX2/FMA bf16 GEMM (see gemm_bf16.h) for CPUs without AVX-512 BF16, where PyTorch's bf16 matmul has no fast path
// (torch 2.13 on 2 cores of an AMD EPYC Zen 3: F.linear 15-20 GFLOP/s, its fp32 matmul 70-100). It keeps the AVX-512
// kernel's accumulation, so the bits are the same on every CPU: each output has 16 fp32 lanes, lane l of every
// 32-element chunk of K adding x[2l+1] w[2l+1] and then x[2l] w[2l] (the products are exact in fp32, so an FMA
// rounds as vdpbf16ps does), the lanes summed by the same tree at the end. A 256-bit load of 16 bf16 holds the pairs
// of 8 lanes: its odd elements are `v & 0xffff0000` as fp32, its even ones `v << 16`; the 16 lanes are two vectors.
//
// x is widened once per call into fp32 in that split layout (per row and chunk: lanes 0-7 odd, even, lanes 8-15 odd,
// even; the rows of a 6-row tile side by side per chunk, so a tile's x is one sequential stream), so the inner loop's
// x operands are plain loads folded into the FMAs and only the weights are split. Register tile: up to 6 rows of x
// against 1 weight row, 12 accumulators. A task is a panel of 32 weight rows over a block of up to 96 rows of x in K
// blocks of 1024: a row tile's x (24 KB) stays in L1 while the tile walks the panel's rows (64 KB, from L2), and the
// task's x block (384 KB) in L2 while the row tiles walk it. The lanes carried between K blocks are parked in scratch
// (192 KB a thread). On 2 cores of an AMD EPYC Zen 3 this blocking ran decoding's shapes (M = 32 and 192, K = 1024
// and 3072) 10-40% faster than 8-row panels with K blocks of 512 (a standalone sweep; the machine's noise is as large
// between runs). Compiled with -mavx2 -mfma; called only when the CPU has them.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "gemm_bf16.h"
#include "gemm_w8a8.h"  // f32_to_bf16
#include "scratch.h"
#include "task_ranges.h"

namespace illada::cpu {

namespace {

constexpr int kMR = 6, kPanel = 32;
constexpr int64_t kRowsPerTask = 96, kKBlock = 1024;  // kKBlock: a multiple of 32
constexpr int64_t kParkVectors = kRowsPerTask * kPanel * 2;  // a thread's parked lanes: 2 vectors per output
static_assert(kRowsPerTask % kMR == 0, "a task's row tiles start at multiples of kMR (the split layout's tiles)");

inline __m256 odd_of(__m256i v) { return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(-65536))); }
inline __m256 even_of(__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); }

// A row of x into its tile's split layout: chunk c at out + c * kMR * 32, as 4 vectors of 8 floats (odd and even
// elements of the chunk's first 16, then of its last 16). Elements at or beyond K are zero.
void split_row(const uint16_t* x, int64_t K, float* out) {
  int64_t k = 0;
  for (; k + 32 <= K; k += 32, out += kMR * 32) {
    for (int h = 0; h < 2; ++h) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k + 16 * h));
      _mm256_store_ps(out + 16 * h, odd_of(v));
      _mm256_store_ps(out + 16 * h + 8, even_of(v));
    }
  }
  if (k < K) {
    alignas(32) uint16_t tail[32] = {0};
    std::memcpy(tail, x + k, static_cast<size_t>(K - k) * 2);
    for (int h = 0; h < 2; ++h) {
      const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail + 16 * h));
      _mm256_store_ps(out + 16 * h, odd_of(v));
      _mm256_store_ps(out + 16 * h + 8, even_of(v));
    }
  }
}

// The 16 lanes (lo: 0-7, hi: 8-15) summed as the AVX-512 kernel's tree: per group of 4, (e0 + e2) + (e1 + e3); then
// (s0 + s2) + (s1 + s3).
inline float tree_sum(__m256 lo, __m256 hi) {
  auto quads = [](__m256 v) {
    const __m256 t = _mm256_add_ps(v, _mm256_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm256_add_ps(t, _mm256_permute_ps(t, _MM_SHUFFLE(2, 3, 0, 1)));
  };
  const __m256 a = _mm256_add_ps(quads(lo), quads(hi));  // element 0: s0 + s2, element 4: s1 + s3
  return _mm_cvtss_f32(_mm256_castps256_ps128(a)) + _mm_cvtss_f32(_mm256_extractf128_ps(a, 1));
}

// One 32-element chunk of weight row w (its 16 + 16 elements split) against MR rows of split x.
template <int MR>
[[gnu::always_inline]] inline void step(__m256 (&acc)[MR][2], const float* xs, const uint16_t* w) {
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 16 * h));
    const __m256 wo = odd_of(v), we = even_of(v);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      acc[i][h] = _mm256_fmadd_ps(_mm256_load_ps(xs + i * 32 + 16 * h), wo, acc[i][h]);
      acc[i][h] = _mm256_fmadd_ps(_mm256_load_ps(xs + i * 32 + 16 * h + 8), we, acc[i][h]);
    }
  }
}

template <int MR>
struct Tile {
  // Rows m0 .. m0+MR (their tile's split x at xs) against weight row n of segment g over K in [k0, k1); park: MR x 2
  // vectors, the lanes carried between K blocks.
  static void run(const GemmBf16Params& p, const GemmBf16Segment& g, const float* xs, int64_t m0,
                  int64_t n, int64_t k0, int64_t k1, __m256* park) {
    __m256 acc[MR][2];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
      for (int h = 0; h < 2; ++h) acc[i][h] = k0 == 0 ? _mm256_setzero_ps() : park[2 * i + h];
    const uint16_t* w = g.w + n * g.ldw;
    int64_t k = k0;
#pragma GCC unroll 2
    for (; k + 32 <= k1; k += 32) step<MR>(acc, xs + k * kMR, w + k);
    if (k < k1) {  // the K tail: the weight row's last elements copied beside zeros (never read past the row)
      alignas(32) uint16_t tail[32] = {0};
      std::memcpy(tail, w + k, static_cast<size_t>(k1 - k) * 2);
      step<MR>(acc, xs + k * kMR, tail);
    }
    if (k1 < p.K) {
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i)
        for (int h = 0; h < 2; ++h) park[2 * i + h] = acc[i][h];
      return;
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const float v = tree_sum(acc[i][0], acc[i][1]);
      const int64_t o = (m0 + i) * g.ldo + n;
      if (p.out_is_bf16)
        static_cast<uint16_t*>(g.out)[o] = f32_to_bf16(v);
      else
        static_cast<float*>(g.out)[o] = v;
    }
  }
};

using TileFn = decltype(&Tile<kMR>::run);

TileFn pick(int mr) {
  switch (mr) {
    case 1: return &Tile<1>::run;
    case 2: return &Tile<2>::run;
    case 3: return &Tile<3>::run;
    case 4: return &Tile<4>::run;
    case 5: return &Tile<5>::run;
    default: return &Tile<6>::run;
  }
}

}  // namespace

void gemm_bf16_avx2(const GemmBf16Params& p) {
  const int64_t chunks = (p.K + 31) / 32, tile_floats = chunks * 32 * kMR;
  // one scratch block: the split x, then (when K spans several K blocks) each thread's parked lanes
  const int64_t x_floats = (p.M + kMR - 1) / kMR * tile_floats;
  const int64_t park_floats = p.K > kKBlock ? kParkVectors * 8 : 0;
  float* xs = scratch_as<float>(ScratchSlot::gemm_bf16_operand,
                                static_cast<size_t>(std::max<int64_t>(1, x_floats + p.n_threads * park_floats)));
  __m256* parks = reinterpret_cast<__m256*>(xs + x_floats);  // x_floats is a multiple of 32 * kMR: 32-byte aligned
  // Tasks: (panel of kPanel weight rows of one segment) x (block of kRowsPerTask rows), panel-major across the
  // segments (each thread walks the weights once, in order); TaskRanges balances the threads.
  int64_t panel_start[kMaxBf16Segments + 1] = {0};
  for (int s = 0; s < p.n_seg; ++s) panel_start[s + 1] = panel_start[s] + (p.seg[s].N + kPanel - 1) / kPanel;
  const int64_t row_blocks = (p.M + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t tasks = panel_start[p.n_seg] * row_blocks;
  TaskRanges ranges(tasks, p.n_threads);
#pragma omp parallel num_threads(p.n_threads)
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < p.M; ++m) split_row(p.x + m * p.ldx, p.K, xs + m / kMR * tile_floats + m % kMR * 32);
    ranges.run([&](int64_t task, int64_t) {
      const int64_t panel = task / row_blocks, rb = task % row_blocks;
      int s = 0;
      while (panel >= panel_start[s + 1]) ++s;
      const GemmBf16Segment& g = p.seg[s];
      const int64_t n0 = (panel - panel_start[s]) * kPanel, n1 = std::min(g.N, n0 + kPanel);
      const int64_t m_begin = rb * kRowsPerTask, m_end = std::min(p.M, m_begin + kRowsPerTask);
      __m256* park = parks + (park_floats ? TaskRanges::thread_index() % p.n_threads * kParkVectors : 0);
      for (int64_t k0 = 0; k0 < p.K || k0 == 0; k0 += kKBlock) {
        const int64_t k1 = std::min(p.K, k0 + kKBlock);
        for (int64_t m0 = m_begin; m0 < m_end; m0 += kMR) {
          const int mr = static_cast<int>(std::min<int64_t>(kMR, m_end - m0));
          const TileFn tile = pick(mr);
          for (int64_t n = n0; n < n1; ++n)
            tile(p, g, xs + m0 / kMR * tile_floats, m0, n, k0, k1, park + ((n - n0) * kRowsPerTask + (m0 - m_begin)) * 2);
        }
        if (p.K == 0) break;
      }
    });
  }
}

}  // namespace illada::cpu
