// cuda_bf16.h for the emulator: the bfloat16 type and the conversions the kernels use, rounding as the GPU does.
#pragma once
#include <cstdint>

#include "../cuda_names.h"
#include "../ptx.h"

struct __nv_bfloat16 {
  uint16_t __x;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline float __bfloat162float(__nv_bfloat16 h) { return cuda_emu::ptx::bf16_to_float(h.__x); }
inline __nv_bfloat16 __float2bfloat16(float f) { return {cuda_emu::ptx::float_to_bf16_rn(f)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {cuda_emu::ptx::float_to_bf16_rn(f)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return {__float2bfloat16(lo), __float2bfloat16(hi)}; }
