// cuda_runtime.h for the emulator: the runtime API names the kernel sources' host code uses. A launch error or a
// fault inside a kernel is thrown as cuda_emu::KernelError at once (a GPU would report it later, asynchronously).
#pragma once
#include "../cuda_names.h"

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct CUstream_st;
using cudaStream_t = CUstream_st*;

inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : "invalid argument";
}
template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*fn)(P...), cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0) return cudaErrorInvalidValue;
  return cuda_emu::set_max_dynamic_shared(reinterpret_cast<const void*>(fn), static_cast<size_t>(value))
             ? cudaSuccess
             : cudaErrorInvalidValue;
}
