// AVX-512 VNNI W8A8 GEMM. Register tile: MR rows x NV vectors of 16 output channels (6 x 4: 24 int32
// accumulators). vpdpbusd multiplies unsigned by signed bytes, so activations are first copied as q + 128
// (one pass over A; flipping on every broadcast instead costs half the throughput, as the xor competes with
// vpdpbusd for the same ports) and 128 * colsum[n] is subtracted in the epilogue: the int32 result is exact.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni; called only when the CPU has them.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "avx512_util.h"
#include "gemm_w8a8.h"
#include "norm_act.h"
#include "task_ranges.h"

namespace illada::cpu {

namespace {

constexpr int kMR = 6, kNV = 4;
constexpr int64_t kRowsPerTask = 96;
// K block, in groups of 4 (bytes of K / 4): a tile call runs one K block, parking its int32 sums in scratch
// between blocks. At M <= 16 (a task of one to three row tiles) 64 groups, whose kNV * 4 KB of panel stay in L1
// for the task's tiles; at larger M 256 (1 KB of K: a K = 1024 GEMM in one block), whose 64 KB of panel the tiles
// read from L2, which keeps up, for four times fewer tile calls and sum spills. Measured on the 176M model's
// shapes with weights from DRAM (AMD EPYC Zen 5, 2 threads): 256 was 6-7% faster at M = 24-32 and 2-4% at
// M = 96-192, 512 and the whole K no faster again; 64 was 5% faster at M = 8-16.
constexpr int64_t kK4BlockSmallM = 64, kK4Block = 256, kSmallM = 16;

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

namespace {

// One row of quantize_rows_s8_avx512 (below): x_row [K] into q's row m and scale[m].
void quantize_row_s8(const void* x_row, bool x_is_bf16, int64_t m, int64_t K, int8_t* q, float* scale,
                     bool shifted) {
  const int64_t Kp = round_up(K, 4);
  const __m512 lim = _mm512_set1_ps(127.f), nlim = _mm512_set1_ps(-127.f);
  const __m128i flip = _mm_set1_epi8(static_cast<char>(shifted ? 0x80 : 0));
  auto load = [&](int64_t k, __mmask16 mask) {
    if (x_is_bf16) {
      const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(x_row) + k);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(x_row) + k);
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

// The GEMMs of up to kMaxW8A8Segments weights sharing A (seg[s] differ only in their weight, scales and output),
// in one OpenMP region: `before()` runs first on every thread of the team and must end with a barrier (the fused
// linear quantizes A there); then the tasks, (panel of kNV blocks of one segment) x (block of kRowsPerTask rows),
// panel-major across the segments, run under TaskRanges. A task whose thread expects a task of another panel next
// prefetches that panel's weights (in the next segment too), its cache lines shared out over the tile calls, which
// issue them between their k steps: at decoding's small M the weights stream from DRAM. Measured at M = 32 with
// weights from DRAM on the 176M model's shapes (AMD EPYC Zen 5, 2 threads): one panel ahead beat two and four, and
// spreading the lines over the k steps beat a burst at each tile call by 7-10%.
template <class Before>
void gemm_s8_segments(const GemmS8Params* seg, int n_seg, const Before& before) {
  const GemmS8Params& p0 = seg[0];
  const int64_t row_tasks = (p0.M + kRowsPerTask - 1) / kRowsPerTask;
  int64_t start[kMaxW8A8Segments + 1] = {0};
  for (int s = 0; s < n_seg; ++s) start[s + 1] = start[s] + (round_up(seg[s].N, 16 * kNV) / (16 * kNV)) * row_tasks;
  TaskRanges ranges(start[n_seg], p0.n_threads);
  struct Task {
    int s;
    int64_t nb0, m_begin, m_end;
    int nv;
  };
  auto decode = [&](int64_t task) {
    int s = 0;
    while (task >= start[s + 1]) ++s;
    const int64_t local = task - start[s], NB = round_up(seg[s].N, 16) / 16;
    Task d{s, (local / row_tasks) * kNV, (local % row_tasks) * kRowsPerTask, 0, 0};
    d.m_end = std::min(p0.M, d.m_begin + kRowsPerTask);
    d.nv = static_cast<int>(std::min<int64_t>(kNV, NB - d.nb0));
    return d;
  };
#pragma omp parallel num_threads(p0.n_threads)
  {
    before();
    ranges.run([&](int64_t task, int64_t next) {
      const Task d = decode(task);
      const GemmS8Params& p = seg[d.s];
      alignas(64) int32_t scratch[kRowsPerTask * kNV * 16];
      int64_t lines = 0;  // 64 B each
      const char* pf = nullptr;
      if (next >= 0) {
        const Task n = decode(next);
        if (n.s != d.s || n.nb0 != d.nb0) {
          lines = n.nv * p0.K4;
          pf = reinterpret_cast<const char*>(seg[n.s].w_packed + n.nb0 * p0.K4 * 64);
        }
      }
      const int64_t kblock = p0.M <= kSmallM ? kK4BlockSmallM : kK4Block;
      const int64_t calls = std::max<int64_t>(1, (p.K4 + kblock - 1) / kblock) *
                            ((d.m_end - d.m_begin + kMR - 1) / kMR);
      int64_t call = 0;
      for (int64_t k0 = 0; k0 < p.K4 || k0 == 0; k0 += kblock) {
        const int64_t k1 = k0 + kblock < p.K4 ? k0 + kblock : p.K4;
        avx512::for_each_row_tile(d.m_begin, d.m_end, kMR, [&](int64_t m0, int mr) {
          const int64_t l0 = call * lines / calls, l1 = (call + 1) * lines / calls;
          ++call;
          avx512::pick_tile<TileS8>(mr, d.nv)(p, m0, d.nb0, k0, k1, scratch + (m0 - d.m_begin) * kNV * 16,
                                              pf + l0 * 64, l1 - l0);
        });
      }
    });
  }
}

}  // namespace

void quantize_rows_s8_avx512(const void* x, bool x_is_bf16, int64_t ldx, int64_t M, int64_t K, int8_t* q,
                             float* scale, bool shifted, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static)
  for (int64_t m = 0; m < M; ++m)
    quantize_row_s8(static_cast<const char*>(x) + m * ldx * (x_is_bf16 ? 2 : 4), x_is_bf16, m, K, q, scale, shifted);
}

void linear_w8a8_avx512(const LinearW8A8Params& p, const GemmS8Params* g, int n_seg, int8_t* q, float* xs,
                        void* swiglu_rows) {
  const size_t esize = p.x_is_bf16 ? 2 : 4;
  // x is quantized (as q + 128) in the GEMM's own region: one fork and one barrier fewer per call; with p.up the
  // row is first swiglu(gate, up) into this thread's row buffer
  gemm_s8_segments(g, n_seg, [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < p.M; ++m) {
      const void* row = static_cast<const char*>(p.x) + m * p.ldx * esize;
      if (p.up != nullptr) {
        void* buf = static_cast<char*>(swiglu_rows) + TaskRanges::thread_index() * p.K * esize;
        swiglu_row_avx512(p.x_is_bf16, row, static_cast<const char*>(p.up) + m * p.ldu * esize, buf, p.K);
        row = buf;
      }
      quantize_row_s8(row, p.x_is_bf16, m, p.K, q, xs, /*shifted=*/true);
    }
  });
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
  gemm_s8_segments(&p, 1, [] {});
}

}  // namespace illada::cpu
