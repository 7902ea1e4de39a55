// Host implementations of the PTX instructions that csrc/cuda/mma_sm80.cuh wraps, written from the PTX ISA's
// definitions (see ../../shared notes and the README): warp-wide ones are a rendezvous of the warp's 32 lanes.
#pragma once
#include <cstdint>

#include "runtime.h"

namespace cuda_emu::ptx {

// cp.async.{ca,cg}.shared.global [smem], [gmem], cp_size, src_size: copies src_size bytes (0 reads nothing) and
// zero-fills the rest of cp_size. Deferred: the destination holds poison (and reads of it are errors) until the
// thread's cp.async.wait_group that covers the copy.
void cp_async(void* smem, const void* gmem, int cp_size, int src_size, bool cache_global, Site site);
void cp_async_commit();
void cp_async_wait(int n);  // wait until at most n of this thread's committed groups are pending

// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16: lanes 8j..8j+7 address the rows of matrix j.
void ldmatrix(uint32_t* r, int num, bool trans, const void* smem, Site site);

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32: d = a * b + c.
void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, const float* c, bool bf16, Site site);
// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32: d = a * b + c (int32, wrapping).
void mma_m16n8k32_s8(int32_t* d, const uint32_t* a, const uint32_t* b, const int32_t* c, Site site);
// mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32: d = a * b + c.
void mma_m16n8k32_e4m3(float* d, const uint32_t* a, const uint32_t* b, const float* c, Site site);

// Element conversions as the GPU does them.
float bf16_to_float(uint16_t h);
float f16_to_float(uint16_t h);
float e4m3_to_float(uint8_t v);
uint16_t float_to_bf16_rn(float f);  // round to nearest even; NaN -> 0x7fff (cuda_bf16.h's canonical NaN)
uint16_t float_to_f16_rn(float f);   // round to nearest even, with subnormals; NaN -> 0x7fff
// e4m3 (OCP "fn": no infinities, max 448), round to nearest even with subnormals; beyond 448 (and +-inf): +-448
// when `satfinite`, else NaN; NaN -> 0x7f.
uint8_t float_to_e4m3_rn(float f, bool satfinite);

}  // namespace cuda_emu::ptx
