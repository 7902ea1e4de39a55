// Bidirectional (non-causal) attention forward on CUDA, flash-style: one pass over the keys with an online
// softmax, fp32 accumulation, nothing of size Tq x Tk ever written to memory.
//
// Framework-free: pointers, shapes and strides in, the caller's stream in. The binding validates everything
// listed under "requires" before calling; the launcher re-checks what would make the kernel read out of bounds.
#pragma once
#include <cstdint>
#include <string>

namespace illada::cuda {

struct AttentionParams {
  const void* q;    // [batch, heads_q, tq, head_dim], bf16 or fp16, strides below (elements), last dim contiguous
  const void* k;    // [batch, heads_kv, tk, head_dim], same dtype
  const void* v;    // [batch, heads_kv, tk, head_dim], same dtype
  void* out;        // [batch, heads_q, tq, head_dim], same dtype (may be a [B, Hq, Tq, D] view of [B, Tq, Hq, D])
  const uint8_t* key_mask;  // [batch, tk] bool (nonzero = attend), row stride mask_batch_stride; null = all keys
  int64_t q_batch_stride, q_head_stride, q_row_stride;
  int64_t k_batch_stride, k_head_stride, k_row_stride;
  int64_t v_batch_stride, v_head_stride, v_row_stride;
  int64_t o_batch_stride, o_head_stride, o_row_stride;
  int64_t mask_batch_stride;
  int batch;      // B
  int heads_q;    // Hq; query head h reads kv head h / (Hq / Hkv) (GQA)
  int heads_kv;   // Hkv, divides Hq
  int tq;         // query rows (Tq may differ from Tk: the prefix/dual caches run a block against the canvas)
  int tk;         // key rows
  int head_dim;   // 64 or 128
  float scale;    // softmax scale, usually head_dim^-0.5
  bool is_bf16;   // element type: bf16 (true) or fp16
};

// Head dims with a compiled kernel.
bool attention_head_dim_supported(int head_dim);

// Requires: base pointers and every row/head/batch stride 16-byte aligned (multiples of 8 elements), q/k/v/out
// last dim contiguous. A query row whose keys are all masked gets zeros (as the CPU kernel).
// Runs on `stream` (a cudaStream_t; null = the legacy default stream) without synchronizing the host.
// Returns "" on success or a CUDA error text.
std::string attention_bidir(const AttentionParams& p, void* stream);

}  // namespace illada::cuda
