// The portable bf16 GEMM and the dispatcher (see gemm_bf16.h). The AVX-512 kernel's accumulation written out: 16
// fp32 lanes, lane l of each 32-element chunk adding x[2l+1] w[2l+1] then x[2l] w[2l] (Intel's definition of
// vdpbf16ps; the products are exact in fp32), and the lanes summed by the kernel's reduction tree. (vdpbf16ps also
// treats bf16 denormals as zero, which this version does not.)
#include "gemm_bf16.h"

#include "gemm_w8a8.h"  // bf16 helpers

namespace illada::cpu {

namespace {

// Sum of 16 lanes in the order the AVX-512 kernel's reduction tree adds them.
float tree_sum(const float* l) {
  float s[4];  // per 128-bit lane of 4: (e0 + e2) + (e1 + e3); then (s0 + s2) + (s1 + s3)
  for (int q = 0; q < 4; ++q) s[q] = (l[4 * q] + l[4 * q + 2]) + (l[4 * q + 1] + l[4 * q + 3]);
  return (s[0] + s[2]) + (s[1] + s[3]);
}

}  // namespace

void gemm_bf16_generic(const GemmBf16Params& p) {
  for (int s = 0; s < p.n_seg; ++s) {
    const GemmBf16Segment& g = p.seg[s];
#pragma omp parallel for collapse(2) num_threads(p.n_threads) schedule(static)
    for (int64_t n = 0; n < g.N; ++n) {
      for (int64_t m = 0; m < p.M; ++m) {
        const uint16_t* x = p.x + m * p.ldx;
        const uint16_t* w = g.w + n * g.ldw;
        float lanes[16] = {0};
        for (int64_t k0 = 0; k0 < p.K; k0 += 32)
          for (int l = 0; l < 16; ++l)
            for (int e = 1; e >= 0; --e) {
              const int64_t k = k0 + 2 * l + e;
              if (k < p.K) lanes[l] += bf16_to_f32(x[k]) * bf16_to_f32(w[k]);
            }
        const float v = tree_sum(lanes);
        if (p.out_is_bf16)
          static_cast<uint16_t*>(g.out)[m * g.ldo + n] = f32_to_bf16(v);
        else
          static_cast<float*>(g.out)[m * g.ldo + n] = v;
      }
    }
  }
}

void gemm_bf16(const GemmBf16Params& p, Isa isa) {
  if (p.M == 0) return;
#if defined(ILLADA_HAVE_AVX512)
  if (isa >= Isa::avx512) return gemm_bf16_avx512(p);
#endif
#if defined(ILLADA_HAVE_AVX2)
  if (isa >= Isa::avx2) return gemm_bf16_avx2(p);
#endif
  (void)isa;
  gemm_bf16_generic(p);
}

}  // namespace illada::cpu
