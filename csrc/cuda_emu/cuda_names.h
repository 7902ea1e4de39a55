// The CUDA names a kernel source uses, supplied to host C++ so a .cu file compiles with g++/clang++ and runs on
// the emulator (runtime.h). A CTA's threads are fibers of one OS thread, so the index variables below are
// per-OS-thread values that the scheduler sets before it resumes each fiber.
#pragma once
#include <cstdint>
#include <cstring>

#include "runtime.h"

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
// Static shared memory: every `__shared__` variable lives in one linker section. CTAs run one at a time, so that
// section is the running CTA's storage; the runtime poisons it at each CTA start (__start/__stop symbols).
#define __shared__ __attribute__((section("cuda_emu_shared"), aligned(16))) static
// Dynamic shared memory (`extern __shared__ T name[]` under nvcc): a kernel shared with the emulator declares it
// with this macro; on the emulator it is the launch's buffer, poisoned at each CTA start.
#define CUDA_EMU_DYNAMIC_SHARED(T, name) T* name = ::cuda_emu::dynamic_shared<T>()

#define __syncthreads() ::cuda_emu::syncthreads(__FILE__, __LINE__)

namespace cuda_emu {
template <typename T>
T* dynamic_shared() { return static_cast<T*>(dynamic_shared_base()); }

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "a warp shuffle moves at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
}  // namespace cuda_emu

// Warp collectives: a rendezvous of the lanes named in `mask` at one call site (the caller's file and line).
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  return cuda_emu::from_bits<T>(cuda_emu::warp_collective(cuda_emu::WarpOp::shfl_xor, mask, cuda_emu::to_bits(v),
                                                          lane_mask, width, {file, line}));
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  return cuda_emu::from_bits<T>(cuda_emu::warp_collective(cuda_emu::WarpOp::shfl_idx, mask, cuda_emu::to_bits(v),
                                                          src_lane, width, {file, line}));
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return static_cast<unsigned>(
      cuda_emu::warp_collective(cuda_emu::WarpOp::ballot, mask, pred != 0, 0, 32, {file, line}));
}

// Atomics: the fibers of a launch share one OS thread and switch only at barriers and collectives, so a plain
// read-modify-write is atomic here.
template <typename T>
T atomicAdd(T* p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}
