#include "peak.h"

#include <chrono>

#include "../common/cpu_features.h"

namespace illada::cpu {

double measure_peak_ops(const std::string& kind, int n_threads) {
  const long iters = 2'000'000;
  double per_thread_ops = 0.0;
  const Isa isa = best_isa();
  auto one = [&]() -> double {
#if defined(ILLADA_HAVE_AVX512)
    if (isa >= Isa::avx512) return peak_ops_avx512(kind, iters);
#endif
#if defined(ILLADA_HAVE_AVX2)
    if (isa >= Isa::avx2) return peak_ops_avx2(kind, iters);
#endif
    return 0.0;
  };
  one();  // warm up (clock ramp, AVX-512 license)
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(n_threads) reduction(+ : per_thread_ops)
  per_thread_ops += one();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return per_thread_ops / s;
}

double measure_clock_ghz() {
  const long n = 20'000'000;  // x 10 dependent adds: loop overhead hides under the chain
  long x = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < n; ++i)
    __asm__ volatile(
        "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
        "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0"
        : "+r"(x));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return static_cast<double>(n) * 10 / s / 1e9;
}

}  // namespace illada::cpu
