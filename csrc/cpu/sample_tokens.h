// Masked-token sampling on the CPU, greedy: for each active position (a row of logits over the vocabulary)
// one pass finds the argmax (first index among equal maxima, as torch.argmax) and, optionally, the runner-up
// logit; a second pass over the same row (still in cache) sums exp(l - max). Outputs per row: the token, its
// softmax probability (the confidence LLaDA's low_confidence remasking ranks by: 1 / sum), and optionally the
// top-2 probability margin and the entropy (nats).
#pragma once
#include <cstdint>

#include "../common/cpu_features.h"

namespace illada::cpu {

struct SampleGreedyParams {
  const void* logits;   // [rows, vocab] float32 or bfloat16 (uint16 bits), row stride ld elements
  bool logits_is_bf16;
  int64_t ld, rows, vocab;
  int64_t* token;       // [rows] out: argmax
  void* confidence;     // [rows] out: softmax probability of the argmax, float32 or float64
  bool confidence_f64;  // float64: the sum runs in double precision throughout (exp included), matching a
                        // float64 softmax (Fast-dLLM's) to ~1e-15; float32: fp32 lanes flushed to double
  float* margin;        // [rows] out or null: p(top1) - p(top2)
  float* entropy;       // [rows] out or null: -sum p log p
  int n_threads;
};

void sample_greedy_generic(const SampleGreedyParams& p);
void sample_greedy_avx2(const SampleGreedyParams& p);
void sample_greedy_avx512(const SampleGreedyParams& p);
void sample_greedy(const SampleGreedyParams& p, Isa isa);  // dispatch by ISA

}  // namespace illada::cpu
