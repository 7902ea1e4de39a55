// Portable sampling (see sample_tokens.h); also the dispatcher.
#include <cmath>
#include <limits>

#include "gemm_w8a8.h"  // bf16_to_f32
#include "sample_tokens.h"
#include "sample_tokens_rows.h"

namespace illada::cpu {

void sample_greedy_generic(const SampleGreedyParams& p) {
#pragma omp parallel for num_threads(p.n_threads) schedule(static)
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* lf = static_cast<const float*>(p.logits) + r * p.ld;
    const uint16_t* lh = static_cast<const uint16_t*>(p.logits) + r * p.ld;
    auto at = [&](int64_t v) { return p.logits_is_bf16 ? bf16_to_f32(lh[v]) : lf[v]; };
    float m = -std::numeric_limits<float>::infinity(), m2 = m;
    int64_t arg = 0;
    for (int64_t v = 0; v < p.vocab; ++v) {
      const float x = at(v);
      if (x > m) {
        m2 = m;
        m = x;
        arg = v;
      } else if (x > m2) {
        m2 = x;
      }
    }
    double s = 0.0, t = 0.0;
    for (int64_t v = 0; v < p.vocab; ++v) {
      const double d = static_cast<double>(at(v)) - m;  // in double: float64 confidences need every bit
      const double e = std::exp(d);
      s += e;
      if (e > 0) t += d * e;  // 0 * -inf is 0 here: a -inf logit adds nothing
    }
    double e_tok = 1.0;
    if (p.temperature > 0) {
      float best = -std::numeric_limits<float>::infinity();
      int64_t noisy = -1;
      noisy_argmax_scalar(p, row_id(p, r), at, 0, best, noisy);
      if (noisy >= 0) arg = noisy, e_tok = std::exp(static_cast<double>(at(noisy)) - m);
    }
    const double e2 = std::exp(static_cast<double>(m2) - m);
    p.entropy ? write_outputs<true>(p, r, arg, s, t, e2, e_tok) : write_outputs<false>(p, r, arg, s, t, e2, e_tok);
  }
}

void sample_greedy(const SampleGreedyParams& p, Isa isa) {
  if (p.rows == 0) return;
#if defined(ILLADA_HAVE_AVX512)
  if (isa >= Isa::avx512) return sample_greedy_avx512(p);
#endif
#if defined(ILLADA_HAVE_AVX2)
  if (isa >= Isa::avx2 && !(p.temperature > 0)) return sample_greedy_avx2(p);  // Gumbel mode: AVX-512 or portable
#endif
  (void)isa;
  sample_greedy_generic(p);
}

}  // namespace illada::cpu
