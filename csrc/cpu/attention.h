// Bidirectional attention on the CPU (no causal mask): out = softmax(q k^T * scale + mask) v per (batch, query
// head), GQA (query head h reads kv head h / (Hq / Hkv)), an optional key padding mask, query length different
// from key length (the KV caches). fp32 or bf16 tensors, fp32 arithmetic, any strides with a contiguous head dim.
// A query row whose keys are all masked gets zeros.
#pragma once
#include <cstdint>

#include "../common/cpu_features.h"

namespace illada::cpu {

struct AttentionParams {
  const void* q;              // [B, Hq, Tq, D] via the strides below (elements); D contiguous
  const void* k;              // [B, Hkv, Tk, D]
  const void* v;              // [B, Hkv, Tk, D]
  void* out;                  // [B, Hq, Tq, D], same dtype as q
  bool bf16;                  // all four are bfloat16 (else float32)
  int64_t B, Hq, Hkv, Tq, Tk, D;
  int64_t q_sb, q_sh, q_st;   // batch, head, token strides of q
  int64_t k_sb, k_sh, k_st;
  int64_t v_sb, v_sh, v_st;
  int64_t o_sb, o_sh, o_st;
  const uint8_t* key_mask;    // [B, Tk] bool (nonzero = attend), row stride km_sb; null = every key
  int64_t km_sb;
  float scale;                // usually 1 / sqrt(D)
  int n_threads;
};

void attention_generic(const AttentionParams& p);
void attention_avx512(const AttentionParams& p);  // head dims 64 and 128; others go to the generic path
void attention(const AttentionParams& p, Isa isa);

}  // namespace illada::cpu
