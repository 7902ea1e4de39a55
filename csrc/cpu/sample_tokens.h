// Masked-token sampling on the CPU: for each active position (a row of logits over the vocabulary) the argmax
// (first index among equal maxima, as torch.argmax) or the Gumbel-max with a temperature, the softmax probability of
// the chosen token (the confidence LLaDA's low_confidence remasking ranks by), and optionally the top-2 probability
// margin and the entropy (nats).
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
  float temperature;    // 0: token = argmax; > 0: token = argmax of logits + temperature * Gumbel noise, the noise
  uint64_t seed;        //   drawn with Philox4x32-10 exactly as the CUDA kernel draws it (common/philox.h:
  uint64_t offset;      //   noise_words(seed, offset, row id, v / 4), word v % 4, u = ((w >> 9) + 0.5) / 2^23,
  const int64_t* row_ids;  // g = -log(-log u) in float32); row id = row_ids[r] (null: r). The confidence is the
                        //   softmax probability of the chosen token either way.
  int n_threads;
};

void sample_greedy_generic(const SampleGreedyParams& p);
void sample_greedy_avx2(const SampleGreedyParams& p);
void sample_greedy_avx512(const SampleGreedyParams& p);
void sample_greedy(const SampleGreedyParams& p, Isa isa);  // dispatch by ISA

}  // namespace illada::cpu
