// The transformer blocks of one forward in one call (model.py's layer loop, the same kernels in the same order, so
// the same bits): per layer
//   h, n = add_rms_norm(h, down, attn_norm)        (layer 0: n = rms_norm(x))
//   q, k, v = linears(n); rope(q), rope(k) in place; k, v into the KV cache where there is one
//   a = attention(q, k, v, key_mask); o = linear(a)
//   h, m = add_rms_norm(h, o, ff_norm); g, u = linears(m); down = linear(swiglu(g, u))
// with every linear on the W8A8 kernel (int8 weights) or the bf16 kernel (dense bf16 weights), bfloat16
// activations. At decoding's small M the Python loop around the same kernels took ~12% of a forward (~100 us a layer:
// the interpreter, tensor allocations, argument conversion); here a layer costs the kernels alone.
#pragma once
#include <cstdint>

#include "../common/cpu_features.h"

namespace illada::cpu {

struct StackLinear {
  bool w8a8;               // else a dense bf16 weight
  const int8_t* packed;    // W8A8: pack_w8's layout, its column sums and per-channel scales
  const int32_t* colsum;
  const float* scale;
  const uint16_t* w;       // bf16: [N, K] row-major bits, row stride ldw elements
  int64_t ldw;
  int64_t N, K;
};

struct StackLayer {
  const uint16_t* attn_norm;  // [d] bf16
  const uint16_t* ff_norm;
  StackLinear q, k, v, o, gate, up, down;
};

// What the ops of a call took, for the profile mode: seconds and calls per op, in this order.
enum class StackOp : int { rms_norm, add_rms_norm, linears, rope, kv_cache_write, attention, linear, swiglu_linear,
                           swiglu, count };
const char* stack_op_name(StackOp op);

// A KV cache tensor of one layer, [B, Hkv, T, D] via strides (elements), D contiguous.
struct StackCache {
  uint16_t* k;
  uint16_t* v;
  int64_t k_sb, k_sh, k_st, v_sb, v_sh, v_st;
};

struct StackCall {
  int64_t B, L;                // the input's rows: B x L tokens
  int64_t d, H, Hkv, D, F;     // model width, query / kv heads, head dim, MLP width
  float eps, scale;            // RMSNorm epsilon, attention scale
  const uint16_t* x;           // [B * L, d] the embeddings, row stride ldx (read only)
  int64_t ldx;
  uint16_t* h_out;             // [B * L, d] contiguous: the residual stream after the last layer's attention half
  uint16_t* down_out;          // [B * L, d] contiguous: the last layer's MLP output (not yet added to h_out)
  const float* cos;            // [L, D] or [B, L, D] fp32 contiguous: the rows' RoPE tables
  const float* sin;
  int64_t cs_sb;               // 0 when shared by the batch, L * D when per batch row
  const uint8_t* key_mask;     // [B, Tk] (nonzero = attend), row stride km_sb; null = every key
  int64_t km_sb;
  const StackCache* cache;     // per layer, or null (no cache: keys and values of this input only)
  int64_t T, cache_from;       // with a cache: its length and the input's first column (the input is columns
                               // [cache_from, cache_from + L); a full forward filling it has T = L, cache_from = 0)
  int n_threads;
  double* timing;              // [StackOp::count][2] seconds and calls, accumulated; null = untimed
};

void layer_stack(const StackLayer* layers, int64_t n_layers, const StackCall& c, Isa isa);

}  // namespace illada::cpu
