// Scalar pieces the vectorized greedy-sampling variants share. Internal linkage on purpose: each ISA's source file
// (compiled with its own -m flags) gets its own copy, so the linker can never hand an AVX-512-compiled body to the
// AVX2 path.
#pragma once
#include <cmath>
#include <cstdint>

#include "sample_tokens.h"

namespace illada::cpu {
namespace {

// Rebase the running sums on a new max: s' = a s, t' = a (t + s (m - m')), a = exp(m - m').
inline void rebase_sums(double& s, double& t, float m, float m_new) {
  const double a = std::exp(static_cast<double>(m) - m_new);
  t = a * (t + s * (static_cast<double>(m) - m_new));
  s *= a;
}

// Row r's outputs from s = sum exp(l - max), t = sum exp(l - max) (l - max), and e2 = the runner-up's term.
template <bool ENTROPY>
inline void write_outputs(const SampleGreedyParams& p, int64_t r, int64_t arg, double s, double t, double e2) {
  p.token[r] = arg;
  if (p.confidence_f64)
    static_cast<double*>(p.confidence)[r] = 1.0 / s;
  else
    static_cast<float*>(p.confidence)[r] = static_cast<float>(1.0 / s);
  if (p.margin) p.margin[r] = static_cast<float>((1.0 - e2) / s);
  if (ENTROPY) p.entropy[r] = static_cast<float>(std::log(s) - t / s);
}

}  // namespace
}  // namespace illada::cpu
