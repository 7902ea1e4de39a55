// Kernels written as CUDA source (the names come from cuda_names.h), run by the emulator's launch().
#include "test_kernels.h"

#include "cuda_names.h"

namespace cuda_emu::tests {
namespace {

__global__ void block_sum_kernel(const float* __restrict__ x, int n, float* out) {
  __shared__ float partial[1024];
  float v = 0.f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += x[i];
  partial[threadIdx.x] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    float w = 0.f;
    for (unsigned i = threadIdx.x; i < blockDim.x; i += 32) w += partial[i];
    for (int offset = 16; offset > 0; offset >>= 1) w += __shfl_xor_sync(0xffffffffu, w, offset);
    if (threadIdx.x == 0) atomicAdd(out, w);
  }
}

__global__ void warp_ballot_kernel(const float* x, int n, int32_t* out) {
  unsigned warp_first = threadIdx.x / 32 * 32;
  unsigned lanes = blockDim.x - warp_first < 32 ? blockDim.x - warp_first : 32;
  unsigned mask = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  unsigned bits = __ballot_sync(mask, i < n && x[i] > 0.f);
  bits = __shfl_sync(mask, threadIdx.x % 32 == 0 ? bits : 0u, 0);  // lane 0's answer, broadcast
  if (i < n) out[i] = static_cast<int32_t>(bits);
}

__global__ void divergent_barrier_kernel() {
  if (threadIdx.x < 16) __syncthreads();
}

__global__ void split_barrier_kernel() {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

__global__ void divergent_shuffle_kernel() {
  float v = threadIdx.x;
  if (threadIdx.x < 16)
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  else
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  (void)v;
}

__global__ void shared_before_write_kernel(int32_t* out_static, int32_t* out_dynamic) {
  __shared__ int32_t s[1024];
  CUDA_EMU_DYNAMIC_SHARED(int32_t, d);
  unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
  out_static[t] = s[threadIdx.x];
  out_dynamic[t] = d[threadIdx.x];
  s[threadIdx.x] = 0;  // the next CTA must see poison again
  d[threadIdx.x] = 0;
}

}  // namespace

void block_sum(const float* x, int n, float* out, unsigned grid, unsigned block) {
  launch("block_sum", {grid}, {block}, 0, [&] { block_sum_kernel(x, n, out); });
}
void warp_ballot(const float* x, int n, int32_t* out, unsigned grid, unsigned block) {
  launch("warp_ballot", {grid}, {block}, 0, [&] { warp_ballot_kernel(x, n, out); });
}
void divergent_barrier(unsigned block) { launch("divergent_barrier", {1}, {block}, 0, [] { divergent_barrier_kernel(); }); }
void split_barrier(unsigned block) { launch("split_barrier", {1}, {block}, 0, [] { split_barrier_kernel(); }); }
void divergent_shuffle() { launch("divergent_shuffle", {1}, {32}, 0, [] { divergent_shuffle_kernel(); }); }
void shared_before_write(int32_t* out_static, int32_t* out_dynamic, unsigned grid, unsigned block) {
  launch("shared_before_write", {grid}, {block}, block * sizeof(int32_t),
         [&] { shared_before_write_kernel(out_static, out_dynamic); });
}

}  // namespace cuda_emu::tests
