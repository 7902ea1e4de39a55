// cuda_fp16.h for the emulator: the half type and the conversions the kernels use, rounding as the GPU does.
#pragma once
#include <cstdint>

#include "../cuda_names.h"
#include "../ptx.h"

struct __half {
  uint16_t __x;
};
struct alignas(4) __half2 {
  __half x, y;
};
inline float __half2float(__half h) { return cuda_emu::ptx::f16_to_float(h.__x); }
inline __half __float2half(float f) { return {cuda_emu::ptx::float_to_f16_rn(f)}; }
inline __half __float2half_rn(float f) { return {cuda_emu::ptx::float_to_f16_rn(f)}; }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half(lo), __float2half(hi)}; }
