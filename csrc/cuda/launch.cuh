// The two CUDA constructs a host compiler cannot parse, written so that the same kernel source builds with nvcc
// for the GPU and as host C++ for the emulator (csrc/cuda_emu/, ILLADA_CUDA_EMU defined):
//   ILLADA_DYNAMIC_SHARED(T, name);                               extern __shared__ __align__(16) T name[];
//   ILLADA_LAUNCH("name", kernel, grid, block, smem, stream)(args);   kernel<<<grid, block, smem, stream>>>(args);
// `name` is the kernel's name in ILLADA_RT_CUDA_KERNELS and in the emulator's launch counts.
#pragma once

#ifdef ILLADA_CUDA_EMU
#define ILLADA_DYNAMIC_SHARED(T, name) CUDA_EMU_DYNAMIC_SHARED(T, name)
#define ILLADA_LAUNCH(name, kernel, grid, block, smem, stream) \
  ((void)(stream), ::cuda_emu::make_launcher(name, kernel, grid, block, smem))
#else
#define ILLADA_DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]
#define ILLADA_LAUNCH(name, kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#endif
