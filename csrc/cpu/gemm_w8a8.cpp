// Packing, activation quantization and ISA dispatch for the W8A8 GEMM (see gemm_w8a8.h).
#include "gemm_w8a8.h"

#include "../common/check.h"
#include "norm_act.h"
#include "scratch.h"

#include <cmath>
#include <cstring>

namespace illada::cpu {

void pack_w8(const int8_t* w, int64_t ldw, int64_t N, int64_t K, int8_t* packed, int32_t* colsum, int n_threads) {
  const int64_t K4 = round_up(K, 4) / 4, NB = round_up(N, 16) / 16;
#pragma omp parallel for num_threads(n_threads) schedule(static)
  for (int64_t nb = 0; nb < NB; ++nb) {
    int8_t* dst = packed + nb * K4 * 64;
    std::memset(dst, 0, static_cast<size_t>(K4 * 64));
    for (int64_t j = 0; j < 16; ++j) {
      const int64_t n = nb * 16 + j;
      int32_t sum = 0;
      if (n < N) {
        const int8_t* row = w + n * ldw;
        for (int64_t k = 0; k < K; ++k) {
          dst[(k / 4) * 64 + j * 4 + (k % 4)] = row[k];
          sum += row[k];
        }
      }
      colsum[n] = sum;
    }
  }
}

void quantize_rows_s8(const void* x, bool x_is_bf16, int64_t ldx, int64_t M, int64_t K, int8_t* q, float* scale,
                      int n_threads) {
  const int64_t Kp = round_up(K, 4);
#pragma omp parallel for num_threads(n_threads) schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    float amax = 0.f;
    const float* xf = static_cast<const float*>(x) + m * ldx;
    const uint16_t* xh = static_cast<const uint16_t*>(x) + m * ldx;
    auto at = [&](int64_t k) { return x_is_bf16 ? bf16_to_f32(xh[k]) : xf[k]; };
    for (int64_t k = 0; k < K; ++k) amax = std::fmax(amax, std::fabs(at(k)));
    const float s = amax > 0.f ? amax / 127.f : 1.f;
    scale[m] = s;
    int8_t* out = q + m * Kp;
    for (int64_t k = 0; k < K; ++k) {
      float v = std::nearbyint(at(k) / s);  // default rounding mode: half to even, as torch.round
      v = v > 127.f ? 127.f : (v < -127.f ? -127.f : v);
      out[k] = static_cast<int8_t>(v);
    }
    for (int64_t k = K; k < Kp; ++k) out[k] = 0;
  }
}

void linear_w8a8(const LinearW8A8Params& p, Isa isa) {
  const W8A8Segment seg{p.w_packed, p.colsum, p.w_scale, p.N, p.out, p.ldo};
  linear_w8a8_segments(p, &seg, 1, isa);
}

void linear_w8a8_segments(const LinearW8A8Params& p, const W8A8Segment* seg, int n_seg, Isa isa) {
  ILLADA_CHECK(n_seg >= 1 && n_seg <= kMaxW8A8Segments, "linear_w8a8: 1 to 4 weights");
  if (p.M == 0) return;
  const size_t esize = p.x_is_bf16 ? 2 : 4;
  if (p.up != nullptr && isa != Isa::avx512) {  // swiglu(gate, up) into scratch, then the plain linear on it
    void* h = scratch(ScratchSlot::linear_swiglu, static_cast<size_t>(p.M * p.K) * esize);
    RowsParams r{};
    r.x = p.x;
    r.y = p.up;
    r.out = h;
    r.bf16 = p.x_is_bf16;
    r.rows = p.M;
    r.D = r.ldo = p.K;
    r.ldx = p.ldx;
    r.ldy = p.ldu;
    r.n_threads = p.n_threads;
    swiglu(r, isa);
    LinearW8A8Params plain = p;
    plain.x = h;
    plain.ldx = p.K;
    plain.up = nullptr;
    return linear_w8a8_segments(plain, seg, n_seg, isa);
  }
  const int64_t Kp = round_up(p.K, 4);
  // quantized x and its row scales in per-thread scratch kept across calls (scratch.h); both fully written below
  int8_t* const q = scratch_as<int8_t>(ScratchSlot::linear_activations, static_cast<size_t>(p.M * Kp));
  float* const xs = scratch_as<float>(ScratchSlot::linear_scales, static_cast<size_t>(p.M));
  GemmS8Params g[kMaxW8A8Segments];
  for (int s = 0; s < n_seg; ++s) {
    GemmS8Params& d = g[s];
    d = GemmS8Params{};
    d.a = q;
    d.lda = Kp;
    d.a_shifted = isa >= Isa::avx512;
    d.M = p.M;
    d.K4 = Kp / 4;
    d.out_kind = p.out_is_bf16 ? OutKind::bf16 : OutKind::f32;
    d.a_scale = xs;
    d.n_threads = p.n_threads;
    d.w_packed = seg[s].w_packed;
    d.colsum = seg[s].colsum;
    d.w_scale = seg[s].w_scale;
    d.N = seg[s].N;
    d.out = seg[s].out;
    d.ldo = seg[s].ldo;
  }
#if defined(ILLADA_HAVE_AVX512)
  if (isa == Isa::avx512) {
    void* rows = p.up == nullptr ? nullptr
                                 : scratch(ScratchSlot::linear_swiglu, static_cast<size_t>(p.n_threads * p.K) * esize);
    return linear_w8a8_avx512(p, g, n_seg, q, xs, rows);
  }
  if (isa >= Isa::avx512)
    quantize_rows_s8_avx512(p.x, p.x_is_bf16, p.ldx, p.M, p.K, q, xs, /*shifted=*/true, p.n_threads);
  else
#endif
    quantize_rows_s8(p.x, p.x_is_bf16, p.ldx, p.M, p.K, q, xs, p.n_threads);
  for (int s = 0; s < n_seg; ++s) gemm_s8(g[s], isa);
}

void gemm_s8(const GemmS8Params& p, Isa isa) {
  if (p.M == 0 || p.N == 0) return;
  ILLADA_CHECK(!p.a_shifted || isa >= Isa::avx512, "gemm_s8: shifted (q + 128) activations need the avx512 kernel");
  switch (isa) {
#if defined(ILLADA_HAVE_AVX512)
    case Isa::amx: return gemm_s8_amx(p, amx_emulation());
    case Isa::avx512: return gemm_s8_avx512(p);
#endif
#if defined(ILLADA_HAVE_AVX2)
    case Isa::avx2: return gemm_s8_avx2(p);
#endif
    default: return gemm_s8_generic(p);
  }
}

}  // namespace illada::cpu
