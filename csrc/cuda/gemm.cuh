// Quantized GEMMs on CUDA (sm_80 and newer, tensor cores through mma.sync): W8A8 INT8 and W8A8 FP8 (e4m3).
//
//   out[m, n] = epilogue(sum_k A[m, k] * W[n, k])
//
// A: activations quantized per row (token) by quantize_rows: int8 with scale max|x| / 127 and round-half-even
// (the CPU W8A8 path's arithmetic, so the int32 accumulators are bit-identical to it), or e4m3 with scale
// max|x| / 448 (round to nearest even, saturating). W: the weight as stored, [N, Kp] row-major bytes with K
// zero-padded to a multiple of 32 at load (pack) time. The epilogue is fused: float(acc) * a_scale[m] * w_scale,
// rounded once to the output dtype; for FP8 with block128 weight scales each 128-wide K slice of the accumulation
// is scaled by its block's scale before it is added (DeepSeek-V3's recipe).
//
// Tiles: a CTA of 4 warps computes 64 x 64 of the output (each warp 32 x 32: 2 x 4 mma tiles of 16 x 8), K in
// stages of 64 bytes through double-buffered cp.async shared memory (rows padded to 80 bytes so the 8 row
// addresses of each ldmatrix hit distinct bank groups). Small M (a decoding block: 32 to 256 tokens) leaves too
// few tiles to fill the GPU, so K is split across blockIdx.z: each split writes its partial tile to a workspace
// and the last split of a tile to arrive (an atomic counter) adds the partials in split order and runs the epilogue
// (deterministic: the result does not depend on which split finishes first). The counters return to zero, so the
// same workspace serves the next call and a CUDA graph. The mainloop (load_stage / compute_stage) is the unit a
// Hopper wgmma + TMA mainloop replaces; tiles, split-K and epilogue stay.
#pragma once
#include <cstdint>
#include <string>

namespace illada::cuda {

enum class ElemKind : int { s8 = 0, e4m3 = 1 };
enum class OutType : int { f32 = 0, bf16 = 1, f16 = 2 };
enum class InType : int { f32 = 0, bf16 = 1, f16 = 2 };

struct QuantizeRowsParams {
  const void* x;      // [M, K] activations, row stride ldx (elements), last dim contiguous
  InType x_type;
  int64_t ldx;
  int64_t M, K;
  int64_t Kp;         // output row length: K rounded up to a multiple of 32; q is zero in [K, Kp)
  ElemKind kind;      // s8: scale = max|x| / 127, q = round-half-even(x / scale) clamped to +-127
                      // e4m3: scale = max|x| / 448, q = e4m3(x / scale), round to nearest even, saturating
  void* q;            // [M, Kp] bytes
  float* scale;       // [M]; 1 for an all-zero row
};

struct GemmParams {
  ElemKind kind;
  const void* a;          // [M, Kp] quantized activations (bytes), row stride lda (bytes); FP8 weight-only: the
  int64_t lda;            //   bf16/fp16 activations [M, K] as they are, row stride lda (bytes, a multiple of 16)
  bool weight_only;       // e4m3 only: activations stay 16-bit, weights widened in registers (sm_80's FP8 path)
  InType a_type;          // weight-only: bf16 or f16
  int K;                  // weight-only: the activations' K (<= Kp); elements past it are read as zero
  const void* w;          // [N, Kp] quantized weight (bytes), row stride ldw (bytes), zero-padded beyond K
  int64_t ldw;
  int M, N, Kp;           // Kp a multiple of 32
  const float* a_scale;   // [M]
  const float* w_scale;   // per output channel [N], per tensor [1], or per 128 x 128 block [ceil(N/128), Kp/128]
  int w_scale_kind;       // 0 channel, 1 tensor, 2 block128 (e4m3 only)
  int64_t w_scale_ld;     // block128: row stride of w_scale (K blocks)
  void* out;              // [M, N], row stride ldo (elements)
  OutType out_type;
  int64_t ldo;
  int splits;             // K splits (blockIdx.z); 0: choose from the shape and the GPU's SM count
  void* workspace;        // split-K partial tiles: at least gemm_workspace_bytes(...) bytes (unused when 1 split)
  int* counters;          // one int per output tile, zero before the first call (the kernel leaves them zero)
};

// Splits the launcher would use for this shape on a GPU with `sms` multiprocessors.
int gemm_splits(int M, int N, int Kp, int sms);
// Workspace and counters needed for `splits` (bytes; number of ints).
int64_t gemm_workspace_bytes(int M, int N, int splits);
int64_t gemm_counters(int M, int N);

// FP8 weight-only (e4m3 weights, 16-bit activations, mma.sync m16n8k16): what gemm_quantized runs for e4m3 on GPUs
// before sm_89, or when asked (weight_only).
std::string quantize_rows(const QuantizeRowsParams& p, void* stream);
std::string gemm_quantized(const GemmParams& p, void* stream);

}  // namespace illada::cuda
