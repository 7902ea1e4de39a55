// cuda_fp8.h for the emulator: the float -> e4m3 conversion the kernels use, rounding as the GPU does.
#pragma once
#include <cstdint>

#include "../cuda_names.h"
#include "../ptx.h"

using __nv_fp8_storage_t = unsigned char;
enum __nv_saturation_t { __NV_NOSAT = 0, __NV_SATFINITE = 1 };
enum __nv_fp8_interpretation_t { __NV_E4M3 = 0, __NV_E5M2 = 1 };

// Round to nearest even; __NV_SATFINITE clamps out-of-range values (and infinities) to +-448; NaN -> 0x7f.
inline __nv_fp8_storage_t __nv_cvt_float_to_fp8(float x, __nv_saturation_t sat, __nv_fp8_interpretation_t kind) {
  (void)kind;  // e4m3 only
  return cuda_emu::ptx::float_to_e4m3_rn(x, sat == __NV_SATFINITE);
}
