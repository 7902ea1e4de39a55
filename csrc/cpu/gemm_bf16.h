// bf16 GEMM on the CPU for decoding's small M: out[M, n] = x[M, K] . w[n, K]^T with fp32 accumulation, the weight
// read in place ([N, K] row-major, as the checkpoint stores it: a memory map's view or the loader's copy in huge
// pages, never repacked).
//
// Several weights that share x (q/k/v, gate/up) run as one GEMM: `segments` each name a weight and its own output,
// and the kernel spreads their output channels over the threads as one N. Every output is the dot product of a row
// of x and a row of w, accumulated in 32-element chunks (16 fp32 lanes of pairs, vdpbf16ps on AVX-512 BF16, FMAs on AVX2), the
// lanes summed by a fixed tree at the end: the result of an output does not depend on M, on the other segments or
// on the thread count.
#pragma once
#include <cstdint>

#include "../common/cpu_features.h"

namespace illada::cpu {

struct GemmBf16Segment {
  const uint16_t* w;  // [N, K] bfloat16 bits, row stride ldw elements
  int64_t ldw;
  int64_t N;
  void* out;          // [M, N] float32 or bfloat16, row stride ldo elements
  int64_t ldo;
};

constexpr int kMaxBf16Segments = 4;

struct GemmBf16Params {
  const uint16_t* x;  // [M, K] bfloat16 bits, row stride ldx elements
  int64_t ldx;
  int64_t M, K;
  GemmBf16Segment seg[kMaxBf16Segments];
  int n_seg;
  bool out_is_bf16;   // every segment's output has this dtype
  int n_threads;
};

void gemm_bf16_generic(const GemmBf16Params& p);
void gemm_bf16_avx2(const GemmBf16Params& p);    // AVX2 + FMA, the same bits (gemm_bf16_avx2.cpp)
void gemm_bf16_avx512(const GemmBf16Params& p);  // needs AVX512_BF16 (part of our avx512 level)
void gemm_bf16(const GemmBf16Params& p, Isa isa);

}  // namespace illada::cpu
