// Warp-level building blocks for the sm_80+ tensor-core path: cp.async, ldmatrix, mma.sync. This header holds every
// piece of inline PTX in the project; under ILLADA_CUDA_EMU each wrapper calls its host implementation instead
// (csrc/cuda_emu/ptx.cpp, written and tested from the PTX ISA's definitions).
// Fragment layouts are the PTX ISA's ("Matrix Fragments for mma.m16n8k16"): with g = lane / 4 and t = lane % 4,
//   A (16x16, row):  a[0] = (g, 2t..2t+1)  a[1] = (g+8, 2t..)  a[2] = (g, 2t+8..)  a[3] = (g+8, 2t+8..)
//   B (16x8, col):   b[0] = (k 2t..2t+1, n g)  b[1] = (k 2t+8.., n g)
//   C (16x8, fp32):  c[0..1] = (g, 2t..2t+1)  c[2..3] = (g+8, 2t..2t+1)
// and the lower column (or k) index sits in the low half of each 32-bit register. m16n8k32 (8-bit elements) packs
// four per register: a[0] = (g, 4t..4t+3), a[1] = (g+8, ..), a[2] = (g, 4t+16..), a[3] = (g+8, 4t+16..);
// b[0] = (k 4t..4t+3, n g), b[1] = (k 4t+16.., n g); C as above.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#ifdef ILLADA_CUDA_EMU
#include "cuda_emu/ptx.h"
#define ILLADA_SITE , ::cuda_emu::Site site = ::cuda_emu::Site::here()
#define ILLADA_PASS_SITE , site
#else
#define ILLADA_SITE
#define ILLADA_PASS_SITE
#endif

namespace illada::cuda::sm80 {

// 16-byte global -> shared copy that bypasses L1; with pred false the 16 bytes are zero-filled (nothing is read).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool pred ILLADA_SITE) {
#ifdef ILLADA_CUDA_EMU
  ::cuda_emu::ptx::cp_async(smem, gmem, 16, pred ? 16 : 0, true, site);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
#endif
}
// 16 bytes global -> shared bypassing L1, reading only the first src_bytes (0..16) and zero-filling the rest.
__device__ __forceinline__ void cp_async_16_bytes(void* smem, const void* gmem, int src_bytes ILLADA_SITE) {
#ifdef ILLADA_CUDA_EMU
  ::cuda_emu::ptx::cp_async(smem, gmem, 16, src_bytes, true, site);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
#endif
}
// Bytes (4, 8 or 16) global -> shared through L1 (cp.async.ca); src_bytes < Bytes zero-fills the rest.
template <int Bytes>
__device__ __forceinline__ void cp_async_ca(void* smem, const void* gmem, int src_bytes ILLADA_SITE) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async.ca copies 4, 8 or 16 bytes");
#ifdef ILLADA_CUDA_EMU
  ::cuda_emu::ptx::cp_async(smem, gmem, Bytes, src_bytes, false, site);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(s), "l"(gmem), "n"(Bytes), "r"(src_bytes));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef ILLADA_CUDA_EMU
  ::cuda_emu::ptx::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef ILLADA_CUDA_EMU
  ::cuda_emu::ptx::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Num (1, 2 or 4) 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, which lands in r[i]. With
// Trans each matrix is transposed on the way (lane gets column lane/4, rows 2*(lane%4) and +1).
template <int Num, bool Trans>
__device__ __forceinline__ void ldmatrix(unsigned (&r)[Num], const void* smem ILLADA_SITE) {
  static_assert(Num == 1 || Num == 2 || Num == 4, "ldmatrix loads 1, 2 or 4 matrices");
#ifdef ILLADA_CUDA_EMU
  ::cuda_emu::ptx::ldmatrix(r, Num, Trans, smem, site);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  if constexpr (Num == 1 && !Trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(s));
  else if constexpr (Num == 1)
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(s));
  else if constexpr (Num == 2 && !Trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(s));
  else if constexpr (Num == 2)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(s));
  else if constexpr (!Trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#endif
}
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* smem ILLADA_SITE) {
  ldmatrix<4, false>(r, smem ILLADA_PASS_SITE);
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* smem ILLADA_SITE) {
  ldmatrix<4, true>(r, smem ILLADA_PASS_SITE);
}

// c += a * b, 16x8x16, fp32 accumulate; Bf16 selects bf16 or fp16 operands.
template <bool Bf16>
__device__ __forceinline__ void mma_16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1 ILLADA_SITE) {
#ifdef ILLADA_CUDA_EMU
  const unsigned b[2] = {b0, b1};
  ::cuda_emu::ptx::mma_m16n8k16(c, a, b, c, Bf16, site);
#else
  if constexpr (Bf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

// c += a * b, 16x8x32, int8 operands, int32 accumulate (wrapping).
__device__ __forceinline__ void mma_16832_s8(int (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1 ILLADA_SITE) {
#ifdef ILLADA_CUDA_EMU
  const unsigned b[2] = {b0, b1};
  ::cuda_emu::ptx::mma_m16n8k32_s8(c, a, b, c, site);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// c += a * b, 16x8x32, e4m3 operands, fp32 accumulate (sm_89 and newer; traps on older GPUs).
__device__ __forceinline__ void mma_16832_e4m3(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                               unsigned b1 ILLADA_SITE) {
#ifdef ILLADA_CUDA_EMU
  const unsigned b[2] = {b0, b1};
  ::cuda_emu::ptx::mma_m16n8k32_e4m3(c, a, b, c, site);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// Two floats -> one register of two 16-bit values, `lo` in the low half, round to nearest even.
template <bool Bf16>
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
  unsigned r;
  if constexpr (Bf16) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    memcpy(&r, &v, 4);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    memcpy(&r, &v, 4);
  }
  return r;
}

}  // namespace illada::cuda::sm80

#undef ILLADA_SITE
#undef ILLADA_PASS_SITE
