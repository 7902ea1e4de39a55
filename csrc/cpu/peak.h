// Measured arithmetic peaks of this CPU: register-only loops of the instruction each kernel family is built
// on, on n_threads threads. The benches report kernel throughput as a percentage of these.
#pragma once
#include <string>

namespace illada::cpu {

// Operations per second (an FMA counts 2; a 4-way int8 dot-accumulate lane counts 8) for `kind`:
// "fp32_fma", "bf16_dot" or "int8_dot", on the best ISA that has it (on AVX2, bf16_dot is the FMA loop: the bf16
// GEMM runs fp32 FMAs there); 0 when this CPU has none.
double measure_peak_ops(const std::string& kind, int n_threads);
double peak_ops_avx512(const std::string& kind, long iters);
double peak_ops_avx2(const std::string& kind, long iters);
// A register-only loop of `chains` independent accumulators updated by step(acc) for iters rounds; returns
// the operations done (ops_per_step each). Shared by the per-ISA peak files.
template <int Chains, class V, class Step, class Sink>
double run_peak_loop(long iters, V init, Step step, Sink sink, double ops_per_step) {
  V acc[Chains];
  for (auto& v : acc) v = init;
  for (long i = 0; i < iters; ++i)
#pragma GCC unroll 16
    for (int c = 0; c < Chains; ++c) acc[c] = step(acc[c]);
  for (auto& v : acc) sink(v);  // keep the results alive
  return double(iters) * Chains * ops_per_step;
}

// Core clock in GHz, from a chain of dependent integer adds (one per cycle) timed on this thread.
double measure_clock_ghz();

}  // namespace illada::cpu
