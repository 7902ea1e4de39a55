// Scalar pieces the vectorized greedy-sampling variants share. Internal linkage on purpose: each ISA's source file
// (compiled with its own -m flags) gets its own copy, so the linker can never hand an AVX-512-compiled body to the
// AVX2 path.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "../common/philox.h"
#include "sample_tokens.h"

namespace illada::cpu {
namespace {

// Rebase the running sums on a new max: s' = a s, t' = a (t + s (m - m')), a = exp(m - m').
inline void rebase_sums(double& s, double& t, float m, float m_new) {
  const double a = std::exp(static_cast<double>(m) - m_new);
  t = a * (t + s * (static_cast<double>(m) - m_new));
  s *= a;
}

// The softmax of a row is undefined (NaN, as torch.softmax gives it) when a logit is NaN or +inf or every logit is
// -inf: the vectorized paths see NaNs only through this flag (max_ps drops them) and compute around infinities.
inline bool undefined_softmax(bool nan_seen, float max) { return nan_seen || !std::isfinite(max); }

// Row r's outputs from s = sum exp(l - max), t = sum exp(l - max) (l - max), e2 = the runner-up's term and e_tok =
// the chosen token's term (1 for the argmax); NaN confidence, margin and entropy when the softmax is undefined.
template <bool ENTROPY>
inline void write_outputs(const SampleGreedyParams& p, int64_t r, int64_t arg, double s, double t, double e2,
                          double e_tok = 1.0, bool undefined = false) {
  if (undefined) s = t = std::numeric_limits<double>::quiet_NaN();
  p.token[r] = arg;
  if (p.confidence_f64)
    static_cast<double*>(p.confidence)[r] = e_tok / s;
  else
    static_cast<float*>(p.confidence)[r] = static_cast<float>(e_tok / s);
  if (p.margin) p.margin[r] = static_cast<float>((1.0 - e2) / s);
  if (ENTROPY) p.entropy[r] = static_cast<float>(std::log(s) - t / s);
}

// The Gumbel noise of vocabulary index v from its Philox word (the CUDA kernel's formula, in float32).
inline float gumbel_from_word(uint32_t w) { return -std::log(-std::log(uniform_open01(w))); }

inline uint64_t row_id(const SampleGreedyParams& p, int64_t r) {
  return p.row_ids ? static_cast<uint64_t>(p.row_ids[r]) : static_cast<uint64_t>(r);
}

// Gumbel-max over logits [from, vocab) of a row, one element at a time: (best score, its index; -1 if none).
template <typename At>
inline void noisy_argmax_scalar(const SampleGreedyParams& p, uint64_t rid, At at, int64_t from, float& best,
                                int64_t& arg) {
  for (int64_t v = from; v < p.vocab; ++v) {
    const Philox4 w = noise_words(p.seed, p.offset, rid, static_cast<uint32_t>(v / 4));
    const float g = gumbel_from_word(w.v[v % 4]);
    const float score = at(v) + p.temperature * g;
    if (score > best || arg < 0) {
      if (score == score) best = score, arg = v;
    }
  }
}

}  // namespace
}  // namespace illada::cpu
