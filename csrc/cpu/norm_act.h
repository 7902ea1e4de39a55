// Small fused ops of the transformer block, rounding exactly where the PyTorch reference rounds (so bf16 results
// match it to the last bit up to the order of a sum):
//   rms_norm: y = x * rsqrt(mean(x^2) + eps) in fp32, rounded to x's dtype, then out = round(weight * y)
//   swiglu:   out = round(round(silu(gate)) * up)
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
};

void rms_norm_generic(const RowsParams& p);
void rms_norm_avx512(const RowsParams& p);
void swiglu_generic(const RowsParams& p);
void swiglu_avx512(const RowsParams& p);
void rms_norm(const RowsParams& p, Isa isa);
void swiglu(const RowsParams& p, Isa isa);

}  // namespace illada::cpu
