// The CUDA names a kernel source uses, supplied to host C++ so a .cu file compiles with g++/clang++ and runs on
// the emulator (runtime.h). A CTA's threads are fibers of one OS thread, so the index variables below are
// per-OS-thread values that the scheduler sets before it resumes each fiber.
#pragma once
#include <cstdint>
#include <cstring>
#include <functional>

#include "runtime.h"

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(8) float2 {
  float x, y;
};

// initial-exec: read on every index computation, so not through __tls_get_addr (the module's few bytes of TLS fit
// the static TLS space the loader keeps for dlopen'ed libraries)
#define CUDA_EMU_TLS thread_local __attribute__((tls_model("initial-exec")))
inline CUDA_EMU_TLS uint3 threadIdx;
inline CUDA_EMU_TLS uint3 blockIdx;
inline CUDA_EMU_TLS dim3 blockDim;
inline CUDA_EMU_TLS dim3 gridDim;
constexpr int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
// Static shared memory: every `__shared__` variable lives in one linker section. CTAs run one at a time, so that
// section is the running CTA's storage; the runtime poisons it at each CTA start (__start/__stop symbols).
#define __shared__ __attribute__((section("cuda_emu_shared"), aligned(16))) static
// Dynamic shared memory (`extern __shared__ T name[]` under nvcc; kernels write ILLADA_DYNAMIC_SHARED, see
// csrc/cuda/launch.cuh): the launch's buffer, poisoned at each CTA start.
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

// `kernel<<<grid, block, smem, stream>>>(args...)` is written ILLADA_LAUNCH(name, kernel, grid, block, smem,
// stream)(args...) (csrc/cuda/launch.cuh); here that is a Launcher: the arguments are copied into the kernel's
// by-value parameters on each thread's fiber, as the GPU copies them to parameter memory.
template <typename... P>
struct Launcher {
  const char* name;
  void (*fn)(P...);
  dim3 grid, block;
  size_t shared_bytes;
  template <typename... A>
  void operator()(A&&... args) const {
    void (*f)(P...) = fn;
    auto call = [&] { f(args...); };  // on this frame: the kernel's parameters are read from the launching frames
    launch(name, reinterpret_cast<const void*>(f), {grid.x, grid.y, grid.z}, {block.x, block.y, block.z},
           shared_bytes, std::ref(call));
  }
};
template <typename... P>
Launcher<P...> make_launcher(const char* name, void (*fn)(P...), dim3 grid, dim3 block, size_t shared_bytes) {
  return {name, fn, grid, block, shared_bytes};
}

// Atomics (runtime.cpp): a read-modify-write between two scheduling points is atomic here; the checkers see an
// atomic access, which does not race with other atomics.
int atomic_add(int* p, int v);
unsigned atomic_add(unsigned* p, unsigned v);
unsigned long long atomic_add(unsigned long long* p, unsigned long long v);
float atomic_add(float* p, float v);
double atomic_add(double* p, double v);
int atomic_max(int* p, int v);
int atomic_exch(int* p, int v);
}  // namespace cuda_emu

template <typename T>
T atomicAdd(T* p, T v) { return cuda_emu::atomic_add(p, v); }
inline int atomicMax(int* p, int v) { return cuda_emu::atomic_max(p, v); }
inline int atomicExch(int* p, int v) { return cuda_emu::atomic_exch(p, v); }

// Warp collectives: a rendezvous of the lanes named in `mask` at one call site (the caller's file and line).
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, cuda_emu::Site site = cuda_emu::Site::here()) {
  return cuda_emu::from_bits<T>(
      cuda_emu::warp_collective(cuda_emu::WarpOp::shfl_xor, mask, cuda_emu::to_bits(v), lane_mask, width, site));
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32, cuda_emu::Site site = cuda_emu::Site::here()) {
  return cuda_emu::from_bits<T>(
      cuda_emu::warp_collective(cuda_emu::WarpOp::shfl_idx, mask, cuda_emu::to_bits(v), src_lane, width, site));
}
inline unsigned __ballot_sync(unsigned mask, int pred, cuda_emu::Site site = cuda_emu::Site::here()) {
  return static_cast<unsigned>(cuda_emu::warp_collective(cuda_emu::WarpOp::ballot, mask, pred != 0, 0, 32, site));
}
inline void __syncwarp(unsigned mask = 0xffffffffu, cuda_emu::Site site = cuda_emu::Site::here()) {
  cuda_emu::warp_collective(cuda_emu::WarpOp::ballot, mask, 0, 0, 32, site);
}

// Memory-ordering and cache-hint intrinsics: CTAs run one after another here, so every write is visible to the
// CTAs that run later (ordering between concurrently running CTAs is what the emulator cannot check).
inline void __threadfence() {}
template <typename T>
T __ldcg(const T* p) { return *p; }

// Arithmetic intrinsics with one rounding each (no contraction: the emulator is compiled with -ffp-contract=off).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
