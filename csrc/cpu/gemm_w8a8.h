// W8A8 INT8 GEMM on the CPU: out[M, N] = dequant(q(x)[M, K] . W[N, K]^T).
//
// Weights are int8 per output channel (scale w_scale[n]) and are packed once (pack_w8) into a layout every
// ISA variant reads: blocks of 16 output channels, K in groups of 4 bytes,
//   packed[((n / 16) * K4 + k / 4) * 64 + (n % 16) * 4 + k % 4] = W[n, k]   (zero beyond N and K),
// with colsum[n] = sum_k W[n, k] (the AVX-512 VNNI variant multiplies unsigned activations, q + 128, and
// subtracts 128 * colsum). Activations are quantized per row (token) on the fly: scale = max|x| / 127
// (1 for an all-zero row), q = round-half-even(x / scale) clamped to [-127, 127].
// Accumulation is int32 and exact; the epilogue computes float(acc) * x_scale[m] * w_scale[n] in fp32.
#pragma once
#include <cstdint>

#include "../common/cpu_features.h"

namespace illada::cpu {

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

enum class OutKind : int { i32 = 0, f32 = 1, bf16 = 2 };

struct GemmS8Params {
  const int8_t* a;         // [M, K4 * 4] quantized activations, row stride lda (bytes), zero-padded beyond K
  int64_t lda;
  bool a_shifted;          // a holds q + 128 as unsigned bytes (what vpdpbusd takes; only the avx512 kernel)
  const int8_t* w_packed;  // packed weights, (N_pad / 16) blocks of K4 * 64 bytes
  const int32_t* colsum;   // [N_pad] sum over k of W[n, k]
  int64_t M, N, K4;        // rows, output channels, K / 4 rounded up
  OutKind out_kind;        // i32: raw accumulators; f32/bf16: dequantized with the scales below
  const float* a_scale;    // [M] per-row activation scale (f32/bf16 outputs)
  const float* w_scale;    // [N] per-channel weight scale (f32/bf16 outputs)
  void* out;               // [M, N] int32, float32 or bfloat16, row stride ldo (elements)
  int64_t ldo;
  int n_threads;           // OpenMP threads (the caller passes torch.get_num_threads())
};

// Pack W [N, K] (row stride ldw) into `packed` (round_up(N, 16) * round_up(K, 4) bytes) and `colsum`.
void pack_w8(const int8_t* w, int64_t ldw, int64_t N, int64_t K, int8_t* packed, int32_t* colsum, int n_threads);

// Quantize rows of x ([M, K], row stride ldx elements; float32 or bfloat16 as uint16 bits) to int8 q
// ([M, round_up(K, 4)], zero-padded) and per-row scales.
void quantize_rows_s8(const void* x, bool x_is_bf16, int64_t ldx, int64_t M, int64_t K, int8_t* q, float* scale,
                      int n_threads);

void quantize_rows_s8_avx512(const void* x, bool x_is_bf16, int64_t ldx, int64_t M, int64_t K, int8_t* q,
                             float* scale, bool shifted, int n_threads);

// The fused W8A8 linear: quantize x per row into scratch (in the layout the chosen variant reads), then GEMM.
struct LinearW8A8Params {
  const void* x;           // [M, K] float32 or bfloat16 (uint16 bits), row stride ldx elements
  bool x_is_bf16;
  int64_t ldx, M, K, N;
  const int8_t* w_packed;  // from pack_w8
  const int32_t* colsum;
  const float* w_scale;    // [N]
  void* out;               // [M, N] float32 or bfloat16, row stride ldo
  bool out_is_bf16;
  int64_t ldo;
  int n_threads;
};
void linear_w8a8(const LinearW8A8Params& p, Isa isa);

void gemm_s8_generic(const GemmS8Params& p);
void gemm_s8_avx2(const GemmS8Params& p);
void gemm_s8_avx512(const GemmS8Params& p);
void gemm_s8(const GemmS8Params& p, Isa isa);  // dispatch (amx falls back to avx512 until it has a variant)

// fp32 -> bf16 round-to-nearest-even (NaN stays NaN), as torch's .to(torch.bfloat16).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

}  // namespace illada::cpu
