// FP8-weight GEMM on the CPU: out[M, N] = (x[M, K] . q[N, K]^T) * w_scale[n], x bfloat16, q float8 e4m3 with a
// scale per output channel. No CPU here computes in fp8: weights are widened to bf16 in registers (exactly:
// every e4m3 value is a bf16 value), one K block of a 64-channel panel at a time, and multiplied with vdpbf16ps
// (fp32 accumulation). Memory stays at one byte per weight.
//
// Packed layout (pack_f8): blocks of 16 output channels, K in pairs,
//   packed[((n / 16) * K2 + k / 2) * 32 + (n % 16) * 2 + k % 2] = q[n, k]   (zero beyond N and K)
#pragma once
#include <cstdint>

#include "../common/cpu_features.h"

namespace illada::cpu {

struct GemmF8Params {
  const uint16_t* x;        // [M, K2 * 2] bfloat16 bits, row stride ldx; columns beyond K are ignored (weights 0)
  int64_t ldx;
  const uint8_t* w_packed;  // from pack_f8
  const float* w_scale;     // [N]
  int64_t M, N, K, K2;      // K2 = ceil(K / 2)
  void* out;                // [M, N] float32 or bfloat16, row stride ldo
  bool out_is_bf16;
  int64_t ldo;
  int n_threads;
};

void pack_f8(const uint8_t* q, int64_t ldq, int64_t N, int64_t K, uint8_t* packed, int n_threads);
float e4m3_to_f32(uint8_t b);
void gemm_f8w_generic(const GemmF8Params& p);
void gemm_f8w_avx512(const GemmF8Params& p);
void gemm_f8w(const GemmF8Params& p, Isa isa);  // avx512 needs AVX512_BF16 (part of our avx512 level)

}  // namespace illada::cpu
