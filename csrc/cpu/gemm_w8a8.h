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
#if defined(__AVX512F__)
#include "avx512_util.h"
#endif

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
  // The MLP's down projection: with `up` set, x is the gate and the GEMM's input is swiglu(x, up) (norm_act.h:
  // the same bits), up [M, K] of x's dtype with row stride ldu. The AVX-512 variant computes each row while it
  // quantizes it, inside the GEMM's region; the others compute it into scratch first.
  const void* up = nullptr;
  int64_t ldu = 0;
};
void linear_w8a8(const LinearW8A8Params& p, Isa isa);

// Several weights sharing x (q/k/v, gate/up): x is quantized once, then each weight's GEMM writes its own output.
// p's w_packed, colsum, w_scale, N, out and ldo are ignored; every output has p.out_is_bf16's dtype.
struct W8A8Segment {
  const int8_t* w_packed;
  const int32_t* colsum;
  const float* w_scale;
  int64_t N;
  void* out;
  int64_t ldo;
};
constexpr int kMaxW8A8Segments = 4;
void linear_w8a8_segments(const LinearW8A8Params& p, const W8A8Segment* seg, int n_seg, Isa isa);

void gemm_s8_generic(const GemmS8Params& p);
void gemm_s8_avx2(const GemmS8Params& p);
void gemm_s8_avx512(const GemmS8Params& p);
// The AVX-512 VNNI variant of linear_w8a8_segments: x quantized into q (as q + 128) and xs, which the GEMMs g[0 ..
// n_seg) (one per weight, sharing A = q) read, and all of them in one OpenMP region.
// swiglu_rows: with p.up set, a buffer of K elements of x's dtype per thread (n_threads of them).
void linear_w8a8_avx512(const LinearW8A8Params& p, const GemmS8Params* g, int n_seg, int8_t* q, float* xs,
                        void* swiglu_rows);
// AMX-INT8 (tdpbssd) over the same packed layout; `emulated` runs the tile instructions' C++ emulation (amx_tiles.h)
// instead of the hardware's. Results are bit-identical to gemm_s8_avx512's.
void gemm_s8_amx(const GemmS8Params& p, bool emulated);

// One tile dot product, C (tile 0) += A (tile 4) . B (tile 6), with each tile's shape as given (row stride = its
// colsb): the probe the tests hold the emulation (and, on AMX machines, the hardware) to the definitions with.
enum class TileDotKind { dpbssd, dpbusd, dpbf16ps };
void amx_tile_dot(TileDotKind kind, bool emulated, uint8_t* c, int c_rows, int c_colsb, const uint8_t* a, int a_rows,
                  int a_colsb, const uint8_t* b, int b_rows, int b_colsb);
void gemm_s8(const GemmS8Params& p, Isa isa);  // dispatch; amx runs emulated tiles when amx_emulation() is set

#if defined(__AVX512F__)  // in the files compiled with AVX-512 flags
// The W8A8 epilogue of one row of 16 channels (the AVX-512 and AMX kernels share it, so they give the same bits):
// the exact int32 sums v as they are (i32), or (float(v) * a_scale) * w_scale as float32 or bfloat16.
inline void store_s8_row(const GemmS8Params& p, __m512i v, int64_t m, int64_t n0, __mmask16 mask, __m512 ws) {
  const int64_t o = m * p.ldo + n0;
  if (p.out_kind == OutKind::i32) {
    _mm512_mask_storeu_epi32(static_cast<int32_t*>(p.out) + o, mask, v);
    return;
  }
  const __m512 f = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(p.a_scale[m])), ws);
  if (p.out_kind == OutKind::f32)
    _mm512_mask_storeu_ps(static_cast<float*>(p.out) + o, mask, f);
  else
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p.out) + o, mask, avx512::to_bf16(f));
}
#endif

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
