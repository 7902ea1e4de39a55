// Small fused ops of the transformer block, rounding exactly where the PyTorch reference rounds (so bf16 results
// match it to the last bit up to the order of a sum):
//   rms_norm: y = x * rsqrt(mean(x^2) + eps) in fp32, rounded to x's dtype, then out = round(weight * y)
//   add_rms_norm: sum = round(x + r) (a residual add as torch adds), then out = rms_norm(sum), both written
//   swiglu:   out = round(round(silu(gate)) * up)
//   rope:     rotate-half RoPE in fp32, out = round(x * cos + rotate_half(x) * sin) with separate roundings of
//             the two products and the sum (no fused multiply-add), as the reference computes it
#pragma once
#include <cstdint>

#include "../common/cpu_features.h"

namespace illada::cpu {

struct RowsParams {
  const void* x;      // rms_norm: [rows, D] input; swiglu: gate
  const void* y;      // rms_norm: weight [D]; swiglu: up [rows, D]
  void* out;          // [rows, D]
  bool bf16;          // all bfloat16 (else float32)
  int64_t rows, D;
  int64_t ldx, ldy, ldo;  // row strides in elements (ldy unused for the norm weight)
  float eps;
  int n_threads;
  // add_rms_norm only: the residual r [rows, D] and the sum's output [rows, D] (row strides in elements)
  const void* r = nullptr;
  void* sum = nullptr;
  int64_t ldr = 0, lds = 0;
};

struct RopeParams {
  const void* x;         // [B, H, T, D] via strides (elements), D contiguous
  void* out;             // [B, H, T, D] via its strides, same dtype
  bool bf16;
  int64_t B, H, T, D;
  int64_t x_sb, x_sh, x_st, o_sb, o_sh, o_st;
  const float* cos;      // [T, D] or [B, T, D] fp32 contiguous
  const float* sin;
  int64_t cs_sb;         // batch stride of cos/sin: 0 when shared, T * D when per batch row
  int n_threads;
};

void rope_generic(const RopeParams& p);
void rope_avx512(const RopeParams& p);
void rope_avx2(const RopeParams& p);  // norm_act_avx2.cpp: AVX2 + FMA, integer bf16 rounding
void rope(const RopeParams& p, Isa isa);

void rms_norm_generic(const RowsParams& p);
void rms_norm_avx512(const RowsParams& p);
void rms_norm_avx2(const RowsParams& p);
void swiglu_generic(const RowsParams& p);
void swiglu_avx512(const RowsParams& p);
void swiglu_avx2(const RowsParams& p);
// One row of swiglu_avx512 into `out`, which must not overlap gate or up (the fused W8A8 down projection).
void swiglu_row_avx512(bool bf16, const void* gate, const void* up, void* out, int64_t D);
void rms_norm(const RowsParams& p, Isa isa);
void add_rms_norm_generic(const RowsParams& p);
void add_rms_norm_avx512(const RowsParams& p);
void add_rms_norm_avx2(const RowsParams& p);
void add_rms_norm(const RowsParams& p, Isa isa);
void swiglu(const RowsParams& p, Isa isa);

}  // namespace illada::cpu
