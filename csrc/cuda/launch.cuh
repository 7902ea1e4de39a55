// The CUDA constructs a host compiler cannot parse or place, written so that the same kernel source builds with
// nvcc for the GPU and as host C++ for the emulator (csrc/cuda_emu/, ILLADA_CUDA_EMU defined):
//   ILLADA_SHARED(T, name);                                       __shared__ __align__(16) T name;  (T may be an array)
//   ILLADA_DYNAMIC_SHARED(T, name);                               extern __shared__ __align__(16) T name[];
//   ILLADA_LAUNCH("name", kernel, grid, block, smem, stream)(args);   kernel<<<grid, block, smem, stream>>>(args);
// `name` is the kernel's name in ILLADA_RT_CUDA_KERNELS and in the emulator's launch counts. Kernel sources declare
// static shared memory with ILLADA_SHARED: a plain `__shared__` local of a function template would lose its place
// in the emulator (GCC drops section attributes of static locals in templates), and with it the checkers.
#pragma once

#ifdef ILLADA_CUDA_EMU
#define ILLADA_SHARED(T, name)                      \
  using name##_shared_type = T;                     \
  static const char name##_shared_site = 0;         \
  name##_shared_type& name = *static_cast<name##_shared_type*>( \
      ::cuda_emu::static_shared(&name##_shared_site, sizeof(name##_shared_type), #name))
#define ILLADA_DYNAMIC_SHARED(T, name) CUDA_EMU_DYNAMIC_SHARED(T, name)
#define ILLADA_LAUNCH(name, kernel, grid, block, smem, stream) \
  ((void)(stream), ::cuda_emu::make_launcher(name, kernel, grid, block, smem))
#else
#define ILLADA_SHARED(T, name)  \
  using name##_shared_type = T; \
  __shared__ __align__(16) name##_shared_type name
#define ILLADA_DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]
#define ILLADA_LAUNCH(name, kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#endif
