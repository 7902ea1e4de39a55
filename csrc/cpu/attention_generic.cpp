// Portable attention (see attention.h): per query row, scores in fp32, a max-subtracted softmax, the weighted sum
// of values. Also the dispatcher.
#include <cmath>
#include <limits>
#include <vector>

#include "attention.h"
#include "gemm_w8a8.h"  // bf16 helpers

namespace illada::cpu {

namespace {
inline float load(const void* base, int64_t i, bool bf16) {
  return bf16 ? bf16_to_f32(static_cast<const uint16_t*>(base)[i]) : static_cast<const float*>(base)[i];
}
}  // namespace

void attention_generic(const AttentionParams& p) {
  const int64_t group = p.Hq / p.Hkv;
#pragma omp parallel for collapse(3) num_threads(p.n_threads) schedule(static)
  for (int64_t b = 0; b < p.B; ++b) {
    for (int64_t h = 0; h < p.Hq; ++h) {
      for (int64_t i = 0; i < p.Tq; ++i) {
        std::vector<float> s(static_cast<size_t>(p.Tk)), acc(static_cast<size_t>(p.D), 0.f);
        const int64_t hk = h / group;
        const int64_t qo = b * p.q_sb + h * p.q_sh + i * p.q_st;
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < p.Tk; ++j) {
          if (p.key_mask && !p.key_mask[b * p.km_sb + j]) {
            s[j] = -std::numeric_limits<float>::infinity();
            continue;
          }
          const int64_t ko = b * p.k_sb + hk * p.k_sh + j * p.k_st;
          float dot = 0.f;
          for (int64_t d = 0; d < p.D; ++d) dot += load(p.q, qo + d, p.bf16) * load(p.k, ko + d, p.bf16);
          s[j] = dot * p.scale;
          m = std::fmax(m, s[j]);
        }
        double l = 0.0;
        if (m > -std::numeric_limits<float>::infinity()) {
          for (int64_t j = 0; j < p.Tk; ++j) {
            const float e = std::exp(s[j] - m);
            if (e == 0.f) continue;
            l += e;
            const int64_t vo = b * p.v_sb + hk * p.v_sh + j * p.v_st;
            for (int64_t d = 0; d < p.D; ++d) acc[d] += e * load(p.v, vo + d, p.bf16);
          }
        }
        const float inv = l > 0 ? static_cast<float>(1.0 / l) : 0.f;
        const int64_t oo = b * p.o_sb + h * p.o_sh + i * p.o_st;
        for (int64_t d = 0; d < p.D; ++d) {
          const float r = acc[d] * inv;
          if (p.bf16)
            static_cast<uint16_t*>(p.out)[oo + d] = f32_to_bf16(r);
          else
            static_cast<float*>(p.out)[oo + d] = r;
        }
      }
    }
  }
}

void attention(const AttentionParams& p, Isa isa) {
  if (p.B == 0 || p.Hq == 0 || p.Tq == 0 || p.D == 0) return;
#if defined(ILLADA_HAVE_AVX512)
  if (isa >= Isa::avx512 && (p.D == 64 || p.D == 128)) return attention_avx512(p);
#endif
  (void)isa;
  attention_generic(p);
}

}  // namespace illada::cpu
